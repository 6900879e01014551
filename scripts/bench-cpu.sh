#!/usr/bin/env bash
# CPU per turn by process: 1 edge + 1 worker (release builds from BIN_DIR), scripted model with
# 20 tokens and no delay, `loadgen chat` at CONNECTIONS × MESSAGES, on a database of its own.
# loadgen reads the CPU time of the edge, the worker, nats-server, every postgres process and the
# backends of the bench database from /proc around the measured window (`--cpu-pids`,
# `--cpu-procs`, `--cpu-database-url`) and prints CPU milliseconds per turn for each next to its
# turns/s and latencies, and the round trips the worker makes to PostgreSQL per turn (data segments
# it sent on its sockets to the server over the window, from `ss`).
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
#   EXTRA_EDGES=1 scripts/bench-cpu.sh     more edges on the same NATS prefix that hold no socket
#       (ports EDGE_PORT + 2, + 4, …), their CPU reported as edge2, edge3…: what every edge costs
#       NATS and itself when it receives every thread's live frames (LIVE_SUBSCRIPTION=edge)
#   SEED_CONVERSATIONS=100000 scripts/bench-cpu.sh     `loadgen seed` the database first (with
#       BIN_DIR's loadgen when it has one, so that the schema is BIN_DIR's)
#   DB_NAME=seeded1m scripts/bench-cpu.sh     run on that existing database (e.g. seeded beforehand
#       with `loadgen seed`, which takes minutes at 1,000,000 turns) and keep it afterwards
#   LOADAVG_OUT=/tmp/x.loadavg scripts/bench-cpu.sh     /proc/loadavg every 30 s while measuring
#   PG_PORT=5433 scripts/bench-cpu.sh     the PostgreSQL server on 127.0.0.1:PG_PORT (default 5432),
#       e.g. a private one with nothing else on it, for counters that only this bench moves
#   PG_PROFILE=1 PG_PORT=5433 scripts/bench-cpu.sh    also PostgreSQL's work per turn over the
#       measured window: each statement's calls, rows, buffers, WAL and time (pg_stat_statements:
#       the server needs `shared_preload_libraries = 'pg_stat_statements'`), WAL bytes and
#       flushes, rows written and HOT updates by table, scans by index. WAL and flushes are the
#       server's: give it a server of its own. Written to stdout and to PG_PROFILE_OUT when set.
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
pg_port="${PG_PORT:-5432}"
profile="${PG_PROFILE:-0}"
nats_port="${NATS_PORT:-4222}"
nats_monitor="${NATS_MONITOR_PORT:-$((nats_port + 4000))}"
nats_profile="${NATS_PROFILE:-0}"
nats_tap="${NATS_TAP:-0}"
pg() { psql -h 127.0.0.1 -p "$pg_port" -U postgres "$@"; }

scripts/services.sh start
id="cpu$(date +%s)$$"
# NATS_PORT: that server (otherwise NATS_URL as set, or the processes' default).
if [ -n "${NATS_PORT:-}" ]; then export NATS_URL="nats://127.0.0.1:$nats_port"; fi
db="${DB_NAME:-$id}"
export NATS_PREFIX="$id" DATABASE_URL="postgres://postgres@127.0.0.1:$pg_port/$db"
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
extra=()
extra_pids=""
for n in $(seq 2 $((${EXTRA_EDGES:-0} + 1))); do
  EDGE_ADDR=127.0.0.1:$((port + 2 * (n - 1))) METRICS_ADDR=127.0.0.1:$((port + 1011 + 2 * (n - 1))) \
    "$bin/edge" >/tmp/"$id"-edge$n.log 2>&1 &
  extra+=("$!")
  extra_pids="$extra_pids,edge$n=$!"
done
cleanup() {
  kill "$edge" "$worker" "${extra[@]}" ${sampler:-} 2>/dev/null || true
  wait 2>/dev/null || true
  if [ -z "${DB_NAME:-}" ]; then
    pg -q -c "DROP DATABASE IF EXISTS \"$id\" WITH (FORCE)" postgres >/dev/null 2>&1 || true
  fi
}
trap cleanup EXIT
for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.2; done
for n in $(seq 2 $((${EXTRA_EDGES:-0} + 1))); do
  for _ in $(seq 1 150); do (exec 3<>/dev/tcp/127.0.0.1/$((port + 2 * (n - 1)))) 2>/dev/null && break; sleep 0.2; done
done

