#!/usr/bin/env bash
# Checks every shipped Envoy config with the programs that consume it:
#  - each bootstrap in envoy/ goes through `envoy --mode validate` with the built filter (the
#    shipped files point at /etc/envoy/ixproxy_filter.wasm; a copy pointing at the build output is
#    validated). Validation starts the Wasm VM and runs the filter's on_configure, so every
#    variable in host_env_keys gets a placeholder value;
#  - envoy/envoy.yaml must be exactly what `ixproxy envoy-config` (the ixproxy-envoy-config crate
#    in this folder) generates from envoy/ixproxy.yaml, run through the real command line and
#    without --allow-literal-secrets: the shipped configs hold {env: NAME} secrets only.
# Needs: the filter built (cargo build -p ixproxy-filter --target wasm32-wasip1 --release) and
# Envoy (IXPROXY_ENVOY, default .venv/bin/envoy; scripts/test-all.sh installs it).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
envoy=${IXPROXY_ENVOY:-$root/.venv/bin/envoy}
wasm=${IXPROXY_WASM:-${CARGO_TARGET_DIR:-$root/target}/wasm32-wasip1/release/ixproxy_filter.wasm}
shipped_wasm=/etc/envoy/ixproxy_filter.wasm

if [ ! -f "$wasm" ]; then
  echo "validate.sh: $wasm is missing; build it with" >&2
  echo "  cargo build -p ixproxy-filter --target wasm32-wasip1 --release" >&2
  exit 1
fi
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

echo "envoy/envoy.yaml is up to date with envoy/ixproxy.yaml"
(cd "$root" && cargo run -q -p ixproxy -- envoy-config -c envoy/ixproxy.yaml --wasm "$shipped_wasm") \
  > "$tmp/generated.yaml"
if ! diff -u "$root/envoy/envoy.yaml" "$tmp/generated.yaml"; then
  echo "validate.sh: envoy/envoy.yaml is stale; regenerate it with" >&2
  echo "  ixproxy envoy-config -c envoy/ixproxy.yaml --wasm $shipped_wasm > envoy/envoy.yaml" >&2
  exit 1
fi

count=0
for config in "$root"/envoy/*.yaml; do
  grep -q '^static_resources:' "$config" || continue # not an Envoy bootstrap
  name=${config#"$root"/}
  sed "s#$shipped_wasm#$wasm#g" "$config" > "$tmp/bootstrap.yaml"
  vars=()
  for key in $(awk '/host_env_keys:/ {on=1; next} on && /^ *- / {print $2; next} {on=0}' "$config"); do
    vars+=("$key=validate-placeholder")
  done
  echo "envoy --mode validate $name"
  if ! env -i PATH="$PATH" "${vars[@]}" "$envoy" --mode validate -c "$tmp/bootstrap.yaml" \
      > "$tmp/log" 2>&1 || ! grep -q "' OK" "$tmp/log"; then
    cat "$tmp/log" >&2
    echo "validate.sh: $name failed validation" >&2
    exit 1
  fi
  count=$((count + 1))
done
[ "$count" -gt 0 ] || { echo "validate.sh: no Envoy bootstrap found in envoy/" >&2; exit 1; }
echo "validate.sh: $count Envoy config(s) valid"
