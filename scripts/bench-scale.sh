#!/usr/bin/env bash
# Reproduces the delivery-guarantees figures of BENCHMARKS.md: turns/s and latency with 1, 2 and
# 4 workers at 1,000 concurrent threads (scripted model, 20 tokens, 50 ms per token), then the
# pipeline against the bare NATS floor at 200 connections (20 tokens, 0 ms).
#
#   scripts/bench-scale.sh [BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
out="${1:-BENCHMARKS.md}"

scripts/services.sh start
cargo build --release --locked -p edge -p worker -p loadgen

pids=()
databases=()
cleanup() {
  [ "${#pids[@]}" -eq 0 ] || kill "${pids[@]}" 2>/dev/null || true
  wait 2>/dev/null || true
  pids=()
}
drop_databases() {
  cleanup
  for db in "${databases[@]}"; do
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
  done
}
trap drop_databases EXIT

# Starts 1 edge and $1 workers on a fresh prefix and database, with the token delay $2.
stack() {
  local workers=$1 delay=$2 id
  id="bench$(date +%s%N)"
  databases+=("$id")
  export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$id"
  export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
  export SEED_DEMO_DATA=true
  export SCRIPTED_REPLY_TOKENS=20 SCRIPTED_TOKEN_DELAY_MS="$delay"
  export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000 EDGE_ADDR=127.0.0.1:18080
  target/release/edge >"/tmp/$id-edge.log" 2>&1 & pids+=($!)
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.2; done
  for i in $(seq 1 "$workers"); do
    METRICS_ADDR="127.0.0.1:$((19090 + i))" target/release/worker >"/tmp/$id-worker$i.log" 2>&1 & pids+=($!)
  done
  sleep 1
}

{
  echo
  echo "### $(date -u +%Y-%m-%d) — $(git rev-parse --short HEAD), $(nproc) cores: scale-out and the cost of the guarantees"
  echo
  echo "1 edge + N workers (release), scripted model, 20 tokens; \`scripts/bench-scale.sh\` ran:"
  echo
} >>"$out"
for workers in 1 2 4; do
  stack "$workers" 50
  target/release/loadgen chat --url http://127.0.0.1:18080 --connections 1000 --messages 3 \
    --turn-timeout-secs 300 --append-to "$out" \
    --label "$workers worker(s), 1,000 threads × 3 messages, 50 ms/token"
  cleanup
done
stack 1 0
target/release/loadgen chat --url http://127.0.0.1:18080 --connections 200 --messages 20 \
  --floor --tokens 20 --append-to "$out" --label "200 connections × 20 messages, 0 ms/token, with the floor"
cleanup
