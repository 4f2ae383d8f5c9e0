#!/usr/bin/env bash
# Runs ghz configs with the in-repo generator against a fresh release server (default config, data in a
# temp dir) and the SDK services of tests/sdk (node, port 9080), then prints the server's invocation and
# storage counters. Needs ports 9090, 8081, 9091 and 9080 free.
# Usage: benches/ghz/run.sh [CONFIG...]   (names in benches/ghz without .json; default: all five)
set -euo pipefail
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)"
configs=("$@")
[ ${#configs[@]} -gt 0 ] || configs=(trivial counter_1000_keys hot_key call_sleep one_way)
cd "$repo"
cargo build --release -q --bin restate
cargo bench -q --bench grpc_load --no-run 2>/dev/null
dir="$(mktemp -d)"
(cd "$dir" && exec "$repo/target/release/restate" >"$dir/server.log" 2>&1) &
server=$!
(cd tests/sdk && PORT=9080 RESTATE_DEBUG_LOGGING=OFF exec node services.js >"$dir/sdk.log" 2>&1) &
sdk=$!
trap 'kill $server $sdk 2>/dev/null; wait 2>/dev/null; rm -rf "$dir"' EXIT
for _ in $(seq 1 150); do
  curl -sf localhost:8081/health >/dev/null && grep -q listening "$dir/sdk.log" && break
  sleep 0.2
done
curl -sf -X POST localhost:8081/endpoints -H 'content-type: application/json' \
  -d '{"uri": "http://127.0.0.1:9080"}' >/dev/null
for name in "${configs[@]}"; do
  echo "== $name (load average $(cut -d' ' -f1-3 /proc/loadavg))"
  cargo bench -q --bench grpc_load -- --config "benches/ghz/$name.json"
done
curl -s localhost:8081/metrics | grep -E '^restate_invocations_(started|completed|failed)_total|^restate_storage_(batch_operations|write_duration_seconds)_(sum|count)'
