"""Table 5 of Gerald & Baskiotis (CAp 2019): P@k against the number of learners (1..15) at n=50.

Uses the same cache as :mod:`xhyp.eval.table4` (``--cache``, :func:`xhyp.eval.common.sweep`), so after a Table-4 sweep this
only re-aggregates the saved per-learner test scores; missing learners are trained.

The *plateau* of a metric is the smallest ensemble size ``M`` whose score is within
``--tolerance`` points (default 0.25) of the best score over all sizes: adding learners beyond it
gains less than that.

Example::

    python -m xhyp.eval.table5 --datasets bibtex delicious --data-dir ../shared/data \\
        --cache runs/table4/cache --out runs/table5

Writes ``OUT/table5.md`` and ``OUT/table5.json``.
"""
from __future__ import annotations

import sys

from xhyp.config import GEOMETRIES
from xhyp.eval.common import GEOMETRY_NAMES, KS, log, md_table, pct, run_script, script_parser, sweep


def plateau(curve: dict, tolerance: float = 0.25) -> int:
    """Smallest ensemble size whose score is within ``tolerance`` points (percent) of the best.

    Args:
        curve: ``{M: score as a fraction}``.
        tolerance: in percentage points.
    """
    best = max(curve.values())
    return min(m for m, v in curve.items() if 100.0 * (best - v) <= tolerance + 1e-12)


def markdown(data: dict) -> str:
    """Markdown of the results: per data set and geometry, P@k against the number of learners, and the plateau."""
    lines = []
    tol = data["settings"]["tolerance"]
    for ds, by_geom in data["results"].items():
        for geometry, cells in by_geom.items():
            cell = cells[str(data["settings"]["dim"])]
            ms = sorted(int(m) for m in cell["prefix"])
            lines += md_table(f"**{ds}: {GEOMETRY_NAMES.get(geometry, geometry)}, n={data['settings']['dim']}, "
                              "P@k (%) against the number of learners**", ["learners", *(f"P@{k}" for k in KS)],
                              [[m, *(pct(cell["prefix"][str(m)][f"P@{k}"]) for k in KS)] for m in ms],
                              "r" * (1 + len(KS)))
            p = data["plateau"][ds][geometry]
            lines.append(f"Plateau (first size within {tol} points of the best): "
                         + ", ".join(f"P@{k} at {p[f'P@{k}']} learners" for k in KS) + ".")
            lines.append("")
    return "\n".join(lines)


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("table5", __doc__, dim=50, jobs=True, member_top_k=True)
    p.add_argument("--max-learners", type=int, default=15)
    p.add_argument("--geometries", nargs="+", default=["poincare"], choices=GEOMETRIES)
    p.add_argument("--tolerance", type=float, default=0.25, help="plateau tolerance in points")
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """P@k against 1..``--max-learners`` learners and the plateaus: ``(markdown, data)``."""
    learners = list(range(1, args.max_learners + 1))
    data = sweep(args.datasets, args.data_dir, cache, [args.dim], learners, args.geometries, overrides,
                 seed, args.jobs, args.member_top_k, log=log)
    data["plateau"] = {
        ds: {g: {f"P@{k}": plateau({int(m): v[f"P@{k}"] for m, v in cells[str(args.dim)]["prefix"].items()},
                                   args.tolerance) for k in KS}
             for g, cells in by_geom.items()}
        for ds, by_geom in data["results"].items()}
    data["settings"] = {"dim": args.dim, "learners": learners, "geometries": args.geometries,
                        "overrides": overrides, "seed": seed, "cache": cache, "tolerance": args.tolerance}
    return markdown(data), data


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("table5", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
