"""Figure 2 of Gerald & Baskiotis (CAp 2019): a 2-dimensional model's labels in the Poincaré disk.

Each label embedding ``w_l`` of a model with ``n = 2`` is drawn at its learned position in the
unit disk, coloured by its training frequency on a log scale (:func:`xhyp.plot.plot_labels`);
``--examples`` also draws that many training examples in grey. The model is ``--model DIR`` or
learner 0 of the Table-4 cache cell (data set, Poincaré, n=2), trained there if missing.

Example::

    python -m xhyp.eval.fig2 --datasets bibtex delicious --data-dir ../shared/data \\
        --cache runs/table4/cache --out runs/fig2

Writes ``OUT/fig2_DATASET.png`` per data set, plus ``OUT/fig2.md`` and ``OUT/fig2.json`` (file
names, projection, Spearman's rho of frequency vs distance to the origin).
"""
from __future__ import annotations

import sys
from pathlib import Path

from xhyp.eval.common import log, model_for, run_script, script_parser
from xhyp.plot import plot_model_labels


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("fig2", __doc__, dim=2)
    p.add_argument("--model", help="a model directory to draw instead of the cache's (one data set)")
    p.add_argument("--examples", type=int, default=0, help="also draw up to this many training examples")
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """One figure per data set (``--dim`` 2: the model drawn as learned): ``(markdown, data)``."""
    out = Path(args.out)
    figs = {}
    names = [Path(args.model).name] if args.model else args.datasets
    for ds in names:
        d = Path(args.model) if args.model else model_for(ds, args.data_dir, cache, "poincare", args.dim,
                                                         overrides, seed)
        figs[ds] = plot_model_labels(d, out / f"fig2_{ds}.png", examples=args.examples)
        log(f"[fig2] {ds}: {figs[ds]['out']} ({figs[ds]['png_bytes'] // 1024} KB), "
            f"rho = {figs[ds]['spearman_rho']:.3f}")
    lines = ["| data set | figure | projection | labels | Spearman rho(freq, d(0,w)) |", "|---|---|---|---:|---:|"]
    for ds, f in figs.items():
        lines.append(f"| {ds} | ![{ds}]({Path(f['out']).name}) | {f['projection']} | {f['n_labels']} | "
                     f"{f['spearman_rho']:.3f} |")
    return "\n".join(lines), {"figures": figs}


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("fig2", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
