#!/usr/bin/env python3
"""The side-by-side benchmark of ixproxy (bench/README.md); run it through bench/run.sh.

Every path serves the same two files from one nginx origin on loopback:

  origin     the origin directly (the ceiling)
  nginx      nginx `secure_link_md5` + `proxy_pass` with upstream keepalive (the peer)
  camo       GitHub's camo from Debian (Node.js), HMAC-SHA1 signed URLs
  envoy-dfp  Envoy 1.40 dynamic forward proxy, no filter (the Envoy baseline)
  envoy-wasm Envoy DFP + bench/floor-filter (reads :path, sets one header: the Wasm floor)
  envoy-ix   Envoy with the ixproxy filter, bootstrap from `ixproxy envoy-config`
  pingora    bench/floor-pingora: bare Pingora, fixed peer, one added header (the native floor)
  serve      `ixproxy serve`

Both ixproxy runtimes use per-request HMAC signing; their origin location answers 403 to a
request without `X-Imgix-Signature`, so every counted 200 was signed.

The proxy under test runs on CPU 1 with one worker; wrk (`-t1 -c32`) and the origin share
CPU 0. Rounds alternate over all paths and both bodies so machine drift hits all alike; each
figure is the median over rounds. CPU per request is the proxy's own user+system time (all its
processes and threads) over the run, divided by the requests wrk completed. Peak RSS is the
largest sum of VmRSS sampled during the runs. A separate phase opens 1,000 keep-alive
connections to each proxy (one 1 KiB request each, then idle) on a fresh process and reports
the RSS they add.
"""

import argparse
import base64
import datetime
import hashlib
import hmac
import json
import os
import platform
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.parse

LOAD_CPU = "0"
PROXY_CPU = "1"
ORIGIN_PORT = 18081
TOKEN = "bench-token-0123456789abcdef"
SIGNING_KEY = "bench-signing-key"
NGINX_SECRET = "bench-nginx-secret"
CAMO_KEY = "bench-camo-key-0123456789"
BODIES = {"1 KiB": ("1k.png", 1024), "1 MiB": ("1m.png", 1024 * 1024)}
CLK_TCK = os.sysconf("SC_CLK_TCK")
MEMORY_CONNECTIONS = 1000
START_TIMEOUT = 30.0


def log(msg):
    print(msg, flush=True)


# ---------------------------------------------------------------- processes


def proc_tree(pid):
    """pid and all its descendants (from /proc)."""
    children = {}
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat[stat.rindex(")") + 2 :].split()[1])
        children.setdefault(ppid, []).append(int(entry))
    tree, todo = [], [pid]
    while todo and len(tree) < 10_000:
        p = todo.pop()
        tree.append(p)
        todo.extend(children.get(p, []))
    return tree


def cpu_seconds(pid):
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime
    return total / CLK_TCK


def rss_kib(pid):
    total = 0
    for p in proc_tree(pid):
        try:
            with open(f"/proc/{p}/status") as f:
                for line in f:
                    if line.startswith("VmRSS:"):
                        total += int(line.split()[1])
        except OSError:
            continue
    return total


def cpu_times(cpu):
    """(steal, total) jiffies of one CPU from /proc/stat."""
    with open("/proc/stat") as f:
        for line in f:
            if line.startswith(f"cpu{cpu} "):
                fields = [int(x) for x in line.split()[1:]]
                return fields[7], sum(fields[:8])
    return 0, 0


def wait_port(port, proc, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"exited with {proc.returncode} before listening on {port}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"not listening on {port} after {timeout}s")


class Service:
    def __init__(self, name, cmd, port, workdir, cpu, env=None):
        self.name, self.cmd, self.port, self.cpu = name, cmd, port, cpu
        self.log_path = os.path.join(workdir, f"{name}.log")
        self.env = env
        self.proc = None

    def start(self):
        # A leftover listener would be measured instead of this service: refuse to start.
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5):
                raise RuntimeError(f"{self.name}: port {self.port} is already in use")
        except OSError:
            pass
        logf = open(self.log_path, "ab")
        env = dict(os.environ)
        env.update(self.env or {})
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.cpu] + self.cmd,
            stdout=logf,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=env,
            start_new_session=True,
        )
        try:
            wait_port(self.port, self.proc)
            time.sleep(0.3)
            if self.proc.poll() is not None:
                raise RuntimeError(f"exited with {self.proc.returncode} after listening")
        except RuntimeError as e:
            self.stop()
            with open(self.log_path, errors="replace") as f:
                tail = f.read()[-2000:]
            raise RuntimeError(f"{self.name}: {e}\n{tail}") from None

    @property
    def pid(self):
        return self.proc.pid

    def stop(self):
        if self.proc is None or self.proc.poll() is not None:
            return
        try:
            os.killpg(self.proc.pid, 9)
        except ProcessLookupError:
            pass
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            pass


