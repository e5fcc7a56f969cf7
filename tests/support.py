"""Helpers the tests of every folder share (on sys.path through pytest's `pythonpath`)."""
from __future__ import annotations

import shutil

import pytest


def require_binary(name: str, package: str | None = None) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"needs `{name}` (Debian package {package or name})")
