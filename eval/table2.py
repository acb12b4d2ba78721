"""Table 2 of Gerald & Baskiotis (CAp 2019): the Most-Common baseline.

Every test point receives the labels most frequent in the training set
(:func:`xhyp.metrics.most_common_baseline`); the table gives its P@1/3/5 per data set, the
floor any learned model must clear.

Example::

    python -m xhyp.eval.table2 --datasets bibtex delicious --data-dir ../shared/data --out runs/table2

Writes ``OUT/table2.md`` and ``OUT/table2.json``.
"""
from __future__ import annotations

import sys

from xhyp.datasets import load_split
from xhyp.eval.common import KS, run_script, script_parser
from xhyp.metrics import evaluate, format_table, most_common_baseline


def most_common_table(datasets, data_dir=None, ks=KS) -> dict:
    """``{dataset: {"P@1": .., "P@3": .., "P@5": .., "n_train": .., "n_test": .., "n_labels": ..}}``."""
    out = {}
    for ds in datasets:
        _, Ytr = load_split(ds, "train", data_dir=data_dir)
        _, Yte = load_split(ds, "test", data_dir=data_dir)
        S = most_common_baseline(Ytr, Yte.shape[0], k=max(ks))
        m = {k: v for k, v in evaluate(Yte, S, ks=ks).items() if k.startswith("P@")}
        out[ds] = dict(m, n_train=int(Ytr.shape[0]), n_test=int(Yte.shape[0]), n_labels=int(Ytr.shape[1]))
    return out


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    return script_parser("table2", __doc__, cache=False)


def run(args, overrides: dict, cache, seed: int) -> tuple[str, dict]:
    """The baseline on every data set: ``(markdown, data)`` (no training: the cache arguments are unused)."""
    rows = most_common_table(args.datasets, args.data_dir)
    md = "**Most-Common baseline, P@k (%)**\n\n" + format_table(
        {ds: {k: v for k, v in r.items() if k.startswith("P@")} for ds, r in rows.items()},
        metrics=[f"P@{k}" for k in KS]).replace("| Method |", "| Data set |")
    return md, {"results": rows}


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("table2", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