# An experiment's SQL on the bench database before the load (e.g. an index to A/B).
if [ -n "${PRE_LOAD_SQL:-}" ]; then
  pg -q -v ON_ERROR_STOP=1 -d "$db" -c "$PRE_LOAD_SQL"
fi
# A short warm-up (connections, prepared statements, the first threads), not measured.
"$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages 2 >/dev/null
# Round trips and rows per turn, from PostgreSQL's counters of the bench database (a backend
# reports its counters when idle for a while: read them again after 11 s).
db_counters() {
  sleep 11
  pg -qAt -F ' ' -d "$db" -c "SELECT (SELECT count(*) FROM turns),
      xact_commit + xact_rollback, tup_returned, tup_fetched, tup_inserted, tup_updated, blks_hit + blks_read
    FROM pg_stat_database WHERE datname = current_database()"
}
# PG_PROFILE: the server's counters at the start of the window, kept in unlogged tables of the
# bench database (written before the window's first WAL position is taken), and
# pg_stat_statements emptied for this database.
profile_start() {
  pg -qAt -v ON_ERROR_STOP=1 -d "$db" >/dev/null <<'SQL'
CREATE EXTENSION IF NOT EXISTS pg_stat_statements;
CREATE UNLOGGED TABLE profile_tables AS
  SELECT s.relname, s.n_tup_ins, s.n_tup_upd, s.n_tup_hot_upd, s.n_tup_del,
         io.heap_blks_hit + io.heap_blks_read AS heap_blks, io.idx_blks_hit + io.idx_blks_read AS idx_blks
    FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid);
CREATE UNLOGGED TABLE profile_indexes AS
  SELECT s.relname, s.indexrelname, s.idx_scan, s.idx_tup_read, io.idx_blks_hit + io.idx_blks_read AS blks
    FROM pg_stat_user_indexes s JOIN pg_statio_user_indexes io USING (indexrelid);
CREATE UNLOGGED TABLE profile_server AS
  SELECT (SELECT count(*) FROM turns) AS turns, d.xact_commit, d.xact_rollback,
         w.wal_records, w.wal_fpi, w.wal_bytes, w.wal_write, w.wal_sync, pg_current_wal_lsn() AS lsn
    FROM pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database();
SELECT pg_stat_statements_reset(0, (SELECT oid FROM pg_database WHERE datname = current_database()), 0);
SQL
}
# The window's work per turn, from those counters (read after db_counters waited for the
# backends to report).
profile_end() {
  pg -q -P pager=off -v ON_ERROR_STOP=1 -d "$db" <<'SQL'
CREATE TEMP TABLE n AS SELECT (SELECT count(*) FROM turns) - turns AS turns FROM profile_server;
\echo PostgreSQL per turn over the window: the server
SELECT n.turns, round((d.xact_commit + d.xact_rollback - p.xact_commit - p.xact_rollback)::numeric / n.turns, 2) AS xacts,
       round((w.wal_records - p.wal_records)::numeric / n.turns, 1) AS wal_records,
       round((w.wal_fpi - p.wal_fpi)::numeric / n.turns, 2) AS wal_fpi,
       round((w.wal_bytes - p.wal_bytes) / n.turns) AS wal_bytes,
       round(pg_wal_lsn_diff(pg_current_wal_lsn(), p.lsn) / n.turns) AS lsn_bytes,
       round((w.wal_write - p.wal_write)::numeric / n.turns, 2) AS wal_writes,
       round((w.wal_sync - p.wal_sync)::numeric / n.turns, 2) AS wal_syncs
  FROM n, profile_server p, pg_stat_database d, pg_stat_wal w WHERE d.datname = current_database();
\echo by statement (pg_stat_statements; per turn)
SELECT round(s.calls::numeric / n.turns, 3) AS calls, round(s.rows::numeric / n.turns, 2) AS rows,
       round((s.shared_blks_hit + s.shared_blks_read)::numeric / n.turns, 1) AS blks,
       round(s.shared_blks_dirtied::numeric / n.turns, 2) AS dirtied,
       round(s.wal_records::numeric / n.turns, 1) AS wal_rec, round(s.wal_bytes / n.turns) AS wal_bytes,
       round((s.total_exec_time / n.turns * 1000)::numeric, 1) AS exec_us,
       round((s.total_plan_time / n.turns * 1000)::numeric, 1) AS plan_us,
       left(regexp_replace(s.query, '\s+', ' ', 'g'), 90) AS query
  FROM pg_stat_statements s, n
 WHERE s.dbid = (SELECT oid FROM pg_database WHERE datname = current_database())
   AND s.query NOT LIKE '%profile_%' AND s.calls > 0
 ORDER BY s.calls DESC, s.total_exec_time DESC;
\echo by table (per turn)
SELECT s.relname, round((s.n_tup_ins - p.n_tup_ins)::numeric / n.turns, 2) AS ins,
       round((s.n_tup_upd - p.n_tup_upd)::numeric / n.turns, 2) AS upd,
       round((s.n_tup_hot_upd - p.n_tup_hot_upd)::numeric / n.turns, 2) AS hot_upd,
       round((s.n_tup_del - p.n_tup_del)::numeric / n.turns, 2) AS del,
       round((io.heap_blks_hit + io.heap_blks_read - p.heap_blks)::numeric / n.turns, 1) AS heap_blks,
       round((io.idx_blks_hit + io.idx_blks_read - p.idx_blks)::numeric / n.turns, 1) AS idx_blks
  FROM pg_stat_user_tables s JOIN pg_statio_user_tables io USING (relid)
  JOIN profile_tables p ON p.relname = s.relname, n
 WHERE s.n_tup_ins + s.n_tup_upd + s.n_tup_del + io.heap_blks_hit + io.heap_blks_read
       > p.n_tup_ins + p.n_tup_upd + p.n_tup_del + p.heap_blks
 ORDER BY 1;
\echo by index (per turn; idx_blks: buffers read or written)
SELECT s.relname, s.indexrelname, round((s.idx_scan - p.idx_scan)::numeric / n.turns, 2) AS scans,
       round((s.idx_tup_read - p.idx_tup_read)::numeric / n.turns, 1) AS entries_read,
       round((io.idx_blks_hit + io.idx_blks_read - p.blks)::numeric / n.turns, 1) AS idx_blks
  FROM pg_stat_user_indexes s JOIN pg_statio_user_indexes io USING (indexrelid)
  JOIN profile_indexes p ON p.indexrelname = s.indexrelname, n
 WHERE io.idx_blks_hit + io.idx_blks_read > p.blks OR s.idx_scan > p.idx_scan
 ORDER BY 1, 2;
SQL
}

