#!/usr/bin/env bash
# The whole test suite: installs what it needs (scripts/install.sh), then runs pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec .venv/bin/python -m pytest "$@"
