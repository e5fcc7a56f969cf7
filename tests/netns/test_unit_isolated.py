"""tests/unit is pure: it passes as an ordinary user (nobody), in a network namespace with no
interface up, from a checkout that user cannot write to, in a venv holding only the project's
packages. Needs root to make the namespace and to switch users."""
from __future__ import annotations

import json
import os
import pwd
import shutil
import site
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
USER = "nobody"
ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "HOME": "/nonexistent", "LANG": "C.UTF-8"}


def as_user_without_network(*argv: str, timeout: float) -> subprocess.CompletedProcess:
    return subprocess.run(["unshare", "--net", "runuser", "-u", USER, "--", *argv], capture_output=True,
                          text=True, timeout=timeout, cwd=ROOT, env=ENV)


def base_interpreters() -> list[str]:
    """Interpreters of this Python version that may be outside root's home (pyenv lives in /root)."""
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    found = [os.path.realpath(sys._base_executable), f"/usr/bin/python{version}", f"/usr/local/bin/python{version}"]
    return list(dict.fromkeys(p for p in found if os.access(p, os.X_OK)))


def make_venv(directory: Path) -> Path:
    """A venv the user can run whose packages are this interpreter's site-packages (nothing else)."""
    for base in base_interpreters():
        reachable = as_user_without_network(base, "-c", "pass", timeout=30)
        if reachable.returncode != 0:
            continue
        subprocess.run([base, "-m", "venv", "--without-pip", str(directory)], check=True, timeout=60)
        packages = Path(subprocess.run(
            [str(directory / "bin" / "python"), "-c", "import site; print(site.getsitepackages()[0])"],
            capture_output=True, text=True, check=True, timeout=30).stdout.strip())
        lines = [f"import site; site.addsitedir({d!r})" for d in site.getsitepackages()]
        (packages / "project-packages.pth").write_text("\n".join(lines) + "\n")
        return directory / "bin" / "python"
    pytest.skip(f"no Python {sys.version_info.major}.{sys.version_info.minor} that {USER} may run")


@pytest.mark.timeout(300)
def test_unit_tests_pass_as_nobody_without_network():
    if os.geteuid() != 0:
        pytest.skip("needs root (a network namespace and another user)")
    for tool in ("unshare", "runuser"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs `{tool}` (Debian package util-linux)")
    directory = Path(tempfile.mkdtemp(prefix="vipd-unit-venv-"))
    try:
        directory.chmod(0o755)
        python = str(make_venv(directory / "venv"))
        probe = as_user_without_network(python, "-c", "import vipd.daemon, pytest, hypothesis", timeout=60)
        if probe.returncode != 0:
            pytest.skip(f"{USER} cannot read the checkout or its packages: {probe.stderr.strip()[-300:]}")
        where = as_user_without_network(
            python, "-c", "import json, os, socket; print(json.dumps([os.geteuid(), socket.if_nameindex()]))",
            timeout=30)
        assert json.loads(where.stdout) == [pwd.getpwnam(USER).pw_uid, [[1, "lo"]]], where.stderr
        done = as_user_without_network(python, "-m", "pytest", "tests/unit", "-p", "no:cacheprovider", "-q",
                                       timeout=280)
        assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
        assert " passed" in done.stdout.strip().splitlines()[-1], done.stdout[-2000:]
    finally:
        shutil.rmtree(directory, ignore_errors=True)
