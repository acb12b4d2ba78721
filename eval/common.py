"""The one driver and cache module of the experiment scripts (``python -m xhyp.eval.table2`` ...).

Every script of :mod:`xhyp.eval` is a thin driver over this module; none imports another.

* the command line: :func:`script_parser` gives every script ``--datasets --data-dir --out`` and,
  for the scripts that train, the learner cache (``--cache``) and every training option as the
  ``xhyp`` command line spells it (``--epochs``, ``--alpha``, ``--negatives``..., generated from
  :class:`xhyp.config.TrainConfig` by :func:`xhyp.cli.add_config_args`); :func:`cache_settings`
  reads them back;
* the learner cache shared by Tables 4, 5, 6, Figure 2 and the vote sweep: one ensemble directory
  per (data set, geometry, dimension, training options) cell (:func:`config_dir`,
  :func:`train_cell`, :func:`model_for`), each learner's saved test scores
  (:func:`member_test_scores`) and the metrics of the ensembles of its first ``M`` learners
  (:func:`prefix_metrics`, :func:`sweep`);
* the outputs: :func:`finish` writes a script's Markdown table and JSON (with the command, the
  environment and the wall time) atomically into its ``--out`` directory.

Data sets are read by :func:`xhyp.datasets.load_split` (registry names, or any folder laid out
like ``../shared/data/bibtex``).
"""
from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xhyp.config import GEOMETRIES, RUNTIME_KEYS, TrainConfig
from xhyp.datasets import load_split
from xhyp.knn.vote import sum_top_scores
from xhyp.metrics import evaluate
from xhyp.prediction import Predictor
from xhyp.prediction.ensemble import learner_name
from xhyp.utils import atomic_save_json, atomic_save_sparse, atomic_write, loadavg

KS = (1, 3, 5)
DIMS = (2, 5, 10, 25, 50)
LEARNERS = (1, 3, 6, 9, 12, 15)
GEOMETRY_NAMES = {"poincare": "Poincaré", "euclidean": "Euclidean"}


def script_parser(name: str, doc: str, datasets_default=("bibtex", "delicious"), cache: bool = True,
                  skip=(), dim: int | None = None, jobs: bool = False,
                  member_top_k: bool = False) -> argparse.ArgumentParser:
    """The parser of ``python -m xhyp.eval.NAME``: ``--datasets``, ``--data-dir``, ``--out`` and
    (``cache``) the learner cache and training options (:func:`add_cache_args`).

    Args:
        name: the script's module name. doc: its docstring (the first paragraph is the description).
        datasets_default: data sets of ``--datasets`` by default.
        cache: add :func:`add_cache_args`. skip: training options the script sets itself.
        dim: add ``--dim`` (embedding dimension) with this default.
        jobs: add ``--jobs`` (learners trained at once). member_top_k: add ``--member-top-k``.
    """
    p = argparse.ArgumentParser(prog=f"python -m xhyp.eval.{name}", description=doc.split("\n\n")[0])
    add_common_args(p, datasets_default)
    if cache:
        add_cache_args(p, skip)
    if dim is not None:
        p.add_argument("--dim", type=int, default=dim, help=f"embedding dimension (default: {dim})")
    if jobs:
        p.add_argument("--jobs", type=int, default=1, help="learners trained at once (processes)")
    if member_top_k:
        p.add_argument("--member-top-k", type=int, default=100, help="labels saved per test row and learner")
    return p


def run_script(name: str, parser: argparse.ArgumentParser, run, argv=None) -> int:
    """The ``main`` of every script: parse ``argv``, call ``run(args, overrides, cache, seed) ->
    (markdown, data)`` (the training options of :func:`cache_settings`; ``({}, None, 0)`` for a
    script without a cache) and write its outputs (:func:`finish`); returns the exit status."""
    args = parser.parse_args(argv)
    overrides, cache, seed = cache_settings(args) if hasattr(args, "cache") else ({}, None, 0)
    t0 = time.time()
    markdown, data = run(args, overrides, cache, seed)
    return finish(args.out, name, markdown, data, argv, t0)


def md_table(title: str, head, rows, align: str | None = None) -> list:
    """Markdown lines of one titled table: the title, a blank line, the header, the alignment row
    (``align``: ``"l"``/``"r"`` per column, default left then right), the rows, a blank line."""
    align = align or "l" + "r" * (len(head) - 1)
    return [title, "", "| " + " | ".join(head) + " |", "|" + "".join("---|" if a == "l" else "---:|" for a in align),
            *("| " + " | ".join(map(str, r)) + " |" for r in rows), ""]

def add_common_args(p: argparse.ArgumentParser, datasets_default=("bibtex", "delicious")) -> None:
    """``--datasets``, ``--data-dir`` and ``--out`` (every script writes NAME.md and NAME.json there)."""
    p.add_argument("--datasets", nargs="+", default=list(datasets_default),
                   help=f"data set names (default: {' '.join(datasets_default)})")
    p.add_argument("--data-dir", default=None, help="data directory holding NAME/train.txt, NAME/test.txt "
                   "(default: the registry's, $XHYP_DATA)")
    p.add_argument("--out", required=True, help="output directory for the Markdown table and JSON")


