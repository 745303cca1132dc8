#!/usr/bin/env bash
# One command: set up the environment on a fresh machine, then run the whole test suite.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/env.sh
# Lint and format (ruff.toml), then the suite.
ruff check .
ruff format --check .
python -m pytest -q tests "$@"
