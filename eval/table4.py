"""Table 4 of Gerald & Baskiotis (CAp 2019): P@1/3/5 against the embedding dimension and the
number of learners, Poincaré ball vs Euclidean space.

For every data set, geometry and dimension ``n`` the script trains ``max(--learners)`` learners
once (an ensemble directory ``CACHE/DATASET/GEOMETRY_dN[_overrides]/learner_XX``, seeds
``seed, seed+1, ...``), saves each learner's test scores (``learner_XX/test_scores.npz``, top
``--member-top-k`` labels a row) and reports the ensembles made of the first ``M`` learners for
every ``M`` in ``--learners`` (summed votes, :func:`xhyp.vote.aggregate`). Everything is cached:
an interrupted sweep continues where it stopped and re-running a finished one only re-aggregates.

Example (the full Bibtex sweep; ``--epochs`` caps training for speed)::

    python -m xhyp.eval.table4 --datasets bibtex --data-dir ../shared/data --out runs/table4 \\
        --dims 2 5 10 25 50 --learners 1 3 6 9 12 15 --geometries poincare euclidean

Writes ``OUT/table4.md`` and ``OUT/table4.json`` (metrics of every prefix and every learner,
training/prediction seconds, wall time).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xhyp.ensemble import RUNTIME_KEYS, learner_name, train_ensemble
from xhyp.eval.common import (
    add_cache_args, add_common_args, cache_settings, command_line, load_xy, pct,
    write_outputs,
)
from xhyp.eval.metrics import evaluate
from xhyp.predict import Predictor
from xhyp.utils import atomic_save_json, atomic_save_sparse
from xhyp.vote import aggregate

DIMS = (2, 5, 10, 25, 50)
LEARNERS = (1, 3, 6, 9, 12, 15)
GEOMETRIES = ("poincare", "euclidean")
GEOMETRY_NAMES = {"poincare": "Poincaré", "euclidean": "Euclidean"}
KS = (1, 3, 5)


def config_dir(cache: str | Path, dataset: str, geometry: str, dim: int, overrides: dict | None = None) -> Path:
    """Ensemble directory of one (data set, geometry, dimension, training overrides) cell."""
    name = f"{geometry}_d{dim}"
    for k in sorted(overrides or {}):
        if k in RUNTIME_KEYS:
            continue
        name += f"_{k}{overrides[k]}"
    return Path(cache) / dataset / name


def member_test_scores(learner_dir: Path, X_test: sp.csr_matrix, top_k: int = 100) -> tuple[sp.csr_matrix, float]:
    """A learner's test scores, from ``learner_dir/test_scores.npz`` when it is there and valid.

    Returns:
        ``(scores (Q, L) CSR, seconds spent predicting now (0 when cached))``.
    """
    f, meta_f = learner_dir / "test_scores.npz", learner_dir / "test_scores.json"
    want = {"rows": int(X_test.shape[0]), "nnz_x": int(X_test.nnz), "top_k": int(top_k)}
    if f.is_file() and meta_f.is_file() and json.loads(meta_f.read_text()) == want:
        return sp.load_npz(f).tocsr(), 0.0
    t0 = time.time()
    S = Predictor.load(learner_dir).predict(X_test, top_k=top_k)
    secs = time.time() - t0
    atomic_save_sparse(f, S)
    atomic_save_json(want, meta_f)
    return S, secs


def prefix_metrics(scores, Y_test, prefixes, ks=KS, top_k: int = 100) -> dict:
    """Metrics of the ensembles made of the first ``m`` members for each ``m`` in ``prefixes``.

    Summing is incremental (each prefix reuses the previous sum), so all prefixes cost one pass.

    Returns:
        ``{m: {"P@1": .., "P@3": .., ...}}``.
    """
    out, total, done = {}, None, 0
    for m in sorted(set(prefixes)):
        for S in scores[done:m]:
            total = S.astype(np.float64) if total is None else total + S
        done = m
        agg = aggregate([total], top_k)
        out[m] = {k: v for k, v in evaluate(Y_test, agg, ks=ks).items() if k.startswith("P@")}
    return out


def run_cell(dataset: str, X, Y, X_test, Y_test, cache, geometry: str, dim: int, n_learners: int,
             prefixes, overrides: dict, seed: int = 0, jobs: int = 1, member_top_k: int = 100,
             log=print) -> dict:
    """Train (or reuse) ``n_learners`` learners for one cell, score the test split, aggregate prefixes."""
    d = config_dir(cache, dataset, geometry, dim, overrides)
    t0 = time.time()
    tcfg = dict(overrides, seed=seed)
    ens = train_ensemble(X, Y, d, n_learners=n_learners, model_config={"dim": dim, "geometry": geometry},
                         train_config=tcfg, jobs=jobs, progress=False, extra_config={"dataset": dataset})
    t_train = time.time() - t0
    scores, per, pred_secs = [], [], 0.0
    for i in range(n_learners):
        S, s = member_test_scores(d / learner_name(i), X_test, member_top_k)
        pred_secs += s
        scores.append(S)
        per.append({k: v for k, v in evaluate(Y_test, S, ks=KS).items() if k.startswith("P@")})
    pm = prefix_metrics(scores, Y_test, [m for m in prefixes if m <= n_learners], top_k=member_top_k)
    learners = ens["learners"]
    res = {"dir": str(d), "geometry": geometry, "dim": dim, "n_learners": n_learners,
           "prefix": {str(m): v for m, v in pm.items()}, "per_learner": per,
           "learner_train_seconds": [lr["train_seconds"] for lr in learners],
           "epochs_run": [lr["epochs_run"] for lr in learners],
           "best_epoch": [lr["best_epoch"] for lr in learners],
           "trained_now": ens["trained"], "wall_train_seconds_now": round(t_train, 2),
           "predict_seconds_now": round(pred_secs, 2)}
    best = pm[max(pm)] if pm else {}
    log(f"[table4] {dataset} {geometry} n={dim}: {ens['trained']} trained now, {ens['skipped']} cached, "
        f"{t_train:.0f}s train, {pred_secs:.0f}s predict; M={max(pm) if pm else 0}: "
        + " ".join(f"{k} {100 * v:.2f}" for k, v in best.items()))
    return res


def _cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (training workers)."""
    import resource

    r = [resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)]
    return sum(x.ru_utime + x.ru_stime for x in r)


