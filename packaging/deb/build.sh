#!/usr/bin/env bash
# Builds vipd_VERSION_ARCH.deb with dpkg-deb: vipd in its own venv under /opt/vipd (the wheel and
# its dependencies, some of them C extensions, hence the build machine's architecture and Python
# minor version), vipd/lbctl/lbproxy in /usr/bin, the systemd units (not enabled), the example
# config as /etc/vipd/vipd.toml.example, and maintainer scripts that create the vipd user.
#
#   packaging/deb/build.sh [--wheel FILE] [--outdir DIR]
#
# Without --wheel it builds one from this checkout. Needs Debian's python3 with python3-venv,
# dpkg-deb, and PyPI (or a pip cache) for the dependencies. Prints the .deb's path.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
src=$(cd "$here/../.." && pwd)
python=${PYTHON:-/usr/bin/python3}
prefix=/opt/vipd
wheel=
outdir=$src/dist
while [ $# -gt 0 ]; do
  case $1 in
    --wheel) wheel=$(realpath "$2"); shift 2 ;;
    --outdir) outdir=$2; shift 2 ;;
    *) echo "usage: $0 [--wheel FILE] [--outdir DIR]" >&2; exit 2 ;;
  esac
done
# The venv's python is a link to this interpreter: it must be the one the package depends on.
if ! dpkg -S "$(readlink -f "$python")" >/dev/null 2>&1; then
  echo "build.sh: $python is not Debian's python3 (dpkg -S); set PYTHON=/usr/bin/python3" >&2
  exit 2
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
venv=$root$prefix

"$python" -m venv "$venv"
if [ -z "$wheel" ]; then
  "$venv/bin/python" -m pip wheel -q --no-deps --wheel-dir "$work/wheel" "$src"
  wheel=$(ls "$work"/wheel/vipd-*.whl)
fi
"$venv/bin/python" -m pip install -q --no-compile "$wheel"
"$venv/bin/python" -m pip uninstall -q -y pip setuptools
rm -f "$venv"/bin/activate* "$venv"/bin/Activate.ps1

# The venv was made under $root: scripts' shebangs name that path; make them name $prefix.
grep -rlIF --null "$root" "$venv" | xargs -0 -r sed -i "s#$root##g"
"$venv/bin/python" -m compileall -q -j0 -s "$root" -p / "$venv/lib" >/dev/null
if leftover=$(grep -rlF "$root" "$root"); then
  echo "build.sh: the build path is left in: $leftover" >&2
  exit 1
fi

version=$(basename "$wheel" | cut -d- -f2)
arch=$(dpkg --print-architecture)
pyminor=$("$python" -c 'import sys; print(sys.version_info[1])')
pymajor=$("$python" -c 'import sys; print(sys.version_info[0])')

install -d "$root/usr/bin" "$root/lib/systemd/system" "$root/etc/vipd" "$root/usr/share/doc/vipd/examples"
for command in vipd lbctl lbproxy; do
  ln -s "$prefix/bin/$command" "$root/usr/bin/$command"
done
for unit in vipd.service lbproxy.service; do
  sed "s#/usr/local/bin/#/usr/bin/#g" "$src/systemd/$unit" > "$root/lib/systemd/system/$unit"
done
install -m 0644 "$src/config/kubernetes-apiserver.toml" "$root/etc/vipd/vipd.toml.example"
install -m 0644 "$src"/config/*.toml "$root/usr/share/doc/vipd/examples/"
install -m 0644 "$src/README.md" "$root/usr/share/doc/vipd/README.md"
cat > "$root/usr/share/doc/vipd/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: vipd

Files: *
Copyright: the vipd authors
License: Apache-2.0
 On Debian systems, the full text of the Apache License, Version 2.0 is in
 /usr/share/common-licenses/Apache-2.0.

Files: opt/vipd/lib/*
Copyright: the authors of each bundled Python package
License: see each package's *.dist-info directory under $prefix/lib
EOF

install -d "$root/DEBIAN"
install -m 0755 "$here/postinst" "$here/prerm" "$here/postrm" "$root/DEBIAN/"
echo /etc/vipd/vipd.toml.example > "$root/DEBIAN/conffiles"
cat > "$root/DEBIAN/control" <<EOF
Package: vipd
Version: $version
Architecture: $arch
Maintainer: ${DEB_MAINTAINER:-the vipd authors}
Installed-Size: $(du -sk --exclude=DEBIAN "$root" | cut -f1)
Depends: python$pymajor (>= $pymajor.$pyminor), python$pymajor (<< $pymajor.$((pyminor + 1))), adduser
Recommends: nftables
Section: net
Priority: optional
Description: VRRP virtual IP daemon with a built-in L4 TCP load balancer
 vipd does the job of keepalived plus an nginx/HAProxy TCP proxy at the edge of
 an HA service: VRRP (RFC 5798 v3 and RFC 3768 v2, wire-compatible with
 keepalived) moves virtual IPs between nodes, and a multi-process L4 TCP proxy
 with active health checks spreads connections over the backends.
 .
 The systemd units vipd.service and lbproxy.service are installed but neither
 enabled nor started; they start once /etc/vipd/vipd.toml (or lbproxy.toml)
 exists and the operator enables them.
EOF

mkdir -p "$outdir"
deb=$outdir/vipd_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zgzip --build "$root" "$deb" >/dev/null
echo "$deb"
