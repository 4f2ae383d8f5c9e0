#!/usr/bin/env bash
# Per-core scaling of the runtime on a machine with at least 16 CPUs.
#
#   benches/scaling.sh prepare   # here: release build, stripped binaries + librocksdb into .devcarry/
#   benches/scaling.sh run       # there (from the repo root, .devcarry/ copied along)
#
# The runtime is pinned to the first N CPUs (N = 1, 2, 4, 8), the endpoint to 4 threads on CPUs 8-11 and
# the load client to 4 threads on CPUs 12-15; each run reports the direct-endpoint baseline beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
case "${1:-}" in
  prepare)
    cargo build --release --bins --bench invocations
    rm -rf .devcarry && mkdir -p .devcarry/lib
    cp target/release/restate target/release/restate-test-endpoint .devcarry/
    bench=$(ls -t target/release/deps/invocations-* | grep -v '\.d$' | head -1)
    cp "$bench" .devcarry/invocations
    strip .devcarry/restate .devcarry/restate-test-endpoint .devcarry/invocations
    for lib in $(ldd target/release/restate | awk '/rocksdb|gflags|snappy|lz4|zstd|bz2/ {print $3}'); do
      cp -L "$lib" .devcarry/lib/
    done
    du -sh .devcarry
    ;;
  run)
    cd .devcarry
    export LD_LIBRARY_PATH=$PWD/lib RESTATE_BIN=$PWD/restate RESTATE_ENDPOINT_BIN=$PWD/restate-test-endpoint
    for n in 1 2 4 8; do
      export RUNTIME_CPUS="0-$((n-1))" ENDPOINT_CPUS="8-11"
      echo "=== runtime cores=$n on CPUs $RUNTIME_CPUS"
      taskset -c 12-15 ./invocations --seconds 4 --concurrency 256 --cores "$n" --sync off \
        --endpoint-threads 4 --client-threads 4
    done
    ;;
  *)
    echo "usage: $0 prepare|run" >&2
    exit 2
    ;;
esac
