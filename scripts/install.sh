#!/usr/bin/env bash
# Installs vipd and what its tests, demo and benches use, on Debian, into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip iproute2 nftables iputils-ping procps curl \
    keepalived nginx libnginx-mod-stream haproxy wrk tcpdump systemd >/dev/null
  # Debian starts the packaged daemons on install; the tests and benches run their own copies.
  for daemon in nginx haproxy keepalived; do
    pkill -x "$daemon" 2>/dev/null || true
  done
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
