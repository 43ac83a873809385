#!/usr/bin/env python3
"""User-space instructions per request of `ixproxy serve` and of the bare Pingora floor.

Wall-clock and CPU figures on shared machines swing by tens of percent; the instructions a
process executes for a fixed load do not. Each proxy runs under `valgrind --tool=callgrind`
with one worker thread; a warm-up goes through it, then `callgrind_control -z` zeroes the
counters, a fixed number of requests (not a fixed time) goes through, and `callgrind_control
-d` dumps what they cost: every thread of the proxy process, user space only (the kernel's
work and the origin's and client's instructions are not counted).

The load is the issue-17 reference: 1 KiB `image/png` objects over keep-alive connections
(4 by default, like `wrk -t1 -c4`), each request sending only `Host` and `Accept-Encoding:
identity` (wrk's request). `ixproxy serve` verifies the imgix-signed URL (bench.py's signer),
signs every origin request (`request_signing_key`: HMAC-SHA256 per request) and writes the
JSON access log (to a file); the origin refuses a request without `X-Imgix-Signature`, so
every counted 200 was signed. The floor (bench/floor-pingora) forwards to the same origin
and adds one header.

The origin is a small threaded HTTP/1.1 server in this script, outside valgrind, answering
with the headers nginx's static module sends (the bench origin) so the proxies parse and
filter the same response as in bench/run.sh. Ports are OS-assigned.

    python3 bench/instructions.py --ixproxy target/profiling/ixproxy \\
        --floor target/profiling/floor-pingora [--requests 2000] [--max-ratio 2.05]

Prints one line per proxy and the ratio; with --max-ratio, exits 1 when serve/floor is above
it. --annotate FILE writes callgrind_annotate's per-function table of serve's measured window
(and the floor's to FILE.floor).
"""

import argparse
import email.utils
import glob
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import imgix_target, ixproxy_yaml, read_response  # noqa: E402

BODY_SIZE = 1024
START_TIMEOUT = 120.0  # valgrind reads the profiling binary's debug info first
REQUEST_TIMEOUT = 60.0


# ---------------------------------------------------------------- origin


class Origin:
    """A loopback HTTP/1.1 keep-alive origin serving one 1 KiB PNG with nginx's response
    headers: at /a/1k.png (the floor's path), and at /s/1k.png (ixproxy's) only to a request
    with X-Imgix-Signature, else 403; 404 elsewhere."""

    def __init__(self):
        self.body = (b"\x89PNG\r\n\x1a\n" + os.urandom(BODY_SIZE))[:BODY_SIZE]
        self.modified = email.utils.formatdate(time.time() - 3600, usegmt=True)
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        self.port = self.sock.getsockname()[1]
        self.refused = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self):
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        buf = b""
        with conn:
            while True:
                while b"\r\n\r\n" not in buf:
                    chunk = conn.recv(65536)
                    if not chunk or len(buf) > 1 << 16:
                        return
                    buf += chunk
                head, buf = buf.split(b"\r\n\r\n", 1)
                lines = head.decode("latin-1").split("\r\n")
                target = lines[0].split(" ")[1] if len(lines[0].split(" ")) > 1 else ""
                signed = any(l.lower().startswith("x-imgix-signature:") for l in lines[1:])
                path = target.split("?")[0]
                if (path == "/s/1k.png" and signed) or path == "/a/1k.png":
                    status, ctype, body = "200 OK", "image/png", self.body
                elif path == "/s/1k.png":
                    self.refused += 1
                    status, ctype, body = "403 Forbidden", "text/html", b"forbidden\n"
                else:
                    status, ctype, body = "404 Not Found", "text/html", b"not found\n"
                date = email.utils.formatdate(usegmt=True)
                reply = (
                    f"HTTP/1.1 {status}\r\nServer: nginx/1.22.1\r\nDate: {date}\r\n"
                    f"Content-Type: {ctype}\r\nContent-Length: {len(body)}\r\n"
                    f"Last-Modified: {self.modified}\r\nConnection: keep-alive\r\n"
                    f'ETag: "6751a2f0-{len(body):x}"\r\nAccept-Ranges: bytes\r\n\r\n'
                ).encode() + body
                try:
                    conn.sendall(reply)
                except OSError:
                    return

    def close(self):
        self.sock.close()


# ---------------------------------------------------------------- load


