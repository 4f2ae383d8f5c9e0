#!/usr/bin/env python3
"""Drain time of a backlog of call-making invocations: default config vs always-suspend, in one run.

N one-way `bank/transfer` calls (tests/sdk/services.js: each makes two calls to the keyed
`counter/add` of one of 10 accounts and waits for each) are accepted, then the time until the
runtime is quiet (no invocation, inbox or outbox left, from /metrics) is measured, once with the
default config and once with `worker.invoker.inactivity_timeout = "0s"` (every await suspends).
The issue's goal: default <= 1.0x of always-suspend. Prints both and the ratio.

usage: python3 benches/drain.py [--transfers N] [--slots S] BINARY
  BINARY: target/release/restate (or debug); the SDK's node modules must be installed (tests/sdk).
"""
import argparse, json, os, socket, subprocess, tempfile, threading, time, urllib.request

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port():
    s = socket.socket(); s.bind(("127.0.0.1", 0)); p = s.getsockname()[1]; s.close(); return p


def request(port, path, body=None, method="POST", timeout=60):
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}", data=data, method=method,
                                 headers={"content-type": "application/json"})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return r.status, r.read()


def metric(meta, name):
    _, text = request(meta, "/metrics", method="GET")
    for line in text.decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[1])
    return None


def start_sdk():
    port = free_port()
    p = subprocess.Popen(["node", "services.js"], cwd=os.path.join(REPO, "tests/sdk"),
                         env=dict(os.environ, PORT=str(port), RESTATE_DEBUG_LOGGING="OFF"),
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    p.stdout.readline()
    return p, port


def run(binary, transfers, slots, extra_env):
    sdk, sdk_port = start_sdk()
    d = tempfile.mkdtemp()
    meta, ingress = free_port(), free_port()
    env = dict(os.environ, RESTATE_META__REST_ADDRESS=f"127.0.0.1:{meta}",
               RESTATE_WORKER__INGRESS_GRPC__BIND_ADDRESS=f"127.0.0.1:{ingress}",
               RESTATE_WORKER__STORAGE_GRPC__BIND_ADDRESS=f"127.0.0.1:{free_port()}",
               RESTATE_WORKER__INVOKER__CONCURRENCY_LIMIT=str(slots), **extra_env)
    server = subprocess.Popen([binary], cwd=d, env=env, stdout=subprocess.DEVNULL,
                              stderr=open(os.path.join(d, "log"), "w"))
    try:
        for _ in range(600):
            try:
                request(meta, "/health", method="GET", timeout=2); break
            except Exception:
                time.sleep(0.1)
        request(meta, "/endpoints", {"uri": f"http://127.0.0.1:{sdk_port}"})
        started = time.time()

        def send(first):
            for i in range(first, transfers, 8):
                body = {"service": "bank", "method": "transfer",
                        "argument": {"request": {"from": f"acct{i % 10}", "to": f"acct{(i + 3) % 10}",
                                                 "amount": 1}}}
                request(ingress, "/dev.restate.Ingress/Invoke", body)
        threads = [threading.Thread(target=send, args=(t,)) for t in range(8)]
        for t in threads: t.start()
        for t in threads: t.join()
        accepted = time.time() - started
        deadline = time.time() + 1800
        while time.time() < deadline:
            if all(metric(meta, m) == 0 for m in
                   ("restate_invocations", "restate_inbox_queued", "restate_outbox_backlog")):
                break
            time.sleep(0.2)
        drained = time.time() - started
        total = sum(json.loads(request(ingress, "/counter/get", {"key": f"acct{k}"})[1])["response"]
                    for k in range(10))
        preemptions = metric(meta, "restate_invoker_preemptions_total")
        return accepted, drained, total, preemptions
    finally:
        server.kill(); server.wait(); sdk.kill(); sdk.wait()


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--transfers", type=int, default=10000)
    parser.add_argument("--slots", type=int, default=1000, help="worker.invoker.concurrency_limit")
    parser.add_argument("binary")
    args = parser.parse_args()
    args.binary = os.path.abspath(args.binary)
    results = {}
    for name, env in [("default", {}),
                      ("always-suspend", {"RESTATE_WORKER__INVOKER__INACTIVITY_TIMEOUT": "0s"})]:
        accepted, drained, total, preemptions = run(args.binary, args.transfers, args.slots, env)
        results[name] = drained
        print(f"{name:>14}: {args.transfers} transfers accepted in {accepted:.1f} s, drained in "
              f"{drained:.1f} s ({args.transfers / drained:.0f} transfers/s); money sum {total} "
              f"(must be 0); preemptions {preemptions:.0f}", flush=True)
    print(f"default / always-suspend drain time: {results['default'] / results['always-suspend']:.2f}x")


if __name__ == "__main__":
    main()
