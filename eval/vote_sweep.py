"""Choose the kNN vote's settings (``k``, count or distance weighting) without touching the test split.

The vote is an inference-time choice (Gerald & Baskiotis, CAp 2019, section 2.6): changing it
needs no retraining. This script holds out ``--holdout`` of the *training* split (seeded), trains
``--learners`` learners on the rest (cached in ``CACHE/DATASET/holdout_...``), and reports
P@1/3/5 of their summed votes on the held-out part for every ``k`` in ``--knn`` and both
weightings. The best setting by held-out P@1 (ties: P@3, then the smaller ``k``) is what
``xhyp predict --k K --weighting W`` should use on the test split.

Example::

    python -m xhyp.eval.vote_sweep --datasets bibtex --data-dir ../shared/data --out runs/vote_sweep

Writes ``OUT/vote_sweep.md`` and ``OUT/vote_sweep.json`` (with the best setting per data set).
"""
from __future__ import annotations

import sys
import time

from xhyp.config import GEOMETRIES, WEIGHTINGS
from xhyp.datasets import load_split
from xhyp.eval.common import config_dir, holdout_split, log, md_table, pct, run_script, script_parser, train_cell
from xhyp.metrics import evaluate
from xhyp.prediction import Ensemble


def sweep_dataset(dataset: str, data_dir, cache, learners: int, knn, dim: int, geometry: str,
                  overrides: dict, holdout: float, seed: int, jobs: int = 1, log=print) -> dict:
    """Train on the fit part, score the held-out part for every (k, weighting); see the module docstring."""
    X, Y = load_split(dataset, "train", data_dir=data_dir)
    fit, out = holdout_split(X.shape[0], holdout, seed)
    cell = config_dir(cache, dataset, geometry, dim, overrides)
    t0 = time.time()
    d, _ = train_cell(dataset, X[fit], Y[fit], cache, geometry, dim, learners, overrides, seed, jobs,
                      directory=cell.with_name(f"holdout{holdout}_seed{seed}_{cell.name}"),
                      extra={"holdout": {"fraction": holdout, "seed": seed}})
    t_train = time.time() - t0
    ens = Ensemble.load(d)
    grid = []
    for k in knn:
        for w in WEIGHTINGS:
            S = ens.predict(X[out], top_k=5, k=k, weighting=w)
            m = {key: v for key, v in evaluate(Y[out], S, ks=(1, 3, 5)).items() if key.startswith("P@")}
            grid.append({"k": int(k), "weighting": w, **m})
            log(f"[vote_sweep] {dataset} k={k} {w}: " + " ".join(f"{a} {100 * b:.2f}" for a, b in m.items()))
    best = max(grid, key=lambda r: (r["P@1"], r["P@3"], -r["k"]))
    return {"dir": str(d), "fit_rows": int(len(fit)), "holdout_rows": int(len(out)), "learners": learners,
            "grid": grid, "best": best, "train_seconds": round(t_train, 1)}


def markdown(results: dict) -> str:
    """Markdown of the results: held-out P@1/3/5 for every ``k`` and weighting, and the best setting."""
    lines = []
    for ds, r in results.items():
        rows = [[g["k"], g["weighting"] + (" **(best)**" if g == r["best"] else ""),
                 pct(g["P@1"]), pct(g["P@3"]), pct(g["P@5"])] for g in r["grid"]]
        lines += md_table(f"**{ds}: summed votes of {r['learners']} learners on a held-out {r['holdout_rows']} "
                          f"of the {r['fit_rows'] + r['holdout_rows']} training points (%)**",
                          ["k", "weighting", "P@1", "P@3", "P@5"], rows, "rlrrr")
    return "\n".join(lines)


def build_parser():
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("vote_sweep", __doc__, datasets_default=("bibtex",), skip=("knn", "weighting"), dim=50,
                      jobs=True)
    p.add_argument("--learners", type=int, default=5, help="learners whose votes are summed (default: 5)")
    p.add_argument("--knn", type=int, nargs="+", default=[5, 10, 20, 30, 50], help="neighbour counts tried")
    p.add_argument("--geometry", default="poincare", choices=GEOMETRIES)
    p.add_argument("--holdout", type=float, default=0.2, help="share of the training split held out")
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """The held-out grid of every data set: ``(markdown, data)``."""
    results = {ds: sweep_dataset(ds, args.data_dir, cache, args.learners, args.knn, args.dim, args.geometry,
                                 overrides, args.holdout, seed, args.jobs, log=log)
               for ds in args.datasets}
    return markdown(results), {"results": results}


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("vote_sweep", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