class Client:
    """`connections` keep-alive connections to 127.0.0.1:port, each sending its share of a
    fixed number of requests one after the other (wrk's request: Host, Accept-Encoding)."""

    def __init__(self, port, host, target, connections):
        self.request = (f"GET {target} HTTP/1.1\r\nHost: {host}\r\n"
                        "Accept-Encoding: identity\r\n\r\n").encode()
        self.socks = []
        for _ in range(connections):
            s = socket.create_connection(("127.0.0.1", port), timeout=REQUEST_TIMEOUT)
            s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            self.socks.append(s)

    def run(self, count):
        """Sends `count` requests in all; returns the number answered 200 with the whole body
        and the first failure seen (None when all were)."""
        per = [count // len(self.socks) + (i < count % len(self.socks))
               for i in range(len(self.socks))]
        ok, failures = [0] * len(self.socks), []

        def one(i):
            s = self.socks[i]
            for _ in range(per[i]):
                try:
                    s.sendall(self.request)
                    status, _, length = read_response(s)
                except (OSError, RuntimeError) as e:
                    failures.append(f"connection {i}: {e}")
                    return
                if status != 200 or length != BODY_SIZE:
                    failures.append(f"status {status}, {length} bytes")
                    return
                ok[i] += 1

        threads = [threading.Thread(target=one, args=(i,)) for i in range(len(self.socks))]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        return sum(ok), (failures[0] if failures else None)

    def close(self):
        for s in self.socks:
            s.close()


# ---------------------------------------------------------------- callgrind


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def callgrind_control(flag, pid, prefix):
    """Runs `callgrind_control FLAG PID` (FLAG may hold an argument: `-i on`)."""
    out = subprocess.run(["callgrind_control", f"--vgdb-prefix={prefix}", *flag.split(), str(pid)],
                         capture_output=True, text=True, timeout=120)
    if out.returncode != 0 or "Error" in out.stdout:
        raise RuntimeError(f"callgrind_control {flag} {pid}: {out.stdout}{out.stderr}")


def total_instructions(path):
    with open(path) as f:
        for line in f:
            m = re.match(r"(?:summary|totals):\s+(\d+)", line)
            if m:
                return int(m.group(1))
    raise RuntimeError(f"no totals in {path}")


def without_zero_calls(src, dst):
    """Copies a callgrind dump without its `calls=0` entries: calls that began before
    `callgrind_control -z` (a thread's start, the event loop) are recorded with a zero count and
    their whole inclusive cost, which callgrind_annotate 3.19 adds to the caller's own cost (the
    whole window then shows as `clone`). Self costs are on other lines and stay."""
    with open(src) as f, open(dst, "w") as out:
        skip = False
        for line in f:
            if skip:
                skip = False
                continue
            if line.startswith("calls=0 "):
                skip = True
                continue
            out.write(line)


def measure(name, cmd, workdir, ready, host, target, args, stdout=None, valgrind_args=(),
            instrument_late=False, settled=None, stop_signal=signal.SIGINT):
    """Runs cmd under callgrind (with `valgrind_args` added); returns (instructions of the
    measured window, dump file, seconds the window took). `instrument_late` starts it without
    callgrind's instrumentation, which is switched on after the warm-up: the same counts for
    the window, and a start-up several times faster (Envoy compiling its Wasm module). After
    the dump, `settled` (when given) is polled until it returns non-None (the process wrote
    all its output), then the process gets `stop_signal`."""
    out_base = os.path.join(workdir, f"callgrind.{name}")
    log_path = os.path.join(workdir, f"{name}.stderr")
    prefix = os.path.join(workdir, f"vgdb-{name}")
    vg = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out_base}",
          "--vgdb=yes", f"--vgdb-prefix={prefix}", "--compress-strings=no",
          "--compress-pos=no", *valgrind_args]
    if instrument_late:
        vg.append("--instr-atstart=no")
    vg += cmd
    with open(log_path, "w") as err:
        proc = subprocess.Popen(vg, stdout=stdout or subprocess.DEVNULL, stderr=err,
                                cwd=workdir)
    client = None
    try:
        port = ready(proc, log_path)
        client = Client(port, host(port), target, args.connections)
        served, failure = client.run(args.warmup)
        if failure:
            raise RuntimeError(f"{name}: warm-up failed after {served}: {failure}")
        if instrument_late:
            callgrind_control("-i on", proc.pid, prefix)
        callgrind_control("-z", proc.pid, prefix)
        started = time.monotonic()
        served, failure = client.run(args.requests)
        took = time.monotonic() - started
        if failure or served != args.requests:
            raise RuntimeError(f"{name}: {served} of {args.requests} served: {failure}")
        callgrind_control("-d", proc.pid, prefix)
        dumps = [p for p in glob.glob(out_base + "*") if re.search(r"\.\d+$", p)]
        if not dumps:
            raise RuntimeError(f"{name}: callgrind_control -d wrote no dump")
        dump = max(dumps, key=os.path.getmtime)
        if settled:
            wait_for(f"{name}'s output", proc, log_path, settled, timeout=60)
        return total_instructions(dump), dump, took
    finally:
        if client:
            client.close()
        proc.send_signal(stop_signal)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_for(what, proc, log_path, found, timeout=START_TIMEOUT):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log_path) as f:
                raise RuntimeError(f"{what} exited with {proc.returncode}:\n{f.read()[-3000:]}")
        value = found()
        if value is not None:
            return value
        time.sleep(0.2)
    raise RuntimeError(f"{what} not ready after {timeout:.0f} s")


