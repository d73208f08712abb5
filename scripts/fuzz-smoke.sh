#!/usr/bin/env bash
# fuzz-smoke.sh — builds the fuzz targets (fuzz/) and runs each for a bounded
# time on its committed seed corpus; fails on any crash, leak, timeout or
# out-of-memory. New inputs go to a scratch directory, so the committed
# corpus stays as it is. Longer runs: docs/fuzzing.md.
#
#   scripts/fuzz-smoke.sh [SECONDS_PER_TARGET]   (default 20)
#
# cargo-fuzz needs nightly-only rustc flags; RUSTC_BOOTSTRAP=1 lets the
# stable toolchain accept them, so no nightly is needed.
set -euo pipefail
cd "$(dirname "$0")/../fuzz"
seconds=${1:-20}
export RUSTC_BOOTSTRAP=1

# The lock file (the workspace's, Cargo.lock at the root) is committed:
# fail rather than resolve anew.
cargo fetch --locked --quiet
time cargo fuzz build

targets=$(cargo fuzz list)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
# The FUSE target's stand-in for /dev/fuse (a temporary file) goes there.
export TMPDIR=$scratch
for target in $targets; do
  mkdir -p "$scratch/$target"
  echo "+ fuzz $target for ${seconds}s" >&2
  if ! timeout $((seconds + 120)) cargo fuzz run "$target" \
      "$scratch/$target" "corpus/$target" -- \
      -max_total_time="$seconds" -timeout=10 -rss_limit_mb=2048 \
      -print_final_stats=1 >"$scratch/$target.log" 2>&1; then
    tail -n 60 "$scratch/$target.log" >&2
    echo "fuzz-smoke: $target failed; the input is in fuzz/artifacts/$target/" >&2
    exit 1
  fi
  grep -h 'stat::number_of_executed_units\|stat::peak_rss_mb' "$scratch/$target.log" \
    | sed "s/^/$target: /" >&2
done
