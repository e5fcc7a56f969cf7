"""The arrows of the tree (issue 7): vipd -> lbproxy only; the product never reaches the lab (but for
the CLI's `demo` command); no product module leans on the tests or the benches. Checked on the
source (an AST walk that also sees imports inside functions) and on what importing the daemon loads."""
from __future__ import annotations

import ast
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("lbproxy", "vipd")
LAB = "vipd.lab"
LAB_ENTRY = ("vipd.cli", "demo")    # (module, function): the one product path into the lab
# Top-level names the tests and benches are importable under (tests/support.py is on pytest's path).
TEST_AND_BENCH = ("tests", "bench", "support", "conftest")


@dataclass(frozen=True)
class Import:
    target: str
    line: int
    function: str | None     # qualified name of the enclosing function, None at module level


def within(name: str, package: str) -> bool:
    return name == package or name.startswith(package + ".")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(source: str, module: str, is_package: bool = False) -> list[Import]:
    """Every module a source imports, wherever the import stands; relative imports resolved."""
    package = module if is_package else module.rpartition(".")[0]
    found: list[Import] = []

    def resolve(node: ast.ImportFrom) -> str:
        if not node.level:
            return node.module or ""
        base = package.split(".")[: len(package.split(".")) - node.level + 1]
        return ".".join(base + ([node.module] if node.module else []))

    def visit(node: ast.AST, function: str | None) -> None:
        for child in ast.iter_child_nodes(node):
            inner = function
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                inner = f"{function}.{child.name}" if function else child.name
            if isinstance(child, ast.Import):
                found.extend(Import(alias.name, child.lineno, function) for alias in child.names)
            elif isinstance(child, ast.ImportFrom):
                base = resolve(child)
                found.append(Import(base, child.lineno, function))
                found.extend(Import(f"{base}.{alias.name}", child.lineno, function)
                             for alias in child.names if alias.name != "*")
            elif (isinstance(child, ast.Call) and child.args and isinstance(child.args[0], ast.Constant)
                  and isinstance(child.args[0].value, str)
                  and getattr(child.func, "id", getattr(child.func, "attr", None)) in ("import_module", "__import__")):
                found.append(Import(child.args[0].value, child.lineno, function))
            visit(child, inner)

    visit(ast.parse(source), None)
    return found


def violations(source: str, module: str, is_package: bool = False) -> list[str]:
    """The broken arrows of one module, as `module:line: what`."""
    broken = []
    in_lab = within(module, LAB)
    for imp in imports_of(source, module, is_package):
        where = f"{module}:{imp.line}: imports {imp.target}"
        if within(module, "lbproxy") and within(imp.target, "vipd"):
            broken.append(f"{where} (lbproxy imports nothing from vipd)")
        elif within(module, "vipd") and not in_lab and within(imp.target, LAB) \
                and (module, imp.function) != LAB_ENTRY:
            broken.append(f"{where} (only {LAB_ENTRY[0]}'s `{LAB_ENTRY[1]}` command reaches the lab)")
        if not in_lab and imp.target.split(".")[0] in TEST_AND_BENCH:
            broken.append(f"{where} (the product does not import the tests or the benches)")
    return broken


def product_sources() -> list[Path]:
    return sorted(p for package in PACKAGES for p in (ROOT / package).rglob("*.py"))


def test_the_tree_keeps_its_arrows():
    sources = product_sources()
    names = {module_name(p) for p in sources}
    # The walk must have seen the tree, or it would pass by seeing nothing.
    assert {"lbproxy.supervisor", "lbproxy.config", "vipd.daemon", "vipd.cli", "vipd.vrrp.fsm",
            "vipd.control.server", "vipd.lab.demo"} <= names, names
    broken = [b for p in sources for b in violations(p.read_text(), module_name(p), p.name == "__init__.py")]
    assert broken == []


def test_the_walk_sees_the_demo_command_reaching_the_lab_from_inside_its_function():
    cli = ROOT / "vipd" / "cli.py"
    into_lab = [i for i in imports_of(cli.read_text(), "vipd.cli") if within(i.target, LAB)]
    assert into_lab and {i.function for i in into_lab} == {"demo"}