# ---------------------------------------------------------------- configs


def nginx_conf(workdir, name, port, body):
    prefix = os.path.join(workdir, name)
    os.makedirs(os.path.join(prefix, "logs"), exist_ok=True)
    conf = os.path.join(prefix, "nginx.conf")
    with open(conf, "w") as f:
        f.write(
            f"""daemon off;
master_process on;
worker_processes 1;
pid {prefix}/nginx.pid;
error_log {prefix}/logs/error.log warn;
worker_rlimit_nofile 65536;
events {{ worker_connections 8192; }}
http {{
  include /etc/nginx/mime.types;
  access_log off;
  keepalive_timeout 300s;
  keepalive_requests 10000000;
  client_body_temp_path {prefix}/client_body;
  proxy_temp_path {prefix}/proxy;
  fastcgi_temp_path {prefix}/fastcgi;
  uwsgi_temp_path {prefix}/uwsgi;
  scgi_temp_path {prefix}/scgi;
{body}
}}
"""
        )
    return ["nginx", "-p", prefix, "-e", f"{prefix}/logs/error.log", "-c", conf]


def origin_body(files):
    return f"""  sendfile on;
  server {{
    listen 127.0.0.1:{ORIGIN_PORT} backlog=4096;
    root {files};
    # The ixproxy paths: a request that was not signed per request is refused.
    location /s/ {{
      if ($http_x_imgix_signature = "") {{ return 403; }}
      alias {files}/a/;
    }}
  }}"""


def nginx_peer_body(port):
    return f"""  upstream origin {{ server 127.0.0.1:{ORIGIN_PORT}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      secure_link $arg_md5;
      secure_link_md5 "$uri {NGINX_SECRET}";
      if ($secure_link = "") {{ return 403; }}
      proxy_pass http://origin;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      add_header X-Content-Type-Options nosniff;
    }}
  }}"""


def envoy_dfp_conf(port, admin, wasm=None):
    filters = []
    if wasm:
        filters.append(
            {
                "name": "envoy.filters.http.wasm",
                "typed_config": {
                    "@type": "type.googleapis.com/envoy.extensions.filters.http.wasm.v3.Wasm",
                    "config": {
                        "name": "floor",
                        "root_id": "floor",
                        "vm_config": {
                            "vm_id": "floor",
                            "runtime": "envoy.wasm.runtime.v8",
                            "code": {"local": {"filename": wasm}},
                        },
                    },
                },
            }
        )
    cache = {"name": "dfp", "dns_lookup_family": "V4_PREFERRED"}
    filters += [
        {
            "name": "envoy.filters.http.dynamic_forward_proxy",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.dynamic_forward_proxy.v3.FilterConfig",
                "dns_cache_config": cache,
            },
        },
        {
            "name": "envoy.filters.http.router",
            "typed_config": {
                "@type": "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
            },
        },
    ]
    return {
        "admin": {"address": {"socket_address": {"address": "127.0.0.1", "port_value": admin}}},
        "static_resources": {
            "listeners": [
                {
                    "name": "bench",
                    "address": {"socket_address": {"address": "127.0.0.1", "port_value": port}},
                    "filter_chains": [
                        {
                            "filters": [
                                {
                                    "name": "envoy.filters.network.http_connection_manager",
                                    "typed_config": {
                                        "@type": "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager",
                                        "stat_prefix": "bench",
                                        "codec_type": "AUTO",
                                        "route_config": {
                                            "virtual_hosts": [
                                                {
                                                    "name": "all",
                                                    "domains": ["*"],
                                                    "routes": [
                                                        {
                                                            "match": {"prefix": "/"},
                                                            "route": {"cluster": "dfp"},
                                                        }
                                                    ],
                                                }
                                            ]
                                        },
                                        "http_filters": filters,
                                    },
                                }
                            ]
                        }
                    ],
                }
            ],
            "clusters": [
                {
                    "name": "dfp",
                    "lb_policy": "CLUSTER_PROVIDED",
                    "cluster_type": {
                        "name": "envoy.clusters.dynamic_forward_proxy",
                        "typed_config": {
                            "@type": "type.googleapis.com/envoy.extensions.clusters.dynamic_forward_proxy.v3.ClusterConfig",
                            "dns_cache_config": cache,
                        },
                    },
                }
            ],
        },
    }