def add_cache_args(p: argparse.ArgumentParser, skip=()) -> None:
    """``--cache`` (the learner cache) and one flag per :class:`xhyp.config.TrainConfig` field
    (``--epochs``, ``--negatives``, ``--seed``: the seed of learner 0, learner ``i`` gets
    ``seed + i``...), as ``xhyp train`` spells them; ``skip``: fields the script sets itself."""
    from xhyp.cli import add_config_args

    p.add_argument("--cache", help="learner cache shared by table4/5/6, fig2 and vote_sweep (default: OUT/cache); "
                   "training options must match table4's to reuse its learners")
    add_config_args(p, TrainConfig, "training (as `xhyp train`)", skip=skip)


def cache_settings(args) -> tuple[dict, str, int]:
    """``(training overrides, cache directory, seed of learner 0)`` from :func:`add_cache_args`'s flags."""
    from xhyp.cli import config_from_args

    overrides = config_from_args(args, TrainConfig)
    seed = int(overrides.pop("seed", 0))
    return overrides, args.cache or str(Path(args.out) / "cache"), seed


def holdout_split(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(fit rows, held-out rows)``, both sorted int64 arrays, a seeded random split of ``range(n)``.

    Raises:
        ValueError: ``fraction`` outside ``(0, 1)`` or a split with an empty side.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(f"holdout fraction must be in (0, 1), got {fraction}")
    perm = np.random.default_rng(seed).permutation(n)
    n_out = int(round(fraction * n))
    if n_out == 0 or n_out == n:
        raise ValueError(f"holdout of {fraction} of {n} rows leaves one side empty")
    return np.sort(perm[n_out:]), np.sort(perm[:n_out])


def command_line(script: str, argv=None) -> str:
    """The command that ran ``python -m xhyp.eval.SCRIPT`` (stored in every JSON)."""
    return f"python -m xhyp.eval.{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def environment() -> dict:
    """Where and when a result was measured (stored in every JSON)."""
    import os

    import torch

    from xhyp import __version__

    return {"xhyp_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine()}


def write_outputs(out_dir: str | Path, name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write ``out_dir/name.md`` and ``out_dir/name.json`` (atomically); returns both paths.

    The JSON is ``data`` plus ``"environment"`` (:func:`environment`) when ``data`` has none.
    """
    data = {**data, "environment": data.get("environment") or environment()}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    atomic_write(md, lambda f: f.write((markdown.rstrip() + "\n").encode()))
    atomic_save_json(json.loads(json.dumps(data, default=_jsonable)), js)
    return md, js


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def pct(v: float) -> str:
    """A fraction as a percentage with 2 decimals (``-`` for None/NaN)."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100.0 * float(v):.2f}"


def finish(out_dir, name: str, markdown: str, data: dict, argv, t0: float) -> int:
    """End of a script: add the command line (:func:`command_line`) and the wall time since ``t0``
    to ``data``, write ``OUT/NAME.md`` and ``OUT/NAME.json`` (:func:`write_outputs`), print the
    table; returns the exit status 0."""
    data = {**data, "command": command_line(name, argv), "wall_seconds": round(time.time() - t0, 1)}
    md, js = write_outputs(out_dir, name, markdown, data)
    print(md.read_text())
    print(f"wrote {md} and {js} in {data['wall_seconds']:.0f} s", file=sys.stderr)
    return 0


def log(message: str) -> None:
    """Progress line of a script, on stderr."""
    print(message, file=sys.stderr, flush=True)


# ------------------------------------------------------------------------------------------------
# the learner cache


def config_dir(cache: str | Path, dataset: str, geometry: str, dim: int, overrides: dict | None = None) -> Path:
    """Ensemble directory of one (data set, geometry, dimension, training overrides) cell."""
    name = f"{geometry}_d{dim}"
    for k in sorted(overrides or {}):
        if k in RUNTIME_KEYS:
            continue
        name += f"_{k}{overrides[k]}"
    return Path(cache) / dataset / name


def train_cell(dataset: str, X, Y, cache, geometry: str, dim: int, n_learners: int, overrides: dict,
               seed: int = 0, jobs: int = 1, directory: Path | None = None, extra: dict | None = None,
               model: dict | None = None):
    """Train (or complete) the ensemble of one cell of the cache: ``n_learners`` learners of
    dimension ``dim`` in ``geometry``, seeds ``seed, seed + 1, ...`` (:func:`xhyp.prediction.train_ensemble`).

    Args:
        dataset: its name (recorded in the learners' ``config.json``). X, Y: ``(N, F)`` and
            ``(N, L)`` CSR training data. cache: the cache root. geometry, dim: the model.
        n_learners: learners wanted. overrides: training options. seed: seed of learner 0.
        jobs: learners trained at once. directory: the ensemble directory (default:
            :func:`config_dir`). extra: more keys for ``config.json``.
        model: more :class:`xhyp.config.ModelConfig` fields (``projector``, ``init_std_labels``...;
            give them a ``directory`` of their own).

    Returns:
        ``(ensemble directory, summary of train_ensemble)``.
    """
    from xhyp.prediction import train_ensemble

    d = directory or config_dir(cache, dataset, geometry, dim, overrides)
    ens = train_ensemble(X, Y, d, n_learners=n_learners, model_config={**(model or {}), "dim": dim, "geometry": geometry},
                         train_config=dict(overrides, seed=seed), jobs=jobs, progress=False,
                         extra_config={"dataset": dataset, **(extra or {})})
    return d, ens


def model_for(dataset, data_dir, cache, geometry, dim, overrides, seed=0) -> Path:
    """Learner 0 of the Table-4 cache cell, trained if it is not there yet."""
    X, Y = load_split(dataset, "train", data_dir=data_dir)
    d, _ = train_cell(dataset, X, Y, cache, geometry, dim, 1, overrides, seed)
    return d / learner_name(0)


def member_test_scores(learner_dir: Path, X_test: sp.csr_matrix, top_k: int = 100, name: str = "test_scores",
                       **predict_kw) -> tuple[sp.csr_matrix, float]:
    """A learner's test scores, from ``learner_dir/NAME.npz`` when it is there and valid (same
    queries, ``top_k`` and prediction options ``predict_kw`` of
    :meth:`xhyp.prediction.predictor.Predictor.predict`).

    Returns:
        ``(scores (Q, L) CSR, seconds spent predicting now (0 when cached))``.
    """
    f, meta_f = learner_dir / f"{name}.npz", learner_dir / f"{name}.json"
    want = {"rows": int(X_test.shape[0]), "nnz_x": int(X_test.nnz), "top_k": int(top_k), **predict_kw}
    if f.is_file() and meta_f.is_file() and json.loads(meta_f.read_text()) == want:
        return sp.load_npz(f).tocsr(), 0.0
    t0 = time.time()
    S = Predictor.load(learner_dir).predict(X_test, top_k=top_k, **predict_kw)
    secs = time.time() - t0
    atomic_save_sparse(f, S)
    atomic_save_json(want, meta_f)
    return S, secs


def prefix_metrics(scores, Y_test, prefixes, ks=KS, top_k: int = 100, inv_prop=None, keep=("P@",)) -> dict:
    """Metrics of the ensembles made of the first ``m`` members for each ``m`` in ``prefixes``.

    Summing is incremental (each prefix reuses the previous sum), so all prefixes cost one pass.
    ``inv_prop`` (``(L,)`` inverse propensities) adds the propensity-scored metrics; ``keep``:
    prefixes of the metric names kept (``("P@", "PSP@")``...).

    Returns:
        ``{m: {"P@1": .., "P@3": .., ...}}``.
    """
    out, total, done = {}, None, 0
    for m in sorted(set(prefixes)):
        for S in scores[done:m]:
            total = S.astype(np.float64) if total is None else total + S
        done = m
        agg = sum_top_scores([total], top_k)
        out[m] = {k: v for k, v in evaluate(Y_test, agg, ks=ks, inv_prop=inv_prop).items() if k.startswith(tuple(keep))}
    return out


def run_cell(dataset: str, X, Y, X_test, Y_test, cache, geometry: str, dim: int, n_learners: int,
             prefixes, overrides: dict, seed: int = 0, jobs: int = 1, member_top_k: int = 100,
             log=print) -> dict:
    """Train (or reuse) ``n_learners`` learners for one cell, score the test split, aggregate prefixes."""
    t0 = time.time()
    d, ens = train_cell(dataset, X, Y, cache, geometry, dim, n_learners, overrides, seed, jobs)
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


def sweep(datasets, data_dir, cache, dims=DIMS, learners=LEARNERS, geometries=GEOMETRIES,
          overrides: dict | None = None, seed: int = 0, jobs: int = 1, member_top_k: int = 100,
          log=print) -> dict:
    """Run (or resume) the Table-4 grid; returns ``{"results": {dataset: {geometry: {dim: cell}}}, "timing": ...}``."""
    overrides = dict(overrides or {})
    n_learners = max(learners)
    results, timing = {}, {}
    for ds in datasets:
        t_ds, cpu_ds, load0 = time.time(), _cpu_seconds(), loadavg()
        X, Y = load_split(ds, "train", data_dir=data_dir)
        X_test, Y_test = load_split(ds, "test", data_dir=data_dir)
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
                      "load_average_start": load0, "load_average_end": loadavg()}
    return {"results": results, "timing": timing}
