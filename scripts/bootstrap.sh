#!/usr/bin/env bash
# Create .venv (if missing) and install xhyp into it, CPU build of torch, with the test extras.
# Safe to rerun: an existing .venv is reused and the project is reinstalled (the C++ extension
# is rebuilt when its sources changed).
set -euo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip setuptools wheel
# Pin torch: an unpinned torch pulls a multi-GB CUDA build. GPU users: install a CUDA torch first.
python -c "import torch" 2>/dev/null || python -m pip install -q torch==2.13.0
python -m pip install -q ninja   # parallel compilation of the C++ extension
# --no-build-isolation: build the extension against the torch installed above.
python -m pip install -q --no-build-isolation -e '.[test]'
