#!/usr/bin/env bash
# Instructions per request of Envoy DFP, DFP + the trivial Wasm filter and Envoy + the ixproxy
# filter (bench/README.md: Instructions per request, Envoy): builds both Wasm filters (release)
# and the `ixproxy` that generates the bootstrap, then runs bench/envoy_instructions.py, which
# counts each under valgrind's callgrind for a fixed load. Extra arguments go to it, e.g.
# `--only ixproxy`, `--objects` (the split by object), `--access-log off`.
#
#   bash bench/envoy_instructions.sh        # about 3 minutes once built
#
# Needs valgrind (Debian: apt-get install valgrind), python3 and Envoy 1.40 (IXPROXY_ENVOY,
# default .venv/bin/envoy, which bench/run.sh and scripts/test-all.sh install). Only ever talks
# to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
envoy=${IXPROXY_ENVOY:-.venv/bin/envoy}
command -v valgrind >/dev/null 2>&1 || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo build --release --locked --target wasm32-wasip1 -p ixproxy-filter -p ixproxy-bench-floor-filter
cargo build --locked -p ixproxy
target=${CARGO_TARGET_DIR:-target}
python3 bench/envoy_instructions.py --envoy "$envoy" --ixproxy "$target/debug/ixproxy" \
  --wasm-dir "$target/wasm32-wasip1/release" "$@"
