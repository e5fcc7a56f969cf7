"""Tests are sorted by what they need, and marked by their folder:

- tests/unit: pure (no sockets, no root, no network); `python -m pytest tests/unit` runs in seconds
- tests/local: real processes and loopback sockets, no root
- tests/netns: root and network-namespace labs (198.18.0.0/15, 2001:db8::/32), torn down after
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent
FOLDER_MARKS = {"unit": "unit", "local": "local", "netns": "netns"}


def pytest_configure(config) -> None:
    # Hypothesis keeps its examples in ./.hypothesis; where that cannot be written (another user's
    # or a read-only checkout) run without that database rather than warn in every property test.
    home = Path(os.environ.get("HYPOTHESIS_STORAGE_DIRECTORY") or Path.cwd() / ".hypothesis") / "examples"
    existing = next(p for p in (home, *home.parents) if p.exists())
    if not os.access(existing, os.W_OK | os.X_OK):
        from hypothesis import settings

        settings.register_profile("no-database", database=None)
        settings.load_profile("no-database")


def pytest_collection_modifyitems(config, items) -> None:
    for item in items:
        try:
            folder = Path(str(item.fspath)).resolve().relative_to(HERE).parts[0]
        except ValueError:
            continue
        mark = FOLDER_MARKS.get(folder)
        if mark is not None:
            item.add_marker(getattr(pytest.mark, mark))


@pytest.fixture
def lab():
    """A fresh namespace lab, torn down whatever the test does."""
    from vipd.lab.netns import Lab, unavailable_reason

    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    built = Lab()
    try:
        yield built
    finally:
        built.close()
