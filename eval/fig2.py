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

import argparse
import sys
import time
from pathlib import Path

from xhyp.eval.common import (
    add_cache_args, add_common_args, cache_settings, command_line, write_outputs,
)
from xhyp.eval.table6 import model_for
from xhyp.plot import plot_model_labels


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line parser (``--help`` lists its options)."""
    p = argparse.ArgumentParser(prog="python -m xhyp.eval.fig2", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_args(p)
    p.add_argument("--model", help="a model directory to draw instead of the cache's (one data set)")
    p.add_argument("--dim", type=int, default=2, help="dimension of the cached model (2: drawn as learned)")
    p.add_argument("--examples", type=int, default=0, help="also draw up to this many training examples")
    return p


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    args = build_parser().parse_args(argv)
    overrides, cache = cache_settings(args)
    t0 = time.time()
    out = Path(args.out)
    figs = {}
    names = [Path(args.model).name] if args.model else args.datasets
    for ds in names:
        d = Path(args.model) if args.model else model_for(ds, args.data_dir, cache, "poincare", args.dim,
                                                         overrides, args.seed)
        figs[ds] = plot_model_labels(d, out / f"fig2_{ds}.png", examples=args.examples)
        print(f"[fig2] {ds}: {figs[ds]['out']} ({figs[ds]['png_bytes'] // 1024} KB), "
              f"rho = {figs[ds]['spearman_rho']:.3f}", file=sys.stderr, flush=True)
    lines = ["| data set | figure | projection | labels | Spearman rho(freq, d(0,w)) |", "|---|---|---|---:|---:|"]
    for ds, f in figs.items():
        lines.append(f"| {ds} | ![{ds}]({Path(f['out']).name}) | {f['projection']} | {f['n_labels']} | "
                     f"{f['spearman_rho']:.3f} |")
    data = {"figures": figs, "wall_seconds": round(time.time() - t0, 1),
            "command": command_line("fig2", argv)}
    md, _ = write_outputs(out, "fig2", "\n".join(lines), data)
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
