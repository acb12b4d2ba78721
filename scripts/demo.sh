#!/usr/bin/env bash
# The main job, end to end, on a generated hierarchical multi-label dataset (no download):
# set up .venv, train one learner, predict the test split, evaluate P@k / nDCG@k / PSP@k.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/bootstrap.sh
.venv/bin/xhyp run --dataset synthetic-hier --out runs/demo --overwrite "$@"   # (--overwrite: rerunnable)
