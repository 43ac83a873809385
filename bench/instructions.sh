#!/usr/bin/env bash
# Instructions per request of `ixproxy serve` and of the bare Pingora floor (bench/README.md:
# Instructions per request): builds both with the `profiling` profile (the release build with
# line tables), then runs bench/instructions.py, which counts each under valgrind's callgrind
# for a fixed load and prints both figures and their ratio. Extra arguments go to
# instructions.py, e.g. `--max-ratio 2.05` (exit 1 above it) or `--annotate FILE`.
#
#   bash bench/instructions.sh                      # about 20 s once built
#   IXPROXY_INSTR_PROFILE=release bash bench/instructions.sh   # another cargo profile
#
# Needs valgrind (Debian: apt-get install valgrind; scripts/test-all.sh installs it) and
# python3. Only ever talks to 127.0.0.1.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=${IXPROXY_INSTR_PROFILE:-profiling}
command -v valgrind >/dev/null 2>&1 || { echo "valgrind is missing (apt-get install valgrind)" >&2; exit 1; }
cargo build --profile "$profile" --locked -p ixproxy -p ixproxy-bench-floor-pingora
bin=${CARGO_TARGET_DIR:-target}/$profile
python3 bench/instructions.py --ixproxy "$bin/ixproxy" --floor "$bin/floor-pingora" "$@"
