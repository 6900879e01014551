#!/usr/bin/env bash
# Makes NATS (with JetStream) and PostgreSQL available on their default local ports.
#
#   scripts/services.sh start   use them where reachable; otherwise install Debian's packages when
#                               missing and start project-local servers (data under .local/)
#   scripts/services.sh stop    stop only what `start` started
#   scripts/services.sh test-deps  also make sure the nats-server binary is installed (the
#                               end-to-end tests start private servers: restarts, a cluster),
#                               and Chromium and npm for the web app's tests
#
# Used by ./dev (the quick start and the test command) and by .ci/run, so all three agree.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
LOCAL="$ROOT/.local"
NATS_PORT=4222
PG_PORT=5432
STARTED="$LOCAL/started"

log() { printf '[services] %s\n' "$*" >&2; }

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }

wait_port() {
  local port=$1 what=$2
  for _ in $(seq 1 100); do
    port_open "$port" && return 0
    sleep 0.2
  done
  log "$what did not open port $port; see $LOCAL/*.log"
  return 1
}

as_root() {
  if [ "$(id -u)" -eq 0 ]; then "$@"; elif command -v sudo >/dev/null; then sudo "$@"; else
    log "need root to run: $*"; return 1; fi
}

APT_UPDATED=0
apt_install() {
  command -v apt-get >/dev/null || { log "apt-get not found: install $* by hand"; return 1; }
  if [ "$APT_UPDATED" -eq 0 ]; then
    as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq
    APT_UPDATED=1
  fi
  log "installing Debian packages: $*"
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

start_nats() {
  if port_open "$NATS_PORT"; then
    log "NATS reachable on 127.0.0.1:$NATS_PORT"
    return
  fi
  local server
  server="$(nats_binary)"
  if [ -z "$server" ]; then
    apt_install nats-server
    server="$(command -v nats-server || echo /usr/sbin/nats-server)"
  fi
  mkdir -p "$LOCAL/nats"
  log "starting a project-local NATS with JetStream (data in .local/nats)"
  "$server" -a 127.0.0.1 -p "$NATS_PORT" -js -sd "$LOCAL/nats" \
    -P "$LOCAL/nats.pid" -l "$LOCAL/nats.log" &
  disown || true
  wait_port "$NATS_PORT" NATS
  echo nats >>"$STARTED"
}

pg_bin() {
  local found
  found="$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)"
  echo "$found"
}

# Runs a PostgreSQL server command as a non-root user (the server refuses to run as root).
as_pg_user() {
  if [ "$(id -u)" -eq 0 ]; then (cd / && runuser -u postgres -- "$@"); else "$@"; fi
}

start_postgres() {
  if port_open "$PG_PORT"; then
    log "PostgreSQL reachable on 127.0.0.1:$PG_PORT"
    return
  fi
  local bin
  bin="$(pg_bin)"
  if [ -z "$bin" ]; then
    apt_install postgresql
    bin="$(pg_bin)"
    # The package may have started its own cluster; use it if so.
    if port_open "$PG_PORT"; then
      log "PostgreSQL reachable on 127.0.0.1:$PG_PORT"
      return
    fi
  fi
  [ -n "$bin" ] || { log "PostgreSQL server binaries not found"; return 1; }
  local data="$LOCAL/pg"
  mkdir -p "$data"
  if [ "$(id -u)" -eq 0 ]; then
    chown postgres "$data"
    chmod 700 "$data"
    # The server runs as `postgres`, which may not be able to reach a checkout inside a private
    # folder (a mktemp -d, a home directory): then keep the data in a folder of its own in /tmp.
    if ! as_pg_user test -w "$data"; then
      data="/tmp/smart-support-pg-$(printf '%s' "$ROOT" | cksum | cut -d' ' -f1)"
      mkdir -p "$data"
      chown postgres "$data"
      chmod 700 "$data"
      log "postgres cannot reach $LOCAL; using $data for its data"
    fi
  fi
  echo "$data" >"$LOCAL/pg.datadir"
  if [ ! -f "$data/PG_VERSION" ]; then
    log "initialising a project-local PostgreSQL cluster in $data"
    as_pg_user "$bin/initdb" -D "$data" -U postgres --auth=trust -E UTF8 >/dev/null
  fi
  log "starting the project-local PostgreSQL (log: $data/server.log)"
  as_pg_user "$bin/pg_ctl" -D "$data" -l "$data/server.log" -w \
    -o "-p $PG_PORT -c listen_addresses=127.0.0.1 -k /tmp -c max_connections=300" start >/dev/null
  wait_port "$PG_PORT" PostgreSQL
  echo postgres >>"$STARTED"
}

stop_started() {
  [ -f "$STARTED" ] || return 0
  if grep -qx postgres "$STARTED"; then
    log "stopping the project-local PostgreSQL"
    as_pg_user "$(pg_bin)/pg_ctl" -D "$(cat "$LOCAL/pg.datadir")" -m fast stop >/dev/null || true
  fi
  if grep -qx nats "$STARTED" && [ -f "$LOCAL/nats.pid" ]; then
    log "stopping the project-local NATS"
    kill "$(cat "$LOCAL/nats.pid")" 2>/dev/null || true
  fi
  rm -f "$STARTED"
}

nats_binary() {
  command -v nats-server || { [ -x /usr/sbin/nats-server ] && echo /usr/sbin/nats-server; } || true
}

case "${1:-start}" in
  start)
    mkdir -p "$LOCAL"
    start_nats
    start_postgres
    ;;
  stop) stop_started ;;
  test-deps)
    [ -n "$(nats_binary)" ] || apt_install nats-server
    # The web app's end-to-end tests drive Debian's Chromium (Playwright cannot download one here).
    [ -x /usr/bin/chromium ] || apt_install chromium
    command -v npm >/dev/null || apt_install nodejs npm
    ;;
  *) echo "usage: $0 start|stop|test-deps" >&2; exit 2 ;;
esac
