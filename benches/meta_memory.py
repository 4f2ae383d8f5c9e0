#!/usr/bin/env python3
"""Meta memory figures: 150 re-registrations of changing endpoints, and 30 concurrent huge discoveries.
usage: python3 benches/meta_memory.py $PWD/target/debug/restate $PWD/target/debug/restate-test-endpoint
Issue 8 findings 3c/3d; figures in SECURITY.md."""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error

server_bin, endpoint_bin = sys.argv[1], sys.argv[2]

def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p

def status(pid, key):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) // 1024  # MiB
def post(port, body, headers={}):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/endpoints", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **headers}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=120) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()

def start_endpoint(mode):
    p = subprocess.Popen([endpoint_bin, "--port", "0", "--mode", mode], stdout=subprocess.PIPE, text=True)
    port = int(p.stdout.readline().split()[-1]); return p, port

def start_server(extra_env):
    d = tempfile.mkdtemp()
    meta = free_port()
    env = dict(os.environ, RESTATE_META__REST_ADDRESS=f"127.0.0.1:{meta}",
               RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
               RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
               RESTATE_RUNTIME__CORES="2", RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES="false",
               RESTATE_META__DISCOVERY_RETRY_POLICY__MAX_ATTEMPTS="1", **extra_env)
    p = subprocess.Popen([server_bin], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=open(d + "/log", "w"))
    for _ in range(600):
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{meta}/health", timeout=2); break
        except Exception: time.sleep(0.1)
    return p, meta, d

ep, ep_port = start_endpoint("ok")
srv, meta, d = start_server({})
post(meta, {"uri": f"http://127.0.0.1:{ep_port}/v0"})
rss0 = status(srv.pid, "VmRSS")
t = time.time()
codes = {}
for i in range(1, 151):
    c, _ = post(meta, {"uri": f"http://127.0.0.1:{ep_port}/v{i}", "additional_headers": {"x-version": str(i)}})
    codes[c] = codes.get(c, 0) + 1
el = time.time() - t
rss1 = status(srv.pid, "VmRSS")
size = os.path.getsize(d + "/target/meta/schemas.json")
eps = json.load(urllib.request.urlopen(f"http://127.0.0.1:{meta}/endpoints"))["endpoints"]
print(f"150 re-registrations: codes {codes} in {el:.1f}s; RSS {rss0} -> {rss1} MiB; schemas.json {size} bytes; "
      f"{len(eps)} endpoint records; files in meta dir: {sum(len(f) for _,_,f in os.walk(d + '/target/meta'))}")
srv.kill(); srv.wait()

huge, huge_port = start_endpoint("huge")
srv, meta, d = start_server({})
hwm0 = status(srv.pid, "VmHWM")
results = []
def one(i):
    results.append(post(meta, {"uri": f"http://127.0.0.1:{huge_port}/h{i}"}))
threads = [threading.Thread(target=one, args=(i,)) for i in range(30)]
t = time.time()
for th in threads: th.start()
for th in threads: th.join()
el = time.time() - t
hwm1 = status(srv.pid, "VmHWM")
agg = {}
for c, b in results:
    m = json.loads(b).get("message", "")[:90]
    agg[(c, m)] = agg.get((c, m), 0) + 1
print(f"30 concurrent huge discoveries in {el:.1f}s: peak RSS (VmHWM) {hwm0} -> {hwm1} MiB; answers {agg}")
srv.kill(); srv.wait(); ep.kill(); huge.kill()
