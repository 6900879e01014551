#!/usr/bin/env bash
# End-to-end tests of the web app in headless Chromium against a real stack: one edge serving
# web/dist, two workers with the scripted model, a fresh database and NATS prefix.
# Needs PostgreSQL on 127.0.0.1:5432 (user postgres, trust), NATS with JetStream on 127.0.0.1:4222,
# Node 20 + npm, and Debian's chromium (apt-get install -y chromium).
# Screenshots go to artifacts/web/.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD

PGHOST=${PGHOST:-127.0.0.1}
NATS_URL=${NATS_URL:-nats://127.0.0.1:4222}
RUN_ID="webe2e_$(date +%s)_$$"
DB="$RUN_ID"
export NATS_PREFIX="WEBE2E$(date +%s)$$"
LOGS="$ROOT/artifacts/web/logs"
mkdir -p "$LOGS"

if [ ! -x /usr/bin/chromium ]; then
  echo "web-e2e: /usr/bin/chromium is missing: apt-get install -y chromium" >&2
  exit 1
fi

echo "web-e2e: building the binaries and the web app"
cargo build --workspace --bins --quiet
if [ ! -d web/node_modules ]; then
  # `npm ci` refuses the lock where the registry lacks other platforms' optional packages (rollup's,
  # on this machine's mirror); `npm install` still installs the locked versions.
  npm --prefix web ci --no-audit --no-fund || npm --prefix web install --no-audit --no-fund
fi
npm --prefix web run build --silent >/dev/null

PIDS=()
cleanup() {
  local status=$?
  for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
  for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -h "$PGHOST" -U postgres -d postgres -qc "DROP DATABASE IF EXISTS \"$DB\" WITH (FORCE)" >/dev/null 2>&1 || true
  NATS_URL="$NATS_URL" node web/e2e/cleanup-streams.mjs 2>/dev/null || echo "web-e2e: streams ${NATS_PREFIX}_IN/_OUT left behind"
  exit $status
}
trap cleanup EXIT INT TERM

psql -h "$PGHOST" -U postgres -d postgres -qc "CREATE DATABASE \"$DB\""
free_port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }
PORT=$(free_port)
# Another site that embeds the chat (web/e2e/run.mjs serves it on http://localhost:EMBED_HOST_PORT),
# listed in ALLOWED_ORIGINS; one on OTHER_HOST_PORT is not.
export EMBED_HOST_PORT=$(free_port) OTHER_HOST_PORT=$(free_port)
export ALLOWED_ORIGINS="http://localhost:$EMBED_HOST_PORT"

export DATABASE_URL="postgres://postgres@$PGHOST:5432/$DB"
export NATS_URL
# At least 32 bytes: the edge refuses a shorter one outside DEV_MODE.
export AUTH_SECRET="web-e2e-secret-$RUN_ID-$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')"
# The scenarios talk about the demo shop's orders: the workers load its data.
export SEED_DEMO_DATA=true
export ADMIN_TOKEN="web-e2e-admin-$RUN_ID"
export BASE_URL="http://127.0.0.1:$PORT"

EDGE_ADDR="127.0.0.1:$PORT" WEB_DIR="$ROOT/web/dist" target/debug/edge >"$LOGS/edge.log" 2>&1 &
PIDS+=($!)
for _ in $(seq 1 100); do
  if curl -fsS "$BASE_URL/api/health" >/dev/null 2>&1; then break; fi
  sleep 0.1
done
curl -fsS "$BASE_URL/api/health" >/dev/null

for n in 1 2; do
  METRICS_ADDR=127.0.0.1:0 SCRIPTED_TOKEN_DELAY_MS=${SCRIPTED_TOKEN_DELAY_MS:-30} SCRIPTED_REPLY_TOKENS=${SCRIPTED_REPLY_TOKENS:-40} \
    target/debug/worker >"$LOGS/worker$n.log" 2>&1 &
  PIDS+=($!)
done

REPO_ROOT="$ROOT" node web/e2e/run.mjs
