#!/usr/bin/env bash
# Our side of benches/vs-restate.sh alone, with what it costs per invocation: this runtime (release build,
# default config) and the real SDK (@restatedev/restate-sdk 0.4.1, benches/vs-restate/ours.js), one
# workload of vs-restate.sh driven by wrk with the same load.lua, then per invocation: server and SDK CPU
# (from /proc) and the deltas of the runtime's own counters (`GET :8081/metrics`): storage reads, WAL
# syncs, write operations and requests, state cache hits and misses.
#
#   benches/sdk-metrics.sh [WORKLOAD]       echo | keys | hot (default hot)
#
# Settings (environment): SM_SECONDS (8) measured, SM_WARMUP (2) seconds of untallied load first,
# SM_CONNECTIONS (16), RESTATE_BIN (default: a release build of this repo). Needs wrk, curl, node, and
# tests/sdk/node_modules (`cd tests/sdk && npm ci`). Binds 127.0.0.1 ports 9090, 8081, 9091 (ours) and
# 9080 (the SDK endpoint): nothing else may hold them.
set -euo pipefail

repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo
readonly here="$repo/benches/vs-restate"
: "${SM_SECONDS:=8}" "${SM_WARMUP:=2}" "${SM_CONNECTIONS:=16}"
workload="${1:-hot}"
case "$workload" in echo | keys | hot) ;; *) echo "unknown workload: $workload" >&2; exit 2 ;; esac

if [ -z "${RESTATE_BIN:-}" ]; then
  (cd "$repo" && cargo build --release -q --bin restate)
  RESTATE_BIN="$repo/target/release/restate"
fi
bin="$(realpath "$RESTATE_BIN")"
unset RESTATE_BIN # both the server and the SDK would read RESTATE_* as configuration

tmp="$(mktemp -d)"
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  # Up to 10 s for them to exit, then kill -9: the script never hangs on a stuck process.
  for _ in $(seq 50); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.2
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$status" != 0 ]; then
    echo "failed; the logs are kept in $tmp (server.log, sdk.log)" >&2
  else
    rm -rf "$tmp"
  fi
}
trap cleanup EXIT

(cd "$tmp" && exec "$bin" >"$tmp/server.log" 2>&1) &
server=$!
pids+=("$server")
(NODE_PATH="$repo/tests/sdk/node_modules" PORT=9080 NODE_ENV=production RESTATE_DEBUG_LOGGING=OFF \
  exec node "$here/ours.js" >"$tmp/sdk.log" 2>&1) &
sdk=$!
pids+=("$sdk")
for _ in $(seq 300); do
  curl -sf -o /dev/null http://127.0.0.1:8081/health && grep -q listening "$tmp/sdk.log" && break
  sleep 0.2
done
curl -sf -o /dev/null -X POST http://127.0.0.1:8081/endpoints -H 'content-type: application/json' \
  -d '{"uri": "http://127.0.0.1:9080"}' || { echo "registering the endpoint failed" >&2; exit 1; }

run_wrk() {
  VS_SIDE=ours VS_MODE="$workload" wrk -t 1 -c "$SM_CONNECTIONS" -d "${1}s" --timeout 30s \
    -s "$here/load.lua" http://127.0.0.1:9090
}
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

run_wrk "$SM_WARMUP" >/dev/null
curl -sf http://127.0.0.1:8081/metrics >"$tmp/before"
server0=$(ticks "$server")
sdk0=$(ticks "$sdk")
run_wrk "$SM_SECONDS" >"$tmp/wrk.out"
server1=$(ticks "$server")
sdk1=$(ticks "$sdk")
curl -sf http://127.0.0.1:8081/metrics >"$tmp/after"

python3 - "$tmp" "$(getconf CLK_TCK)" "$((server1 - server0))" "$((sdk1 - sdk0))" "$workload" <<'PY'
import re, sys
tmp, hz, server, sdk, workload = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
result = next(l for l in open(f"{tmp}/wrk.out") if l.startswith("RESULT "))
r = dict(kv.split("=") for kv in result.split()[1:])
ok = int(r["ok"])
seconds = int(r["duration_us"]) / 1e6
def load(name):
    values = {}
    for line in open(f"{tmp}/{name}"):
        if line.startswith("#") or not line.strip():
            continue
        series, value = line.rsplit(" ", 1)
        values[series] = float(value)
    return values
before, after = load("before"), load("after")
def delta(series):
    return after.get(series, 0.0) - before.get(series, 0.0)
print(f"{workload}: {ok / seconds:,.0f} req/s ({ok} OK, {r['errors']} errors), "
      f"p50 {int(r['p50_us']) / 1000:.1f} ms, p99 {int(r['p99_us']) / 1000:.1f} ms")
print(f"  server CPU {server / hz / ok * 1e6:,.0f} µs/inv, SDK CPU {sdk / hz / ok * 1e6:,.0f} µs/inv")
for series in ["restate_storage_reads_total", "restate_storage_wal_syncs_total",
               "restate_storage_write_ops_total", "restate_storage_write_requests_total",
               "restate_storage_write_batches_total", "restate_state_cache_hits_total",
               "restate_state_cache_misses_total", "restate_journal_entries_appended_total"]:
    print(f"  {series}: {delta(series) / ok:.2f} per invocation")
PY