def serve_ready(proc, log_path):
    def port():
        with open(log_path) as f:
            m = re.search(r"ixproxy: gateway on http://127\.0\.0\.1:(\d+)", f.read())
        return int(m.group(1)) if m else None
    return wait_for("ixproxy serve", proc, log_path, port)


def floor_ready(port):
    def ready(proc, log_path):
        def listening():
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1):
                    return port
            except OSError:
                return None
        return wait_for("floor-pingora", proc, log_path, listening)
    return ready


def load_arguments(ap):
    """The load options of an instruction count (this script's and envoy_instructions.py's)."""
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--warmup", type=int, default=200)
    ap.add_argument("--connections", type=int, default=4)


def require_valgrind():
    for tool in ("valgrind", "callgrind_control", "callgrind_annotate"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is missing (Debian: apt-get install valgrind)")


def annotate(dump, base):
    """Writes callgrind_annotate's per-function table (self cost) of `dump` to `base`, and the
    dump it was made from to `base`.callgrind."""
    without_zero_calls(dump, base + ".callgrind")
    with open(base, "w") as f:
        subprocess.run(["callgrind_annotate", "--inclusive=no", base + ".callgrind"],
                       stdout=f, stderr=subprocess.DEVNULL, check=True, timeout=300)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--ixproxy", required=True)
    ap.add_argument("--floor", required=True)
    load_arguments(ap)
    ap.add_argument("--max-ratio", type=float)
    ap.add_argument("--access-log", choices=["json", "text", "off"], default="json",
                    help="serve's access_log (json by default, as the gate measures)")
    ap.add_argument("--annotate", help="write callgrind_annotate's table of serve's window to "
                    "this file (and the raw dump to FILE.callgrind)")
    args = ap.parse_args()
    require_valgrind()

    origin = Origin()
    origin_url = f"http://127.0.0.1:{origin.port}/s/1k.png"
    results = {}
    with tempfile.TemporaryDirectory(prefix="ixproxy-instr-") as workdir:
        yaml = os.path.join(workdir, "serve.yaml")
        with open(yaml, "w") as f:
            # bench.py's serve config on OS-assigned ports, with the JSON access log.
            f.write(ixproxy_yaml(0, 0, origin_port=origin.port, access_log=args.access_log))
        floor_port = free_port()
        runs = [
            ("floor", [os.path.abspath(args.floor), f"127.0.0.1:{floor_port}",
                       f"127.0.0.1:{origin.port}", "1"],
             floor_ready(floor_port), lambda p: f"127.0.0.1:{p}", "/a/1k.png"),
            ("serve", [os.path.abspath(args.ixproxy), "serve", "-c", yaml,
                       "--upgrade-sock", os.path.join(workdir, "upgrade.sock")],
             serve_ready, lambda p: "127.0.0.1", imgix_target(origin_url)),
        ]
        for name, cmd, ready, host, target in runs:
            access_log = open(os.path.join(workdir, f"{name}.stdout"), "w")
            try:
                total, dump, took = measure(name, cmd, workdir, ready, host, target, args,
                                            stdout=access_log)
            finally:
                access_log.close()
            results[name] = total / args.requests
            print(f"{name}: {total:,} instructions for {args.requests} requests = "
                  f"{results[name]:,.0f} per request ({took:.1f} s under callgrind)",
                  flush=True)
            if name == "serve" and args.access_log != "off":
                lines = sum(1 for _ in open(os.path.join(workdir, "serve.stdout")))
                if lines < args.warmup + args.requests:
                    sys.exit(f"serve wrote {lines} access log lines for "
                             f"{args.warmup + args.requests} requests")
            if args.annotate:
                annotate(dump, args.annotate if name == "serve" else f"{args.annotate}.{name}")
    origin.close()
    if origin.refused:
        sys.exit(f"the origin refused {origin.refused} unsigned requests")
    ratio = results["serve"] / results["floor"]
    print(f"ratio serve/floor: {ratio:.3f}x", flush=True)
    if args.max_ratio is not None and ratio > args.max_ratio:
        print(f"FAIL: serve costs {ratio:.3f}x the floor's instructions per request, above "
              f"{args.max_ratio}x", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
