#!/usr/bin/env bash
# Instructions per turn of the worker, a figure that does not depend on the machine's load:
# 1 edge + 1 worker (BIN_DIR's release builds; the worker under `valgrind --tool=callgrind`),
# scripted model with 20 tokens and no delay, the load generator's default message
# (classification, the demo tool `get_order_status`, the reply). Instrumentation is switched on after
# a warm-up and off after `loadgen chat` at CONNECTIONS × MESSAGES; the instructions of that
# window are divided by the turns it committed.
#
#   scripts/callgrind-worker.sh [BIN_DIR]       BIN_DIR defaults to target/release
#   CONNECTIONS=2 MESSAGES=100 OUT=/tmp/worker.callgrind scripts/callgrind-worker.sh /tmp/before-bin
#
# Then `callgrind_annotate --inclusive=yes OUT` (or kcachegrind) for the breakdown. Build with
# line tables (the workspace's release profile has `debug = "line-tables-only"`).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/release}"
loadgen="${LOADGEN:-$bin/loadgen}"
connections="${CONNECTIONS:-2}"
messages="${MESSAGES:-100}"
out="${OUT:-/tmp/worker-$$.callgrind}"
pg_port="${PG_PORT:-5432}"
pg() { psql -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }

scripts/services.sh start
id="cg$(date +%s)$$"
export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$id"
export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
export SEED_DEMO_DATA=true
export SCRIPTED_REPLY_TOKENS=20 SCRIPTED_TOKEN_DELAY_MS=0
export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000
port="${EDGE_PORT:-18480}"
export EDGE_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:$((port + 1011))

"$bin/edge" >/tmp/"$id"-edge.log 2>&1 & edge=$!
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
valgrind --tool=callgrind --instr-atstart=no --callgrind-out-file="$out" \
  "$bin/worker" >/tmp/"$id"-worker.log 2>&1 & worker=$!
cleanup() {
  kill "$edge" "$worker" 2>/dev/null || true
  wait 2>/dev/null || true
  pg -q -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT

turns() { pg -qAt -d "$id" -c "SELECT count(*) FROM turns"; }
# Warm-up: connections, prepared statements, the first threads; not counted.
"$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages 3 >/dev/null
t0=$(turns)
callgrind_control -i on "$worker" >/dev/null
"$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages "$messages" >&2
callgrind_control -i off "$worker" >/dev/null
t1=$(turns)
callgrind_control -d "$worker" >/dev/null
kill -INT "$worker" 2>/dev/null || true
wait "$worker" 2>/dev/null || true
n=$((t1 - t0))
# The dump of the window is the file with the highest part number.
file=$(ls -t "$out".* | head -1)
total=$(callgrind_annotate "$file" 2>/dev/null | awk '/PROGRAM TOTALS/ { gsub(",", "", $1); print $1; exit }')
echo "turns $n, instructions $total, per turn $((total / n)) ($file)"
