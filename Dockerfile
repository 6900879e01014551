# syntax=docker/dockerfile:1
#
# Images of the edge and the worker, built from one workspace build:
#
#   docker build --target edge   -t smart-support/edge   .
#   docker build --target worker -t smart-support/worker .
#
# docker-compose.yml builds both. Needs BuildKit (the default builder since Docker 23) for the
# cache mounts.

# ---- builder: compile both binaries once ----
FROM rust:1-bookworm AS builder
WORKDIR /app

# Every workspace member must be present for `--locked` to resolve the workspace, even those
# not built here (tests, bench). migrations/ is read at compile time by `sqlx::migrate!`.
# sqlx uses no compile-time query checks, so no DATABASE_URL is needed.
COPY Cargo.toml Cargo.lock ./
COPY shared ./shared
COPY edge ./edge
COPY worker ./worker
COPY tests ./tests
COPY bench ./bench
COPY migrations ./migrations

# target/ lives in a cache mount, which is not part of the image: copy the binaries out.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/app/target,sharing=locked \
    cargo build --release --locked -p edge -p worker \
    && mkdir -p /app/bin \
    && cp target/release/edge target/release/worker /app/bin/

# ---- web: the React app, served by the edge ----
FROM node:20-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund || npm install --no-audit --no-fund
COPY web ./
RUN npm run build

# ---- runtime: what both final images share ----
FROM debian:bookworm-slim AS runtime
# ca-certificates for outbound TLS; curl for the healthchecks in docker-compose.yml.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/*
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
ENV LOG_FORMAT=json
USER app:app

# ---- edge: HTTP + WebSocket on 8080 (/api/health, /metrics, /ws, the web app at /) ----
FROM runtime AS edge
COPY --from=builder /app/bin/edge /usr/local/bin/edge
COPY --from=web /web/dist /usr/share/smart-support/web
ENV EDGE_ADDR=0.0.0.0:8080 WEB_DIR=/usr/share/smart-support/web
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/edge"]

# ---- worker: Prometheus /metrics on 9091 ----
FROM runtime AS worker
COPY --from=builder /app/bin/worker /usr/local/bin/worker
ENV METRICS_ADDR=0.0.0.0:9091
EXPOSE 9091
ENTRYPOINT ["/usr/local/bin/worker"]
