"""What ships: `python -m build` makes an sdist holding the whole source and, from it, a wheel that
installs into a fresh venv and runs; packaging/deb/build.sh makes a .deb with the right control
data, files and maintainer scripts, whose vipd runs from a throw-away root (and, in CI, installs
and purges for real)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

from vipd import __version__

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("vipd", "lbproxy")
COMMANDS = {"vipd": "vipd.cli:main", "lbproxy": "vipd.proxycli:main", "lbctl": "vipd.control.lbctl:main"}

pytestmark = pytest.mark.slow


def run(argv: list, timeout: float = 120, **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run([str(a) for a in argv], capture_output=True, text=True, timeout=timeout, **kwargs)


def source_files() -> list[str]:
    """Every file of the checkout that is not ignored (tracked, or new and not yet committed)."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("needs a git checkout to list the source files")
    done = run(["git", "-C", ROOT, "ls-files", "--cached", "--others", "--exclude-standard"], check=True)
    return [f for f in done.stdout.splitlines() if not f.startswith(".") and (ROOT / f).is_file()]


def package_dirs() -> set[str]:
    return {str(p.parent.relative_to(ROOT)).replace(os.sep, ".")
            for top in PACKAGES for p in (ROOT / top).rglob("__init__.py") if "__pycache__" not in p.parts}


@pytest.fixture(scope="module")
def dists(tmp_path_factory) -> tuple[Path, Path]:
    """The sdist, and the wheel built from it (build's default), without network (--no-isolation)."""
    out = tmp_path_factory.mktemp("dist")
    done = run([sys.executable, "-m", "build", "--no-isolation", "--outdir", out, ROOT], timeout=180)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    sdist, = out.glob("vipd-*.tar.gz")
    wheel, = out.glob("vipd-*.whl")
    return sdist, wheel


@pytest.mark.timeout(240)
def test_sdist_holds_the_whole_source(dists):
    sdist, _ = dists
    assert sdist.name == f"vipd-{__version__}.tar.gz"
    with tarfile.open(sdist) as tar:
        names = {n.split("/", 1)[1] for n in tar.getnames() if "/" in n}
    for must in ("LICENSE", "README.md", "pyproject.toml", "systemd/vipd.service", "systemd/lbproxy.service",
                 "config/minimal.toml", "packaging/deb/build.sh", "tests/conftest.py"):
        assert must in names
    missing = sorted(set(source_files()) - names)
    assert not missing, f"in the checkout, not in the sdist: {missing}"
    assert not [n for n in names if "__pycache__" in n or n.endswith(".pyc")]


@pytest.mark.timeout(240)
def test_wheel_holds_every_package_and_no_tests(dists):
    _, wheel = dists
    assert wheel.name == f"vipd-{__version__}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as zf:
        names = set(zf.namelist())
        info = f"vipd-{__version__}.dist-info"
        metadata = zf.read(f"{info}/METADATA").decode()
        entry_points = zf.read(f"{info}/entry_points.txt").decode()
    in_wheel = {n.rsplit("/", 1)[0].replace("/", ".") for n in names if n.endswith("/__init__.py")}
    assert in_wheel == package_dirs()
    assert {"vipd.vrrp", "vipd.control", "vipd.lab"} <= in_wheel
    data = {f for f in source_files() if f.split("/")[0] in PACKAGES and not f.endswith(".py")}
    assert data <= names, f"package files missing from the wheel: {sorted(data - names)}"
    assert {n.split("/")[0] for n in names} == {*PACKAGES, info}
    assert f"{info}/licenses/LICENSE" in names
    assert "License-Expression: Apache-2.0" in metadata.splitlines()
    assert f"Version: {__version__}" in metadata.splitlines()
    scripts = entry_points.split("[console_scripts]")[1].split("[")[0]
    declared = dict(line.replace(" ", "").split("=") for line in scripts.splitlines() if line.strip())
    assert declared == COMMANDS


