#!/usr/bin/env bash
# A short fuzzing pass for CI: builds the targets once, then runs each for FUZZ_SECONDS (default 25)
# from its committed seeds; any crash, timeout or out-of-memory fails the script (the input is left in
# tests/fuzz/artifacts/<target>/). Needs a nightly toolchain and cargo-fuzz:
#   rustup toolchain install nightly && cargo install cargo-fuzz --locked
set -euo pipefail
cd "$(dirname "$0")/../.."

seconds=${FUZZ_SECONDS:-25}
targets=(protocol ingress discovery meta_requests headers)
# No sanitizer: the code under test is safe Rust; overflow checks and debug assertions stay on.
flags=(--fuzz-dir tests/fuzz -s none)

# Evolved corpora go to a scratch directory: only the seeds are read from the tree.
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT

cargo +nightly fuzz build "${flags[@]}"
for target in "${targets[@]}"; do
  echo "== $target: ${seconds}s"
  mkdir "$scratch/$target"
  cargo +nightly fuzz run "${flags[@]}" "$target" "$scratch/$target" "tests/fuzz/seeds/$target" -- \
    -max_total_time="$seconds" -timeout=10 -rss_limit_mb=1024 -print_final_stats=1
done
