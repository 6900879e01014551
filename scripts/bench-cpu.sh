#!/usr/bin/env bash
# CPU per turn by process: 1 edge + 1 worker (release builds from BIN_DIR), scripted model with
# 20 tokens and no delay, `loadgen chat` at CONNECTIONS × MESSAGES, on a database of its own.
# loadgen reads the CPU time of the edge, the worker, nats-server, every postgres process and the
# backends of the bench database from /proc around the measured window (`--cpu-pids`,
# `--cpu-procs`, `--cpu-database-url`) and prints CPU milliseconds per turn for each next to its
# turns/s and latencies.
#
#   scripts/bench-cpu.sh [BIN_DIR] [-- more loadgen chat arguments]
#       BIN_DIR defaults to target/release; its edge and worker run, loaded by this checkout's
#       loadgen (LOADGEN=...). Build first: cargo build --release --locked -p edge -p worker -p loadgen
#   CONNECTIONS=50 MESSAGES=40 scripts/bench-cpu.sh
#   WINDOWS=5 WINDOW_SECS=60 scripts/bench-cpu.sh      back-to-back windows on the same stack:
#       a new thread every MESSAGES turns; each window's figures and the last/first ratios
#   PRE_LOAD_SQL='CREATE INDEX …' scripts/bench-cpu.sh    SQL run on the bench database (after
#       the binaries migrated it, before the load): A/B an index with the same binaries
#   EDGE_PORT=18180 (the worker's metrics on EDGE_PORT + 1011)
#   SEED_CONVERSATIONS=100000 scripts/bench-cpu.sh     `loadgen seed` the database first (with
#       BIN_DIR's loadgen when it has one, so that the schema is BIN_DIR's)
#
# Compare two builds by running it against each on the same machine, back to back: the ratios
# between the runs are the figure; the absolute times depend on what else the machine does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/release}"
if [ $# -gt 0 ]; then shift; fi
if [ "${1:-}" = "--" ]; then shift; fi
# One load generator for every build compared: this checkout's.
loadgen="${LOADGEN:-target/release/loadgen}"
connections="${CONNECTIONS:-50}"
messages="${MESSAGES:-40}"
windows="${WINDOWS:-0}"
window_secs="${WINDOW_SECS:-60}"
seed="${SEED_CONVERSATIONS:-0}"

scripts/services.sh start
id="cpu$(date +%s)$$"
export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$id"
export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
export SEED_DEMO_DATA=true
export SCRIPTED_REPLY_TOKENS=20 SCRIPTED_TOKEN_DELAY_MS=0
export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000
port="${EDGE_PORT:-18180}"
export EDGE_ADDR=127.0.0.1:$port METRICS_ADDR=127.0.0.1:$((port + 1011))

if [ "$seed" -gt 0 ]; then
  seeder="$loadgen"
  [ -x "$bin/loadgen" ] && seeder="$bin/loadgen"
  "$seeder" seed --database-url "$DATABASE_URL" --conversations "$seed"
fi

"$bin/edge" >/tmp/"$id"-edge.log 2>&1 & edge=$!
"$bin/worker" >/tmp/"$id"-worker.log 2>&1 & worker=$!
cleanup() {
  kill "$edge" "$worker" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done

# An experiment's SQL on the bench database before the load (e.g. an index to A/B).
if [ -n "${PRE_LOAD_SQL:-}" ]; then
  psql -q -v ON_ERROR_STOP=1 -h 127.0.0.1 -U postgres -d "$id" -c "$PRE_LOAD_SQL"
fi
# A short warm-up (connections, prepared statements, the first threads), not measured.
"$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages 2 >/dev/null
# Round trips and rows per turn, from PostgreSQL's counters of the bench database (a backend
# reports its counters when idle for a while: read them again after 11 s).
db_counters() {
  sleep 11
  psql -qAt -F ' ' -h 127.0.0.1 -U postgres -d "$id" -c "SELECT (SELECT count(*) FROM turns),
      xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, blks_hit + blks_read
    FROM pg_stat_database WHERE datname = current_database()"
}
read -r t0 x0 r0 f0 i0 u0 b0 <<<"$(db_counters)"
cpu=(--cpu-pids "edge=$edge,worker=$worker" --cpu-procs nats-server,postgres --cpu-database-url "$DATABASE_URL")
if [ "$windows" -gt 0 ]; then
  "$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages "$messages" \
    --windows "$windows" --window-secs "$window_secs" "${cpu[@]}" "$@"
else
  "$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages "$messages" \
    "${cpu[@]}" "$@"
fi
read -r t1 x1 r1 f1 i1 u1 b1 <<<"$(db_counters)"
awk -v t=$((t1 - t0)) -v x=$((x1 - x0)) -v r=$((r1 - r0)) -v f=$((f1 - f0)) -v i=$((i1 - i0)) -v u=$((u1 - u0)) -v b=$((b1 - b0)) 'BEGIN {
  if (t > 0) printf "PostgreSQL per turn (%d turns): %.2f transactions, %.1f rows returned, %.1f rows fetched, %.1f inserted, %.1f updated, %.1f buffers\n",
    t, x / t, r / t, f / t, i / t, u / t, b / t
}'
