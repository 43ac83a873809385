#!/usr/bin/env bash
# `apt_need COMMAND PACKAGE`: installs the Debian package when the command is missing (as root,
# or through sudo). Sourced by scripts/demo.sh (cmake: Pingora's zlib-ng, libz-ng-sys, is built
# with it, so every build of the gateway needs it) and scripts/test-all.sh (cmake, valgrind).
apt_need() {
  command -v "$1" >/dev/null 2>&1 && return 0
  local sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  echo "installing $2 (for $1)" >&2
  if [ -z "${apt_need_updated:-}" ]; then
    $sudo_cmd apt-get update -qq
    apt_need_updated=1
  fi
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "$2" >/dev/null
}