@pytest.mark.timeout(300)
def test_wheel_installs_into_a_fresh_venv_and_runs(dists, tmp_path):
    _, wheel = dists
    venv = tmp_path / "venv"
    assert run([sys.executable, "-m", "venv", "--without-pip", venv]).returncode == 0
    done = run([sys.executable, "-m", "pip", "--python", venv / "bin" / "python", "install", "-q", wheel],
               timeout=240)
    assert done.returncode == 0, done.stderr[-3000:]
    bindir = venv / "bin"
    # From a directory outside the checkout, so the checkout's packages cannot be the ones imported.
    where = run([bindir / "python", "-c", "import vipd, lbproxy; print(vipd.__file__); print(lbproxy.__file__)"],
                cwd=tmp_path)
    assert [Path(p).parents[1] for p in where.stdout.split()] == [venv / "lib" / f"python{sys.version_info[0]}."
                                                                  f"{sys.version_info[1]}" / "site-packages"] * 2
    version = run([bindir / "vipd", "--version"], cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"vipd {__version__}\n")
    check = run([bindir / "vipd", "check", "-c", ROOT / "config" / "minimal.toml"], cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    assert check.stdout.endswith("ok (1 vrrp instance(s), 1 frontend(s))\n")
    for command, subcommands in (("lbctl", ("status", "drain", "reload")), ("lbproxy", ("run", "check"))):
        helped = run([bindir / command, "--help"], cwd=tmp_path)
        assert helped.returncode == 0, helped.stderr
        assert all(sub in helped.stdout for sub in subcommands), helped.stdout
    unreachable = run([bindir / "lbctl", "--socket", tmp_path / "none.sock", "status"], cwd=tmp_path)
    assert unreachable.returncode != 0
    assert unreachable.stderr.startswith("lbctl: ") and len(unreachable.stderr.splitlines()) == 1
    pod = run([bindir / "vipd", "manifest", "static-pod", "-c", ROOT / "config" / "minimal.toml"], cwd=tmp_path)
    assert pod.returncode == 0 and "\nkind: Pod\n" in pod.stdout, pod.stderr


def deb_unavailable() -> str | None:
    if os.geteuid() != 0:
        return "needs root (dpkg --root, and the package's files owned by root)"
    for tool in ("dpkg-deb", "dpkg"):
        if shutil.which(tool) is None:
            return f"needs {tool}"
    if run(["/usr/bin/python3", "-c", "import ensurepip"]).returncode != 0:
        return "needs Debian's python3 with python3-venv"
    return None


@pytest.fixture(scope="module")
def deb(dists, tmp_path_factory) -> Path:
    reason = deb_unavailable()
    if reason:
        pytest.skip(reason)
    out = tmp_path_factory.mktemp("deb")
    done = run(["bash", ROOT / "packaging" / "deb" / "build.sh", "--wheel", dists[1], "--outdir", out], timeout=400)
    assert done.returncode == 0, done.stderr[-3000:]
    arch = run(["dpkg", "--print-architecture"], check=True).stdout.strip()
    path = out / f"vipd_{__version__}_{arch}.deb"
    assert done.stdout == f"{path}\n"
    return path


@pytest.mark.timeout(600)
def test_deb_control_files_and_scripts(deb, tmp_path):
    fields = dict(line.split(": ", 1) for line in run(
        ["dpkg-deb", "-f", deb, "Package", "Version", "Architecture", "Depends"], check=True).stdout.splitlines())
    arch = run(["dpkg", "--print-architecture"], check=True).stdout.strip()
    py = run(["/usr/bin/python3", "-c", "import sys; print(*sys.version_info[:2])"], check=True).stdout.split()
    assert fields == {"Package": "vipd", "Version": __version__, "Architecture": arch,
                      "Depends": f"python3 (>= 3.{py[1]}), python3 (<< 3.{int(py[1]) + 1}), adduser"}

    listing = run(["dpkg-deb", "-c", deb], check=True).stdout.splitlines()
    entries = {line.split(None, 5)[5].split(" -> ")[0].removeprefix("."): line for line in listing}
    for command in COMMANDS:
        assert entries[f"/usr/bin/{command}"].endswith(f" -> /opt/vipd/bin/{command}")
        assert f"/opt/vipd/bin/{command}" in entries
    for path in ("/lib/systemd/system/vipd.service", "/lib/systemd/system/lbproxy.service",
                 "/etc/vipd/vipd.toml.example", "/usr/share/doc/vipd/copyright", "/opt/vipd/pyvenv.cfg"):
        assert path in entries
    assert any(p.endswith("/site-packages/vipd/vrrp/fsm.py") for p in entries)
    assert any(p.endswith("/site-packages/vipd/__pycache__/cli.cpython-3" + py[1] + ".pyc") for p in entries)
    assert not [p for p in entries if "/tests/" in p.split("site-packages")[-1] and "/vipd/" in p]
    assert all(" root/root " in line for line in listing)

    control = tmp_path / "DEBIAN"
    run(["dpkg-deb", "-e", deb, control], check=True)
    assert (control / "conffiles").read_text() == "/etc/vipd/vipd.toml.example\n"
    scripts = {name: (control / name).read_text() for name in ("postinst", "prerm", "postrm")}
    for name, text in scripts.items():
        assert os.access(control / name, os.X_OK)
        assert run(["sh", "-n", control / name]).returncode == 0, name
    assert "adduser --system --group" in scripts["postinst"]
    assert "daemon-reload" in scripts["postinst"]
    assert "systemctl enable" not in scripts["postinst"] and "systemctl start" not in scripts["postinst"]
    assert "deluser --system" in scripts["postrm"] and "rm -rf /opt/vipd /var/lib/vipd" in scripts["postrm"]

    files = tmp_path / "files"
    run(["dpkg-deb", "-x", deb, files], check=True)
    for unit in ("vipd", "lbproxy"):
        shipped = (files / "lib/systemd/system" / f"{unit}.service").read_text()
        source = (ROOT / "systemd" / f"{unit}.service").read_text()
        assert shipped == source.replace("/usr/local/bin/", "/usr/bin/")
        assert f"ExecStart=/usr/bin/{unit} run -c /etc/vipd/" in shipped
    scripts_bin = [p for p in (files / "opt/vipd/bin").iterdir() if p.is_file() and not p.is_symlink()]
    shebangs = {p.name: p.read_bytes().split(b"\n", 1)[0] for p in scripts_bin}
    assert shebangs and set(shebangs.values()) == {b"#!/opt/vipd/bin/python"}, shebangs


@pytest.mark.timeout(600)
def test_deb_unpacks_into_a_throwaway_root_and_runs(deb, tmp_path):
    root = tmp_path / "root"
    (root / "var/lib/dpkg/info").mkdir(parents=True)
    (root / "var/lib/dpkg/updates").mkdir()
    (root / "var/lib/dpkg/status").touch()
    # --unpack runs no postinst: creating users belongs to a real install (below, in CI).
    done = run(["dpkg", f"--root={root}", "--force-depends", "--unpack", deb])
    assert done.returncode == 0, done.stderr
    python = root / "opt/vipd/bin/python"
    version = run([python, root / "opt/vipd/bin/vipd", "--version"], cwd=tmp_path)
    assert (version.returncode, version.stdout) == (0, f"vipd {__version__}\n"), version.stderr
    # Until configured, dpkg keeps a conffile under its .dpkg-new name.
    example = root / "etc/vipd/vipd.toml.example.dpkg-new"
    check = run([python, root / "opt/vipd/bin/vipd", "check", "-c", example], cwd=tmp_path)
    assert check.returncode == 0, check.stderr
    helped = run([python, root / "opt/vipd/bin/lbctl", "--help"], cwd=tmp_path)
    assert helped.returncode == 0 and "status" in helped.stdout


def test_deb_installs_and_purges_for_real(deb):
    """Only in CI (CI=true): it changes the host (a vipd user, /opt/vipd), and purges in the end."""
    if os.environ.get("CI") != "true":
        pytest.skip("installs the package on this host: runs only with CI=true")
    if run(["dpkg-query", "-W", "-f", "${Status}", "vipd"]).stdout.endswith(" installed"):
        pytest.skip("a vipd package is already installed here")
    if run(["getent", "passwd", "vipd"]).returncode == 0:
        pytest.skip("a vipd user exists already; the purge would remove it")
    try:
        done = run(["dpkg", "-i", deb], timeout=120)
        assert done.returncode == 0, done.stdout + done.stderr
        assert run(["getent", "passwd", "vipd"]).returncode == 0
        assert run(["getent", "group", "vipd"]).returncode == 0
        version = run(["/usr/bin/vipd", "--version"])
        assert (version.returncode, version.stdout) == (0, f"vipd {__version__}\n")
        assert run(["/usr/bin/vipd", "check", "-c", "/etc/vipd/vipd.toml.example"]).returncode == 0
        assert not Path("/etc/systemd/system/multi-user.target.wants/vipd.service").exists()
        if shutil.which("systemd-analyze"):
            verify = run(["systemd-analyze", "verify", "/lib/systemd/system/vipd.service"], timeout=60)
            assert "vipd.service" not in verify.stderr, verify.stderr
    finally:
        purged = run(["dpkg", "--purge", "vipd"], timeout=120)
    assert purged.returncode == 0, purged.stderr
    assert run(["getent", "passwd", "vipd"]).returncode != 0
    assert run(["getent", "group", "vipd"]).returncode != 0
    assert not Path("/opt/vipd").exists() and not Path("/usr/bin/vipd").exists()
