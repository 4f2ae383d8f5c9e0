#!/bin/bash
# The goals of issue #13 (performance), measured in one command on this machine, and printed as ratios
# (never asserted: a shared machine's speed moves by tens of percent between minutes).
#
# usage: benches/goals.sh BASE_BIN [NOW_BIN]
#   BASE_BIN  the runtime as it was when the goals were set (a release build of 5cb3a01), for the CPU
#             ratio: "about half of today's CPU per invocation"
#   NOW_BIN   the runtime to measure (default: target/release/restate, built first)
#
# Settings (environment): ROUNDS (3) alternated rounds of each in-repo measurement, SECONDS_PER_RUN (5)
# seconds of load per run, VS_SECONDS (8) and VS_ROUNDS (2) for the side-by-side runs, GOALS_VS=0 skips
# them (they need root for `ip netns`, wrk and npm; see benches/vs-restate.sh).
#
# What it runs, and the goal each line reports:
#   1. echo, 64 in flight, sync on, BASE and NOW alternated (`benches/ab.sh`): runtime CPU per
#      invocation, NOW ≤ 50 µs and NOW/BASE ≤ 0.5
#   2. one hot key (counter, `--keys 1`), sync on and off in each run: on/off req/s ≥ 0.8
#   3. echo at 16 in flight, sync on: p99 ≤ 5 ms
#   4. echo on 1 and 2 runtime cores, sync on: the req/s ratio. The goal (1 -> 8 cores, ≥ 0.9x linear per
#      core added) needs 16 CPUs (`benches/scaling.sh` on such a machine); on a smaller one the load
#      client and the endpoint share the runtime's CPUs, so this says more about the machine.
#   5. `benches/vs-restate.sh echo hot`: hot req/s ≥ 10x restate-server 1.7.12's, echo server CPU per
#      invocation ≤ 0.1x
set -euo pipefail
cd "$(dirname "$0")/.."
base=${1:?usage: benches/goals.sh BASE_BIN [NOW_BIN]}
now=${2:-}
if [[ -z $now ]]; then
    cargo build --release -q
    now=target/release/restate
fi
rounds=${ROUNDS:-3}
seconds=${SECONDS_PER_RUN:-5}
cargo bench --bench invocations --no-run -q 2>/dev/null
bench() {
    RESTATE_BIN=$now cargo bench -q --bench invocations -- --seconds "$seconds" "$@" 2>&1
}
# Field COLUMN of the bench output's line that starts with LINE (stdin).
pick() {
    awk -v line="$1" -v column="$2" 'index($0, line) == 1 {print $column}'
}
median() {
    python3 -c 'import statistics, sys; print(f"{statistics.median(float(x) for x in sys.argv[1:]):.2f}")' "$@"
}
echo "goals.sh: $(date -u '+%F %H:%M') UTC, $(nproc) CPUs, load $(cut -d' ' -f1-3 /proc/loadavg); base $base, now $now"

echo "== 1. echo CPU per invocation (64 in flight, sync on), $rounds alternated rounds"
ab=$(SECONDS_PER_RUN=$seconds benches/ab.sh "$rounds" echo "" "$base" "$now")
echo "$ab"
cpu_of() { grep -F "$1:" <<< "$ab" | sed -E 's/.*CPU\/inv .*\(median ([0-9.]+)\).*/\1/'; }
base_cpu=$(cpu_of "$base")
now_cpu=$(cpu_of "$now")

echo "== 2. one hot key, sync on / sync off, $rounds runs"
ratios=()
for _ in $(seq "$rounds"); do
    out=$(bench --sync both --cases counter --keys 1)
    off=$(pick "runtime counter, sync off" 5 <<< "$out")
    on=$(pick "runtime counter, sync on" 5 <<< "$out")
    ratio=$(python3 -c "print(f'{$on / $off:.2f}')")
    echo "hot key: sync off $off req/s, sync on $on req/s: on/off $ratio"
    ratios+=("$ratio")
done

echo "== 3. echo p99 at 16 in flight (sync on), $rounds runs"
p99s=()
for _ in $(seq "$rounds"); do
    p99=$(bench --sync on --cases echo --concurrency 16 | pick "runtime echo, sync on" 7)
    echo "echo, 16 in flight: p99 $p99 ms"
    p99s+=("$p99")
done

echo "== 4. echo on 1 and 2 runtime cores (sync on), $rounds alternated runs"
scalings=()
for _ in $(seq "$rounds"); do
    one=$(bench --sync on --cases echo --cores 1 | pick "runtime echo, sync on" 5)
    two=$(bench --sync on --cases echo --cores 2 | pick "runtime echo, sync on" 5)
    scaling=$(python3 -c "print(f'{$two / $one:.2f}')")
    echo "echo: 1 core $one req/s, 2 cores $two req/s: $scaling"
    scalings+=("$scaling")
done

vs=""
if [[ ${GOALS_VS:-1} != 0 ]]; then
    echo "== 5. side by side with restate-server 1.7.12"
    vs=$(RESTATE_BIN=$now VS_SECONDS=${VS_SECONDS:-8} VS_ROUNDS=${VS_ROUNDS:-2} benches/vs-restate.sh echo hot)
    echo "$vs"
fi

echo "== goals"
python3 - "$base_cpu" "$now_cpu" "$(median "${ratios[@]}")" "$(median "${p99s[@]}")" \
    "$(median "${scalings[@]}")" "$(nproc)" <<'PY'
import sys
base, now, onoff, p99, scaling, cpus = map(float, sys.argv[1:])
print(f"echo CPU/inv, sync on:  now {now:.1f} µs (goal ≤ 50), base {base:.1f} µs: now/base {now / base:.2f} (goal ≤ 0.5)")
print(f"hot key on/off req/s:  median {onoff:.2f} (goal ≥ 0.8)")
print(f"echo p99, 16 in flight: median {p99:.2f} ms (goal ≤ 5)")
print(f"echo req/s, 2 cores / 1 core: median {scaling:.2f} on {cpus:.0f} CPUs shared with the client "
      "and the endpoint (1 -> 8 cores needs 16 CPUs: benches/scaling.sh)")
PY
if [[ -n $vs ]]; then
    # The summary table's rows: | workload | ours req/s | theirs req/s | ratio | ... | CPU ratio |
    awk -F'|' '$2 ~ /^ (echo|hot) $/ && NF > 14 {
        gsub(/ /, "", $2); gsub(/ /, "", $5); gsub(/ /, "", $14)
        printf "vs restate-server, %s: req/s ratio %s, server CPU/inv ratio %s\n", $2, $5, $14
    }' <<< "$vs"
    echo "(goals: hot req/s ratio ≥ 10; server CPU/inv ratio ≤ 0.1)"
fi
