#!/usr/bin/env bash
# Runs every fuzz target (`cargo fuzz list`) for SECONDS each, one after another, from its
# seed corpus in fuzz/corpus/<target> (read only: new inputs go to a scratch directory),
# and prints one line per target: executions, seconds, and whether it crashed. A crash
# leaves its input in fuzz/artifacts/<target>/ and makes the script fail.
#
#   bash fuzz/run-all.sh [SECONDS] [TARGET…]      (default 15 s, every target)
#
# Needs a nightly toolchain and cargo-fuzz. Built without a sanitizer (`-s none`): the
# workspace forbids `unsafe`, so AddressSanitizer would find nothing Rust's own checks do
# not; debug assertions and overflow checks stay on, as `cargo fuzz` builds by default.
set -uo pipefail
unset CARGO_TARGET_DIR  # cargo fuzz finds its binaries under fuzz/target
cd "$(dirname "$0")"
seconds=${1:-15}
shift || true
targets=("$@")
if [ ${#targets[@]} -eq 0 ]; then
  mapfile -t targets < <(cargo +nightly fuzz list)
fi
# FUZZ_NO_BUILD=1 uses the binaries already built (for runs side by side).
if [ -z "${FUZZ_NO_BUILD:-}" ]; then
  cargo +nightly fuzz build -s none || exit 1
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
failed=0
printf '%-18s %12s %8s  %s\n' target executions seconds result
for t in "${targets[@]}"; do
  mkdir -p "$scratch/$t" "artifacts/$t"
  log="$scratch/$t.log"
  # The binary itself: `cargo fuzz run` would check the build again for every target.
  "target/x86_64-unknown-linux-gnu/release/$t" "$scratch/$t" "corpus/$t" \
    -artifact_prefix="artifacts/$t/" -max_total_time="$seconds" -timeout=20 \
    -rss_limit_mb=4096 -print_final_stats=1 >"$log" 2>&1
  rc=$?
  runs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' | tail -1)
  took=$(grep -o 'Done [0-9]* runs in [0-9]* second' "$log" | grep -o 'in [0-9]*' | grep -o '[0-9]*' | tail -1)
  if [ $rc -eq 0 ]; then
    result="no crash"
  else
    result="CRASH (exit $rc): see fuzz/artifacts/$t/"
    failed=1
    grep -E 'panicked|ERROR|SUMMARY' "$log" | head -5
  fi
  printf '%-18s %12s %8s  %s\n' "$t" "${runs:-?}" "${took:-$seconds}" "$result"
done
exit $failed
