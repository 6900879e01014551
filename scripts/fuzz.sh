#!/usr/bin/env bash
# Runs the cargo-fuzz targets in fuzz/ (docs/fuzzing.md), one after the other, each for
# SECONDS_PER_TARGET seconds (default 20), and fails if any of them finds a crash, a timeout or a
# memory blow-up, naming the input it saved under fuzz/artifacts/<target>/.
#
#   scripts/fuzz.sh [SECONDS_PER_TARGET] [TARGET...]
#
# Each target starts from its seeds in fuzz/corpus/<target>/ but fuzzes into a scratch copy, so
# the committed corpus is never written to. Set FUZZ_WORK=DIR to keep the grown corpora and logs
# in DIR (default: a temporary folder, removed at the end). FUZZ_TARGET_DIR=DIR builds there
# instead of fuzz/target (e.g. a cache that outlives a fresh clone).
#
# Needs the nightly toolchain (cargo-fuzz instruments with unstable rustc flags) and cargo-fuzz,
# which it installs from crates.io when missing. Without nightly it stops with an error, or,
# with FUZZ_OPTIONAL=1 (as in .ci/run), says so and exits 0.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

SECONDS_PER_TARGET="${1:-20}"
shift || true
ALL_TARGETS=(client_frame bus_bundle openapi_import retained_frames)
TARGETS=("$@")
[ "${#TARGETS[@]}" -gt 0 ] || TARGETS=("${ALL_TARGETS[@]}")

log() { printf '[fuzz] %s\n' "$*" >&2; }

case "$SECONDS_PER_TARGET" in
  '' | *[!0-9]*) log "SECONDS_PER_TARGET must be a whole number of seconds, not '$SECONDS_PER_TARGET'"; exit 2 ;;
esac

# The largest input each target is given: past each parser's own limit, no further than needed.
max_len() {
  case "$1" in
    client_frame) echo 36000 ;;   # MAX_FRAME_BYTES (32 KiB) + room to cross it
    bus_bundle) echo 16384 ;;     # a bundle of up to 64 frames
    openapi_import) echo 65536 ;; # small documents: the limits bite on expansion, not on size
    retained_frames) echo 8192 ;;
    *) echo 4096 ;;
  esac
}

if ! command -v rustup >/dev/null || ! rustup toolchain list | grep -q '^nightly'; then
  message="the nightly Rust toolchain is not installed: cargo fuzz needs it (rustup toolchain install nightly)"
  if [ "${FUZZ_OPTIONAL:-0}" = 1 ]; then
    log "SKIPPED: $message"
    exit 0
  fi
  log "$message"
  exit 1
fi
if ! cargo fuzz --version >/dev/null 2>&1; then
  log "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi

for target in "${TARGETS[@]}"; do
  [ -d "fuzz/corpus/$target" ] || { log "unknown target '$target' (known: ${ALL_TARGETS[*]})"; exit 2; }
done

log "building ${TARGETS[*]} (nightly, fuzz/target)"
BUILD=()
[ -z "${FUZZ_TARGET_DIR:-}" ] || BUILD=(--target-dir "$FUZZ_TARGET_DIR")
# `cargo fuzz build` takes one target or all of them; build what was asked for, and stop on failure.
if [ "${#TARGETS[@]}" -eq "${#ALL_TARGETS[@]}" ]; then
  cargo +nightly fuzz build "${BUILD[@]}"
else
  for target in "${TARGETS[@]}"; do cargo +nightly fuzz build "${BUILD[@]}" "$target"; done
fi

if [ -n "${FUZZ_WORK:-}" ]; then
  WORK="$FUZZ_WORK"
  mkdir -p "$WORK"
else
  WORK="$(mktemp -d)"
  trap 'rm -rf "$WORK"' EXIT
fi

failed=()
for target in "${TARGETS[@]}"; do
  corpus="$WORK/corpus/$target"
  artifacts="$ROOT/fuzz/artifacts/$target"
  mkdir -p "$corpus" "$artifacts"
  cp -n "fuzz/corpus/$target/"* "$corpus/" 2>/dev/null || true
  run_log="$WORK/$target.log"
  log "$target: ${SECONDS_PER_TARGET}s, max_len $(max_len "$target"), log $run_log"
  set +e
  cargo +nightly fuzz run "${BUILD[@]}" "$target" "$corpus" -- \
    -max_total_time="$SECONDS_PER_TARGET" \
    -rss_limit_mb=2048 \
    -malloc_limit_mb=2048 \
    -timeout=30 \
    -max_len="$(max_len "$target")" \
    -artifact_prefix="$artifacts/" \
    -print_final_stats=1 >"$run_log" 2>&1
  status=$?
  set -e
  runs="$(grep -E '^stat::number_of_executed_units' "$run_log" | awk '{print $2}' | tail -n 1)"
  if [ "$status" -ne 0 ]; then
    failed+=("$target")
    tail -n 40 "$run_log" >&2
    written="$(grep -Eo 'Test unit written to [^ ]+' "$run_log" | awk '{print $5}' || true)"
    log "FAILED: $target (exit $status) after ${runs:-?} runs; input: ${written:-see $run_log}"
    log "reproduce: cargo +nightly fuzz run $target ${written:-<artifact>}"
  else
    log "ok: $target, ${runs:-?} runs in ${SECONDS_PER_TARGET}s, corpus $(ls "$corpus" | wc -l) inputs"
  fi
done

if [ "${#failed[@]}" -gt 0 ]; then
  log "crashes in: ${failed[*]} (inputs under fuzz/artifacts/)"
  exit 1
fi
log "no crash in ${TARGETS[*]}"
