#!/usr/bin/env bash
# Origin fetches per URL across three replicas, with and without the consistent-hashing front
# (README: Caching, "One fetch per object across replicas"): runs the integration test
# pingora-module/tests/fleet_front.rs with more URLs than its default 36 and prints its
# figures. The test starts, on 127.0.0.1 with OS-assigned ports, three `ixproxy serve`
# replicas (memory cache on), the recording origin, and Envoy 1.40 on the shipped
# deploy/front/envoy-front.yaml (its addresses changed), then once more with the hash taken out
# (a random replica per request, as a Kubernetes Service picks one per connection). Each URL
# is requested 3 times, signed with other params (the same cache key).
#
#   bash bench/fleet.sh            # 360 URLs, about 15 s once built
#   IXPROXY_FLEET_URLS=1000 bash bench/fleet.sh
#
# Needs Envoy 1.40 (IXPROXY_ENVOY, default .venv/bin/envoy; scripts/test-all.sh installs it).
set -euo pipefail
cd "$(dirname "$0")/.."
export IXPROXY_ENVOY=${IXPROXY_ENVOY:-$PWD/.venv/bin/envoy}
export IXPROXY_FLEET_URLS=${IXPROXY_FLEET_URLS:-360}
if ! out=$(cargo test --locked -q -p ixproxy --test fleet_front -- --nocapture 2>&1); then
  printf '%s\n' "$out" >&2
  exit 1
fi
printf '%s\n' "$out" | grep -E '^\| |killed|draining'
