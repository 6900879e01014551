#!/usr/bin/env bash
# Line coverage of the Rust suite (docs/testing.md, "Coverage"): the unit tests and the end-to-end
# tests, with the edge and worker binaries that the end-to-end tests start instrumented too.
#
#   scripts/coverage.sh [--unit | --e2e] [--html] [--no-clean] [FILTER]
#
#   (no option)  the whole Rust suite: every crate's unit tests, then the end-to-end tests
#   --unit       only the unit tests (shared, edge, worker, ...): a minute or two once built
#   --e2e        only the end-to-end tests (crate `e2e`)
#   --html       also write an HTML report to artifacts/coverage/html/
#   --no-clean   keep the instrumented build of the workspace's crates (by default they are
#                rebuilt, so that no stale test executable blends into the report; cargo rebuilds
#                what changed in place, so this is safe while no crate gains or loses a test target)
#   FILTER       a cargo test name filter, passed to every test binary: `handoff`, `openapi::`,
#                `turn` ... measures what those tests reach, e.g. `--e2e handoff` or `--unit openapi`
#
# Prints line coverage per crate (shared, edge, worker) and their total, and writes to
# artifacts/coverage/: lcov.info (every file, every line), summary.txt (the table below and each
# file's uncovered lines, largest first) and report.txt (llvm-cov's per-file table).
#
# How: `cargo llvm-cov show-env` gives the instrumenting rustc wrapper; with a target dir of its own
# (target/llvm-cov-target), `cargo build --bins` and `cargo test` both build there, so the test
# harness (tests/src/lib.rs, `binary()`: the folder above the test executable's deps/) starts the
# instrumented edge and worker. Each process writes its own profile (%p: its pid; %m: merged,
# not overwritten, should a later process of the same binary get the same pid) in LLVM's
# continuous mode (%c, with -runtime-counter-relocation): counters live in the mapped file, so a
# process that a test SIGKILLs (every stack is killed when its test ends) keeps what it ran.
# `cargo llvm-cov report` then merges them all.
#
# Environment: COVERAGE_TEST_THREADS (default 2) threads for the end-to-end binary (each test runs
# its own edge, worker and database; PostgreSQL's default max_connections is 100).
# Needs cargo-llvm-cov (installed from crates.io when missing) and rustup's llvm-tools-preview.
# Not part of .ci/run: the first instrumented build alone takes about a quarter of an hour on 2 cores.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"

log() { printf '[coverage] %s\n' "$*" >&2; }
usage() { sed -n '4,15p' "${BASH_SOURCE[0]}" | sed 's/^# \{0,1\}//' >&2; exit 2; }

run_unit=1
run_e2e=1
html=0
clean=1
filter=()
while [ "$#" -gt 0 ]; do
  case "$1" in
    --unit) run_e2e=0 ;;
    --e2e) run_unit=0 ;;
    --html) html=1 ;;
    --no-clean) clean=0 ;;
    -h | --help) usage ;;
    -*) log "unknown option $1"; usage ;;
    *)
      [ "${#filter[@]}" -eq 0 ] || { log "one FILTER at most"; usage; }
      filter=("$1")
      ;;
  esac
  shift
done
threads="${COVERAGE_TEST_THREADS:-2}"
case "$threads" in '' | *[!0-9]* | 0) log "COVERAGE_TEST_THREADS must be a positive number"; exit 2 ;; esac

command -v cargo >/dev/null || { log "cargo not found: install Rust with rustup first"; exit 1; }
if command -v rustup >/dev/null; then
  rustup component list --installed 2>/dev/null | grep -q '^llvm-tools' \
    || rustup component add llvm-tools-preview
fi
command -v cargo-llvm-cov >/dev/null || cargo install cargo-llvm-cov --locked

out="$ROOT/artifacts/coverage"
mkdir -p "$out"
started=$SECONDS

# The instrumenting environment: a rustc wrapper that instruments the workspace's crates (not
# the dependencies), in a target dir of its own, and the variables `cargo llvm-cov report` reads.
export CARGO_TARGET_DIR="$ROOT/target/llvm-cov-target"
eval "$(cargo llvm-cov show-env --sh)"
target="$CARGO_LLVM_COV_TARGET_DIR"
# Continuous mode: a killed process's counters are already in its file (see the header). The flag
# matters only where the wrapper instruments; elsewhere LLVM ignores it.
export RUSTFLAGS="${RUSTFLAGS:+$RUSTFLAGS }-Cllvm-args=-runtime-counter-relocation"
export LLVM_PROFILE_FILE="$target/smart-support-%p-%m%c.profraw"
# Keep the processes' logs quiet: the harness reads them, nobody else does.
unset TEST_LOG

# Profiles of an earlier run would blend in, and so would test executables built from older
# sources (the report reads every executable in the target dir): the workspace's crates are
# rebuilt, as `cargo llvm-cov` itself does, unless --no-clean.
[ "$clean" -eq 0 ] || cargo llvm-cov clean --workspace
[ ! -d "$target" ] || find "$target" -maxdepth 1 -name '*.profraw' -delete

scripts/services.sh start
[ "$run_e2e" -eq 0 ] || scripts/services.sh test-deps

