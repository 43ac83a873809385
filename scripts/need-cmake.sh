#!/usr/bin/env bash
# Installs cmake when it is missing: Pingora's zlib-ng (libz-ng-sys) is built with it, so every
# build of the gateway needs it. Sourced by scripts/demo.sh and scripts/test-all.sh.
if ! command -v cmake >/dev/null 2>&1; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing cmake (needed to build Pingora's zlib-ng)" >&2
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq cmake >/dev/null
fi
