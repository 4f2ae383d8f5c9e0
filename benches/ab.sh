#!/bin/bash
# Alternated A/B runs of `cargo bench --bench invocations` for two or more runtime binaries, one case at
# a time: on a shared machine a single run's CPU per invocation moves by 10-20 %, and slow phases last
# minutes, so each binary runs once per round, in turn, and the medians over rounds are compared.
#
# usage: benches/ab.sh ROUNDS CASE "EXTRA BENCH ARGS" BIN_A BIN_B [BIN...]
#   e.g. benches/ab.sh 4 echo "" /tmp/restate-before target/release/restate
#        benches/ab.sh 3 counter "--keys 1" /tmp/restate-before target/release/restate
# SECONDS_PER_RUN (default 4) is each run's load window; the endpoint is the tree's own
# (RESTATE_ENDPOINT_BIN overrides it, as for the bench). Prints each binary's req/s and runtime CPU
# per invocation per round, and their medians.
set -euo pipefail
rounds=$1 case=$2 args=$3
shift 3
cd "$(dirname "$0")/.."
cargo bench --bench invocations --no-run -q 2>/dev/null
results=$(mktemp)
for _ in $(seq "$rounds"); do
    for bin in "$@"; do
        # shellcheck disable=SC2086 # the extra arguments are meant to split
        output=$(RESTATE_BIN=$bin cargo bench -q --bench invocations -- --seconds "${SECONDS_PER_RUN:-4}" \
            --sync on --cases "$case" $args 2>&1) || true
        line=$(grep -m1 -E '^runtime' <<< "$output") || {
            echo "ab.sh: no result from $bin:" >&2
            tail -20 <<< "$output" >&2
            exit 1
        }
        # "runtime CASE, sync on  REQ/S  P50  P99  CPU µs ..."
        echo "$bin $(echo "$line" | awk '{print $5, $7, $8}')" >> "$results"
    done
done
python3 - "$results" <<'PY'
import collections, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    binary, rps, p99, cpu = line.split()
    runs[binary].append((float(rps), float(p99), float(cpu)))
for binary, rows in runs.items():
    med = lambda i: statistics.median(r[i] for r in rows)
    print(f"{binary}: req/s {' '.join(f'{r[0]:.0f}' for r in rows)} (median {med(0):.0f}); "
          f"CPU/inv {' '.join(f'{r[2]:.1f}' for r in rows)} µs (median {med(2):.1f}); p99 median {med(1):.2f} ms")
PY
rm -f "$results"