read -r t0 x0 r0 f0 i0 u0 b0 <<<"$(db_counters)"
# What the worker sends PostgreSQL: data segments on each of its sockets to the server, by local
# port. A PostgreSQL client writes a request whole and waits for the answer: one a round trip.
pg_sends() {
  ss -tnpi state established "( dport = :$pg_port )" 2>/dev/null | awk -v pid="pid=$worker," '
    index($0, pid) { port = $3; sub(/.*:/, "", port); next }
    port != "" { if (match($0, /data_segs_out:[0-9]+/)) print port, substr($0, RSTART + 14, RLENGTH - 14); port = "" }'
}
s0="$(pg_sends)"
if [ -n "${LOADAVG_OUT:-}" ]; then
  (while :; do echo "$(date -u +%T) $(cat /proc/loadavg)" >>"$LOADAVG_OUT"; sleep 30; done) & sampler=$!
fi
[ "$profile" = 1 ] && profile_start
# nats-server by the pid listening on NATS_PORT (default 4222; other sessions may run private
# servers of their own), or every nats-server when it cannot be told.
nats_pid="$(ss -Hltnp "sport = :$nats_port" | grep -o 'pid=[0-9]*' | head -1 | cut -d= -f2)"
if [ -n "$nats_pid" ]; then
  cpu=(--cpu-pids "edge=$edge,worker=$worker,nats-server=$nats_pid$extra_pids" --cpu-procs postgres --cpu-database-url "$DATABASE_URL")
else
  cpu=(--cpu-pids "edge=$edge,worker=$worker$extra_pids" --cpu-procs nats-server,postgres --cpu-database-url "$DATABASE_URL")
