"""Shared by the test_migrate_* files: the realistic inputs and a way to read the translation
back the way `vipd check` does."""
from __future__ import annotations

import subprocess
import sys
import tomllib
from pathlib import Path

from vipd.config import Config, parse
from vipd.migrate import Result, translate

INPUTS = Path(__file__).resolve().parent / "migrate_inputs"


def translated(**paths) -> tuple[Config, Result]:
    """Translate, insist the output passes vipd's own parser, return both."""
    result = translate(**{f"{k}_path": str(v) for k, v in paths.items()})
    assert result.toml is not None, result.notes
    assert result.problems == []
    return parse(tomllib.loads(result.toml), "<import>", require_vrrp=True), result


def notes_about(result: Result, text: str) -> list[str]:
    return [line for line in result.notes if text in line]


def vipd_import(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "vipd", "import", *args], capture_output=True, text=True,
                          timeout=60, cwd=cwd)
