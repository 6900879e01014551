#!/usr/bin/env bash
# CPU per turn by process: 1 edge + 1 worker (release builds from BIN_DIR), scripted model with
# 20 tokens and no delay, `loadgen chat` at CONNECTIONS × MESSAGES. Reads utime+stime of the edge,
# the worker, nats-server and every postgres process from /proc before and after the load, and
# prints CPU milliseconds per turn for each, with loadgen's own figures (turns/s, latencies).
#
#   scripts/bench-cpu.sh [BIN_DIR]      (default target/release; the edge and worker of BIN_DIR
#                                        run, loaded by this checkout's loadgen; build first:
#                                        cargo build --release --locked -p edge -p worker -p loadgen)
#   CONNECTIONS=50 MESSAGES=40 scripts/bench-cpu.sh
#
# Compare two builds by running it against each on the same machine, back to back: the ratios
# between the runs are the figure; the absolute times depend on what else the machine does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bin="${1:-target/release}"
# One load generator for every build compared: this checkout's.
loadgen="${LOADGEN:-target/release/loadgen}"
connections="${CONNECTIONS:-50}"
messages="${MESSAGES:-40}"
hz=$(getconf CLK_TCK)

scripts/services.sh start
id="cpu$(date +%s)$$"
export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:5432/$id"
export AUTH_SECRET=bench-secret-bench-secret-bench-secret LOG_FORMAT=json RUST_LOG=warn
export SEED_DEMO_DATA=true
export SCRIPTED_REPLY_TOKENS=20 SCRIPTED_TOKEN_DELAY_MS=0
export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0 WS_MAX_SOCKETS_PER_ADDR=1000000
export EDGE_ADDR=127.0.0.1:18180 METRICS_ADDR=127.0.0.1:19191

"$bin/edge" >/tmp/"$id"-edge.log 2>&1 & edge=$!
"$bin/worker" >/tmp/"$id"-worker.log 2>&1 & worker=$!
cleanup() {
  kill "$edge" "$worker" 2>/dev/null || true
  wait 2>/dev/null || true
  psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
}
trap cleanup EXIT
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/18180) 2>/dev/null && break; sleep 0.2; done

# utime + stime (clock ticks) of one pid, or of every process named $1 with -n.
ticks_of_pid() { awk '{ print $14 + $15 }' "/proc/$1/stat" 2>/dev/null || echo 0; }
ticks_of_name() {
  local sum=0 pid
  for pid in $(pgrep -x "$1"); do sum=$((sum + $(ticks_of_pid "$pid"))); done
  echo "$sum"
}
snapshot() { echo "$(ticks_of_pid "$edge") $(ticks_of_pid "$worker") $(ticks_of_name nats-server) $(ticks_of_name postgres)"; }

# A short warm-up (connections, prepared statements, the first threads), not measured.
"$loadgen" chat --url http://127.0.0.1:18180 --connections "$connections" --messages 2 >/dev/null
read -r e0 w0 n0 p0 <<<"$(snapshot)"
"$loadgen" chat --url http://127.0.0.1:18180 --connections "$connections" --messages "$messages"
read -r e1 w1 n1 p1 <<<"$(snapshot)"
turns=$((connections * messages))
awk -v hz="$hz" -v t="$turns" -v e=$((e1 - e0)) -v w=$((w1 - w0)) -v n=$((n1 - n0)) -v p=$((p1 - p0)) 'BEGIN {
  ms = 1000 / hz / t
  printf "CPU ms per turn (%d turns): edge %.3f, worker %.3f, nats-server %.3f, postgres %.3f, all %.3f\n",
    t, e * ms, w * ms, n * ms, p * ms, (e + w + n + p) * ms
}'
