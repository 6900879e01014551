#!/usr/bin/env bash
# The web app's protocol types, web/src/generated/protocol.ts, generated from the Rust protocol
# types (shared/src/protocol/frames.rs, shared/src/ids.rs) and the timeline's event type
# (shared/src/timeline.rs) by ts-rs, inside shared's unit tests
# (shared/src/protocol/typescript.rs): ts-rs is a dev-dependency, so normal builds never compile it.
#
#   scripts/gen-ts.sh           regenerate the file (commit it with the Rust change)
#   scripts/gen-ts.sh --check   regenerate into a temporary file and diff: exit 1 if the committed
#                               file is stale (.ci/run runs this)
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
FILE="web/src/generated/protocol.ts"

check=false
case "${1:-}" in
  "") ;;
  --check) check=true ;;
  *) echo "usage: scripts/gen-ts.sh [--check]" >&2; exit 2 ;;
esac

out="$(mktemp)"
trap 'rm -f "$out"' EXIT
# --locked: the lock file must already hold ts-rs (as in CI).
PROTOCOL_TS_OUT="$out" cargo test --locked --quiet --manifest-path "$ROOT/Cargo.toml" -p shared --lib \
  -- --exact protocol::typescript::bindings_are_current >/dev/null

if $check; then
  if ! diff -u "$ROOT/$FILE" "$out"; then
    echo "gen-ts: $FILE is stale: the Rust protocol types generate the text above (+)." >&2
    echo "gen-ts: run scripts/gen-ts.sh and commit $FILE." >&2
    exit 1
  fi
  echo "gen-ts: $FILE is current"
else
  mkdir -p "$(dirname "$ROOT/$FILE")"
  cp "$out" "$ROOT/$FILE"
  echo "gen-ts: wrote $FILE"
fi
