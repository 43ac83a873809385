#!/usr/bin/env python3
"""Hit latency from the memory tier and from the disk tier of `ixproxy serve`'s response cache,
and the hit ratio a restart keeps (README: Caching, Disk tier).

A local origin (in this script, loopback, OS-assigned port) serves N distinct objects of SIZE
bytes (`Cache-Control: public, max-age=3600`, an ETag). `ixproxy serve` runs with a memory tier
that holds about a third of them and a disk tier in a temporary directory:

1. every object is fetched once (misses: stored in memory, written to disk; the oldest leave
   memory);
2. memory hits: the most recently fetched objects, requested ROUNDS times each;
3. disk hits: the first request of each of the oldest objects (gone from memory, on disk);
4. restart: SIGTERM, a new process on the same directory, every object requested once: the
   hit ratio and the origin fetches; then the same restart without a disk tier for comparison.

Latency is the time from sending a request to reading its whole answer over one keep-alive
connection (Python's http.client in this process: its own overhead is included; it is the same
for both tiers). Prints one line per phase; `--json` prints the figures as JSON.

    python3 bench/cache_tiers.py --ixproxy target/profiling/ixproxy [--objects 600] [--size 32768]
"""
import argparse
import hashlib
import http.client
import http.server
import json
import os
import re
import signal
import socketserver
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

TOKEN = "bench-cache-tiers-token"
START_TIMEOUT = 30.0


class Origin:
    """Threaded HTTP/1.1 origin: /obj/<i> is SIZE bytes derived from i; counts its requests."""

    def __init__(self, size):
        self.size = size
        self.fetches = 0
        lock = threading.Lock()
        outer = self

        class Handler(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self):
                with lock:
                    outer.fetches += 1
                name = self.path.rsplit("/", 1)[-1].encode()
                body = (hashlib.sha256(name).hexdigest().encode() * (outer.size // 64 + 1))[: outer.size]
                self.send_response(200)
                self.send_header("Content-Type", "application/octet-stream")
                self.send_header("Content-Length", str(len(body)))
                self.send_header("Cache-Control", "public, max-age=3600")
                self.send_header("ETag", '"' + hashlib.md5(body).hexdigest() + '"')
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        class Server(socketserver.ThreadingMixIn, http.server.HTTPServer):
            daemon_threads = True

        self.server = Server(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def target(origin_url):
    path = "/" + urllib.parse.quote(origin_url, safe="-_.!~*'()")
    return f"{path}?s={hashlib.md5((TOKEN + path).encode()).hexdigest()}"


def config(origin_port, memory_bytes, disk_dir, disk_bytes):
    disk = f"  disk: {{path: '{disk_dir}', max_bytes: {disk_bytes}}}\n" if disk_dir else ""
    return f"""listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: off
cache:
  max_bytes: {memory_bytes}
  max_object_bytes: 1048576
{disk}sources:
  - name: bench
    hosts: [127.0.0.1]
    secure_url_tokens: [{TOKEN}]
    allowed_origin_hosts: ["127.0.0.1:{origin_port}"]
    allow_private_origins: true
"""


class Serve:
    def __init__(self, binary, conf_path, log_path):
        started = time.monotonic()
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            [binary, "serve", "-c", conf_path], stdout=self.log, stderr=subprocess.STDOUT
        )
        pattern = re.compile(rb"gateway on http://([0-9.]+:\d+), admin on http://([0-9.]+:\d+)")
        while time.monotonic() - started < START_TIMEOUT:
            if self.proc.poll() is not None:
                sys.exit(f"ixproxy exited: {open(log_path, 'rb').read().decode(errors='replace')}")
            found = pattern.findall(open(log_path, "rb").read())
            if found:
                break
            time.sleep(0.01)
        else:
            sys.exit("ixproxy did not start")
        listen, admin = found[-1]
        self.listen = listen.decode()
        self.admin = admin.decode()
        self.start_seconds = time.monotonic() - started
        host, port = self.listen.split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=30)

    def get(self, origin_url):
        began = time.perf_counter()
        self.conn.request("GET", target(origin_url), headers={"Host": "127.0.0.1"})
        resp = self.conn.getresponse()
        body = resp.read()
        elapsed = time.perf_counter() - began
        return resp.status, resp.getheader("cache-status"), len(body), elapsed

    def metrics(self):
        host, port = self.admin.split(":")
        c = http.client.HTTPConnection(host, int(port), timeout=10)
        c.request("GET", "/metrics")
        text = c.getresponse().read().decode()
        return {
            line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1])
            for line in text.splitlines()
            if line.startswith("ixproxy_cache")
        }

    def stop(self):
        self.conn.close()
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(timeout=60)
        self.log.close()