def ixproxy_yaml(port, admin, origin_port=ORIGIN_PORT, access_log="off"):
    return f"""# bench/bench.py: one source, per-request origin signing, access log off like the peers
# (bench/instructions.py: on).
listen: 127.0.0.1:{port}
admin_listen: 127.0.0.1:{admin}
server:
  threads: 1
access_log: {access_log}
limits:
  client_idle_timeout: 300s
sources:
  - name: bench
    hosts: [127.0.0.1]
    secure_url_tokens: [{TOKEN}]
    origin_auth:
      request_signing_key: {SIGNING_KEY}
    allowed_origin_hosts: ["127.0.0.1:{origin_port}"]
    allow_private_origins: true
"""


# ---------------------------------------------------------------- signed URLs


def imgix_target(origin_url):
    """The Web Proxy target an imgix SDK signs (js-core: encodeURIComponent, then MD5)."""
    path = "/" + urllib.parse.quote(origin_url, safe="-_.!~*'()")
    signature = hashlib.md5((TOKEN + path).encode()).hexdigest()
    return f"{path}?s={signature}"


def nginx_target(path):
    digest = hashlib.md5(f"{path} {NGINX_SECRET}".encode()).digest()
    return f"{path}?md5={base64.urlsafe_b64encode(digest).decode().rstrip('=')}"


def camo_target(origin_url):
    digest = hmac.new(CAMO_KEY.encode(), origin_url.encode(), hashlib.sha1).hexdigest()
    return f"/{digest}/{origin_url.encode().hex()}"


# ---------------------------------------------------------------- paths


class Path:
    def __init__(self, key, label, runtime, service, port, target_for, host=None, floor=None):
        self.key, self.label, self.runtime = key, label, runtime
        self.service, self.port = service, port
        self.target_for = target_for  # file name -> request target
        self.host = host or f"127.0.0.1:{port}"
        self.floor = floor  # key of the path this one is compared with, in its runtime


