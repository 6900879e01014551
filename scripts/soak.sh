#!/usr/bin/env bash
# Soak: a long run at half the measured maximum turn rate, with approvals, socket drops and
# resumes (cancels with SOAK_CANCELS=1) and a worker restart every few minutes. Samples the resident
# memory and open file descriptors of every process (the edge, each worker, a private nats-server,
# the PostgreSQL backends of the soak's database, summed) into a CSV, and fails if a turn was lost
# or duplicated (`loadgen soak` checks the wire and the `turns` table).
#
#   scripts/soak.sh                      30 minutes; the maximum is measured first
#   SOAK_SECS=300 RATE=80 scripts/soak.sh
#
# Settings (environment):
#   SOAK_SECS (1800)          how long messages are sent
#   RATE                      new messages per second; unset: half of what `loadgen chat` reaches
#                             (SOAK_MAX_CONNECTIONS=50 × SOAK_MAX_MESSAGES=20) on this stack first
#   SOAK_RESTART_SECS (180)   a worker restart every so often (worker 1, worker 2, alternately;
#                             SIGTERM twice, then SIGKILL twice, …); 0 = none
#   SOAK_SAMPLE_SECS (10)     sampling period
#   SOAK_CLIENTS (64)         virtual users (sockets)
#   SOAK_CANCELS (0)          1 = also send `cancel` frames (SPEC §8; needs an edge and workers
#                             that implement it)
#   SOAK_WARM_FROM/SOAK_WARM_TO (180/300), SOAK_TAIL_SECS (120)
#                             growth = mean of the last SOAK_TAIL_SECS against the mean of
#                             [SOAK_WARM_FROM, SOAK_WARM_TO); for runs under 20 minutes they
#                             default to [1/6, 1/3) of the run and its last sixth
#   SOAK_TABLE_SECS (300)     rows of the over-time table
#   SOAK_LOADGEN_ARGS         more `loadgen soak` options (e.g. "--approval-share 0.3")
#   SCRIPTED_TOKEN_DELAY_MS (0), SCRIPTED_REPLY_TOKENS (20)
#   BIN_DIR (target/release)  where edge, worker and loadgen are; SKIP_BUILD=1 skips the build
#
# Writes artifacts/soak/<UTC time>/: samples.csv (elapsed_s, process, pid, procs, rss_kib,
# anon_kib, fds), restarts.csv, loadgen.json, summary.md, the processes' logs. Exits non-zero if
# a turn was lost or duplicated (or a frame duplicated or skipped).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

secs="${SOAK_SECS:-1800}"
restart_secs="${SOAK_RESTART_SECS:-180}"
sample_secs="${SOAK_SAMPLE_SECS:-10}"
clients="${SOAK_CLIENTS:-64}"
cancels="${SOAK_CANCELS:-0}"
table_secs="${SOAK_TABLE_SECS:-300}"
if [ "$secs" -ge 1200 ]; then
  warm_from="${SOAK_WARM_FROM:-180}" warm_to="${SOAK_WARM_TO:-300}" tail_secs="${SOAK_TAIL_SECS:-120}"
else
  warm_from="${SOAK_WARM_FROM:-$((secs / 6))}" warm_to="${SOAK_WARM_TO:-$((secs / 3))}"
  tail_secs="${SOAK_TAIL_SECS:-$((secs / 6))}"
fi
bin="${BIN_DIR:-target/release}"
run="$(date -u +%Y%m%dT%H%M%SZ)"
out="artifacts/soak/$run"
mkdir -p "$out/pids"
log() { printf '[soak] %s\n' "$*" | tee -a "$out/soak.log" >&2; }

scripts/services.sh start
if [ "${SKIP_BUILD:-0}" != 1 ]; then
  cargo build --release --locked -p edge -p worker -p loadgen
fi
nats_server="$(command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true)"
[ -n "$nats_server" ] || { log "nats-server not found (scripts/services.sh test-deps installs it)"; exit 2; }

