#!/usr/bin/env python3
"""How many URLs change replica when one replica leaves and comes back, behind the shipped
consistent-hashing front (deploy/front/envoy-front.yaml), with its MAGLEV and with RING_HASH
(README: Caching, "One fetch per object across replicas"). Every URL that changes replica is
fetched from the origin once more, so this is what a restart, a crash or a scaling step costs.

    python3 bench/fleet_churn.py                 # 4 replicas, 3000 URLs, about 30 s
    python3 bench/fleet_churn.py --replicas 6 --urls 5000

Needs python3 with PyYAML (Debian: python3-yaml; deploy/validate.sh puts it in .venv, so
`.venv/bin/python bench/fleet_churn.py` works too). The replicas are tiny HTTP servers that
answer with their own name (the hash does not depend on what serves); Envoy 1.40
(IXPROXY_ENVOY, default .venv/bin/envoy) runs the shipped file with only its addresses
changed, everything on 127.0.0.1 with OS-assigned ports. For each policy: the URLs per
replica, then one replica stopped (the others' URLs that moved), then started again (URLs not
back on their first replica, and URLs that moved between the replicas that stayed).
"""

import argparse
import http.client
import http.server
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "deploy/front/envoy-front.yaml"
# How long Envoy or a replica change may take to show (polled every 50 ms).
WAIT_SECONDS = 15


class Replica:
    """An HTTP server on 127.0.0.1:0 answering every GET with its name."""

    def __init__(self, name):
        body = name.encode()

        class Handler(http.server.BaseHTTPRequestHandler):
            # One request per connection: once stopped, the replica answers nothing more
            # (a keep-alive handler thread would go on answering health checks).
            protocol_version = "HTTP/1.0"

            def do_GET(self):
                self.send_response(200)
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args):
                pass

        self.name = name
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self):
        self.server.shutdown()
        self.server.server_close()

    def restart(self):
        """Serves again on the same port (ThreadingHTTPServer sets SO_REUSEADDR)."""
        handler = self.server.RequestHandlerClass
        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", self.port), handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


def front_config(policy, replicas):
    """The shipped front on loopback port 0, its endpoints on `replicas`, under `policy`."""
    bootstrap = yaml.safe_load(SHIPPED.read_text())
    bootstrap["admin"]["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    for listener in bootstrap["static_resources"]["listeners"]:
        listener["address"]["socket_address"] = {"address": "127.0.0.1", "port_value": 0}
    cluster = next(c for c in bootstrap["static_resources"]["clusters"] if c["name"] == "replicas")
    for key in ("maglev_lb_config", "ring_hash_lb_config"):
        cluster.pop(key, None)
    cluster["lb_policy"] = policy
    if policy == "RING_HASH":
        cluster["ring_hash_lb_config"] = {"minimum_ring_size": 4096, "hash_function": "XX_HASH"}
    cluster["health_checks"][0]["http_health_check"]["path"] = "/"
    cluster["load_assignment"]["endpoints"] = [{"lb_endpoints": [
        {"endpoint": {"hostname": r.name,
                      "address": {"socket_address": {"address": "127.0.0.1", "port_value": r.port}},
                      "health_check_config": {"port_value": r.port}}}
        for r in replicas
    ]}]
    return bootstrap


def get(port, path):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        conn.request("GET", path)
        response = conn.getresponse()
        return response.status, response.read().decode()
    finally:
        conn.close()


def poll(what, check):
    deadline = time.monotonic() + WAIT_SECONDS
    while time.monotonic() < deadline:
        try:
            value = check()
            if value:
                return value
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit(f"fleet_churn: {what} not seen within {WAIT_SECONDS} s")


def run(policy, args, envoy, work):
    replicas = [Replica(f"ixproxy-{i}") for i in range(args.replicas)]
    config = work / f"front-{policy}.yaml"
    config.write_text(yaml.safe_dump(front_config(policy, replicas)))
    admin_path = work / f"admin-{policy}"
    proc = subprocess.Popen(
        [envoy, "-c", str(config), "--disable-hot-restart", "--base-id", str(os.getpid() % 50000),
         "--admin-address-path", str(admin_path), "--concurrency", "1", "--log-level", "error"],
        stdin=subprocess.DEVNULL,
    )
    try:
        admin = int(poll("admin address", lambda: admin_path.read_text().strip()).rsplit(":", 1)[1])

        def healthy(count):
            status, text = get(admin, "/clusters")
            found = sum(1 for line in text.splitlines()
                        if line.startswith("replicas::") and line.endswith("::health_flags::healthy"))
            return status == 200 and found == count

        listeners = json.loads(poll("listeners", lambda: get(admin, "/listeners?format=json")[1]))
        port = next(l["local_address"]["socket_address"]["port_value"]
                    for l in listeners["listener_statuses"] if l["name"] == "front")

        def mapping():
            result = {}
            conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            for i in range(args.urls):
                conn.request("GET", f"/https%3A%2F%2Forigin.test%2Fimg{i}.jpg?w={i % 7}")
                response = conn.getresponse()
                body = response.read().decode()
                if response.status != 200:
                    raise SystemExit(f"fleet_churn: {response.status} from the front: {body}")
                result[i] = body
            conn.close()
            return result

        poll("every replica healthy", lambda: healthy(args.replicas))
        before = mapping()
        victim = replicas[1]
        victim.stop()
        poll("the stopped replica unhealthy", lambda: healthy(args.replicas - 1))
        during = mapping()
        victim.restart()
        poll("the replica healthy again", lambda: healthy(args.replicas))
        after = mapping()
    finally:
        proc.terminate()
        proc.wait(timeout=WAIT_SECONDS)
        for replica in replicas:
            replica.stop()
    others = [i for i in before if before[i] != victim.name]
    moved_on_leave = sum(1 for i in others if during[i] != before[i])
    not_back = sum(1 for i in before if after[i] != before[i])
    moved_on_join = sum(1 for i in during if after[i] != during[i] and after[i] != victim.name)
    shares = sorted(Counter(before.values()).values())
    print(f"| {policy} | {shares[0]} to {shares[-1]} | {moved_on_leave} of {len(others)} "
          f"({100 * moved_on_leave / len(others):.1f} %) | {moved_on_join} | {not_back} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--replicas", type=int, default=4)
    parser.add_argument("--urls", type=int, default=3000)
    args = parser.parse_args()
    envoy = os.environ.get("IXPROXY_ENVOY", str(ROOT / ".venv/bin/envoy"))
    if not Path(envoy).is_file():
        sys.exit(f"fleet_churn: no Envoy at {envoy} (set IXPROXY_ENVOY)")
    print(f"{args.replicas} replicas, {args.urls} URLs, one replica stopped then started again")
    print("| policy | URLs per replica | others' URLs moved when it left | moved between the "
          "others when it came back | URLs not back on their first replica |")
    print("| --- | --- | --- | --- | --- |")
    with tempfile.TemporaryDirectory(prefix="ixproxy-churn-") as work:
        for policy in ("MAGLEV", "RING_HASH"):
            run(policy, args, envoy, Path(work))


if __name__ == "__main__":
    main()