status=0
log "building the instrumented binaries (edge, worker) in $target"
cargo build --locked --workspace --bins
if [ "$run_unit" -eq 1 ]; then
  log "unit tests${filter:+ matching '${filter[*]}'}"
  # Libraries, binaries and integration-test targets; doctests would need nightly to instrument.
  cargo test --locked --workspace --exclude e2e --lib --bins --tests -- "${filter[@]}" || status=$?
fi
if [ "$run_e2e" -eq 1 ]; then
  log "end-to-end tests${filter:+ matching '${filter[*]}'}, $threads at a time"
  cargo test --locked -p e2e --lib --tests -- --test-threads="$threads" "${filter[@]}" || status=$?
fi

log "merging $(find "$target" -maxdepth 1 -name '*.profraw' | wc -l) process profiles"
# Only the product crates count: the test harness (tests/) and the load generator (bench/) are
# not what the suite measures.
ignore='(^|/)(tests|bench|fuzz)/|/\.cargo/registry/|/rustc/'
cargo llvm-cov report --ignore-filename-regex "$ignore" >"$out/report.txt"
cargo llvm-cov report --ignore-filename-regex "$ignore" --lcov --output-path "$out/lcov.info"
[ "$html" -eq 0 ] || cargo llvm-cov report --ignore-filename-regex "$ignore" --html --output-dir "$out"

: >"$out/files.tmp"
# Per crate from lcov (LF: lines instrumented, LH: lines run), and each file's uncovered lines.
awk -v root="$ROOT/" -v files="$out/files.tmp" '
  /^SF:/ { file = substr($0, 4); sub("^" root, "", file); crate = file; sub("/.*", "", crate) }
  /^LF:/ { lf = substr($0, 4) + 0; found[crate] += lf }
  /^LH:/ { lh = substr($0, 4) + 0; hit[crate] += lh
           if (lf > lh) printf "%6d of %6d lines uncovered (%s)  %s\n", lf - lh, lf, pct(lh, lf), file > files }
  function pct(h, f) { return f ? sprintf("%.1f%%", 100 * h / f) : "-" }
  END {
    printf "%-8s %8s %8s %8s\n", "crate", "lines", "missed", "cover"
    n = split("shared edge worker", crates, " ")
    for (i = 1; i <= n; i++) {
      c = crates[i]
      printf "%-8s %8d %8d %8s\n", c, found[c], found[c] - hit[c], pct(hit[c], found[c])
      all_found += found[c]; all_hit += hit[c]
    }
    printf "%-8s %8d %8d %8s\n", "total", all_found, all_found - all_hit, pct(all_hit, all_found)
  }' "$out/lcov.info" >"$out/summary.txt"

# Uncovered regions: runs of instrumented lines that never ran (unrun lines in a row, lines without
# code between them do not break a run), with the function the run starts in.
awk -v root="$ROOT/" '
  function flush() {
    if (run > 0) {
      name = "?"; best = 0
      for (i = 1; i <= nfn; i++) if (fnline[i] <= first && fnline[i] >= best) { best = fnline[i]; name = fnname[i] }
      printf "%6d lines  %s:%d-%d  %s\n", run, file, first, last, name
    }
    run = 0
  }
  /^SF:/ { file = substr($0, 4); sub("^" root, "", file); nfn = 0; run = 0 }
  /^FN:/ { rest = substr($0, 4); comma = index(rest, ","); nfn++
           fnline[nfn] = substr(rest, 1, comma - 1) + 0; fnname[nfn] = substr(rest, comma + 1) }
  /^DA:/ { split(substr($0, 4), da, ",")
           if (da[2] + 0 == 0) { if (run == 0) first = da[1] + 0; run++; last = da[1] + 0 } else flush() }
  /^end_of_record/ { flush() }' "$out/lcov.info" | sort -rn |
  # Rust symbol names, demangled where binutils' c++filt is at hand, without their crate hashes.
  { if command -v c++filt >/dev/null; then c++filt; else cat; fi; } |
  sed -E 's/\[[0-9a-f]{16}\]//g' | cut -c1-170 >"$out/regions.tmp"

elapsed=$((SECONDS - started))
what="whole Rust suite"
[ "$run_e2e" -eq 1 ] || what="unit tests"
[ "$run_unit" -eq 1 ] || what="end-to-end tests"
{
  echo
  echo "$what${filter:+ matching '${filter[*]}'}; took $((elapsed / 60)) min $((elapsed % 60)) s;" \
    "tests $([ "$status" -eq 0 ] && echo passed || echo "FAILED (exit $status)")"
  echo
  echo "uncovered lines per file, largest first:"
  sort -rn "$out/files.tmp"
  echo
  echo "largest uncovered regions (unrun lines in a row), the first 40:"
  head -n 40 "$out/regions.tmp"
} >>"$out/summary.txt"
rm -f "$out/files.tmp" "$out/regions.tmp"

sed -n '1,/^$/p' "$out/summary.txt"
log "took $((elapsed / 60)) min $((elapsed % 60)) s; files in ${out#"$ROOT"/}: summary.txt, lcov.info, report.txt$([ "$html" -eq 0 ] || echo ', html/')"
[ "$status" -eq 0 ] || log "some tests failed (exit $status): the figures cover what ran"
exit "$status"
