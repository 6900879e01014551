#!/usr/bin/env bash
# The bare-NATS floor on its own (`loadgen chat --floor-only`): the pipeline's traffic shape
# (publish to JetStream, awaiting its ack → one pull consumer → tokens + 1 core frames → ack) with
# no edge, worker or database, and the CPU it costs per turn (nats-server and loadgen, which is the
# floor's clients and its worker).
#
#   scripts/bench-floor.sh [-- more loadgen chat arguments]
#   CONNECTIONS=50 MESSAGES=200 TOKENS=20 LOADGEN=target/release/loadgen scripts/bench-floor.sh
#   PERF_OUT=/tmp/floor scripts/bench-floor.sh     also `perf record -e cpu-clock` of loadgen and
#       nats-server while it runs: /tmp/floor.loadgen.data and /tmp/floor.nats.data, and the top
#       symbols of each in /tmp/floor.loadgen.txt and /tmp/floor.nats.txt
#
# Run it next to `loadgen chat` of the pipeline (scripts/bench-cpu.sh) at the same CONNECTIONS,
# back to back, and read the pipeline as ratios to it.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
loadgen="${LOADGEN:-target/release/loadgen}"
connections="${CONNECTIONS:-50}"
messages="${MESSAGES:-200}"
tokens="${TOKENS:-20}"
if [ "${1:-}" = "--" ]; then shift; fi

scripts/services.sh start >/dev/null
# The nats-server on 4222 by its pid: other sessions may run private servers of their own.
nats=$(ss -Hltnp 'sport = :4222' | grep -o 'pid=[0-9]*' | head -n1 | cut -d= -f2)
args=(chat --floor-only --connections "$connections" --messages "$messages" --tokens "$tokens"
  --cpu-pids "nats-server=$nats" "$@")
if [ -z "${PERF_OUT:-}" ]; then
  exec "$loadgen" "${args[@]}"
fi
perf record -q -e cpu-clock -g -p "$nats" -o "$PERF_OUT.nats.data" 2>/dev/null & perf_nats=$!
perf record -q -e cpu-clock -g -o "$PERF_OUT.loadgen.data" -- "$loadgen" "${args[@]}"
kill -INT "$perf_nats"
wait "$perf_nats" || true
for side in loadgen nats; do
  perf report -i "$PERF_OUT.$side.data" --no-children --sort symbol --stdio 2>/dev/null \
    | grep -E '^ +[0-9]' | head -n 40 >"$PERF_OUT.$side.txt" || true
done
echo "profiles: $PERF_OUT.loadgen.txt $PERF_OUT.nats.txt"