def build_paths(args, workdir):
    root = args.root
    release = os.path.join(root, "target", "release")
    wasm_dir = os.path.join(root, "target", "wasm32-wasip1", "release")
    ixproxy = os.path.join(release, "ixproxy")
    envoy = args.envoy
    origin_of = lambda prefix, name: f"http://127.0.0.1:{ORIGIN_PORT}/{prefix}/{name}"

    files = os.path.join(workdir, "files")
    os.makedirs(os.path.join(files, "a"), exist_ok=True)
    for name, size in BODIES.values():
        with open(os.path.join(files, "a", name), "wb") as f:
            # A PNG signature then filler: camo only proxies image types, nginx says image/png.
            f.write((b"\x89PNG\r\n\x1a\n" + os.urandom(size))[:size])
    os.chmod(workdir, 0o755)
    for d in (files, os.path.join(files, "a")):
        os.chmod(d, 0o755)

    def envoy_service(name, port, admin, conf_obj=None, conf_path=None):
        if conf_path is None:
            conf_path = os.path.join(workdir, f"{name}.yaml")
            with open(conf_path, "w") as f:
                json.dump(conf_obj, f, indent=1)
        cmd = [envoy, "-c", conf_path, "--concurrency", "1", "--disable-hot-restart",
               "-l", "error", "--base-id", str(port)]
        return Service(name, cmd, port, workdir, PROXY_CPU)

    ix_envoy_yaml = os.path.join(workdir, "ixproxy-envoy.yaml")
    with open(ix_envoy_yaml, "w") as f:
        f.write(ixproxy_yaml(18086, 18186))
    ix_envoy_bootstrap = os.path.join(workdir, "envoy-ix.yaml")
    with open(ix_envoy_bootstrap, "w") as f:
        subprocess.run(
            [ixproxy, "envoy-config", "-c", ix_envoy_yaml, "--allow-literal-secrets",
             "--wasm", os.path.join(wasm_dir, "ixproxy_filter.wasm")],
            stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=60,
        )
    serve_yaml = os.path.join(workdir, "ixproxy-serve.yaml")
    with open(serve_yaml, "w") as f:
        f.write(ixproxy_yaml(18088, 18188))
    # The configuration the targets of issue 18 name: the JSON access log on, its lines in a
    # file (the service's stdout), as a deployment writing to a file or a pipe has them.
    serve_log_yaml = os.path.join(workdir, "ixproxy-serve-log.yaml")
    with open(serve_log_yaml, "w") as f:
        f.write(ixproxy_yaml(18089, 18189, access_log="json"))

    origin = Service("origin", nginx_conf(workdir, "origin", ORIGIN_PORT, origin_body(files)),
                     ORIGIN_PORT, workdir, LOAD_CPU)
    paths = [
        Path("origin", "origin directly (ceiling)", "origin", None, ORIGIN_PORT,
             lambda n: f"/a/{n}"),
        Path("nginx", "nginx secure_link_md5 + proxy_pass", "peer",
             Service("nginx", nginx_conf(workdir, "nginx", 18082, nginx_peer_body(18082)),
                     18082, workdir, PROXY_CPU),
             18082, lambda n: nginx_target(f"/a/{n}")),
        Path("camo", "camo (Debian, Node.js)", "peer",
             Service("camo", ["node", "/usr/share/camo/server.js"], 18083, workdir, PROXY_CPU,
                     env={"PORT": "18083", "CAMO_KEY": CAMO_KEY, "CAMO_KEEP_ALIVE": "true",
                          "CAMO_LOGGING_ENABLED": "disabled"}),
             18083, lambda n: camo_target(origin_of("a", n))),
        Path("envoy-dfp", "Envoy DFP, no filter", "envoy",
             envoy_service("envoy-dfp", 18084, 18184, envoy_dfp_conf(18084, 18184)),
             18084, lambda n: f"/a/{n}", host=f"127.0.0.1:{ORIGIN_PORT}"),
        Path("envoy-wasm", "Envoy DFP + trivial Wasm filter (floor)", "envoy",
             envoy_service("envoy-wasm", 18085, 18185, envoy_dfp_conf(
                 18085, 18185, os.path.join(wasm_dir, "ixproxy_bench_floor_filter.wasm"))),
             18085, lambda n: f"/a/{n}", host=f"127.0.0.1:{ORIGIN_PORT}", floor="envoy-dfp"),
        Path("envoy-ix", "Envoy + ixproxy filter", "envoy",
             envoy_service("envoy-ix", 18086, 18186, conf_path=ix_envoy_bootstrap),
             18086, lambda n: imgix_target(origin_of("s", n)), floor="envoy-dfp"),
        Path("pingora", "bare Pingora proxy (floor)", "native",
             Service("pingora", [os.path.join(release, "floor-pingora"), "127.0.0.1:18087",
                                 f"127.0.0.1:{ORIGIN_PORT}", "1"], 18087, workdir, PROXY_CPU),
             18087, lambda n: f"/a/{n}"),
        Path("serve", "ixproxy serve", "native",
             Service("serve", [ixproxy, "serve", "-c", serve_yaml,
                               "--upgrade-sock", os.path.join(workdir, "upgrade.sock")],
                     18088, workdir, PROXY_CPU),
             18088, lambda n: imgix_target(origin_of("s", n)), floor="pingora"),
        Path("serve-log", "ixproxy serve, JSON access log", "native",
             Service("serve-log", [ixproxy, "serve", "-c", serve_log_yaml,
                                   "--upgrade-sock", os.path.join(workdir, "upgrade-log.sock")],
                     18089, workdir, PROXY_CPU),
             18089, lambda n: imgix_target(origin_of("s", n)), floor="pingora"),
    ]
    return origin, paths


# ---------------------------------------------------------------- HTTP client bits


