#!/usr/bin/env bash
# Installs what lensd needs to build and test, skipping what is already there:
# Debian packages (compiler deps, libraries) and a Python virtual environment
# with the pinned test tooling (tools/requirements.txt). Idempotent; safe to
# run on every test run. Prints the venv's path as its last line.
# With --build-only: the Debian packages only (what building and serving need).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
venv=${LENSD_VENV:-${HOME:-$(getent passwd "$(id -u)" | cut -d: -f6)}/.cache/lensd/venv}

build_only=false
[ "${1:-}" = "--build-only" ] && build_only=true

debian_packages=(build-essential pkg-config meson ninja-build libopenblas-dev libopenblas-openmp-dev liblapacke-dev libjansson-dev
  libpcre2-dev libutf8proc-dev libmicrohttpd-dev libuv1-dev libgnutls28-dev libcriterion-dev)
# the test suites' own: the Python tooling, TLS certificates, curl, the browser tests' Chromium,
# the formatting check's clang-format and nginx (tests/integration/test_deploy_nginx.py runs its
# own, unprivileged; on a host with systemd the package also starts the system's nginx on port 80:
# `systemctl disable --now nginx` stops that one)
$build_only || debian_packages+=(python3-venv openssl curl chromium clang-format nginx clang libclang-rt-dev libomp-dev)
missing=()
for p in "${debian_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  echo "setup: installing Debian packages: ${missing[*]}" >&2
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  $sudo_cmd apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo_cmd apt-get install -y -qq "${missing[@]}" >&2
fi

$build_only && exit 0

stamp="$venv/.lensd-requirements"
if [ ! -x "$venv/bin/python" ] || ! cmp -s "$repo/tools/requirements.txt" "$stamp"; then
  echo "setup: preparing the Python environment in $venv" >&2
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --upgrade pip >&2
  "$venv/bin/pip" install -q -r "$repo/tools/requirements.txt" >&2
  cp "$repo/tools/requirements.txt" "$stamp"
fi
echo "$venv"