# A private NATS, so its memory is the soak's alone; the soak's own database.
nats_port="${SOAK_NATS_PORT:-14222}"
nats_dir="$(mktemp -d /tmp/soak-nats.XXXXXX)"
db="soak$(date +%s)$$"
edge_port="${SOAK_EDGE_PORT:-18280}"
url="http://127.0.0.1:$edge_port"
export NATS_URL="nats://127.0.0.1:$nats_port" NATS_PREFIX=soak
export DATABASE_URL="postgres://postgres@127.0.0.1:5432/$db" DATABASE_MAX_CONNECTIONS="${SOAK_DB_CONNECTIONS:-8}"
export AUTH_SECRET=soak-secret-soak-secret-soak-secret-soak LOG_FORMAT=json RUST_LOG="${RUST_LOG:-warn}"
export SEED_DEMO_DATA=true
export SCRIPTED_REPLY_TOKENS="${SCRIPTED_REPLY_TOKENS:-20}" SCRIPTED_TOKEN_DELAY_MS="${SCRIPTED_TOKEN_DELAY_MS:-0}"
export THREADS_PER_MINUTE=0 RATE_LIMIT_MESSAGES=1000000 MESSAGES_PER_ADDR_PER_MINUTE=0
export WS_MAX_SOCKETS_PER_ADDR=1000000 RESUMES_PER_MINUTE=0
export EDGE_ADDR="127.0.0.1:$edge_port"

pid_of() { cat "$out/pids/$1" 2>/dev/null || true; }
# Gone: no such process, or a zombie waiting to be reaped.
gone() { [ ! -e "/proc/$1" ] || [ "$(awk '{ print $3 }' "/proc/$1/stat" 2>/dev/null)" = Z ]; }

start_worker() {
  local i=$1
  METRICS_ADDR="127.0.0.1:$((19290 + i))" "$bin/worker" >>"$out/worker$i.log" 2>&1 &
  echo $! >"$out/pids/worker$i"
}
worker_ready() { curl -sf "http://127.0.0.1:$((19290 + $1))/readyz" >/dev/null 2>&1; }

sampler_pid="" restarter_pid=""
cleanup() {
  set +e
  for p in $sampler_pid $restarter_pid; do kill "$p" 2>/dev/null; done
  # Workers and the edge first, while NATS is still there to take back their unfinished work;
  # whatever has not gone after 30 s is killed. Then NATS.
  for role in worker1 worker2 edge; do
    p="$(pid_of "$role")"
    [ -n "$p" ] && kill "$p" 2>/dev/null
  done
  for role in worker1 worker2 edge; do
    p="$(pid_of "$role")"
    [ -n "$p" ] || continue
    for _ in $(seq 1 300); do gone "$p" && break; sleep 0.1; done
    gone "$p" || { echo "[soak] $role ($p) still running 30 s after SIGTERM: killed" >&2; kill -9 "$p" 2>/dev/null; }
  done
  p="$(pid_of nats)"
  [ -n "$p" ] && kill "$p" 2>/dev/null
  wait 2>/dev/null
  if [ "${SOAK_KEEP_DB:-0}" != 1 ]; then
    psql -q -h 127.0.0.1 -U postgres -c "DROP DATABASE IF EXISTS \"$db\" WITH (FORCE)" postgres >/dev/null 2>&1
  fi
  rm -rf "$nats_dir"
}
trap cleanup EXIT

"$nats_server" -a 127.0.0.1 -p "$nats_port" -js -sd "$nats_dir" -l "$out/nats.log" &
echo $! >"$out/pids/nats"
for _ in $(seq 1 100); do (exec 3<>"/dev/tcp/127.0.0.1/$nats_port") 2>/dev/null && break; sleep 0.2; done
"$bin/edge" >"$out/edge.log" 2>&1 &
echo $! >"$out/pids/edge"
for _ in $(seq 1 150); do (exec 3<>"/dev/tcp/127.0.0.1/$edge_port") 2>/dev/null && break; sleep 0.2; done
start_worker 1
start_worker 2
for i in 1 2; do
  for _ in $(seq 1 150); do worker_ready "$i" && break; sleep 0.2; done
  worker_ready "$i" || { log "worker $i is not ready; see $out/worker$i.log"; exit 2; }
