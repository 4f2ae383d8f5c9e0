#!/usr/bin/env python3
"""60 s overload of the meta bounds: 24 client threads without pause, half re-registering an ok endpoint
under ever new URIs, half registering an endpoint whose discovery answer never ends. RSS sampled every 5 s.
usage: python3 benches/meta_overload.py $PWD/target/debug/restate $PWD/target/debug/restate-test-endpoint
Issue 8: a 60 s overload of the meta bounds; figures in SECURITY.md."""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.request, urllib.error
server_bin, endpoint_bin = sys.argv[1], sys.argv[2]
def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p
def rss(pid, key="VmRSS"):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith(key + ":"): return int(line.split()[1]) // 1024
def post(port, body):
    req = urllib.request.Request(f"http://127.0.0.1:{port}/endpoints", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json"}, method="POST")
    try:
        with urllib.request.urlopen(req, timeout=60) as r: return r.status, r.read()
    except urllib.error.HTTPError as e: return e.code, e.read()
def endpoint(mode):
    p = subprocess.Popen([endpoint_bin, "--port", "0", "--mode", mode], stdout=subprocess.PIPE, text=True)
    return p, int(p.stdout.readline().split()[-1])
ok, ok_port = endpoint("ok"); huge, huge_port = endpoint("huge")
d = tempfile.mkdtemp(); meta = free_port()
env = dict(os.environ, RESTATE_META__REST_ADDRESS=f"127.0.0.1:{meta}",
           RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
           RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
           RESTATE_RUNTIME__CORES="2", RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES="false")
srv = subprocess.Popen([server_bin], cwd=d, env=env, stdout=subprocess.DEVNULL, stderr=open(d + "/log", "w"))
for _ in range(600):
    try: urllib.request.urlopen(f"http://127.0.0.1:{meta}/health", timeout=2); break
    except Exception: time.sleep(0.1)
stop = time.time() + 60; answers = {}; lock = threading.Lock(); n = [0]
def client(i):
    while time.time() < stop:
        with lock: n[0] += 1; k = n[0]
        uri = f"http://127.0.0.1:{ok_port}/v{k}" if i % 2 == 0 else f"http://127.0.0.1:{huge_port}/h{k}"
        c, b = post(meta, {"uri": uri})
        m = json.loads(b).get("message", "")[:70] if c != 201 else ""
        with lock: answers[(c, m)] = answers.get((c, m), 0) + 1
threads = [threading.Thread(target=client, args=(i,)) for i in range(24)]
for t in threads: t.start()
samples = [rss(srv.pid)]
while time.time() < stop:
    time.sleep(5); samples.append(rss(srv.pid))
for t in threads: t.join()
eps = len(json.load(urllib.request.urlopen(f"http://127.0.0.1:{meta}/endpoints"))["endpoints"])
size = os.path.getsize(d + "/target/meta/schemas.json")
print(f"RSS MiB every 5 s: {samples}; peak {rss(srv.pid, 'VmHWM')} MiB; endpoint records {eps}; schemas.json {size} B")
for (c, m), k in sorted(answers.items(), key=lambda x: -x[1]): print(f"  {k:6d} x {c} {m}")
srv.kill(); ok.kill(); huge.kill()
