#!/usr/bin/env bash
# Side by side with Restate: this runtime (release build, default config, @restatedev/restate-sdk 0.4.1)
# against restate-server 1.7.12 (its default config, @restatedev/restate-sdk 1.17.2), the same three
# workloads, the same load tool (wrk, HTTP/1.1, JSON bodies), the same connection count, alternating
# ours, theirs, ours, theirs... so that both see the same machine weather. Prints per-round figures and
# the ratios ours/theirs.
#
#   benches/vs-restate.sh [WORKLOAD...]     workloads: echo keys hot (default: all three, in that order)
#
#   echo  a handler returning its input ({"text": "hello"})
#   keys  a keyed counter add(1): get state, set state, return the total; a random key of VS_KEYS per request
#   hot   the same add(1), always on one key (serial on both systems: one invocation per key at a time)
#
# Settings (environment): VS_SECONDS (10) per measured run, VS_WARMUP (2) seconds of untallied load before
# each run, VS_ROUNDS (2) rounds per workload, VS_CONNECTIONS (16), VS_THREADS (1) wrk threads, VS_KEYS
# (1000), VS_IDLE (3) seconds of idle CPU measured before the load, VS_KEEP=1 keeps the temp dir (logs,
# data), RESTATE_BIN (default: a release build of this repo).
#
# Installs wrk (apt) and, into target/vs-restate/ (npm), @restatedev/restate-server-linux-x64 1.7.12 and
# @restatedev/restate-sdk 1.17.2, unless already there. Needs root for `ip netns`: everything (both
# servers, both SDK endpoints, wrk) runs in a fresh loopback-only network namespace, because
# restate-server reaches out to the internet (disable-telemetry = false by default; in the namespace its
# GitHub client, octocrab, logs one failed connect), and so that no port clashes with anything else on
# the machine. Ours listens on 9090 (ingress), 8081 (meta), 9091; restate-server on 8080 (ingress), 9070
# (admin), 5122; the SDK endpoints on 9080 (ours) and 9081 (theirs), all on 127.0.0.1.
#
# Server CPU per invocation = (utime + stime of the server process, from /proc/PID/stat, after the run
# minus before) / OK responses of the run. For restate-server that is the restate-server process only
# (all its threads); the Node.js SDK endpoints are measured the same way in a column of their own.
set -euo pipefail

readonly THEIR_SERVER_VERSION=1.7.12
readonly THEIR_SDK_VERSION=1.17.2
readonly OUR_SDK_VERSION=0.4.1
repo="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
readonly repo
readonly here="$repo/benches/vs-restate"
readonly cache="$repo/target/vs-restate"
readonly their_bin="$cache/node_modules/@restatedev/restate-server-linux-x64/bin/restate-server"
: "${VS_SECONDS:=10}" "${VS_WARMUP:=2}" "${VS_ROUNDS:=2}" "${VS_CONNECTIONS:=16}" "${VS_THREADS:=1}"
: "${VS_KEYS:=1000}" "${VS_IDLE:=3}"
export VS_SECONDS VS_WARMUP VS_ROUNDS VS_CONNECTIONS VS_THREADS VS_KEYS VS_IDLE

log() { echo "vs-restate: $*" >&2; }
die() {
  log "$*"
  exit 1
}

# ---------------------------------------------------------------------------------------------- outside

# The version of an installed npm package, or nothing.
npm_version() {
  node -p "require('$1/package.json').version" 2>/dev/null || true
}