done
log "stack up: edge $(pid_of edge), workers $(pid_of worker1) $(pid_of worker2), nats $(pid_of nats), database $db"

# The maximum: a short closed-loop run (each connection sends back to back) on this stack.
if [ -z "${RATE:-}" ]; then
  "$bin/loadgen" chat --url "$url" --connections "${SOAK_MAX_CONNECTIONS:-50}" \
    --messages "${SOAK_MAX_MESSAGES:-20}" >"$out/max.txt"
  max="$(grep -o '"turns_per_sec":[0-9.eE+-]*' "$out/max.txt" | head -n 1 | cut -d: -f2)"
  rate="$(awk -v m="$max" 'BEGIN { printf "%.1f", m / 2 }')"
  log "measured maximum: $max turns/s; soak rate: $rate messages/s"
else
  max="not measured, RATE given" rate="$RATE"
  log "soak rate: $rate messages/s (RATE)"
fi

sample() {
  local t=$1 role p rss anon fds pgpids n srss sanon sfds
  for role in edge worker1 worker2 nats; do
    p="$(pid_of "$role")"
    { [ -n "$p" ] && ! gone "$p"; } || continue
    read -r rss anon < <(awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } END { print r + 0, a + 0 }' "/proc/$p/status" 2>/dev/null || echo "0 0")
    fds="$(ls "/proc/$p/fd" 2>/dev/null | wc -l)"
    echo "$t,$role,$p,1,$rss,$anon,$fds"
  done
  # The backends of the soak's database, by their process title ("postgres: [CLUSTER: ]USER DB
  # HOST(PORT) …"): no connection needed, so a server with every connection taken cannot hide them.
  pgpids="$(ps -eo pid=,args= | awk -v db="$db" '$2 == "postgres:" && index($0 " ", " " db " ") { print $1 }')"
  n=0 srss=0 sanon=0 sfds=0
  for p in $pgpids; do
    [ -e "/proc/$p/status" ] || continue
    read -r rss anon < <(awk '/^VmRSS:/ { r = $2 } /^RssAnon:/ { a = $2 } END { print r + 0, a + 0 }' "/proc/$p/status" 2>/dev/null || echo "0 0")
    fds="$(ls "/proc/$p/fd" 2>/dev/null | wc -l)"
    n=$((n + 1)) srss=$((srss + rss)) sanon=$((sanon + anon)) sfds=$((sfds + fds))
  done
  echo "$t,postgres,,$n,$srss,$sanon,$sfds"
}

sampler() {
  # A process that exits between two reads (a restarted worker, its backends) must not end the
  # sampling: no errexit or pipefail here.
  set +e +o pipefail
  local next=0 t
  while :; do
    t=$(($(date +%s) - t0))
    sample "$t" >>"$out/samples.csv"
    next=$((next + sample_secs))
    t=$(($(date +%s) - t0))
    [ "$next" -gt "$t" ] && sleep $((next - t))
  done
}

restarter() {
  set +e +o pipefail
  local k=0 i sig p t
  while sleep "$restart_secs"; do
    t=$(($(date +%s) - t0))
    # Not in the last half-minute: the run then only drains.
    [ $((t + 30)) -lt "$secs" ] || break
    i=$((k % 2 + 1))
    sig=TERM
    [ $(((k / 2) % 2)) -eq 1 ] && sig=KILL
    p="$(pid_of "worker$i")"
    kill "-$sig" "$p" 2>/dev/null || true
    for _ in $(seq 1 300); do gone "$p" && break; sleep 0.1; done
    local stopped=$(($(date +%s) - t0))
    start_worker "$i"
    for _ in $(seq 1 150); do worker_ready "$i" && break; sleep 0.2; done
    echo "$t,worker$i,$p,$sig,$stopped,$(($(date +%s) - t0)),$(pid_of "worker$i")" >>"$out/restarts.csv"
    echo "[soak] t=${t}s: SIG$sig worker $i ($p); restarted as $(pid_of "worker$i")" >&2
    k=$((k + 1))
  done
}

