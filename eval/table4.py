"""Table 4 of Gerald & Baskiotis (CAp 2019): P@1/3/5 against the embedding dimension and the
number of learners, Poincaré ball vs Euclidean space.

For every data set, geometry and dimension ``n`` the script trains ``max(--learners)`` learners
once (an ensemble directory ``CACHE/DATASET/GEOMETRY_dN[_overrides]/learner_XX``, seeds
``seed, seed+1, ...``), saves each learner's test scores (``learner_XX/test_scores.npz``, top
``--member-top-k`` labels a row) and reports the ensembles made of the first ``M`` learners for
every ``M`` in ``--learners`` (summed votes, :func:`xhyp.knn.vote.sum_top_scores`). Everything is cached:
an interrupted sweep continues where it stopped and re-running a finished one only re-aggregates.

Example (the full Bibtex sweep; ``--epochs`` caps training for speed)::

    python -m xhyp.eval.table4 --datasets bibtex --data-dir ../shared/data --out runs/table4 \\
        --dims 2 5 10 25 50 --learners 1 3 6 9 12 15 --geometries poincare euclidean

Writes ``OUT/table4.md`` and ``OUT/table4.json`` (metrics of every prefix and every learner,
training/prediction seconds, wall time).
"""
from __future__ import annotations

import sys

from xhyp.config import GEOMETRIES
from xhyp.eval.common import DIMS, GEOMETRY_NAMES, KS, LEARNERS, log, md_table, pct, run_script, script_parser, sweep


def markdown(data: dict, learners, ks=KS) -> str:
    """One table per data set and metric: rows (geometry, n), columns the number of learners."""
    lines = []
    ov = data.get("settings", {}).get("overrides") or {}
    for ds, by_geom in data["results"].items():
        for k in ks:
            rows = [[GEOMETRY_NAMES.get(geometry, geometry), dim,
                     *(pct(cell["prefix"].get(str(m), {}).get(f"P@{k}")) for m in learners)]
                    for geometry, cells in by_geom.items() for dim, cell in cells.items()]
            lines += md_table(f"**{ds}: P@{k} (%)**" + (f" (training overrides: {ov})" if ov else ""),
                              ["geometry", "n", *(f"{m} learner{'s' if m > 1 else ''}" for m in learners)], rows)
        t = data["timing"][ds]
        lines.append(f"{ds}: {t['learners']} learners ({t['trained_now']} trained in this run), "
                     f"sum of learner training times {t['sum_learner_train_seconds']:.0f} s, "
                     f"wall time of this run {t['wall_seconds']:.0f} s "
                     f"(CPU time {t.get('cpu_seconds', float('nan')):.0f} s; load average "
                     f"{t.get('load_average_start')} at the start, {t.get('load_average_end')} at the end).")
        lines.append("")
    return "\n".join(lines)


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("table4", __doc__, jobs=True, member_top_k=True)
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--learners", type=int, nargs="+", default=list(LEARNERS),
                   help="ensemble sizes reported (max(LEARNERS) learners are trained)")
    p.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES)
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """The sweep of the command line's settings: ``(markdown, data)`` (see :func:`xhyp.eval.common.run_script`)."""
    learners = sorted(set(args.learners))
    data = sweep(args.datasets, args.data_dir, cache, args.dims, learners, args.geometries, overrides,
                 seed, args.jobs, args.member_top_k, log=log)
    data["settings"] = {"dims": args.dims, "learners": learners, "geometries": args.geometries,
                        "overrides": overrides, "seed": seed, "jobs": args.jobs, "cache": cache,
                        "member_top_k": args.member_top_k}
    return markdown(data, learners), data


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("table4", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