install_tools() {
  local missing=()
  command -v wrk >/dev/null || missing+=(wrk)
  command -v curl >/dev/null || missing+=(curl)
  command -v ip >/dev/null || missing+=(iproute2)
  if [ ${#missing[@]} -gt 0 ]; then
    log "apt-get install ${missing[*]}"
    apt-get install -y -q "${missing[@]}" >/dev/null || {
      apt-get update -q >/dev/null && apt-get install -y -q "${missing[@]}" >/dev/null
    }
  fi
  command -v node >/dev/null || die "node (Node.js 20+) is needed for the SDK endpoints"
  [ "$(npm_version "$repo/tests/sdk/node_modules/@restatedev/restate-sdk")" = "$OUR_SDK_VERSION" ] ||
    die "tests/sdk/node_modules lacks @restatedev/restate-sdk $OUR_SDK_VERSION (cd tests/sdk && npm ci)"
  local mods="$cache/node_modules/@restatedev"
  if [ "$(npm_version "$mods/restate-server-linux-x64")" != "$THEIR_SERVER_VERSION" ] ||
    [ "$(npm_version "$mods/restate-sdk")" != "$THEIR_SDK_VERSION" ]; then
    log "npm install into $cache"
    mkdir -p "$cache"
    [ -f "$cache/package.json" ] || echo '{"private": true}' >"$cache/package.json"
    (cd "$cache" && npm install --no-audit --no-fund --silent \
      "@restatedev/restate-server-linux-x64@$THEIR_SERVER_VERSION" \
      "@restatedev/restate-sdk@$THEIR_SDK_VERSION")
  fi
  [ -x "$their_bin" ] || die "no restate-server at $their_bin"
}

build_ours() {
  if [ -z "${RESTATE_BIN:-}" ]; then
    log "cargo build --release --bin restate"
    (cd "$repo" && cargo build --release -q --bin restate)
    RESTATE_BIN="$repo/target/release/restate"
  fi
  [ -x "$RESTATE_BIN" ] || die "RESTATE_BIN=$RESTATE_BIN is not executable"
  # Passed on under a name of its own: both servers read RESTATE_* variables as configuration.
  VS_OUR_BIN="$(realpath "$RESTATE_BIN")"
  export VS_OUR_BIN
  unset RESTATE_BIN
}

ns=""
inner=""

# Stops the part running in the namespace (its own trap stops its processes), then removes the namespace.
stop_inner() {
  [ -z "$inner" ] || kill "$inner" 2>/dev/null || true
  wait 2>/dev/null || true
  [ -z "$ns" ] || ip netns del "$ns" 2>/dev/null || true
}

outside() {
  [ "$(id -u)" = 0 ] || die "needs root for ip netns (a loopback-only network namespace)"
  install_tools
  build_ours
  ns="vs-restate-$$"
  ip netns add "$ns"
  trap 'stop_inner' EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  ip netns exec "$ns" ip link set lo up
  ip netns exec "$ns" bash "${BASH_SOURCE[0]}" --in-netns "$@" &
  inner=$!
  wait "$inner"
}

# ----------------------------------------------------------------------------------- inside the netns

pids=()
tmp=""
wrk_pid=""

# Stops every process this script started (TERM, then KILL after 10 s) and removes the temp dir, after
# printing the end of each log if the script failed.
cleanup() {
  local status=$? pid alive _ f
  [ -z "$wrk_pid" ] || kill "$wrk_pid" 2>/dev/null || true
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 0.1
  done
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  [ -n "$tmp" ] || return 0
  if [ "$status" != 0 ]; then
    for f in "$tmp"/*.log; do
      [ -f "$f" ] || continue
      echo "--- last lines of $(basename "$f")" >&2
      tail -n 15 "$f" >&2
    done
  fi
  if [ "${VS_KEEP:-0}" = 1 ]; then log "logs and data kept in $tmp"; else rm -rf "$tmp"; fi
}

# Waits up to 60 s for `curl URL` to succeed and for "listening" in LOG.
wait_ready() {
  local url="$1" sdk_log="$2" _
  for _ in $(seq 1 300); do
    curl -sf -o /dev/null "$url" && grep -q listening "$sdk_log" && return 0
    sleep 0.2
  done
  die "not ready after 60 s: $url or $(basename "$sdk_log")"
}

start_all() {
  mkdir -p "$tmp/ours" "$tmp/theirs"
  (cd "$tmp/ours" && exec "$VS_OUR_BIN" >"$tmp/ours.log" 2>&1) &
  ours_server=$!
  # Both SDKs log every invocation by default (0.4.1 outside NODE_ENV=production, 1.17 at INFO): off for both.
  (NODE_PATH="$repo/tests/sdk/node_modules" PORT=9080 NODE_ENV=production RESTATE_DEBUG_LOGGING=OFF \
    exec node "$here/ours.js" >"$tmp/ours-sdk.log" 2>&1) &
  ours_sdk=$!
  (exec "$their_bin" --base-dir "$tmp/theirs" --bind-ip 127.0.0.1 --no-logo >"$tmp/theirs.log" 2>&1) &
  theirs_server=$!
  (NODE_PATH="$cache/node_modules" PORT=9081 NODE_ENV=production RESTATE_LOGGING=WARN \
    exec node "$here/theirs.js" >"$tmp/theirs-sdk.log" 2>&1) &
  theirs_sdk=$!
  pids=("$ours_server" "$ours_sdk" "$theirs_server" "$theirs_sdk")
  wait_ready http://127.0.0.1:8081/health "$tmp/ours-sdk.log"
  wait_ready http://127.0.0.1:9070/health "$tmp/theirs-sdk.log"
  curl -sf -o /dev/null -X POST http://127.0.0.1:8081/endpoints -H 'content-type: application/json' \
    -d '{"uri": "http://127.0.0.1:9080"}' || die "registering our endpoint failed"
  curl -sf -o /dev/null -X POST http://127.0.0.1:9070/deployments -H 'content-type: application/json' \
    -d '{"uri": "http://127.0.0.1:9081"}' || die "registering their deployment failed"
}

# POSTs BODY to PATH on PORT and checks the answer is EXPECTED (both systems, before any load).
expect() {
  local port="$1" path="$2" body="$3" expected="$4" got
  got="$(curl -s -X POST "http://127.0.0.1:$port$path" -H 'content-type: application/json' -d "$body")"
  [ "$got" = "$expected" ] || die "POST :$port$path $body gave '$got', expected '$expected'"
}

smoke() {
  expect 9090 /echo/echo '{"request":{"text":"hello"}}' '{"response":{"text":"hello"}}'
  expect 9090 /counter/add '{"key":"smoke","request":1}' '{"response":1}'
  expect 8080 /Echo/echo '{"text":"hello"}' '{"text":"hello"}'
  expect 8080 /Counter/smoke/add '1' '1'
}

# utime + stime of PID in clock ticks (all its threads; not its children).
cpu_ticks() {
  local stat
  stat="$(cat "/proc/$1/stat")"
  stat="${stat##*) }"
  awk '{print $12 + $13}' <<<"$stat"
}

# One wrk run: SIDE MODE SECONDS; leaves wrk's RESULT line in $tmp/result. wrk runs in the background
# and is waited for, so that a TERM stops the script (and wrk, through cleanup) at once, not after the run.
load() {
  local port=9090 out="$tmp/wrk.out"
  [ "$1" = ours ] || port=8080
  VS_SIDE="$1" VS_MODE="$2" wrk -t "$VS_THREADS" -c "$VS_CONNECTIONS" -d "${3}s" --timeout 30s \
    -s "$here/load.lua" "http://127.0.0.1:$port" >"$out" 2>&1 &
  wrk_pid=$!
  wait "$wrk_pid" || die "wrk failed: $(cat "$out")"
  wrk_pid=""
  grep '^RESULT ' "$out" >"$tmp/result" || die "no RESULT line from wrk: $(cat "$out")"
}

# One measured run: SIDE MODE ROUND; appends "MODE SIDE ROUND requests ok errors duration_us p50 p99
# server_ticks sdk_ticks load1" to $tmp/results.
measure() {
  local side="$1" mode="$2" round="$3" server sdk s0 k0 s1 k1 result
  server=$theirs_server sdk=$theirs_sdk
  [ "$side" != ours ] || server=$ours_server sdk=$ours_sdk
  [ "$VS_WARMUP" = 0 ] || load "$side" "$mode" "$VS_WARMUP"
  s0=$(cpu_ticks "$server") k0=$(cpu_ticks "$sdk")
  load "$side" "$mode" "$VS_SECONDS"
  s1=$(cpu_ticks "$server") k1=$(cpu_ticks "$sdk")
  result="$(cat "$tmp/result")"
  # shellcheck disable=SC2001 # one substitution over the whole line
  echo "$mode $side $round $(sed 's/[a-z_0-9]*=//g; s/^RESULT //' <<<"$result") $((s1 - s0)) $((k1 - k0)) \
$(cut -d' ' -f1 /proc/loadavg)" >>"$tmp/results"
  log "$mode $side round $round: $result (load $(cut -d' ' -f1 /proc/loadavg))"
}

header() {
  local sync fsync note=""
  sync="$("$VS_OUR_BIN" --dump-config | awk '/^\[/ {section = $0}
    /^sync_writes / && section == "[worker.storage_rocksdb]" {print section " " $0}')"
  [[ "$sync" != *true ]] || note=": nothing is acknowledged before an fsync of the RocksDB WAL covers it"
  fsync="$("$their_bin" --dump-config 2>/dev/null | awk '
    /^\[/ {section = $0}
    /^default-replication|^default-provider/ {print (section ? section " " : "") $0}
    /^rocksdb-disable-wal(-fsync)? / && section == "[log-server]" {print section " " $0}' |
    paste -sd ';' | sed 's/;/; /g')"
  cat <<EOF
# vs-restate: $(date -u '+%Y-%m-%d %H:%M UTC'), $(nproc) CPUs, load average $(cut -d' ' -f1-3 /proc/loadavg)
# ours:   $("$VS_OUR_BIN" --version) at \
$(git -C "$repo" rev-parse --short HEAD 2>/dev/null || echo "?") (default config: \
$sync${note}), SDK $OUR_SDK_VERSION,
#         Connect JSON: POST /echo/echo, POST /counter/add {"key", "request"}
# theirs: restate-server $THEIR_SERVER_VERSION (default config: $fsync), SDK $THEIR_SDK_VERSION,
#         POST /Echo/echo, POST /Counter/<key>/add
# wrk $VS_THREADS thread(s), $VS_CONNECTIONS connections, HTTP/1.1, ${VS_SECONDS} s per run after \
${VS_WARMUP} s of untallied warm-up, $VS_ROUNDS round(s), keys: $VS_KEYS;
#         everything (servers, SDK endpoints, wrk) in one loopback-only network namespace
# SDK endpoints: one Node.js $(node --version) process each, per-invocation logging off in both
#         (0.4.1: RESTATE_DEBUG_LOGGING=OFF, 1.17.2: RESTATE_LOGGING=WARN); the servers log as by default
# server CPU/inv: utime+stime of the server process over the run / OK responses (restate-server: that
# one process only); SDK CPU/inv: the same for the Node.js endpoint process
EOF
}

# Idle CPU of both servers over VS_IDLE seconds, in ms of CPU per second.
idle() {
  local a0 b0 a1 b1 hz
  hz="$(getconf CLK_TCK)"
  a0=$(cpu_ticks "$ours_server") b0=$(cpu_ticks "$theirs_server")
  sleep "$VS_IDLE"
  a1=$(cpu_ticks "$ours_server") b1=$(cpu_ticks "$theirs_server")
  awk -v a=$((a1 - a0)) -v b=$((b1 - b0)) -v s="$VS_IDLE" -v hz="$hz" 'BEGIN {
    printf "# idle server CPU before the load (%d s): ours %.1f ms/s, theirs %.1f ms/s\n",
      s, a * 1000 / hz / s, b * 1000 / hz / s }'
}

table() {
  awk -v hz="$(getconf CLK_TCK)" '
    function us(ticks, n) { return n ? ticks * 1e6 / hz / n : 0 }
    BEGIN {
      print ""
      print "| workload | system | round | OK req | errors | req/s | p50 ms | p99 ms | server CPU µs/inv " \
        "| SDK CPU µs/inv | load1 |"
      print "|---|---|---|---|---|---|---|---|---|---|---|"
    }
    {
      mode = $1; side = $2; ok = $5; dur = $7 / 1e6
      printf "| %s | %s | %d | %d | %d | %.0f | %.1f | %.1f | %.0f | %.0f | %s |\n",
        mode, side, $3, ok, $6, ok / dur, $8 / 1000, $9 / 1000, us($10, ok), us($11, ok), $12
      if (!(mode in seen)) { seen[mode] = 1; order[++n] = mode }
      k = mode SUBSEP side
      OK[k] += ok; DUR[k] += dur; P50[k] += $8 / 1000; P99[k] += $9 / 1000; SRV[k] += $10; SDK[k] += $11
      R[k]++
    }
    END {
      print ""
      print "Over all rounds (req/s = OK responses / seconds; p50, p99: mean of the rounds; CPU: total / OK):"
      print ""
      print "| workload | ours req/s | theirs req/s | ratio | ours p50 ms | theirs p50 ms | ratio " \
        "| ours p99 ms | theirs p99 ms | ratio | ours server CPU µs/inv | theirs server CPU µs/inv | ratio |"
      print "|---|---|---|---|---|---|---|---|---|---|---|---|---|"
      for (i = 1; i <= n; i++) {
        m = order[i]; o = m SUBSEP "ours"; t = m SUBSEP "theirs"
        if (!R[o] || !R[t] || !OK[o] || !OK[t]) continue
        ro = OK[o] / DUR[o]; rt = OK[t] / DUR[t]
        po = P50[o] / R[o]; pt = P50[t] / R[t]; qo = P99[o] / R[o]; qt = P99[t] / R[t]
        co = us(SRV[o], OK[o]); ct = us(SRV[t], OK[t])
        printf "| %s | %.0f | %.0f | %.2f | %.1f | %.1f | %.2f | %.1f | %.1f | %.2f | %.0f | %.0f | %.2f |\n",
          m, ro, rt, ro / rt, po, pt, po / pt, qo, qt, qo / qt, co, ct, (ct ? co / ct : 0)
      }
    }' "$tmp/results"
}

inside() {
  local modes=("$@") mode round side
  [ ${#modes[@]} -gt 0 ] || modes=(echo keys hot)
  for mode in "${modes[@]}"; do
    case "$mode" in echo | keys | hot) ;; *) die "unknown workload $mode (echo, keys, hot)" ;; esac
  done
  tmp="$(mktemp -d)"
  trap cleanup EXIT
  trap 'exit 130' INT
  trap 'exit 143' TERM
  start_all
  smoke
  header
  idle
  for mode in "${modes[@]}"; do
    for round in $(seq 1 "$VS_ROUNDS"); do
      for side in ours theirs; do measure "$side" "$mode" "$round"; done
    done
  done
  table
}

if [ "${1:-}" = --in-netns ]; then
  shift
  inside "$@"
else
  outside "$@"
fi
