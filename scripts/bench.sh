#!/usr/bin/env bash
# Reproduces the walking-skeleton figures of BENCHMARKS.md: 1 edge + 1 worker (release builds),
# scripted model with 20 tokens and no delay, loadgen at 1, 50 and 200 connections with the bare
# NATS floor measured in the same run, then the edge's memory with 10,000 idle sockets.
#
#   scripts/bench.sh [BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-BENCHMARKS.md}"
messages="${MESSAGES:-20}"

scripts/services.sh start
cargo build --release --locked -p edge -p worker -p loadgen

id="bench$(date +%s)"
export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$id"
export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
export SEED_DEMO_DATA=true
export SCRIPTED_REPLY_TOKENS=20 SCRIPTED_TOKEN_DELAY_MS=0
export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000
export EDGE_ADDR=127.0.0.1:18080 METRICS_ADDR=127.0.0.1:19091

target/release/edge >/tmp/"$id"-edge.log 2>&1 & edge=$!
target/release/worker >/tmp/"$id"-worker.log 2>&1 & worker=$!
cleanup() {
  kill "$edge" "$worker" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.2; done

{
  echo
  echo "### $(date -u +%Y-%m-%d) — $(git rev-parse --short HEAD), $(nproc) cores"
  echo
  echo "1 edge + 1 worker (release), scripted model, 20 tokens, 0 ms/token; \`scripts/bench.sh\` ran:"
  echo
} >>"$out"
for connections in 1 50 200; do
  target/release/loadgen chat --url http://127.0.0.1:18080 --connections "$connections" \
    --messages "$messages" --floor --tokens 20 --append-to "$out" \
    --label "$connections connection(s) × $messages messages"
done
target/release/loadgen idle --url http://127.0.0.1:18080 --connections 10000 \
  --edge-pid "$edge" --hold-secs 5 --append-to "$out"
