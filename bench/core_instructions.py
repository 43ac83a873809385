#!/usr/bin/env python3
"""Instructions per call of the core's hot operations (bench/README.md: The core, in instructions).

Builds `bench/core-instructions` with the `profiling` profile (release, LTO, line tables), runs
it twice under `valgrind --tool=callgrind`, reads each `op_*` marker's inclusive count with
`callgrind_annotate --inclusive=yes` and divides it by the calls it made. Prints one table:
operation, instructions per call, and the ratio to the raw hash over the same bytes (`decide`
to the MD5 of its signature base, the origin auth headers to one HMAC-SHA256 of
`<request id>.<timestamp>`). Exits 1 when the two runs differ by 1% or more, or, with
`--max-decide-ratio R`, when `decide` costs more than R times its raw MD5.

    python3 bench/core_instructions.py                      # about 40 s cold, 5 s built
    python3 bench/core_instructions.py --annotate FILE      # + decide's per-function profile

Valgrind runs the code its CPUID admits: `sha2` takes its portable code under valgrind even on
a CPU with SHA-NI (`md-5` has only portable code), so the HMAC figures are those of a machine
without SHA extensions.
"""

import argparse
import os
import re
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BIN_NAME = "core-instructions"

# (marker, label, marker of the raw hash it is compared with)
ROWS = [
    ("op_decide_bench", "decide: bench.py's target (origin URL only)", "op_md5_bench"),
    ("op_md5_bench", "  raw MD5 of its signature base", None),
    ("op_decide_params", "decide: SDK URL, 6 params incl. expires", "op_md5_params"),
    ("op_md5_params", "  raw MD5 of its signature base", None),
    ("op_auth_headers", "Forward::auth_headers (per-request signing)", "op_hmac"),
    ("op_hmac", "  raw HMAC-SHA256 of <request id>.<timestamp>", None),
    ("op_origin_head", "OriginHead::of (nginx static-file head, 8 fields)", None),
    ("op_check_response", "Forward::check_response (that head)", None),
    ("op_access_log", "AccessRecord::render_into (JSON line, reused buffer)", None),
]
DECIDE = "op_decide_params"


def build(profile):
    subprocess.run(
        ["cargo", "build", "--profile", profile, "--locked", "-p", "ixproxy-bench-core-instructions"],
        cwd=ROOT, check=True)
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
    return os.path.join(target, profile, BIN_NAME)


def callgrind(binary, calls, workdir, tag, extra=()):
    out = os.path.join(workdir, f"callgrind.{tag}")
    run = subprocess.run(
        ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *extra, binary, str(calls)],
        capture_output=True, text=True, check=True)
    info = dict(line.split(" ", 1) for line in run.stdout.splitlines() if " " in line)
    if int(info["calls"]) != calls:
        sys.exit(f"the bench made {info['calls']} calls, not {calls}")
    return out, run.stdout


def annotate(out, *args):
    return subprocess.run(["callgrind_annotate", *args, out],
                          capture_output=True, text=True, check=True).stdout


def per_call(out, binary, calls):
    """Each marker's inclusive instructions divided by its calls (the function-total lines,
    the ones that name the binary; the others are per-file parts of inlined code)."""
    text = annotate(out, "--inclusive=yes")
    found = {}
    pattern = re.compile(r"^\s*([\d,]+)\s+\([^)]*\)\s+\S*core_instructions::(op_\w+)\s+\[(.*)\]\s*$")
    for line in text.splitlines():
        m = pattern.match(line)
        if m and os.path.realpath(m.group(3)) == os.path.realpath(binary):
            found[m.group(2)] = int(m.group(1).replace(",", "")) / calls
    missing = [marker for marker, _, _ in ROWS if marker not in found]
    if missing:
        sys.exit(f"no callgrind count for {missing} (inlined or merged?)")
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--calls", type=int, default=1000, help="calls per operation (default 1000)")
    ap.add_argument("--profile", default=os.environ.get("IXPROXY_INSTR_PROFILE", "profiling"))
    ap.add_argument("--max-decide-ratio", type=float,
                    help="exit 1 when decide (SDK URL) costs more than this times its raw MD5")
    ap.add_argument("--annotate", metavar="FILE",
                    help="also write callgrind_annotate of decide (SDK URL) alone to FILE")
    args = ap.parse_args()
    for tool in ("valgrind", "callgrind_annotate"):
        if subprocess.run(["sh", "-c", f"command -v {tool}"], capture_output=True).returncode:
            sys.exit(f"{tool} is missing (apt-get install valgrind)")
    binary = build(args.profile)
    with tempfile.TemporaryDirectory(prefix="ixproxy-core-instr-") as workdir:
        runs = []
        for i in range(2):
            out, stdout = callgrind(binary, args.calls, workdir, str(i))
            runs.append(per_call(out, binary, args.calls))
        sizes = dict(line.split(" ", 1)[1].split() for line in stdout.splitlines()
                     if line.startswith("bytes "))
        if args.annotate:
            out, _ = callgrind(binary, args.calls, workdir, "decide",
                               ["--collect-atstart=no", f"--toggle-collect=*{DECIDE}*"])
            with open(args.annotate, "w") as f:
                f.write(f"# decide (SDK URL) alone, {args.calls} calls: divide by {args.calls}\n")
                f.write(annotate(out, "--inclusive=yes", "--threshold=99.9"))
                f.write(annotate(out, "--threshold=99.9"))

    first, second = runs
    print(f"instructions per call, valgrind callgrind, {args.calls} calls each, "
          f"`{args.profile}` build, two runs")
    print(f"  MD5 input: bench.py target {sizes['md5_bench']} B, SDK URL {sizes['md5_params']} B; "
          f"HMAC message {sizes['hmac']} B")
    print(f"{'operation':<52} {'instr/call':>11} {'run 2':>9} {'ratio':>7}")
    worst = 0.0
    for marker, label, base in ROWS:
        a, b = first[marker], second[marker]
        spread = abs(a - b) / max(a, b)
        worst = max(worst, spread)
        ratio = f"{a / first[base]:.2f}x" if base else ""
        print(f"{label:<52} {a:>11,.0f} {b:>9,.0f} {ratio:>7}")
    print(f"largest spread between the runs: {worst:.3%}")
    failed = False
    if worst >= 0.01:
        print("FAIL: the two runs differ by 1% or more")
        failed = True
    decide_ratio = first[DECIDE] / first["op_md5_params"]
    if args.max_decide_ratio is not None:
        verdict = "ok" if decide_ratio <= args.max_decide_ratio else "FAIL"
        print(f"{verdict}: decide (SDK URL) {decide_ratio:.2f}x its raw MD5 "
              f"(at most {args.max_decide_ratio}x)")
        failed |= decide_ratio > args.max_decide_ratio
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