def summary(seconds):
    us = sorted(s * 1e6 for s in seconds)
    pick = lambda q: us[min(len(us) - 1, int(q * len(us)))]
    return {"n": len(us), "median_us": round(statistics.median(us)), "p90_us": round(pick(0.9)),
            "p99_us": round(pick(0.99))}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--ixproxy", required=True)
    ap.add_argument("--objects", type=int, default=600)
    ap.add_argument("--size", type=int, default=32 * 1024)
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    origin = Origin(args.size)
    url = lambda i: f"http://127.0.0.1:{origin.port}/obj/{i}"
    n = args.objects
    memory_bytes = n * (args.size + 1024) // 3
    out = {"objects": n, "size": args.size, "memory_max_bytes": memory_bytes}
    with tempfile.TemporaryDirectory(prefix="ixproxy-cache-tiers-") as work:
        disk_dir = os.path.join(work, "tier")
        log = lambda k: os.path.join(work, f"serve-{k}.log")
        conf = os.path.join(work, "serve.yaml")
        with open(conf, "w") as f:
            f.write(config(origin.port, memory_bytes, disk_dir, 256 * 1024 * 1024))
        serve = Serve(args.ixproxy, conf, log("first"))
        for i in range(n):
            status, cs, size, _ = serve.get(url(i))
            assert (status, cs, size) == (200, "ixproxy; fwd=miss", args.size), (i, status, cs)
        # 2. memory hits: the newest tenth, ROUNDS times.
        recent = range(n - n // 10, n)
        times = []
        for _ in range(args.rounds):
            for i in recent:
                status, cs, _, t = serve.get(url(i))
                assert (status, cs) == (200, "ixproxy; hit"), (i, status, cs)
                times.append(t)
        before = serve.metrics()
        out["memory_hit"] = summary(times)
        # 3. disk hits: the oldest half (gone from memory), first request of each.
        times = []
        for i in range(n // 2):
            status, cs, _, t = serve.get(url(i))
            assert (status, cs) == (200, "ixproxy; hit"), (i, status, cs)
            times.append(t)
        after = serve.metrics()
        disk_hits = after['ixproxy_cache_requests_total{result="hit",tier="disk"}'] - before[
            'ixproxy_cache_requests_total{result="hit",tier="disk"}']
        out["disk_hit"] = summary(times)
        out["disk_hit"]["counted_from_disk"] = int(disk_hits)
        out["disk_bytes"] = int(after.get('ixproxy_cache_bytes{tier="disk"}', 0))
        serve.stop()
        # 4. restart on the same directory: every object once.
        for label, with_disk in (("restart_with_disk", True), ("restart_memory_only", False)):
            with open(conf, "w") as f:
                f.write(config(origin.port, memory_bytes, disk_dir if with_disk else None, 256 * 1024 * 1024))
            fetched = origin.fetches
            serve = Serve(args.ixproxy, conf, log(label))
            hits = sum(serve.get(url(i))[1] == "ixproxy; hit" for i in range(n))
            out[label] = {"hit_ratio": round(hits / n, 3), "origin_fetches": origin.fetches - fetched,
                          "start_seconds": round(serve.start_seconds, 2)}
            serve.stop()
    if args.json:
        print(json.dumps(out, indent=2))
        return
    print(f"{n} objects of {args.size} bytes, memory tier {memory_bytes} bytes, disk tier 256 MiB")
    for key in ("memory_hit", "disk_hit"):
        s = out[key]
        print(f"{key}: {s['n']} requests, median {s['median_us']} µs, p90 {s['p90_us']} µs, p99 {s['p99_us']} µs")
    print(f"disk hits counted by the tier metric: {out['disk_hit']['counted_from_disk']}; disk bytes {out['disk_bytes']}")
    for key in ("restart_with_disk", "restart_memory_only"):
        r = out[key]
        print(f"{key}: hit ratio {r['hit_ratio']}, origin fetches {r['origin_fetches']}/{n}, ready in {r['start_seconds']} s")


if __name__ == "__main__":
    main()
