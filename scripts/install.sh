#!/usr/bin/env bash
# Installs vipd and what its tests, demo and benches use, on Debian, into ./.venv.
# As root (no sudo needed) it first installs the Debian packages, python3-venv among them.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "$(id -u)" != 0 ]; then
  echo "install.sh: not root: skipping the Debian packages (python3-venv, iproute2, nftables, keepalived, ...); run it as root to install them" >&2
elif ! command -v apt-get >/dev/null; then
  echo "install.sh: no apt-get: install python3-venv, iproute2 and nftables yourself" >&2
else
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
    keepalived nginx libnginx-mod-stream haproxy wrk tcpdump systemd etcd-server etcd-client frr conntrack >/dev/null
  # The status page's browser test drives Debian's Chromium (a large package, but CI must run that
  # test) through Playwright; Playwright's own browser download cannot work on an offline host.
  apt-get install -y -qq --no-install-recommends chromium fonts-dejavu-core >/dev/null
  if [ -n "$made_policy" ]; then rm -f /usr/sbin/policy-rc.d; fi
fi
# A venv made before python3-venv was installed has a python but no pip: make it again.
if ! .venv/bin/python -m pip --version >/dev/null 2>&1; then
  rm -rf .venv
  python3 -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip >/dev/null
.venv/bin/python -m pip install -q -e '.[test]'
