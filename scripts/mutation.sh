#!/usr/bin/env bash
# Mutation run: planted bugs applied one at a time to a temporary copy of the repository, the
# relevant tests run for each; prints caught/survived and the score, writes mutation.json.
# Not part of the test suite (tens of minutes on 2 cores). Arguments go to scripts/mutation.py
# (--check, --list, --only ID..., --out FILE).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
[ -x "$PY" ] || PY=python
exec nice -n 5 "$PY" scripts/mutation.py "$@"