echo "elapsed_s,process,pid,procs,rss_kib,anon_kib,fds" >"$out/samples.csv"
echo "elapsed_s,process,old_pid,signal,gone_s,ready_s,new_pid" >"$out/restarts.csv"
t0=$(date +%s)
sampler & sampler_pid=$!
if [ "$restart_secs" -gt 0 ]; then restarter & restarter_pid=$!; fi

cancel_flag=()
[ "$cancels" = 1 ] && cancel_flag=(--cancels)
log "soak: $secs s at $rate messages/s, $clients clients, restarts every $restart_secs s, cancels $([ "$cancels" = 1 ] && echo on || echo off)"
set +e
# shellcheck disable=SC2086
"$bin/loadgen" soak --url "$url" --rate "$rate" --secs "$secs" --clients "$clients" \
  --database-url "$DATABASE_URL" --json-out "$out/loadgen.json" "${cancel_flag[@]}" \
  ${SOAK_LOADGEN_ARGS:-} >"$out/loadgen.out" 2> >(tee -a "$out/loadgen.err" >&2)
status=$?
set -e
kill "$sampler_pid" "$restarter_pid" 2>/dev/null || true
sampler_pid="" restarter_pid=""
[ -s "$out/loadgen.json" ] || { log "loadgen soak wrote no summary (exit $status); see $out/loadgen.err"; exit 1; }

