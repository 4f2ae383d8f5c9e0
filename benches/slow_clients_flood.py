#!/usr/bin/env python3
"""60 s flood of the ingress port: IDLE idle connections + SLOW slowloris connections (one header byte a
second, reconnecting when cut off), while /health on meta is probed every second. Prints RSS, open fds and
meta's answer every 5 s. RESTATE_* variables pass through to the server.
usage: python3 benches/slow_clients_flood.py $PWD/target/debug/restate [IDLE=2000] [SLOW=200] [SECONDS=60]
Issue 8 finding 4 (slow clients, per-port connection limits); figures in SECURITY.md."""
import os, socket, subprocess, sys, tempfile, time

binary = sys.argv[1]
IDLE = int(sys.argv[2]) if len(sys.argv) > 2 else 2000
SLOW = int(sys.argv[3]) if len(sys.argv) > 3 else 200
SECONDS = int(sys.argv[4]) if len(sys.argv) > 4 else 60


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


ingress, meta, storage = free_port(), free_port(), free_port()
d = tempfile.mkdtemp()
env = dict(os.environ,
           RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS=f"127.0.0.1:{ingress}",
           RESTATE_META__REST_ADDRESS=f"127.0.0.1:{meta}",
           RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS=f"127.0.0.1:{storage}",
           RESTATE_RUNTIME__CORES="2",
           RESTATE_WORKER__STORAGE_ROCKSDB__SYNC_WRITES="false")
env.update({k: v for k, v in os.environ.items() if k.startswith("RESTATE_")})
log = open(os.path.join(d, "server.log"), "w")
proc = subprocess.Popen([binary], cwd=d, env=env, stdout=log, stderr=log)


def health():
    t = time.time()
    try:
        s = socket.create_connection(("127.0.0.1", meta), timeout=5)
        s.settimeout(5)
        s.sendall(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        data = b""
        while True:
            chunk = s.recv(4096)
            if not chunk:
                break
            data += chunk
        s.close()
        return data.split(b" ")[1].decode(), time.time() - t
    except Exception as e:
        return f"ERR({type(e).__name__})", time.time() - t


def rss_kib():
    for line in open(f"/proc/{proc.pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1])


def fds():
    return len(os.listdir(f"/proc/{proc.pid}/fd"))


for _ in range(300):
    if health()[0] == "200":
        break
    time.sleep(0.1)
print(f"start: rss {rss_kib()} KiB, fds {fds()}", flush=True)

idle = []
for _ in range(IDLE):
    try:
        idle.append(socket.create_connection(("127.0.0.1", ingress), timeout=5))
    except OSError as e:
        print("connect failed:", e); break


def slow_conn():
    s = socket.create_connection(("127.0.0.1", ingress), timeout=5)
    s.setblocking(False)
    s.sendall(b"POST /a/b HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    return s


slow = [slow_conn() for _ in range(SLOW)]
cut = 0
started = time.time()
next_report = 0
while time.time() - started < SECONDS:
    for i, s in enumerate(slow):
        try:
            s.send(b"a")
            try:
                if s.recv(1) == b"":
                    raise ConnectionError
            except BlockingIOError:
                pass
        except (ConnectionError, OSError):
            cut += 1
            s.close()
            slow[i] = slow_conn()
    status, latency = health()
    elapsed = time.time() - started
    if elapsed >= next_report:
        print(f"t={elapsed:4.0f}s rss {rss_kib()} KiB fds {fds()} health {status} in {latency*1000:.0f} ms, "
              f"slowloris cut off so far {cut}", flush=True)
        next_report += 5
    time.sleep(1)
print(f"end: rss {rss_kib()} KiB, fds {fds()}, slowloris connections cut off {cut}", flush=True)
proc.kill(); proc.wait()
print(open(os.path.join(d, "server.log")).read()[-1500:])
