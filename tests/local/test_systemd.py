"""The shipped units pass `systemd-analyze verify` with the commands as this install put them."""
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

UNITS = Path(__file__).resolve().parents[2] / "systemd"


@pytest.mark.timeout(60)
@pytest.mark.parametrize("unit", ["vipd.service", "lbproxy.service"])
def test_unit_verifies(tmp_path, unit):
    if shutil.which("systemd-analyze") is None:
        pytest.skip("needs systemd-analyze (Debian package systemd)")
    bindir = Path(sys.executable).parent
    for script in ("vipd", "lbproxy"):
        if not (bindir / script).exists():
            pytest.skip(f"needs the {script} console script in {bindir} (pip install .)")
    text = (UNITS / unit).read_text().replace("/usr/local/bin/", f"{bindir}/")
    (tmp_path / unit).write_text(text)
    done = subprocess.run(["systemd-analyze", "verify", str(tmp_path / unit)],
                          capture_output=True, text=True, timeout=50)
    relevant = [line for line in done.stderr.splitlines() if unit in line or "Unknown" in line]
    assert done.returncode == 0 and not relevant, done.stderr


@pytest.mark.timeout(10)
def test_vipd_unit_contract():
    text = (UNITS / "vipd.service").read_text()
    for needle in ("Type=notify", "WatchdogSec=", "Restart=on-failure", "ExecReload=/bin/kill -HUP $MAINPID",
                   "AmbientCapabilities=CAP_NET_ADMIN CAP_NET_RAW CAP_NET_BIND_SERVICE", "NoNewPrivileges=yes"):
        assert needle in text
    stop = int(text.split("TimeoutStopSec=")[1].split()[0])
    assert stop > 30, "must exceed the default drain_timeout"