def _loadavg() -> list:
    """1/5/15-minute load averages (other users' work inflates wall times on a shared machine)."""
    import os

    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def sweep(datasets, data_dir, cache, dims=DIMS, learners=LEARNERS, geometries=GEOMETRIES,
          overrides: dict | None = None, seed: int = 0, jobs: int = 1, member_top_k: int = 100,
          log=print) -> dict:
    """Run (or resume) the Table-4 grid; returns ``{"results": {dataset: {geometry: {dim: cell}}}, "timing": ...}``."""
    overrides = dict(overrides or {})
    n_learners = max(learners)
    results, timing = {}, {}
    for ds in datasets:
        t_ds, cpu_ds, load0 = time.time(), _cpu_seconds(), _loadavg()
        X, Y = load_xy(ds, "train", data_dir)
        X_test, Y_test = load_xy(ds, "test", data_dir)
        results[ds] = {}
        for geometry in geometries:
            results[ds][geometry] = {}
            for dim in dims:
                results[ds][geometry][str(dim)] = run_cell(ds, X, Y, X_test, Y_test, cache, geometry, dim,
                                                           n_learners, learners, overrides, seed, jobs,
                                                           member_top_k, log)
        cells = [c for g in results[ds].values() for c in g.values()]
        timing[ds] = {"wall_seconds": round(time.time() - t_ds, 1),
                      "learners": sum(c["n_learners"] for c in cells),
                      "trained_now": sum(c["trained_now"] for c in cells),
                      "sum_learner_train_seconds": round(sum(sum(c["learner_train_seconds"]) for c in cells), 1),
                      "predict_seconds_now": round(sum(c["predict_seconds_now"] for c in cells), 1),
                      "cpu_seconds": round(_cpu_seconds() - cpu_ds, 1),
                      "load_average_start": load0, "load_average_end": _loadavg()}
    return {"results": results, "timing": timing}


def markdown(data: dict, learners, ks=KS) -> str:
    """One table per data set and metric: rows (geometry, n), columns the number of learners."""
    lines = []
    ov = data.get("settings", {}).get("overrides") or {}
    for ds, by_geom in data["results"].items():
        for k in ks:
            lines.append(f"**{ds}: P@{k} (%)**" + (f" (training overrides: {ov})" if ov else ""))
            lines.append("")
            lines.append("| geometry | n | " + " | ".join(f"{m} learner{'s' if m > 1 else ''}" for m in learners) + " |")
            lines.append("|---|---:|" + "---:|" * len(learners))
            for geometry, cells in by_geom.items():
                for dim, cell in cells.items():
                    row = [pct(cell["prefix"].get(str(m), {}).get(f"P@{k}")) for m in learners]
                    lines.append(f"| {GEOMETRY_NAMES.get(geometry, geometry)} | {dim} | " + " | ".join(row) + " |")
            lines.append("")
        t = data["timing"][ds]
        lines.append(f"{ds}: {t['learners']} learners ({t['trained_now']} trained in this run), "
                     f"sum of learner training times {t['sum_learner_train_seconds']:.0f} s, "
                     f"wall time of this run {t['wall_seconds']:.0f} s "
                     f"(CPU time {t.get('cpu_seconds', float('nan')):.0f} s; load average "
                     f"{t.get('load_average_start')} at the start, {t.get('load_average_end')} at the end).")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line parser (``--help`` lists its options)."""
    p = argparse.ArgumentParser(prog="python -m xhyp.eval.table4", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    add_cache_args(p)
    p.add_argument("--dims", type=int, nargs="+", default=list(DIMS))
    p.add_argument("--learners", type=int, nargs="+", default=list(LEARNERS),
                   help="ensemble sizes reported (max(LEARNERS) learners are trained)")
    p.add_argument("--geometries", nargs="+", default=list(GEOMETRIES), choices=GEOMETRIES)
    p.add_argument("--jobs", type=int, default=1, help="learners trained at once (processes)")
    p.add_argument("--member-top-k", type=int, default=100, help="labels saved per test row and learner")
    return p


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    args = build_parser().parse_args(argv)
    overrides, cache = cache_settings(args)
    learners = sorted(set(args.learners))
    t0 = time.time()
    data = sweep(args.datasets, args.data_dir, cache, args.dims, learners, args.geometries, overrides,
                 args.seed, args.jobs, args.member_top_k, log=lambda m: print(m, file=sys.stderr, flush=True))
    data["settings"] = {"dims": args.dims, "learners": learners, "geometries": args.geometries,
                        "overrides": overrides, "seed": args.seed, "jobs": args.jobs, "cache": cache,
                        "member_top_k": args.member_top_k, "command": command_line("table4", argv)}
    data["wall_seconds"] = round(time.time() - t0, 1)
    md, js = write_outputs(args.out, "table4", markdown(data, learners), data)
    print(md.read_text())
    print(f"wrote {md} and {js} in {data['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
