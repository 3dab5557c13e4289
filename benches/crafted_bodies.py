#!/usr/bin/env python3
"""CPU time the gateway spends on the most expensive bodies we could craft.

    python3 benches/crafted_bodies.py [path/to/org-gateway]   (default: target/release)

Starts the gateway (default config, embedded store, rate limits raised) on free loopback ports
with a temporary data dir, creates one organization, then sends each crafted body of about
1 MiB (the default `max_body_bytes`) five times and prints the status, the gateway's own CPU
time for it (all threads, from /proc schedstat; median of the five; it includes the probe's
`/healthz` requests, about 0.03 ms each) and the slowest `GET /healthz` answered meanwhile. The goal (issue "request path at the hardware's
pace"): every body accepted or refused in under 50 ms of CPU. Stops the gateway on exit.
Python standard library only.
"""

import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MAX_BODY = 1024 * 1024
KEY = "k" * (400 * 1024)
ROOM = MAX_BODY - 400 * 1024 - 4096


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def array_of(item, size):
    n = size // (len(item) + 1)
    return "[" + ",".join([item] * n) + "]"


def under_long_key(value):
    return '{"%s":%s}' % (KEY, value)


def cpu_seconds(pid):
    """CPU time of every thread, in nanoseconds resolution (/proc/<pid>/stat counts ticks)."""
    total = 0
    for task in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{task}/schedstat") as f:
                total += int(f.read().split()[0])
        except OSError:
            pass
    return total / 1e9


def request(base, method, path, body=None, token=None):
    req = urllib.request.Request(base + path, data=body, method=method)
    req.add_header("content-type", "application/json")
    if token:
        req.add_header("authorization", "Bearer " + token)
    try:
        with urllib.request.urlopen(req, timeout=60) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def cases():
    ints = array_of("1", ROOM)
    empties = array_of("[]", ROOM)
    return [
        ("doc: 400 KiB key x ints", "POST", "/data", under_long_key(ints)),
        ("doc: 400 KiB key x []", "POST", "/data", under_long_key(empties)),
        ("doc: int out of range at the end", "POST", "/data",
         under_long_key(ints[:-1] + ",18446744073709551615]")),
        ("count: filter 400 KiB key x ints", "POST", "/data/count",
         '{"filter":%s}' % under_long_key(ints)),
        ("query: $in of 300k", "POST", "/data/query",
         '{"filter":{"a":{"$in":%s}}}' % array_of("1", MAX_BODY - 64)),
        ("count: $and of {} entries", "POST", "/data/count",
         '{"filter":{"$and":%s}}' % array_of("{}", MAX_BODY - 64)),
        ("patch: $set 400 KiB key x ints", "PATCH", "/data/crafted",
         '{"$set":%s}' % under_long_key(ints)),
        ("doc: 70k small keys", "POST", "/data",
         "{" + ",".join('"k%d":1' % i for i in range(70000)) + "}"),
        ("doc: 500k-deep nesting", "POST", "/data", "[" * 500000 + "]" * 500000),
        ("query: 300k-part dotted path", "POST", "/data/query",
         '{"filter":{"%s":1}}' % ".".join(["a"] * 300000)),
    ]


def main():
    binary = sys.argv[1] if len(sys.argv) > 1 else os.path.join(
        os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target")), "release", "org-gateway")
    tmp = tempfile.mkdtemp()
    port, ops = free_port(), free_port()
    env = dict(os.environ,
               ORG_GATEWAY_LIMITS__REQUESTS_PER_MINUTE="1000000",
               ORG_GATEWAY_LIMITS__REQUESTS_PER_HOUR="100000000",
               ORG_GATEWAY_LIMITS__CREATES_PER_MINUTE_PER_ADDRESS="1000000",
               ORG_GATEWAY_LIMITS__PUBLIC_READS_PER_MINUTE_PER_ADDRESS="1000000")
    log = open(os.path.join(tmp, "gateway.log"), "w")
    gw = subprocess.Popen([binary, "serve", "--listen", f"127.0.0.1:{port}", "--ops-listen",
                           f"127.0.0.1:{ops}", "--data-dir", os.path.join(tmp, "data")],
                          env=env, stdout=log, stderr=log)
    try:
        base, ops_base = f"http://127.0.0.1:{port}", f"http://127.0.0.1:{ops}"
        for _ in range(150):
            try:
                if request(ops_base, "GET", "/healthz")[0] == 200:
                    break
            except OSError:
                time.sleep(0.1)
        request(base, "POST", "/org/create", json.dumps({
            "organization_name": "crafted", "email": "crafted@example.com",
            "password": "crafted-password"}).encode())
        token = json.loads(request(base, "POST", "/admin/login", json.dumps({
            "email": "crafted@example.com", "password": "crafted-password"}).encode())[1]
        )["access_token"]
        request(base, "POST", "/data", b'{"_id":"crafted","a":1}', token)

        print(f"{'case (~1 MiB body)':36} {'status':>6} {'CPU ms':>7} {'healthz max ms':>15}")
        for name, method, path, body in cases():
            body = body.encode()
            assert len(body) <= MAX_BODY, (name, len(body))
            cpu, worst, status = [], [], None
            for _ in range(5):
                stop, slowest = threading.Event(), [0.0]

                def probe():
                    while not stop.is_set():
                        t = time.perf_counter()
                        request(ops_base, "GET", "/healthz")
                        slowest[0] = max(slowest[0], time.perf_counter() - t)
                        time.sleep(0.002)

                prober = threading.Thread(target=probe)
                prober.start()
                before = cpu_seconds(gw.pid)
                status, _ = request(base, method, path, body, token)
                after = cpu_seconds(gw.pid)
                stop.set()
                prober.join()
                cpu.append((after - before) * 1000)
                worst.append(slowest[0] * 1000)
            print(f"{name:36} {status:>6} {statistics.median(cpu):>7.0f} {max(worst):>15.0f}")
    finally:
        gw.terminate()
        gw.wait(timeout=10)
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
