#!/usr/bin/env python3
"""60 s overloads of the partition's bounds, with the server's RSS sampled every 5 s.

1. inbox: one key parked (an awaiter waiting on an awakeable), then one-way calls of 64 KiB to that key
   from 4 clients for SECONDS: past worker.inbox.max_entries_per_key (set to 1000 here) they get 429.
2. attached callers: an idempotent invocation parked, then calls with the same idempotency key and a
   100 ms timeout (they attach and give up) from 4 clients for SECONDS: memory must stay flat.

usage: python3 benches/partition_overload.py BINARY [SECONDS]   (the SDK's node modules in tests/sdk)
"""
import json, os, socket, subprocess, sys, tempfile, threading, time, urllib.error, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BINARY = os.path.abspath(sys.argv[1])
SECONDS = int(sys.argv[2]) if len(sys.argv) > 2 else 60


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def call(port, path, body, headers=None, timeout=30):
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=json.dumps(body).encode(),
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, json.loads(r.read() or b"null")
    except urllib.error.HTTPError as e:
        return e.code, json.loads(e.read() or b"null")


def quietly(*args, **kwargs):
    """`call` for a parked caller that the end of the run cuts off."""
    try:
        call(*args, **kwargs)
    except Exception:
        pass


def rss_mib(pid):
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024


def flood(name, server, send):
    codes, stop = {}, time.time() + SECONDS
    lock = threading.Lock()

    def client():
        while time.time() < stop:
            status = send()
            with lock:
                codes[status] = codes.get(status, 0) + 1
    threads = [threading.Thread(target=client) for _ in range(4)]
    for t in threads: t.start()
    samples = []
    while any(t.is_alive() for t in threads):
        samples.append(rss_mib(server.pid))
        time.sleep(5)
    for t in threads: t.join()
    print(f"{name}: {SECONDS} s, answers {codes}, RSS MiB every 5 s: {samples}", flush=True)


def main():
    sdk_port = free_port()
    sdk = subprocess.Popen(["node", "services.js"], cwd=os.path.join(REPO, "tests/sdk"),
                           env=dict(os.environ, PORT=str(sdk_port), RESTATE_DEBUG_LOGGING="OFF"),
                           stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    sdk.stdout.readline()
    d = tempfile.mkdtemp()
    meta, ingress = free_port(), free_port()
    env = dict(os.environ, RESTATE_META__REST_ADDRESS=f"127.0.0.1:{meta}",
               RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS=f"127.0.0.1:{ingress}",
               RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
               RESTATE_WORKER__INBOX__MAX_ENTRIES_PER_KEY="1000")
    server = subprocess.Popen([BINARY], cwd=d, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(d, "log"), "w"))
    try:
        for _ in range(600):
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{meta}/health", timeout=2); break
            except Exception:
                time.sleep(0.1)
        call(meta, "/endpoints", {"uri": f"http://127.0.0.1:{sdk_port}"})
        print(f"idle: RSS {rss_mib(server.pid)} MiB", flush=True)
        threading.Thread(target=quietly, args=(ingress, "/awaiter/park", {"key": "hot", "request": 0}),
                         kwargs={"timeout": 3600}, daemon=True).start()
        payload = "x" * 65536
        flood("inbox of one parked key (bound 1000)", server, lambda: call(
            ingress, "/dev.restate.Ingress/Invoke",
            {"service": "awaiter", "method": "ping", "argument": {"key": "hot", "request": payload}})[0])
        threading.Thread(target=quietly, args=(ingress, "/awaiter/park", {"key": "idem", "request": 0}),
                         kwargs={"headers": {"idempotency-key": "same"}, "timeout": 3600},
                         daemon=True).start()
        time.sleep(1)
        flood("callers attaching to one invocation and leaving", server, lambda: call(
            ingress, "/awaiter/park", {"key": "idem", "request": 0},
            headers={"idempotency-key": "same", "connect-timeout-ms": "100"})[0])
    finally:
        server.kill(); server.wait(); sdk.kill(); sdk.wait()


if __name__ == "__main__":
    main()
