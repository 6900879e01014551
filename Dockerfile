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
# not built here (tests, bench). migrations/ is read at compile time by `sqlx::migrate!`. The
# statements sqlx checks at compile time (`query!` and the like) are checked against the committed
# query data in .sqlx/, offline (SQLX_OFFLINE=true, as .cargo/config.toml sets outside Docker),
# so no DATABASE_URL is needed.
ENV SQLX_OFFLINE=true
COPY Cargo.toml Cargo.lock ./
COPY .sqlx ./.sqlx
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
# Node 22 LTS (Vite needs Node >= 20.19, and Node 20 reached its end of life in April 2026).
FROM node:22-bookworm-slim AS web
WORKDIR /web
COPY web/package.json web/package-lock.json ./
RUN npm ci --no-audit --no-fund || npm install --no-audit --no-fund
COPY web ./
RUN npm run build

# ---- runtime: what both final images share ----
FROM debian:bookworm-slim AS runtime
# ca-certificates for outbound TLS (model provider, PostgreSQL and NATS over TLS). No curl: the
# healthcheck below speaks HTTP with bash alone.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
# A fixed non-root user (uid/gid 10001), the one deploy/ runs as (runAsUser/runAsGroup).
RUN groupadd --system --gid 10001 app \
    && useradd --system --uid 10001 --gid app --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin app
# `healthcheck ADDR PATH`: exit 0 when GET PATH on 127.0.0.1, at ADDR's port, answers 200.
COPY --chmod=0755 <<'SCRIPT' /usr/local/bin/healthcheck
#!/bin/bash
set -u
port="${1##*:}"
exec 3<>"/dev/tcp/127.0.0.1/${port}" || exit 1
printf 'GET %s HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n' "$2" >&3
read -r -t 5 _ status _ <&3 || exit 1
[ "${status%$'\r'}" = 200 ]
SCRIPT
ENV LOG_FORMAT=json
# Numeric, so that Kubernetes' runAsNonRoot can check it.
USER 10001:10001

# ---- edge: HTTP + WebSocket on 8080 (/api/health, /metrics, /ws, the web app at /) ----
FROM runtime AS edge
COPY --from=builder /app/bin/edge /usr/local/bin/edge
COPY --from=web /web/dist /usr/share/smart-support/web
ENV EDGE_ADDR=0.0.0.0:8080 WEB_DIR=/usr/share/smart-support/web
EXPOSE 8080
# Liveness only (/livez checks no dependency). Kubernetes ignores this: deploy/ has the probes.
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD healthcheck "$EDGE_ADDR" /livez
ENTRYPOINT ["/usr/local/bin/edge"]

# ---- worker: /metrics, /livez and /readyz on 9091 ----
FROM runtime AS worker
COPY --from=builder /app/bin/worker /usr/local/bin/worker
ENV METRICS_ADDR=0.0.0.0:9091
EXPOSE 9091
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
    CMD healthcheck "$METRICS_ADDR" /livez
ENTRYPOINT ["/usr/local/bin/worker"]