def read_response(sock):
    """Reads one HTTP/1.1 response; returns (status, headers, body length)."""
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = sock.recv(65536)
        if not chunk:
            raise RuntimeError("connection closed in the response head")
        buf += chunk
        if len(buf) > 1 << 20:
            raise RuntimeError("response head too large")
    head, rest = buf.split(b"\r\n\r\n", 1)
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split()[1])
    headers = {}
    for line in lines[1:]:
        k, _, v = line.partition(":")
        headers[k.strip().lower()] = v.strip()
    if "content-length" in headers:
        need = int(headers["content-length"])
        while len(rest) < need:
            chunk = sock.recv(min(1 << 20, need - len(rest)))
            if not chunk:
                raise RuntimeError("connection closed in the body")
            rest += chunk
        return status, headers, need
    if headers.get("transfer-encoding", "").lower() == "chunked":
        body = 0
        for _ in range(100_000):
            while b"\r\n" not in rest:
                rest += sock.recv(65536)
            size_line, rest = rest.split(b"\r\n", 1)
            size = int(size_line.split(b";")[0], 16)
            while len(rest) < size + 2:
                chunk = sock.recv(65536)
                if not chunk:
                    raise RuntimeError("connection closed in a chunk")
                rest += chunk
            rest = rest[size + 2 :]
            body += size
            if size == 0:
                return status, headers, body
    raise RuntimeError("response without a length")


def request_bytes(path, target):
    return (f"GET {target} HTTP/1.1\r\nHost: {path.host}\r\nUser-Agent: ixproxy-bench\r\n"
            "Accept-Encoding: identity\r\n\r\n").encode()


def check_path(path, name, size):
    """One request by hand: the path must answer 200 with the whole body."""
    with socket.create_connection(("127.0.0.1", path.port), timeout=10) as s:
        s.sendall(request_bytes(path, path.target_for(name)))
        status, headers, length = read_response(s)
    if status != 200 or length != size:
        raise RuntimeError(f"{path.key}: {name} answered {status} with {length} bytes")
    return headers


# ---------------------------------------------------------------- wrk


def parse_duration_ms(value, unit):
    return float(value) * {"us": 0.001, "ms": 1.0, "s": 1000.0}[unit]