@pytest.mark.parametrize("module,source,rule", [
    ("lbproxy.worker", "import vipd.config", "lbproxy imports nothing from vipd"),
    ("lbproxy.worker", "from vipd.config import load", "lbproxy imports nothing from vipd"),
    ("lbproxy.worker", "from vipd import daemon", "lbproxy imports nothing from vipd"),
    ("lbproxy.supervisor", "def start():\n    import vipd.daemon", "lbproxy imports nothing from vipd"),
    ("lbproxy.supervisor", "class S:\n    async def run(self):\n        from vipd.vrrp import fsm",
     "lbproxy imports nothing from vipd"),
    ("lbproxy.worker", "import importlib\nimportlib.import_module('vipd.config')",
     "lbproxy imports nothing from vipd"),
    ("vipd.daemon", "from vipd.lab.netns import Lab", "reaches the lab"),
    ("vipd.daemon", "import vipd.lab", "reaches the lab"),
    ("vipd.daemon", "from vipd import lab", "reaches the lab"),
    ("vipd.daemon", "def run_daemon():\n    import vipd.lab.edges", "reaches the lab"),
    ("vipd.vrrp.instance", "from ..lab import demo", "reaches the lab"),
    ("vipd.vrrp", "from ..lab.netns import Lab", "reaches the lab"),
    ("vipd.cli", "from vipd.lab.demo import run_demo", "reaches the lab"),
    ("vipd.cli", "def run():\n    from vipd.lab.demo import run_demo", "reaches the lab"),
    ("vipd.cli", "class App:\n    def demo(self):\n        from vipd.lab.demo import run_demo", "reaches the lab"),
    ("vipd.control.server", "import tests.support", "tests or the benches"),
    ("vipd.control.server", "from support import require_binary", "tests or the benches"),
    ("lbproxy.balance", "def f():\n    from bench._common import run", "tests or the benches"),
])
def test_the_check_catches_each_broken_arrow(module, source, rule):
    broken = violations(source, module, is_package=module == "vipd.vrrp")
    assert len(broken) >= 1 and all(rule in b for b in broken), broken


@pytest.mark.parametrize("module,source", [
    ("vipd.cli", "def demo():\n    from vipd.lab.demo import run_demo"),
    ("vipd.daemon", "from lbproxy.supervisor import Supervisor"),
    ("vipd.daemon", "import vipd.laboratory\nimport vipd.labels.x"),
    ("vipd.lab.demo", "from vipd.lab.edges import build\nfrom tests.support import require_binary"),
    ("lbproxy.worker", "from .balance import make_balancer\nfrom . import ipc"),
    ("vipd.vrrp.instance", "from .fsm import State\nfrom ..control import server"),
])
def test_the_check_lets_the_allowed_arrows_through(module, source):
    assert violations(source, module) == []


def test_relative_imports_resolve_against_the_package():
    targets = {i.target for i in imports_of("from ..lab import demo\nfrom .fsm import State", "vipd.vrrp.instance")}
    assert {"vipd.lab", "vipd.lab.demo", "vipd.vrrp.fsm", "vipd.vrrp.fsm.State"} <= targets
    package = {i.target for i in imports_of("from . import packet", "vipd.vrrp", is_package=True)}
    assert "vipd.vrrp.packet" in package


LOADED = """
import json, sys
import vipd.daemon, vipd.cli, vipd.proxycli
print(json.dumps({"daemon": "vipd.daemon" in sys.modules,
                  "lab": sorted(m for m in sys.modules if m == "vipd.lab" or m.startswith("vipd.lab."))}))
"""

LBPROXY_ALONE = """
import importlib, json, pkgutil, sys
import lbproxy
names = [info.name for info in pkgutil.walk_packages(lbproxy.__path__, "lbproxy.")]
for name in names:
    importlib.import_module(name)
print(json.dumps({"imported": names, "vipd": sorted(m for m in sys.modules if m.split(".")[0] == "vipd")}))
"""


def fresh_python(code: str) -> dict:
    """Run `code` in a fresh interpreter (no network; just imports) and return its JSON line."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60, cwd=ROOT)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.mark.timeout(90)
def test_importing_the_daemon_and_the_clis_loads_no_lab_module():
    loaded = fresh_python(LOADED)
    assert loaded["daemon"] is True
    assert loaded["lab"] == []


@pytest.mark.timeout(90)
def test_every_lbproxy_module_imports_without_vipd():
    loaded = fresh_python(LBPROXY_ALONE)
    assert "lbproxy.supervisor" in loaded["imported"] and "lbproxy.worker" in loaded["imported"]
    assert loaded["vipd"] == []


def test_every_console_script_resolves_to_a_callable():
    """`pip install .` writes these entry points; a module moved without them breaks the command."""
    import importlib
    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert set(scripts) == {"vipd", "lbproxy", "lbctl"}
    for name, target in scripts.items():
        module, _, attr = target.partition(":")
        assert callable(getattr(importlib.import_module(module), attr)), name
