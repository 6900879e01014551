#!/usr/bin/env bash
# The query data in .sqlx/ (committed): what sqlx's `query!`, `query_as!` and `query_scalar!`
# learned from PostgreSQL about each statement (parameter and column types, nullability). Every
# normal build reads it instead of a database (.cargo/config.toml sets SQLX_OFFLINE=true), so a
# build needs no DATABASE_URL, yet a statement that no longer fits the schema does not compile.
# Regenerate it after changing a checked statement or migrations/, and commit .sqlx/ with the
# change (docs/testing.md, "Compile-checked SQL").
#
#   scripts/sqlx-prepare.sh           regenerate .sqlx/
#   scripts/sqlx-prepare.sh --check   exit 1 if .sqlx/ is stale: a statement without data, or data
#                                     that PostgreSQL now describes differently (.ci/run runs this)
#
# Creates a scratch database on the server of TEST_POSTGRES_URL (default
# postgres://postgres@127.0.0.1:5432, no database name: as the end-to-end tests), applies
# migrations/ with sqlx's migrator (as the edge and the worker do at start-up) and the demo shop's
# tables (worker/src/demo_seed.sql, needs psql), runs
# `cargo sqlx prepare --workspace` against it (a `cargo check --all-targets` of the workspace),
# and drops the database, also on failure.
#
# Needs sqlx-cli 0.8.6, the workspace's sqlx version:
#   cargo install sqlx-cli --version 0.8.6 --locked --no-default-features --features postgres,rustls
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

check=()
case "${1:-}" in
  "") ;;
  --check) check=(--check) ;;
  *) echo "usage: scripts/sqlx-prepare.sh [--check]" >&2; exit 2 ;;
esac

log() { printf '[sqlx-prepare] %s\n' "$*" >&2; }

if ! cargo sqlx --version >/dev/null 2>&1; then
  log "sqlx-cli is not installed: cargo install sqlx-cli --version 0.8.6 --locked --no-default-features --features postgres,rustls"
  exit 1
fi

server="${TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432}"
database="sqlx_prepare_$(date +%s)_$$"
# The macros ask this database while the data is generated (SQLX_OFFLINE=false overrides the
# default of .cargo/config.toml); --no-dotenv: a developer's .env does not point elsewhere.
export DATABASE_URL="${server%/}/$database" SQLX_OFFLINE=false

drop() { cargo sqlx database drop --no-dotenv -y >/dev/null || log "could not drop the database $database"; }
trap drop EXIT

log "scratch database $database, migrations/ applied"
cargo sqlx database setup --no-dotenv --source migrations >/dev/null
# The demo shop's tools (worker/src/tools/demo.rs) read tables that no migration creates: the
# worker creates them with this script when DEMO_SEED is on.
psql "$DATABASE_URL" -q -v ON_ERROR_STOP=1 -f worker/src/demo_seed.sql >/dev/null
cargo sqlx prepare --workspace "${check[@]}" -- --all-targets
