#!/usr/bin/env bash
# The edge's memory with 10,000 idle sockets (BENCHMARKS.md, "Idle sockets: memory per socket"):
# a fresh release edge for each case, sockets unattached, then each resumed on a thread of its own
# (one live relay per socket; LIVE_SUBSCRIPTION, exported, picks which). A fresh edge per case: memory freed by an earlier case stays
# resident and would hide part of the next one's cost.
#
#   scripts/bench-idle.sh [CONNECTIONS] [BENCHMARKS.md]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
connections="${1:-10000}"
out="${2:-}"
ulimit -n "$(ulimit -Hn)"

scripts/services.sh start
cargo build --release --locked -p edge -p loadgen

export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
export THREADS_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000
export EDGE_ADDR=127.0.0.1:18080 METRICS_ADDR=127.0.0.1:19091

for attached in "" --attached; do
  id="idle$(date +%s)"
  export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$id"
  target/release/edge >/tmp/"$id"-edge.log 2>&1 & edge=$!
  for _ in $(seq 1 100); do (exec 3<>/dev/tcp/127.0.0.1/18080) 2>/dev/null && break; sleep 0.2; done
  target/release/loadgen idle --url http://127.0.0.1:18080 --connections "$connections" \
    --edge-pid "$edge" --hold-secs 5 $attached ${out:+--append-to "$out"}
  kill "$edge"; wait "$edge" || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
done
