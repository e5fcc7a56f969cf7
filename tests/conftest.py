import shutil

import pytest

from vipd.lab.netns import Lab, unavailable_reason


def require_binary(name: str, package: str | None = None) -> None:
    if shutil.which(name) is None:
        pytest.skip(f"needs `{name}` (Debian package {package or name})")


@pytest.fixture
def lab():
    """A fresh namespace lab, torn down whatever the test does."""
    reason = unavailable_reason()
    if reason:
        pytest.skip(reason)
    built = Lab()
    try:
        yield built
    finally:
        built.close()
