"""One public function per CLI verb (``xhyp train|ensemble|predict|aggregate|evaluate|run|plot``).

The CLI (:mod:`xhyp.cli`) only parses arguments and calls these, so everything it does can be
done from Python too. Data is named either by a registry dataset (``dataset`` + ``split``) or by
an Extreme Classification Repository text file (``path``).
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import scipy.sparse as sp

from .ensemble import Ensemble, aggregate_files, expand_model_dirs, is_ensemble_dir, train_ensemble
from .predict import Predictor
from .train import train
from .utils import atomic_save_json, atomic_save_sparse


def load_split(dataset: str | None = None, split: str = "train", path: str | None = None,
               data_dir: str | None = None):
    """Read ``(X, Y)`` from a registry dataset split or from an XC-format file.

    Args:
        dataset: registry name (``xhyp data list``), or ``None`` when ``path`` is given.
        split: ``"train"`` or ``"test"``.
        path: an Extreme Classification Repository text file.
        data_dir: data directory (default: ``$XHYP_DATA``, else ``./data``).

    Returns:
        ``(X (N, F) float32 CSR, Y (N, L) float32 CSR)``.

    Raises:
        ValueError: neither or both of ``dataset`` and ``path``.
        xhyp.datasets.formats.DataFormatError: malformed file (names file and line).
        xhyp.datasets.registry.DatasetNotFoundError: dataset files absent (says how to get them).
    """
    from xhyp.datasets.formats import read_xc
    from xhyp.datasets.registry import load_dataset

    if (dataset is None) == (path is None):
        raise ValueError("give exactly one of a dataset name or a file path")
    if path is not None:
        return read_xc(path)
    return load_dataset(dataset, split=split, data_dir=data_dir)


def _require_rows(X, source) -> None:
    if X.shape[0] == 0:
        raise ValueError(f"{source}: the training data has no examples (N = 0 in its header); nothing to train")


def propensity_params(dataset: str | None) -> tuple[float, float]:
    """Jain et al. (2016) propensity parameters ``(A, B)`` of a registry dataset (default 0.55, 1.5)."""
    if dataset is None:
        return 0.55, 1.5
    from xhyp.datasets.registry import get_spec

    spec = get_spec(dataset)
    return spec.propensity_a, spec.propensity_b


def train_model(out_dir: str | Path, dataset: str | None = None, path: str | None = None,
                data_dir: str | None = None, model: dict | None = None, train_cfg: dict | None = None,
                resume: bool = False, progress: bool = True, data=None, overwrite: bool = False) -> dict:
    """``xhyp train``: train one learner and write its model directory.

    Args:
        out_dir: model directory (see :mod:`xhyp.train` for its contents).
        dataset, path, data_dir: training data, see :func:`load_split` (split ``"train"``).
        model: :class:`xhyp.model.ModelConfig` fields. train_cfg: :class:`xhyp.train.TrainConfig` fields.
        resume: continue from ``out_dir/checkpoint.pt`` (an ``out_dir`` that does not exist, e.g. of
            a run killed at start-up, starts a new run; see also :func:`xhyp.modeldir.model_dir_writer`).
        progress: tqdm bars.
        data: ``(X, Y)`` already loaded (then nothing is read; ``dataset``/``path`` only name it).
        overwrite: replace a model ``out_dir`` already holds (see :mod:`xhyp.modeldir`).

    Returns:
        summary dict (best epoch, validation P@1, seconds), also written to ``out_dir/train_summary.json``.
    """
    X, Y = data if data is not None else load_split(dataset, "train", path, data_dir)
    _require_rows(X, path or dataset)
    if resume and not Path(out_dir).exists():  # killed before it wrote anything: the same command restarts it
        print(f"xhyp: {out_dir} does not exist: nothing to resume, starting a new run", file=sys.stderr)
        resume = False
    t0 = time.time()
    res = train(X, Y, model or {}, train_cfg or {}, out_dir=out_dir, resume=resume, progress=progress,
                extra_config={"dataset": dataset or str(path)}, overwrite=overwrite)
    summary = {"dataset": dataset or str(path), "best_epoch": res.best_epoch,
               "val_p1": res.best_val_p1, "epochs_run": len(res.history),
               "train_seconds": round(time.time() - t0, 2)}
    atomic_save_json(summary, Path(out_dir) / "train_summary.json")
    return summary


def predict_model(model_dirs, out: str | Path, dataset: str | None = None, path: str | None = None,
                  split: str = "test", data_dir: str | None = None, k: int | None = None,
                  top_k: int = 100, index: str = "exact", weighting: str | None = None,
                  index_params: dict | None = None, X=None) -> dict:
    """``xhyp predict``: score a split with one model (or an ensemble) and save the scores.

    Args:
        model_dirs: one model directory, or a list of them (summed votes); an ensemble
            directory (written by :func:`ensemble_model`, holds ``ensemble.json``) stands for all
            its members.
        out: output ``.npz`` (a scipy sparse ``(Q, L)`` score matrix, written atomically).
        dataset, path, split, data_dir: the queries, see :func:`load_split`.
        k, top_k, index, weighting, index_params: see :meth:`xhyp.predict.Predictor.predict`.
        X: ``(Q, F)`` query features already loaded (then nothing is read).

    Returns:
        summary dict (rows, seconds, queries per second).
    """
    if X is None:
        X, _ = load_split(dataset, split, path, data_dir)
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    t0 = time.time()
    kw = dict(k=k, top_k=top_k, index=index, weighting=weighting, index_params=index_params)
    if len(dirs) == 1 and not is_ensemble_dir(dirs[0]):
        S = Predictor.load(dirs[0]).predict(X, **kw)
    else:  # summed votes of every member (ensemble directories expanded)
        S = Ensemble(expand_model_dirs(dirs)).predict(X, **kw)
    secs = time.time() - t0
    atomic_save_sparse(out, S)
    return {"rows": int(X.shape[0]), "models": [str(d) for d in dirs], "seconds": round(secs, 3),
            "queries_per_second": round(X.shape[0] / max(secs, 1e-9), 1), "out": str(out)}


def ensemble_model(out_dir: str | Path, dataset: str | None = None, path: str | None = None,
                   data_dir: str | None = None, model: dict | None = None, train_cfg: dict | None = None,
                   n_learners: int = 3, jobs: int = 1, progress: bool = True, overwrite: bool = False) -> dict:
    """``xhyp ensemble``: train ``n_learners`` learners (seeds ``seed, seed+1, ...``) into ``out_dir``.

    ``out_dir/learner_XX`` are ordinary model directories and ``out_dir/ensemble.json`` lists them
    (see :mod:`xhyp.ensemble`); ``xhyp predict --model out_dir`` then sums their votes. Running the
    same command again skips complete learners and resumes interrupted ones.

    Args:
        out_dir: ensemble directory.
        dataset, path, data_dir: training data, see :func:`load_split` (split ``"train"``).
        model, train_cfg: shared :class:`ModelConfig` / :class:`TrainConfig` fields.
        n_learners: ``M``. jobs: learners trained at once, each in its own process.
        progress: progress output.
        overwrite: replace the ensemble ``out_dir`` holds instead of completing it.

    Returns:
        summary dict (members, per-learner summaries, trained/skipped counts, seconds), also
        written to ``out_dir/ensemble_summary.json``.
    """
    X, Y = load_split(dataset, "train", path, data_dir)
    _require_rows(X, path or dataset)
    res = train_ensemble(X, Y, out_dir, n_learners=n_learners, model_config=model or {},
                         train_config=train_cfg or {}, jobs=jobs, progress=progress, overwrite=overwrite,
                         extra_config={"dataset": dataset or str(path)})
    atomic_save_json(res, Path(out_dir) / "ensemble_summary.json")
    return res


def aggregate_predictions(preds, out: str | Path, top_k: int = 100) -> dict:
    """``xhyp aggregate``: sum saved score matrices (summed votes of learners predicted separately).

    Args:
        preds: ``.npz`` files from ``xhyp predict`` (same queries, same label space).
        out: output ``.npz``.
        top_k: labels kept per query after summing.

    Returns:
        summary dict (inputs, shape, output path).
    """
    S = aggregate_files(preds, out, top_k=top_k)
    return {"inputs": [str(p) for p in preds], "rows": int(S.shape[0]), "labels": int(S.shape[1]),
            "out": str(out)}


def plot_model(model_dir: str | Path, out: str | Path, examples: int = 0, title: str | None = None) -> dict:
    """``xhyp plot``: draw a saved model's label embeddings in 2-D (see :mod:`xhyp.plot`).

    Args:
        model_dir: a model directory (an ensemble directory: its first member).
        out: output PNG.
        examples: also draw up to this many training examples (grey), 0 for none.
        title: figure title (default: model, projection and Spearman correlation).

    Returns:
        summary dict (projection used, label count, Spearman's rho of frequency vs distance to the origin).
    """
    from .plot import plot_model_labels

    from .modeldir import verify

    d = Path(model_dir)
    if is_ensemble_dir(d):
        d = Ensemble.load(d).member_dirs[0]
    verify(d)  # a damaged or mixed directory: one line naming the file
    return plot_model_labels(d, out, examples=examples, title=title)


def evaluate_predictions(pred: str | Path, dataset: str | None = None, path: str | None = None,
                         split: str = "test", data_dir: str | None = None,
                         train_path: str | None = None, ks=(1, 3, 5), A: float | None = None,
                         B: float | None = None, out: str | Path | None = None, Y=None, Y_train=None) -> dict:
    """``xhyp evaluate``: P@k, nDCG@k, PSP@k and PSnDCG@k of saved scores.

    Propensities (Jain et al. 2016) are computed from the training labels of the same dataset
    (``dataset``'s train split, or ``train_path``); without them the PS metrics are omitted.

    Args:
        pred: ``.npz`` score matrix from :func:`predict_model`.
        dataset, path, split, data_dir: the true labels, see :func:`load_split`.
        train_path: XC file of the training split when ``path`` is used.
        ks: cut-offs. A, B: propensity parameters (default: the dataset's).
        out: JSON file for the metrics (written atomically).
        Y, Y_train: ``(Q, L)`` true labels and ``(N, L)`` training labels already loaded (then
            they are not read).

    Returns:
        dict metric name -> value (fractions in [0, 1]).

    Raises:
        ValueError: the score matrix does not match the labels' shape.
    """
    from xhyp.eval.metrics import evaluate, inv_propensity

    from .modeldir import load_file

    S = load_file(pred, lambda p: sp.load_npz(p).tocsr(), "score matrix (.npz from `xhyp predict`)")
    if Y is None:
        _, Y = load_split(dataset, split, path, data_dir)
    if Y.shape[0] == 0:
        raise ValueError(f"{path or dataset}: no rows to evaluate (N = 0); metrics of zero queries are undefined")
    if S.shape != Y.shape:
        raise ValueError(f"{pred}: score matrix is {S.shape[0]} x {S.shape[1]} but the labels are "
                         f"{Y.shape[0]} x {Y.shape[1]}")
    inv_p = None
    if Y_train is not None or dataset is not None or train_path is not None:
        Ytr = Y_train if Y_train is not None else load_split(dataset, "train", train_path, data_dir)[1]
        a, b = propensity_params(dataset)
        inv_p = inv_propensity(Ytr, A if A is not None else a, B if B is not None else b)
    metrics = evaluate(Y, S, ks=tuple(ks), inv_prop=inv_p)
    metrics = {k: float(v) for k, v in metrics.items()}
    if out is not None:
        atomic_save_json(metrics, out)
    return metrics


def run_pipeline(out_dir: str | Path, dataset: str = "synthetic-hier", data_dir: str | None = None,
                 model: dict | None = None, train_cfg: dict | None = None, k: int | None = None,
                 index: str = "exact", progress: bool = True, overwrite: bool = False) -> dict:
    """``xhyp run``: train, predict the test split, evaluate; everything under ``out_dir``.

    Writes ``out_dir/model/`` (the model directory), ``out_dir/test_scores.npz`` and
    ``out_dir/metrics.json`` (metrics plus train/predict wall times). ``overwrite`` replaces a
    model ``out_dir/model`` already holds (otherwise such a directory is refused).

    Returns:
        ``{"dataset", "metrics": {name: value}, "train_seconds", "predict_seconds", "best_epoch",
        "val_p1"}``.
    """
    out_dir = Path(out_dir)
    X, Y = load_split(dataset, "train", data_dir=data_dir)  # each split is read once
    X_test, Y_test = load_split(dataset, "test", data_dir=data_dir)
    s_train = train_model(out_dir / "model", dataset=dataset, data_dir=data_dir, model=model,
                          train_cfg=train_cfg, progress=progress, data=(X, Y), overwrite=overwrite)
    s_pred = predict_model(out_dir / "model", out_dir / "test_scores.npz", dataset=dataset,
                           split="test", data_dir=data_dir, k=k, index=index, X=X_test)
    metrics = evaluate_predictions(out_dir / "test_scores.npz", dataset=dataset, split="test",
                                   data_dir=data_dir, Y=Y_test, Y_train=Y)
    result = {"dataset": dataset, "metrics": metrics, "train_seconds": s_train["train_seconds"],
              "predict_seconds": s_pred["seconds"], "best_epoch": s_train["best_epoch"],
              "val_p1": s_train["val_p1"]}
    atomic_save_json(result, out_dir / "metrics.json")
    return result
