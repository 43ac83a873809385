#!/usr/bin/env python3
"""Memory of idle client connections of `ixproxy serve` (README: Limits).

Starts the given binary on loopback with generous timeouts, opens N client connections in one
of three states and reports the server's RSS growth per connection:

  partial   each connection has sent part of a request header (slowloris) and waits;
  served    each connection got one answer (a 403: unsigned) and stays open, keep-alive;
  closed    the partial connections again, then all closed: what stays afterwards.

Usage: bench/conn_memory.py target/release/ixproxy [--connections 2000] [--tls CERT KEY]
A fresh process per state; RSS is read from /proc/PID/status once it stops moving.
"""
import argparse
import os
import re
import socket
import ssl
import subprocess
import sys
import tempfile
import time

CONFIG = """listen: 127.0.0.1:0
admin_listen: 127.0.0.1:0
access_log: off
limits:
  client_header_timeout: 120s
  client_idle_timeout: 120s
  max_connections: 20000
{tls}sources:
  - name: a
    hosts: [a.test]
    secure_url_tokens: [conn-memory-token-0123]
"""


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError("no VmRSS")


def settled_rss(pid, limit=15.0):
    """RSS once two reads 0.5 s apart differ by less than 64 KiB (at most `limit` s)."""
    end = time.time() + limit
    last = rss_kib(pid)
    while time.time() < end:
        time.sleep(0.5)
        now = rss_kib(pid)
        if abs(now - last) < 64:
            return now
        last = now
    return last


def start(binary, tls):
    tls_yaml = f"tls:\n  cert_file: {tls[0]}\n  key_file: {tls[1]}\n" if tls else ""
    cfg = tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False)
    cfg.write(CONFIG.format(tls=tls_yaml))
    cfg.close()
    proc = subprocess.Popen([binary, "serve", "-c", cfg.name], stderr=subprocess.PIPE, text=True)
    end = time.time() + 30
    while time.time() < end:
        line = proc.stderr.readline()
        m = re.search(r"gateway on https?://127\.0\.0\.1:(\d+)", line)
        if m:
            return proc, int(m.group(1))
    proc.kill()
    raise RuntimeError("no gateway line")


def connect(port, tls_ctx):
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    if tls_ctx:
        s = tls_ctx.wrap_socket(s, server_hostname="localhost")
    return s


PARTIAL = b"GET /x HTTP/1.1\r\nHost: a.test\r\nX-Slow: "
WHOLE = b"GET /x HTTP/1.1\r\nHost: a.test\r\n\r\n"


def read_answer(s):
    """Reads one answer with a Content-Length body; fails if the server closes."""
    got = b""
    while True:
        chunk = s.recv(4096)
        if not chunk:
            raise RuntimeError("closed after the first answer")
        got += chunk
        head, sep, body = got.partition(b"\r\n\r\n")
        if sep:
            m = re.search(rb"(?i)content-length: *(\d+)", head)
            if m is None or len(body) >= int(m.group(1)):
                return


def open_conns(port, n, tls_ctx, served):
    """n connections, each with a partial header (slowloris) or after one whole answer."""
    conns = []
    for _ in range(n):
        s = connect(port, tls_ctx)
        s.sendall(WHOLE if served else PARTIAL)
        if served:
            read_answer(s)
        conns.append(s)
    return conns


def warm(port, tls_ctx):
    for _ in range(200):
        s = connect(port, tls_ctx)
        s.sendall(b"GET /x HTTP/1.1\r\nHost: a.test\r\nConnection: close\r\n\r\n")
        while s.recv(4096):
            pass
        s.close()


def measure(binary, state, n, tls):
    tls_ctx = None
    if tls:
        tls_ctx = ssl.create_default_context()
        tls_ctx.check_hostname = False
        tls_ctx.verify_mode = ssl.CERT_NONE
        tls_ctx.set_alpn_protocols(["http/1.1"])
    proc, port = start(binary, tls)
    try:
        warm(port, tls_ctx)
        base = settled_rss(proc.pid)
        conns = open_conns(port, n, tls_ctx, state == "served")
        held = settled_rss(proc.pid)
        after = None
        if state == "closed":
            for s in conns:
                s.close()
            conns = []
            after = settled_rss(proc.pid)
        return base, held, after
    finally:
        proc.kill()
        proc.wait()


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("--connections", type=int, default=2000)
    ap.add_argument("--tls", nargs=2, metavar=("CERT", "KEY"))
    ap.add_argument("--states", default="partial,served,closed")
    args = ap.parse_args()
    n = args.connections
    for state in args.states.split(","):
        base, held, after = measure(args.binary, state, n, args.tls)
        line = (f"{state:8} {n} connections: RSS {base} KiB -> {held} KiB, "
                f"{(held - base) * 1024 / n:.0f} bytes per connection")
        if after is not None:
            line += f"; after closing all: {after} KiB ({(after - base) * 1024 / n:.0f} B/conn left)"
        print(line, flush=True)


if __name__ == "__main__":
    sys.exit(main())
