#!/usr/bin/env bash
# The README's first command: the gateway on its embedded demo config, built in release mode.
# Installs what the build needs first (cmake), so it works on a machine with only the Rust
# toolchain. Arguments go to `ixproxy serve` (for example `--config my.yaml`).
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/apt-need.sh
apt_need cmake cmake
exec cargo run --release --locked -p ixproxy -- serve "$@"
