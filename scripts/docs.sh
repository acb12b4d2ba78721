#!/usr/bin/env bash
# Build the API documentation (Sphinx: autodoc + napoleon, from the docstrings) into docs/_build/html.
# Warnings are errors. Installs the `docs` extra of pyproject.toml into .venv when Sphinx is missing
# (without reinstalling xhyp); sets up .venv first if there is none (scripts/bootstrap.sh).
# Silent on success under CI (CI set).
set -euo pipefail
cd "$(dirname "$0")/.."
[ -x .venv/bin/python ] || bash scripts/bootstrap.sh
if ! .venv/bin/python -c "import sphinx" 2>/dev/null; then
    mapfile -t reqs < <(.venv/bin/python -c "
import tomllib
print('\n'.join(tomllib.load(open('pyproject.toml', 'rb'))['project']['optional-dependencies']['docs']))")
    log=$(mktemp)
    .venv/bin/python -m pip install -q "${reqs[@]}" >"$log" 2>&1 || { cat "$log"; rm -f "$log"; exit 1; }
    rm -f "$log"
fi
rm -rf docs/_build/html docs/_build/doctrees
.venv/bin/python -m sphinx -W --keep-going -q -b html -d docs/_build/doctrees docs/api docs/_build/html "$@"
# silent on success under CI, so that the test runner's summary stays the last line of .ci/run
[ -n "${CI:-}" ] || echo "docs: docs/_build/html/index.html"