fi
# NATS_PROFILE: the server's counters (messages and bytes, by connection, JetStream API).
nats_counters() {
  local base="http://127.0.0.1:$nats_monitor"
  jq -cn --argjson varz "$(curl -sf "$base/varz")" --argjson connz "$(curl -sf "$base/connz?limit=1024")" \
    --argjson jsz "$(curl -sf "$base/jsz")" '{
      in_msgs: $varz.in_msgs, out_msgs: $varz.out_msgs, in_bytes: $varz.in_bytes, out_bytes: $varz.out_bytes,
      api: $jsz.api.total, api_errors: $jsz.api.errors, stored: $jsz.messages,
      conns: [$connz.connections[] | {key: (.name // "?"), value: {in_msgs, out_msgs, in_bytes, out_bytes}}]
        | group_by(.key) | map({key: .[0].key, value: {
            in_msgs: (map(.value.in_msgs) | add), out_msgs: (map(.value.out_msgs) | add),
            in_bytes: (map(.value.in_bytes) | add), out_bytes: (map(.value.out_bytes) | add)}}) | from_entries}'
}
nats_profile_end() {
  local before=$1 after=$2 turns=$3
  jq -rn --argjson a "$before" --argjson b "$after" --argjson n "$turns" '
    def per(x): (x * 100 / $n | round) / 100;
    "NATS per turn over the window (\($n) turns): the server",
    "  messages in \(per($b.in_msgs - $a.in_msgs)), out \(per($b.out_msgs - $a.out_msgs)); bytes in \(per($b.in_bytes - $a.in_bytes)), out \(per($b.out_bytes - $a.out_bytes)); /jsz api.total \(per($b.api - $a.api)) (errors \(per($b.api_errors - $a.api_errors)); nats-server 2.9.10 leaves message gets out of it); messages stored \(per($b.stored - $a.stored))",
    "by connection (client to server: in; server to client: out)",
    ($b.conns | to_entries[] | .key as $k | ($a.conns[$k] // {in_msgs: 0, out_msgs: 0, in_bytes: 0, out_bytes: 0}) as $p
      | "  \($k): messages in \(per(.value.in_msgs - $p.in_msgs)), out \(per(.value.out_msgs - $p.out_msgs)); bytes in \(per(.value.in_bytes - $p.in_bytes)), out \(per(.value.out_bytes - $p.out_bytes))")'
}
n0=""
[ "$nats_profile" = 1 ] && n0="$(nats_counters)"
tap=""
if [ "$nats_tap" = 1 ]; then
  python3 scripts/nats-tap.py "127.0.0.1:$nats_port" "$id" 0 "${NATS_TAP_OUT:-/tmp/$id-tap.json}" >/tmp/"$id"-tap.txt & tap=$!
  sleep 1
fi
if [ "$windows" -gt 0 ]; then
  "$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages "$messages" \
    --windows "$windows" --window-secs "$window_secs" "${cpu[@]}" "$@"
else
  "$loadgen" chat --url "http://127.0.0.1:$port" --connections "$connections" --messages "$messages" \
    "${cpu[@]}" "$@"
fi
# Acks and the last commits of the window reach the server.
sleep 1
n1=""
[ "$nats_profile" = 1 ] && n1="$(nats_counters)"
if [ -n "$tap" ]; then kill -TERM "$tap"; wait "$tap" || true; fi
s1="$(pg_sends)"
read -r t1 x1 r1 f1 i1 u1 b1 <<<"$(db_counters)"
if [ -n "$n1" ] && [ $((t1 - t0)) -gt 0 ]; then nats_profile_end "$n0" "$n1" $((t1 - t0)); fi
if [ -n "$tap" ] && [ $((t1 - t0)) -gt 0 ]; then
  echo "NATS messages by kind over the window (scripts/nats-tap.py), per turn: messages, bytes"
  awk -v n=$((t1 - t0)) '{ m = $1; b = $2; $1 = ""; $2 = ""; sub(/^  /, ""); printf "  %8.2f %9.1f  %s\n", m / n, b / n, $0 }' /tmp/"$id"-tap.txt
fi
if [ "$profile" = 1 ]; then
  if [ -n "${PG_PROFILE_OUT:-}" ]; then profile_end | tee "$PG_PROFILE_OUT"; else profile_end; fi
fi
# Sockets opened during the window count from nothing.
awk -v t=$((t1 - t0)) 'NR == FNR { before[$1] = $2; next } { sent += $2 - before[$1] }
  END { if (t > 0) printf "PostgreSQL round trips per turn (the worker'"'"'s data segments sent over the window): %.2f\n", sent / t }' \
  <(printf '%s\n' "$s0") <(printf '%s\n' "$s1")
awk -v t=$((t1 - t0)) -v x=$((x1 - x0)) -v r=$((r1 - r0)) -v f=$((f1 - f0)) -v i=$((i1 - i0)) -v u=$((u1 - u0)) -v b=$((b1 - b0)) 'BEGIN {
  if (t > 0) printf "PostgreSQL per turn (%d turns): %.2f transactions, %.1f rows returned, %.1f rows fetched, %.1f inserted, %.1f updated, %.1f buffers\n",
    t, x / t, r / t, f / t, i / t, u / t, b / t
}'
