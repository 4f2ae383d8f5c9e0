-- wrk script for benches/vs-restate.sh: the same requests, in each system's own shape, for three workloads.
--   VS_SIDE  ours | theirs       ours: Connect JSON on our ingress; theirs: restate-server 1.x HTTP ingress
--   VS_MODE  echo | keys | hot   echo(input); counter add(1) over VS_KEYS random keys; add(1) on one key
--   VS_KEYS  number of keys for "keys" (default 1000)
-- done() prints one line: "RESULT requests=N ok=N errors=N duration_us=N p50_us=N p99_us=N".
local side = os.getenv("VS_SIDE") or error("VS_SIDE is not set")
local mode = os.getenv("VS_MODE") or error("VS_MODE is not set")
local keys = tonumber(os.getenv("VS_KEYS") or "1000")

wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"

local counter = 0

-- (path, body) of one counter add(1) on `key`.
local function add(key)
  if side == "ours" then
    return "/counter/add", '{"key":"' .. key .. '","request":1}'
  end
  return "/Counter/" .. key .. "/add", "1"
end

local fixed = nil

function setup(thread)
  counter = counter + 1
  thread:set("thread_id", counter)
end

function init(args)
  math.randomseed(os.time() * 1000 + (thread_id or 0))
  if mode == "echo" then
    if side == "ours" then
      fixed = wrk.format(nil, "/echo/echo", nil, '{"request":{"text":"hello"}}')
    else
      fixed = wrk.format(nil, "/Echo/echo", nil, '{"text":"hello"}')
    end
  elseif mode == "hot" then
    local path, body = add("hot")
    fixed = wrk.format(nil, path, nil, body)
  elseif mode ~= "keys" then
    error("VS_MODE must be echo, keys or hot, not " .. mode)
  end
end

function request()
  if fixed then
    return fixed
  end
  local path, body = add("k" .. math.random(keys))
  return wrk.format(nil, path, nil, body)
end

function done(summary, latency, requests)
  local e = summary.errors
  local errors = e.connect + e.read + e.write + e.status + e.timeout
  io.write(string.format("RESULT requests=%d ok=%d errors=%d duration_us=%d p50_us=%d p99_us=%d\n",
    summary.requests, summary.requests - e.status, errors,
    summary.duration, latency:percentile(50), latency:percentile(99)))
end
