#!/usr/bin/env python3
"""Peak memory of the shipped consistent-hashing front (deploy/front/envoy-front.yaml) under one
client's worst case for it (README: Caching, "One fetch per object across replicas"): many
connections from one address, each holding an unfinished request head just under the front's
`max_request_headers_kb`, so Envoy keeps every head in memory until its request_headers_timeout.

    python3 bench/front_memory.py                       # 9000 connections, about 30 s
    python3 bench/front_memory.py --connections 4000 --head-kib 20

Envoy 1.40 (IXPROXY_ENVOY, default .venv/bin/envoy) runs the shipped file with only its
addresses changed (127.0.0.1, OS-assigned ports) and `--concurrency 2`; the replicas are not
needed, the heads never complete. Prints Envoy's RSS before, its peak while the connections are
opened and held 5 s (read from /proc every 100 ms), and Envoy's connection and overload
counters after them. The front's container limit (deploy/kubernetes/front.yaml,
512 Mi) must stay above the peak. Needs python3 with PyYAML and a file limit above the count
(`ulimit -n`; raised to the hard limit here).
"""

import argparse
import http.client
import os
import resource
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy/front/envoy-front.yaml"
WAIT_SECONDS = 15


def rss_mib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS")


def admin_get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        return conn.getresponse().read().decode()
    finally:
        conn.close()


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=9000)
    parser.add_argument("--head-kib", type=int, default=None,
                        help="bytes of each unfinished head (default: max_request_headers_kb - 1)")
    parser.add_argument("--concurrency", type=int, default=2)
    parser.add_argument("--max-connections", type=int, default=None,
                        help="replace max_active_downstream_connections (to see the heap "
                             "monitor alone at work)")
    args = parser.parse_args()
    envoy = os.environ.get("IXPROXY_ENVOY", str(ROOT / ".venv/bin/envoy"))
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    if hard < args.connections + 256:
        sys.exit(f"front_memory: file limit {hard} is below {args.connections} connections")

    bootstrap = yaml.safe_load(SHIPPED.read_text())
    bootstrap["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    for monitor in bootstrap["overload_manager"]["resource_monitors"]:
        if args.max_connections and "max_active_downstream_connections" in monitor["typed_config"]:
            monitor["typed_config"]["max_active_downstream_connections"] = args.max_connections
    hcm = bootstrap["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0][
        "typed_config"]
    head_kib = args.head_kib or hcm["max_request_headers_kb"] - 1
    with tempfile.TemporaryDirectory(prefix="front-memory-") as tmp:
        work = Path(tmp)
        (work / "front.yaml").write_text(yaml.safe_dump(bootstrap))
        admin_path = work / "admin"
        proc = subprocess.Popen(
            [envoy, "-c", str(work / "front.yaml"), "--disable-hot-restart",
             "--base-id", str(os.getpid() % 50000), "--admin-address-path", str(admin_path),
             "--concurrency", str(args.concurrency), "--log-level", "critical"],
            stdin=subprocess.DEVNULL, cwd=tmp,
        )
        sockets = []
        try:
            deadline = time.monotonic() + WAIT_SECONDS
            while not (admin_path.exists() and admin_path.read_text().strip()):
                if time.monotonic() > deadline or proc.poll() is not None:
                    sys.exit("front_memory: Envoy did not start")
                time.sleep(0.05)
            admin = int(admin_path.read_text().strip().rsplit(":", 1)[1])
            ports = {}
            while len(ports) < 2 and time.monotonic() < deadline:
                for line in admin_get(admin, "/listeners").splitlines():
                    name, _, address = line.partition("::")
                    if address:
                        ports[name] = int(address.rsplit(":", 1)[1])
                time.sleep(0.05)
            port = ports["front"]
            time.sleep(1)
            before = rss_mib(proc.pid)
            peak = before
            head = (b"GET /https%3A%2F%2Fo.test%2Fa.png HTTP/1.1\r\nHost: front.test\r\n"
                    + b"x-fill: " + b"a" * (head_kib * 1024 - 80) + b"\r\n")
            refused = 0
            last_poll = time.monotonic()
            for n in range(args.connections):
                try:
                    s = socket.create_connection(("127.0.0.1", port), timeout=5)
                    s.sendall(head)
                    sockets.append(s)
                except OSError:
                    refused += 1
                if time.monotonic() - last_poll > 0.1:
                    peak = max(peak, rss_mib(proc.pid))
                    last_poll = time.monotonic()
            hold = time.monotonic() + 5
            while time.monotonic() < hold:
                peak = max(peak, rss_mib(proc.pid))
                time.sleep(0.1)
            # What the kubelet's readiness probe gets while the client holds every slot.
            try:
                conn = http.client.HTTPConnection("127.0.0.1", ports["metrics"], timeout=5)
                conn.request("GET", "/ready")
                probe = conn.getresponse().status
                conn.close()
            except OSError as e:
                probe = f"failed: {e}"
            stats = admin_get(admin, "/stats?filter=(overload|downstream_cx_active|"
                                     "downstream_cx_overload|global_cx|cx_overload)")
            print(f"front_memory: {args.connections} connections, unfinished heads of "
                  f"{head_kib} KiB, --concurrency {args.concurrency}")
            print(f"  RSS before {before:.0f} MiB, peak {peak:.0f} MiB; "
                  f"{refused} connections refused while opening; /ready on the metrics "
                  f"listener meanwhile: {probe}; Envoy's counters:")
            for line in stats.splitlines():
                if line.startswith(("http.front.", "listener.127.0.0.1_0.downstream", "overload.")) \
                        and not line.endswith(": 0") and "refresh_interval_delay" not in line:
                    print("  " + line)
        finally:
            for s in sockets:
                s.close()
            proc.terminate()
            try:
                proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    main()