def run_wrk(path, name, seconds, connections, pid):
    url = f"http://127.0.0.1:{path.port}{path.target_for(name)}"
    cmd = ["taskset", "-c", LOAD_CPU, "wrk", "-t1", f"-c{connections}", f"-d{seconds}s",
           "--latency", "--timeout", "10s", "-H", f"Host: {path.host}",
           # Every client sends it: camo 2.3 on Node.js 20 crashes on a request without one.
           "-H", "Accept-Encoding: identity", url]
    peak = [0]
    stop = threading.Event()

    def sample():
        while not stop.wait(0.25):
            peak[0] = max(peak[0], rss_kib(pid))

    sampler = threading.Thread(target=sample, daemon=True)
    cpu0 = cpu_seconds(pid)
    steal0, total0 = cpu_times(PROXY_CPU)
    sampler.start()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=seconds + 60).stdout
    stop.set()
    sampler.join()
    cpu = cpu_seconds(pid) - cpu0
    steal1, total1 = cpu_times(PROXY_CPU)
    requests = int(re.search(r"(\d+) requests in", out).group(1))
    bad = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    errors = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    lat = {}
    for pct in ("50", "99"):
        m = re.search(rf"^\s+{pct}(?:\.0+)?%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)
        lat[pct] = parse_duration_ms(m.group(1), m.group(2))
    return {
        "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
        "p50": lat["50"],
        "p99": lat["99"],
        "cpu_us": cpu * 1e6 / max(requests, 1),
        "rss_kib": peak[0],
        "requests": requests,
        "non2xx": int(bad.group(1)) if bad else 0,
        "socket_errors": sum(int(x) for x in errors.groups()) if errors else 0,
        # Time the hypervisor gave CPU 1 to someone else: the noise this machine has.
        "steal": (steal1 - steal0) / max(total1 - total0, 1),
    }


# ---------------------------------------------------------------- memory per connection


def memory_run(path, pid, count):
    name, size = BODIES["1 KiB"]
    req = request_bytes(path, path.target_for(name))
    time.sleep(0.5)
    idle = rss_kib(pid)
    socks, served = [], 0
    deadline = time.monotonic() + 120
    try:
        for _ in range(count):
            if time.monotonic() > deadline:
                break
            s = socket.create_connection(("127.0.0.1", path.port), timeout=10)
            socks.append(s)
            s.sendall(req)
            status, _, length = read_response(s)
            served += status == 200 and length == size
        time.sleep(1.0)
        loaded = rss_kib(pid)
        # Still open: each connection answers a second request.
        alive = 0
        for s in socks[:: max(1, len(socks) // 20)]:
            try:
                s.sendall(req)
                alive += read_response(s)[0] == 200
            except (OSError, RuntimeError):
                pass
    finally:
        for s in socks:
            s.close()
    probes = len(socks[:: max(1, len(socks) // 20)])
    return {"idle_kib": idle, "loaded_kib": loaded, "served": served, "alive": alive,
            "probes": probes}


# ---------------------------------------------------------------- criterion, versions


def criterion_results(root):
    base = os.path.join(root, "target", "criterion")
    results = {}
    if not os.path.isdir(base):
        return results
    for group in sorted(os.listdir(base)):
        gdir = os.path.join(base, group)
        if not os.path.isdir(gdir):
            continue
        for fn in sorted(os.listdir(gdir)):
            bench = os.path.join(gdir, fn, "new", "benchmark.json")
            est = os.path.join(gdir, fn, "new", "estimates.json")
            if not (os.path.exists(bench) and os.path.exists(est)):
                continue
            with open(bench) as f:
                meta = json.load(f)
            with open(est) as f:
                mean = json.load(f)["mean"]["point_estimate"]
            results[(meta["group_id"], meta["function_id"])] = mean
    return results


def version_of(cmd, pattern=None):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return "not found"
    text = (p.stdout + p.stderr).strip()
    if pattern:
        m = re.search(pattern, text)
        return m.group(0) if m else text.splitlines()[0] if text else "?"
    return text.splitlines()[0] if text else "?"


def versions(args):
    root = args.root
    with open(os.path.join(root, "Cargo.lock")) as f:
        lock = f.read()
    pingora = re.search(r'name = "pingora"\nversion = "([^"]+)"', lock)
    mimalloc = re.search(r'name = "mimalloc"\nversion = "([^"]+)"', lock)
    cpu = "?"
    with open("/proc/cpuinfo") as f:
        for line in f:
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    try:
        with open("/usr/share/camo/package.json") as f:
            camo = json.load(f).get("version", "?")
    except OSError:
        camo = "?"
    commit = version_of(["git", "-C", root, "rev-parse", "--short", "HEAD"])
    return [
        ("machine", f"{cpu}, {os.cpu_count()} CPUs, Linux {platform.release()}"),
        ("ixproxy", f"commit {commit}, `cargo build --release` (LTO, codegen-units 1), mimalloc {mimalloc.group(1) if mimalloc else '?'}"),
        ("rustc", version_of(["rustc", "--version"])),
        ("Pingora", pingora.group(1) if pingora else "?"),
        ("Envoy", version_of([args.envoy, "--version"], r"\d+\.\d+\.\d+/[^ ]*|version: \S+")),
        ("nginx", version_of(["nginx", "-v"], r"nginx/\S+")),
        ("wrk", version_of(["wrk", "-v"], r"wrk \S+")),
        ("camo", f"{camo} on Node.js {version_of(['node', '--version'])}"),
    ]


# ---------------------------------------------------------------- report


def median(rows, field):
    return statistics.median(r[field] for r in rows)


def ratio(a, b):
    return a / b if b else float("nan")


def write_results(args, paths, results, memory, crit, elapsed):
    by_key = {p.key: p for p in paths}
    med = {
        (k, body): {f: median(rows, f) for f in ("rps", "p50", "p99", "cpu_us", "steal")}
        | {"rss_kib": max(r["rss_kib"] for r in rows),
           "bad": sum(r["non2xx"] + r["socket_errors"] for r in rows)}
        for (k, body), rows in results.items()
    }

    def paired(a, b, body, field):
        """Median over rounds of a/b, each round's pair measured minutes apart at most: less
        exposed to the machine's drift than the ratio of two medians."""
        ra, rb = results.get((a, body)), results.get((b, body))
        if not ra or not rb:
            return float("nan")
        return statistics.median(x[field] / y[field] for x, y in zip(ra, rb) if y[field])
    out = []
    w = out.append
    w("# ixproxy benchmark results")
    w("")
    w(f"Written by `bash bench/run.sh` (bench/README.md) on "
      f"{datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}, "
      f"{args.rounds} alternating rounds of {args.seconds} s per path and body, "
      f"wrk `-t1 -c{args.connections}`; each figure is the median over rounds "
      f"(peak RSS: the largest sample). The proxy runs alone on CPU 1 with one worker; wrk and "
      f"the origin nginx share CPU 0. CPU µs/req is the proxy's own user+system time "
      f"per completed request. Ratios are medians of each round's own ratio (the two paths of a "
      f"pair run back to back), so they can differ from the ratio of two medians; `steal` is the "
      f"share of CPU 1 the hypervisor gave elsewhere during the runs. Whole run: {elapsed / 60:.1f} min.")
    w("")
    for body in BODIES:
        w(f"## {body} body")
        w("")
        w("| path | req/s | p50 ms | p99 ms | CPU µs/req | peak RSS MiB | CPU vs nginx | req/s vs nginx | CPU vs floor | steal |")
        w("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        nginx = med.get(("nginx", body))
        for p in paths:
            m = med.get((p.key, body))
            if m is None:
                continue
            floor = med.get((p.floor, body)) if p.floor else None
            cpu_floor = f"{paired(p.key, p.floor, body, 'cpu_us'):.2f}× {by_key[p.floor].label.split(' (')[0]}" if floor else ""
            vs_nginx_cpu = f"{paired(p.key, 'nginx', body, 'cpu_us'):.2f}×" if nginx and p.key != "origin" else ""
            vs_nginx_rps = f"{paired(p.key, 'nginx', body, 'rps'):.2f}×" if nginx else ""
            note = f" ⚠ {m['bad']} errors" if m["bad"] else ""
            cpu_col = f"{m['cpu_us']:.1f}" + (" (origin's)" if p.key == "origin" else "")
            w(f"| {p.label}{note} | {m['rps']:.0f} | {m['p50']:.3f} | {m['p99']:.3f} | "
              f"{cpu_col} | {m['rss_kib'] / 1024:.1f} | {vs_nginx_cpu} | {vs_nginx_rps} | {cpu_floor} | "
              f"{m['steal'] * 100:.0f}% |")
        w("")
    w(f"## {MEMORY_CONNECTIONS:,} idle keep-alive connections")
    w("")
    w("A fresh process; one 1 KiB request on each connection, then all stay open and idle. "
      "`alive` is how many sampled connections answered a second request afterwards.")
    w("")
    w("| path | RSS idle MiB | RSS with the connections MiB | added MiB | KiB per connection | served | alive |")
    w("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for p in paths:
        m = memory.get(p.key)
        if not m:
            continue
        added = (m["loaded_kib"] - m["idle_kib"]) / 1024
        w(f"| {p.label} | {m['idle_kib'] / 1024:.1f} | {m['loaded_kib'] / 1024:.1f} | {added:.1f} | "
          f"{(m['loaded_kib'] - m['idle_kib']) / MEMORY_CONNECTIONS:.1f} | {m['served']} | "
          f"{m['alive']}/{m['probes']} |")
    w("")
    w("## Core (criterion, `core/benches/core.rs`)")
    w("")
    w("| operation | ixproxy ns | raw hash ns | ratio |")
    w("| --- | ---: | ---: | ---: |")
    for (group, fn), ns in sorted(crit.items()):
        if fn.startswith("raw"):
            continue
        raw = next((v for (g, f), v in crit.items() if g == group and f.startswith("raw")), None)
        w(f"| {group}: {fn} | {ns:.0f} | {raw:.0f} ({next(f for (g, f) in crit if g == group and f.startswith('raw'))}) | {ratio(ns, raw):.2f}× |")
    w("")
    wasm = os.path.join(args.root, "target", "wasm32-wasip1", "release", "ixproxy_filter.wasm")
    wasm_size = os.path.getsize(wasm)
    w(f"Release `ixproxy_filter.wasm`: {wasm_size:,} bytes ({wasm_size / 1000:.0f} KB).")
    w("")

    # Targets (issue 18), on the 1 KiB body: ixproxy serve as it runs in production (the JSON
    # access log on) against the bare Pingora floor, the Envoy filter against DFP. The
    # instruction-count targets are bench/instructions.sh's and bench/core_instructions.py's.
    w("## Targets (issue 18, 1 KiB body)")
    w("")
    w("| target | measured | met |")
    w("| --- | --- | --- |")
    k = "1 KiB"

    def target(name, value, ok):
        w(f"| {name} | {value} | {'yes' if ok else '**no**'} |")

    if med.get(("serve-log", k)) and med.get(("pingora", k)):
        r = paired("serve-log", "pingora", k, "cpu_us")
        target("`ixproxy serve` (JSON access log) CPU/request ≤ 1.35× bare Pingora", f"{r:.2f}×",
               r <= 1.35)
        r = paired("serve-log", "pingora", k, "rps")
        target("`ixproxy serve` (JSON access log) req/s ≥ 0.75× bare Pingora", f"{r:.2f}×",
               r >= 0.75)
    if med.get(("envoy-ix", k)) and med.get(("envoy-dfp", k)):
        r = paired("envoy-ix", "envoy-dfp", k, "cpu_us")
        target("Envoy + ixproxy CPU/request ≤ 1.6× Envoy DFP", f"{r:.2f}×", r <= 1.6)
    dec = crit.get(("decide", "ixproxy decide (forward)"))
    raw = crit.get(("decide", "raw md5 of the base"))
    if dec and raw:
        target("`decide` ≤ 1.5× the raw MD5 of its bytes (criterion time; the target's own "
               "measure is instructions: bench/core_instructions.py)",
               f"{ratio(dec, raw):.2f}×", ratio(dec, raw) <= 1.5)
    m = memory.get("serve")
    if m:
        added = (m["loaded_kib"] - m["idle_kib"]) / 1024
        target(f"{MEMORY_CONNECTIONS:,} idle keep-alive connections ≤ 64 MiB RSS above idle "
               "(native, issue 12)", f"{added:.1f} MiB", added <= 64)
    w("")
    w("## Machine and versions")
    w("")
    for name, value in versions(args):
        w(f"- {name}: {value}")
    w("")
    notes = os.path.join(args.root, "bench", "NOTES.md")
    if os.path.exists(notes):
        w("See bench/NOTES.md for the profile behind each figure and what was changed for it.")
        w("")
    with open(args.out, "w") as f:
        f.write("\n".join(out))
    log(f"wrote {args.out}")


# ---------------------------------------------------------------- main


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", required=True)
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--seconds", type=int, default=int(os.environ.get("IXPROXY_BENCH_SECONDS", "6")))
    ap.add_argument("--rounds", type=int, default=int(os.environ.get("IXPROXY_BENCH_ROUNDS", "5")))
    ap.add_argument("--connections", type=int, default=32)
    ap.add_argument("--only", default=os.environ.get("IXPROXY_BENCH_ONLY", ""),
                    help="comma-separated path keys (default: all)")
    args = ap.parse_args()
    args.root = os.path.abspath(args.root)
    args.envoy = os.path.abspath(args.envoy)
    if os.cpu_count() < 2:
        sys.exit("bench: needs 2 CPUs (proxy on CPU 1, load on CPU 0)")
    # The harness itself (sampling, the memory phase's client) stays off the proxy's CPU.
    os.sched_setaffinity(0, {int(LOAD_CPU)})
    started = time.monotonic()
    workdir = tempfile.mkdtemp(prefix="ixproxy-bench-")
    origin, paths = build_paths(args, workdir)
    if args.only:
        keep = set(args.only.split(","))
        paths = [p for p in paths if p.key in keep]
    services = [origin] + [p.service for p in paths if p.service]
    results, memory = {}, {}
    try:
        origin.start()
        # Memory per connection first, on fresh processes, one at a time.
        for p in paths:
            if p.service is None:
                continue
            p.service.start()
            check_path(p, *BODIES["1 KiB"])
            memory[p.key] = memory_run(p, p.service.pid, MEMORY_CONNECTIONS)
            log(f"memory {p.key}: {memory[p.key]}")
            p.service.stop()
        for p in paths:
            if p.service:
                p.service.start()
            for name, size in BODIES.values():
                check_path(p, name, size)
        pid_of = lambda p: (p.service or origin).pid
        # Warm-up: every path and body once, not counted.
        for p in paths:
            for name, _ in BODIES.values():
                run_wrk(p, name, 2, args.connections, pid_of(p))
        for rnd in range(args.rounds):
            for body, (name, _) in BODIES.items():
                for p in paths:
                    r = run_wrk(p, name, args.seconds, args.connections, pid_of(p))
                    results.setdefault((p.key, body), []).append(r)
                    log(f"round {rnd + 1} {body} {p.key}: {r['rps']:.0f} req/s, "
                        f"{r['cpu_us']:.1f} µs/req, p99 {r['p99']:.3f} ms"
                        + (f", {r['non2xx']} non-2xx, {r['socket_errors']} socket errors"
                           if r["non2xx"] or r["socket_errors"] else ""))
    finally:
        for s in services:
            s.stop()
    write_results(args, paths, results, memory, criterion_results(args.root),
                  time.monotonic() - started)


if __name__ == "__main__":
    main()
