#!/usr/bin/env bash
# Set up .venv and run the whole test suite (real-data tests read $XHYP_DATA, else ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/python -m pytest -q "$@"