# The figures, as markdown.
json="$(cat "$out/loadgen.json")"
jget() { grep -o "\"$1\":[^,}]*" <<<"$json" | head -n 1 | cut -d: -f2; }
{
  echo "Soak $run: $(git rev-parse --short HEAD 2>/dev/null || echo '?'), $(nproc) cores; $secs s at $rate messages/s (measured maximum: $max$([ -z "${RATE:-}" ] && echo " turns/s")), $clients clients, 2 workers, restart every $restart_secs s, cancels $([ "$cancels" = 1 ] && echo on || echo off), scripted model ($SCRIPTED_REPLY_TOKENS tokens, $SCRIPTED_TOKEN_DELAY_MS ms/token)."
  echo
  echo "Turns: sent $(jget messages_sent), accepted $(jget messages_accepted), completed $(jget completed) (cancelled $(jget completed_cancelled)), failed $(jget failed), **lost $(jget lost)**, **duplicated $(jget duplicated_turns)**; duplicate frames $(jget duplicate_frames), seq gaps $(jget seq_gaps); achieved $(jget rate_achieved) messages/s."
  echo "Approvals $(jget approvals) (approved $(jget approved), rejected $(jget rejected)); socket drops $(jget drops), server closes $(jget server_closes), resumes $(jget resumes), messages re-sent $(jget resends), turn resets $(jget turn_resets), threads $(jget threads)."
  if [ "$cancels" = 1 ]; then
    echo "Cancels: sent $(jget cancels_sent), accepted $(jget cancels_accepted), refused $(jget cancel_errors); turns that ended cancelled $(jget completed_cancelled)."
  fi
  echo "PostgreSQL \`turns\`: $(jget rows) rows for $(jget expected) accepted messages and answers: lost $(grep -o '"db":{[^}]*' <<<"$json" | grep -o '"lost":[0-9]*' | cut -d: -f2), duplicated $(grep -o '"db":{[^}]*' <<<"$json" | grep -o '"duplicated":[0-9]*' | cut -d: -f2), unexpected $(jget unexpected), dead-lettered $(jget dead_lettered)."
  echo "Plain turns' latency (ms) p50 / p90 / p99 / max: $(grep -o '"turn_ms":{[^}]*}' <<<"$json" | grep -o ':[0-9][0-9.]*' | tr -d : | paste -sd/ | sed 's|/| / |g')."
  echo
  echo "Restarts (elapsed s, worker, signal, back ready at s):"
  echo
  awk -F, 'NR > 1 { printf "%s%s %s SIG%s → %s", sep, $1, $2, $4, $6; sep = "; " } END { print "" }' "$out/restarts.csv"
  echo
  awk -F, -v wf="$warm_from" -v wt="$warm_to" -v tail="$tail_secs" -v end="$secs" -v bucket="$table_secs" '
    NR == 1 { next }
    {
      t = $1; p = $2; rss = $5 / 1024; anon = $6 / 1024; fd = $7
      if (!(p in seen)) { seen[p] = 1; order[++n] = p }
      b = int(t / bucket); if (t >= end) b = int((end - 1) / bucket)
      if (t < end) { bs[p, b] += rss; bf[p, b] += fd; bc[p, b]++; if (b > maxb) maxb = b }
      if (t >= wf && t < wt) { ws[p] += rss; wa[p] += anon; wfd[p] += fd; wc[p]++ }
      if (t >= end - tail && t < end) { es[p] += rss; ea[p] += anon; efd[p] += fd; ec[p]++ }
    }
    END {
      printf "RSS MiB / open FDs, mean per %d s:\n\n| minutes |", bucket
      for (i = 1; i <= n; i++) printf " %s |", order[i]
      printf "\n|---|"; for (i = 1; i <= n; i++) printf "---|"; printf "\n"
      for (b = 0; b <= maxb; b++) {
        printf "| %g–%g |", b * bucket / 60, (b + 1) * bucket / 60
        for (i = 1; i <= n; i++) { p = order[i]
          if (bc[p, b]) printf " %.1f / %.0f |", bs[p, b] / bc[p, b], bf[p, b] / bc[p, b]; else printf " – |" }
        printf "\n"
      }
      printf "\nGrowth after warm-up: mean of %g–%g min against the last %g min (%g–%g min):\n\n", wf / 60, wt / 60, tail / 60, (end - tail) / 60, end / 60
      print "| process | RSS MiB warm | RSS MiB end | RSS growth | anon MiB warm | anon MiB end | anon growth | FDs warm | FDs end | FD growth |"
      print "|---|---|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= n; i++) { p = order[i]
        if (!wc[p] || !ec[p]) { printf "| %s | – | – | – | – | – | – | – | – | – |\n", p; continue }
        a = ws[p] / wc[p]; z = es[p] / ec[p]; aa = wa[p] / wc[p]; az = ea[p] / ec[p]
        fa = wfd[p] / wc[p]; fz = efd[p] / ec[p]
        printf "| %s | %.1f | %.1f | %+.1f%% | %.1f | %.1f | %+.1f%% | %.1f | %.1f | %+.1f |\n", p, a, z, (a > 0 ? (z - a) / a * 100 : 0), aa, az, (aa > 0 ? (az - aa) / aa * 100 : 0), fa, fz, fz - fa
      }
      print ""
      print "(anon: RssAnon, private memory. A PostgreSQL backend'"'"'s RSS also counts the shared buffers it has touched, so the backends'"'"' summed RSS grows as they touch more of them; their private memory is the anon column.)"
    }' "$out/samples.csv"
  echo
  echo "Workers by incarnation (a restart starts a new one): RSS MiB at its first and last sample, peak, FDs first/last:"
  echo
  echo "| worker | pid | from s | to s | RSS first | RSS last | RSS peak | FDs first / last |"
  echo "|---|---|---|---|---|---|---|---|"
  awk -F, 'NR > 1 && $2 ~ /^worker/ {
      k = $2 " " $3
      if (!(k in first)) { first[k] = $5; ff[k] = $7; from[k] = $1; order[++n] = k }
      last[k] = $5; fl[k] = $7; to[k] = $1; if ($5 > peak[k]) peak[k] = $5
    }
    END { for (i = 1; i <= n; i++) { k = order[i]; split(k, w, " ")
      printf "| %s | %s | %d | %d | %.1f | %.1f | %.1f | %d / %d |\n", w[1], w[2], from[k], to[k], first[k] / 1024, last[k] / 1024, peak[k] / 1024, ff[k], fl[k] } }' \
    "$out/samples.csv" | sort -t'|' -k2,2 -k4,4n
} >"$out/summary.md"
cat "$out/summary.md"
log "artifacts: $out"
if [ "$status" -ne 0 ]; then
  log "FAILED: loadgen soak exited $status (lost or duplicated turns, or duplicate frames or gaps; see $out/loadgen.json)"
  exit 1
fi
log "no turn lost or duplicated"
