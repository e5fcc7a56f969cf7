#!/usr/bin/env bash
# Installs vipd and what its tests, demo and benches use, on Debian, into ./.venv.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq
  # The tests and benches run their own keepalived/nginx/haproxy; keep Debian from starting the
  # packaged services on install (policy-rc.d, as in Debian's own images).
  made_policy=
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod +x /usr/sbin/policy-rc.d && made_policy=1
  fi
  apt-get install -y -qq --no-install-recommends \
    python3 python3-venv python3-pip iproute2 nftables iputils-ping procps curl util-linux \
    keepalived nginx libnginx-mod-stream haproxy wrk tcpdump systemd >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
