"""One public function per CLI verb (``xhyp train|ensemble|predict|aggregate|evaluate|run|plot``).

The CLI (:mod:`xhyp.cli`) only parses arguments and calls these, so everything it does can be
done from Python too. Data is named either by a registry dataset (``dataset`` + ``split``) or by
an Extreme Classification Repository text file (``path``).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import scipy.sparse as sp

from xhyp.datasets.loading import load_split
from xhyp.datasets.registry import propensity_params

from .prediction.ensemble import Ensemble, aggregate_files, expand_model_dirs, is_ensemble_dir, train_ensemble
from .prediction.predictor import Predictor
from .training import train
from .utils import atomic_save_json, atomic_save_sparse


def _require_rows(X, source) -> None:
    if X.shape[0] == 0:
        raise ValueError(f"{source}: the training data has no examples (N = 0 in its header); nothing to train")


def train_model(out_dir: str | Path, dataset: str | None = None, path: str | None = None,
                data_dir: str | None = None, model: dict | None = None, train_cfg: dict | None = None,
                resume: bool = False, progress: bool = True, data=None, overwrite: bool = False) -> dict:
    """``xhyp train``: train one learner and write its model directory.

    Args:
        out_dir: model directory (see :mod:`xhyp.training.loop` for its contents).
        dataset, path, data_dir: training data, see :func:`xhyp.datasets.loading.load_split` (split ``"train"``).
        model: :class:`xhyp.embedding.model.ModelConfig` fields. train_cfg: :class:`xhyp.training.loop.TrainConfig` fields.
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
                  index_params: dict | None = None, X=None, device: str = "auto",
                  rerank_weight: float | None = None, rerank_knn: int | None = None,
                  rerank_shortlist: int | None = None) -> dict:
    """``xhyp predict``: score a split with one model (or an ensemble) and save the scores.

    Args:
        model_dirs: one model directory, or a list of them (summed votes); an ensemble
            directory (written by :func:`ensemble_model`, holds ``ensemble.json``) stands for all
            its members.
        out: output ``.npz`` (a scipy sparse ``(Q, L)`` score matrix, written atomically).
        dataset, path, split, data_dir: the queries, see :func:`xhyp.datasets.loading.load_split`.
        k, top_k, index, weighting, index_params, device, rerank_weight, rerank_knn, rerank_shortlist: see
            :meth:`xhyp.prediction.predictor.Predictor.predict` (``None``: the model's).
        X: ``(Q, F)`` query features already loaded (then nothing is read).

    Returns:
        summary dict (rows, seconds, queries per second).
    """
    if X is None:
        X, _ = load_split(dataset, split, path, data_dir)
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    t0 = time.time()
    kw = dict(k=k, top_k=top_k, index=index, weighting=weighting, index_params=index_params, device=device,
              rerank_weight=rerank_weight, rerank_knn=rerank_knn, rerank_shortlist=rerank_shortlist)
    from .hmc.commands import THRESHOLD_SUFFIX, hmc_member_dirs, hmc_predict

    hmc_dirs = hmc_member_dirs(dirs)
    if hmc_dirs:  # HMC models: mean probabilities of every label (top_k and kNN options do not apply)
        S, thr = hmc_predict(hmc_dirs, X)
        atomic_save_json({"threshold": thr}, str(out) + THRESHOLD_SUFFIX)
    elif len(dirs) == 1 and not is_ensemble_dir(dirs[0]):
        S = Predictor.load(dirs[0]).predict(X, **kw)
    else:  # summed votes of every member (ensemble directories expanded)
        S = Ensemble(expand_model_dirs(dirs)).predict(X, **kw)
    secs = time.time() - t0
    atomic_save_sparse(out, S)
    return {"rows": int(X.shape[0]), "models": [str(d) for d in dirs], "seconds": round(secs, 3),
            "queries_per_second": round(X.shape[0] / max(secs, 1e-9), 1), "out": str(out)}


def ensemble_model(out_dir: str | Path, dataset: str | None = None, path: str | None = None,
                   data_dir: str | None = None, model: dict | None = None, train_cfg: dict | None = None,
                   n_learners: int = 3, jobs: int = 1, progress: bool = True, data=None,
                   overwrite: bool = False) -> dict:
    """``xhyp ensemble``: train ``n_learners`` learners (seeds ``seed, seed+1, ...``) into ``out_dir``.

    ``out_dir/learner_XX`` are ordinary model directories and ``out_dir/ensemble.json`` lists them
    (see :mod:`xhyp.prediction.ensemble`); ``xhyp predict --model out_dir`` then sums their votes. Running the
    same command again skips complete learners and resumes interrupted ones.

    Args:
        out_dir: ensemble directory.
        dataset, path, data_dir: training data, see :func:`xhyp.datasets.loading.load_split` (split ``"train"``).
        model, train_cfg: shared :class:`ModelConfig` / :class:`TrainConfig` fields.
        n_learners: ``M``. jobs: learners trained at once, each in its own process.
        progress: progress output.
        data: ``(X, Y)`` already loaded (then nothing is read; ``dataset``/``path`` only name it).
        overwrite: replace the ensemble ``out_dir`` holds instead of completing it.

    Returns:
        summary dict (members, per-learner summaries, trained/skipped counts, seconds), also
        written to ``out_dir/ensemble_summary.json``.
    """
    X, Y = data if data is not None else load_split(dataset, "train", path, data_dir)
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
        dataset, path, split, data_dir: the true labels, see :func:`xhyp.datasets.loading.load_split`.
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
    from .metrics import evaluate, inv_propensity

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
    from .hmc.commands import THRESHOLD_SUFFIX, hmc_metrics

    thr_file = Path(str(pred) + THRESHOLD_SUFFIX)  # HMC: AU(PRC), F1 at the validation threshold
    metrics.update(hmc_metrics(dataset, Y, S, json.loads(thr_file.read_text())["threshold"] if thr_file.is_file()
                               else None, data_dir) or {})
    metrics = {k: float(v) for k, v in metrics.items()}
    if out is not None:
        atomic_save_json(metrics, out)
    return metrics


def run_pipeline(out_dir: str | Path, dataset: str | None = "synthetic-hier", data_dir: str | None = None,
                 model: dict | None = None, train_cfg: dict | None = None, k: int | None = None,
                 index: str = "exact", progress: bool = True, train_path: str | Path | None = None,
                 test_path: str | Path | None = None, overwrite: bool = False) -> dict:
    """``xhyp run``: train, predict the test split, evaluate; everything under ``out_dir``.

    Writes ``out_dir/model/`` (the model directory), ``out_dir/test_scores.npz`` and
    ``out_dir/metrics.json`` (metrics plus train/predict wall times). ``overwrite`` replaces a
    model ``out_dir/model`` already holds (otherwise such a directory is refused).

    Args:
        out_dir: output directory.
        dataset: registry name (``None`` with ``train_path``/``test_path``).
        data_dir: data directory of the registry.
        model, train_cfg: :class:`~xhyp.embedding.model.ModelConfig` / :class:`~xhyp.training.loop.TrainConfig` fields.
        k, index: prediction neighbours and kNN backend (see :func:`predict_model`).
        progress: progress bars.
        train_path, test_path: the user's own Extreme Classification Repository text files
            instead of ``dataset`` (both or neither); propensities of the PS metrics then use
            the default ``A = 0.55``, ``B = 1.5`` (Jain et al. 2016).

    Returns:
        ``{"dataset", "metrics": {name: value}, "train_seconds", "predict_seconds", "best_epoch",
        "val_p1"}`` (``dataset``: the registry name or the training file's path).

    Raises:
        ValueError: only one of ``train_path``/``test_path``, or files and ``dataset`` both.
    """
    out_dir = Path(out_dir)
    if (train_path is None) != (test_path is None):
        raise ValueError("give both a training file and a test file (--train-file and --test-file)")
    if train_path is not None and dataset is not None:
        raise ValueError("give either a dataset name or --train-file/--test-file, not both")
    if train_path is None and dataset is None:
        dataset = "synthetic-hier"
    name = dataset if dataset is not None else str(train_path)
    X, Y = load_split(dataset, "train", train_path, data_dir)  # each split is read once
    X_test, Y_test = load_split(dataset, "test", test_path, data_dir)
    if X_test.shape[1] != X.shape[1] or Y_test.shape[1] != Y.shape[1]:
        raise ValueError(f"{test_path or dataset}: test data has {X_test.shape[1]} features and "
                         f"{Y_test.shape[1]} labels, the training data {X.shape[1]} and {Y.shape[1]}")
    s_train = train_model(out_dir / "model", dataset=name, data_dir=data_dir, model=model,
                          train_cfg=train_cfg, progress=progress, data=(X, Y), overwrite=overwrite)
    s_pred = predict_model(out_dir / "model", out_dir / "test_scores.npz", dataset=name,
                           split="test", data_dir=data_dir, k=k, index=index, X=X_test)
    metrics = evaluate_predictions(out_dir / "test_scores.npz", dataset=dataset, split="test",
                                   data_dir=data_dir, Y=Y_test, Y_train=Y)
    result = {"dataset": name, "metrics": metrics, "train_seconds": s_train["train_seconds"],
              "predict_seconds": s_pred["seconds"], "best_epoch": s_train["best_epoch"],
              "val_p1": s_train["val_p1"]}
    atomic_save_json(result, out_dir / "metrics.json")
    return result


# -- inspection and export (``xhyp info | export | plot --history``) ------------------------------

def _dir_files(d: Path) -> list[dict]:
    """``[{"name": relative path, "bytes": size}]`` of every file under ``d`` (sorted)."""
    return [{"name": str(p.relative_to(d)), "bytes": p.stat().st_size}
            for p in sorted(d.rglob("*")) if p.is_file()]


def curve_summary(history: list) -> dict:
    """Summary of a ``history.json`` curve: epochs, first/last loss, first/best/last validation P@1.

    Args:
        history: the per-epoch records ``{"epoch", "loss", "val_p1"?, "seconds"?}`` written by
            :func:`xhyp.training.loop.train`.

    Returns:
        ``{"epochs", "loss_first", "loss_last", "val_p1_first", "val_p1_best", "best_epoch",
        "val_p1_last", "seconds"}`` (P@1 as fractions; ``None`` where the history has no
        validation scores, e.g. ``val_fraction=0``).
    """
    if not history:
        return {"epochs": 0}
    val = [(r["epoch"], r["val_p1"]) for r in history if r.get("val_p1") is not None]
    best = max(val, key=lambda t: t[1]) if val else (None, None)  # first epoch of the best score
    return {"epochs": len(history), "loss_first": history[0].get("loss"), "loss_last": history[-1].get("loss"),
            "val_p1_first": val[0][1] if val else None, "val_p1_best": best[1], "best_epoch": best[0],
            "val_p1_last": val[-1][1] if val else None,
            "seconds": round(sum(float(r.get("seconds", 0.0)) for r in history), 3)}


def _read_json(path: Path):
    import json

    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ValueError(f"{path}: not valid JSON ({exc.msg} at line {exc.lineno})") from None


def _model_dir_info(d: Path) -> dict:
    """Description of one model directory (see :func:`model_info`)."""
    cfg_path = d / "config.json"
    if not cfg_path.is_file():
        raise FileNotFoundError(f"{cfg_path} is missing: {d} is not an xhyp model directory")
    cfg = _read_json(cfg_path)
    hist = _read_json(d / "history.json") if (d / "history.json").is_file() else []
    summary = _read_json(d / "train_summary.json") if (d / "train_summary.json").is_file() else {}
    from .prediction.predictor import PREDICTOR_FILES

    curve = curve_summary(hist)
    files = _dir_files(d)
    return {"path": str(d), "kind": "model", "dataset": cfg.get("dataset"), "xhyp_version": cfg.get("xhyp_version"),
            "model": cfg.get("model", {}), "train": cfg.get("train", {}), "data": cfg.get("data"),
            "best_epoch": summary.get("best_epoch", curve.get("best_epoch")),
            "best_val_p1": summary.get("val_p1", curve.get("val_p1_best")),
            "epochs_run": len(hist), "curve": curve,
            "complete": all((d / n).is_file() for n in PREDICTOR_FILES),
            "files": files, "total_bytes": sum(f["bytes"] for f in files)}


def model_info(model_dir: str | Path) -> dict:
    """``xhyp info``: what a model or ensemble directory holds.

    Args:
        model_dir: a model directory (``xhyp train``), an ensemble directory (``xhyp ensemble``)
            or the output directory of ``xhyp run`` (its ``model/``).

    Returns:
        For a model: ``{"path", "kind": "model", "dataset", "xhyp_version", "model": ModelConfig
        fields, "train": TrainConfig fields, "data": fingerprint {n, n_features, n_labels, nnz_x,
        nnz_y}, "best_epoch", "best_val_p1", "epochs_run", "curve": :func:`curve_summary`,
        "complete": bool, "files": [{"name", "bytes"}], "total_bytes"}``. For an ensemble the
        same keys (configuration from ``ensemble.json``, data from the first member, ``kind``
        ``"ensemble"``, files of the whole tree) plus ``"seed"`` and ``"members"``: one such
        dict per member (``"files"`` left out), and ``best_epoch`` / ``best_val_p1`` lists.

    Raises:
        FileNotFoundError: ``model_dir`` is neither (the message says which file is missing).
        ValueError: a JSON file of the directory is corrupt (the message names it).
    """
    from .prediction.ensemble import ENSEMBLE_FILE, is_ensemble_dir

    d = Path(model_dir)
    if not d.is_dir():
        raise FileNotFoundError(f"{d}: no such directory")
    if not (d / "config.json").is_file() and (d / "model" / "config.json").is_file():
        d = d / "model"  # the output directory of `xhyp run`
    if not is_ensemble_dir(d):
        return _model_dir_info(d)
    meta = _read_json(d / ENSEMBLE_FILE)
    members = []
    for name in meta.get("members", []):
        m = d / name
        if (m / "config.json").is_file():
            info = _model_dir_info(m)
            info.pop("files")
        else:
            info = {"path": str(m), "kind": "model", "complete": False, "epochs_run": 0, "curve": {"epochs": 0}}
        info["name"] = name
        members.append(info)
    files = _dir_files(d)
    return {"path": str(d), "kind": "ensemble", "dataset": meta.get("dataset"),
            "xhyp_version": meta.get("xhyp_version"), "model": meta.get("model", {}),
            "train": meta.get("train", {}), "seed": meta.get("seed"),
            "data": next((m.get("data") for m in members if m.get("data")), None),
            "best_epoch": [m.get("best_epoch") for m in members],
            "best_val_p1": [m.get("best_val_p1") for m in members],
            "epochs_run": sum(m.get("epochs_run", 0) for m in members),
            "complete": bool(members) and all(m["complete"] for m in members), "members": members,
            "files": files, "total_bytes": sum(f["bytes"] for f in files)}


def _pct(v) -> str:
    return "-" if v is None else f"{100 * float(v):.2f}"


def format_info(info: dict) -> str:
    """Human-readable text of a :func:`model_info` dict (what ``xhyp info`` prints without ``--json``)."""
    lines = [f"{info['kind']}: {info['path']}" + ("" if info.get("complete") else "  (INCOMPLETE)"),
             f"dataset: {info.get('dataset')}   xhyp {info.get('xhyp_version')}"]
    data = info.get("data") or {}
    if data:
        lines.append("data: " + ", ".join(f"{k}={v}" for k, v in data.items()))
    lines.append("model: " + ", ".join(f"{k}={v}" for k, v in info.get("model", {}).items()))
    lines.append("train: " + ", ".join(f"{k}={v}" for k, v in info.get("train", {}).items()))
    rows = info["members"] if info["kind"] == "ensemble" else [dict(info, name=".")]
    lines.append(f"{'learner':<12} {'seed':>5} {'epochs':>6} {'best':>5} {'val P@1 first/best/last':>24} "
                 f"{'loss first/last':>17}")
    for m in rows:
        c = m.get("curve", {})
        lf, ll = c.get("loss_first"), c.get("loss_last")
        loss = f"{lf:.4f}/{ll:.4f}" if lf is not None and ll is not None else "-"
        val = f"{_pct(c.get('val_p1_first'))}/{_pct(c.get('val_p1_best'))}/{_pct(c.get('val_p1_last'))}"
        lines.append(f"{m.get('name', '.'):<12} {str(m.get('train', {}).get('seed', '-')):>5} "
                     f"{c.get('epochs', 0):>6} {str(m.get('best_epoch')):>5} {val:>24} {loss:>17}")
    lines.append(f"files ({len(info['files'])}, {info['total_bytes']:,} bytes):")
    lines += [f"  {f['bytes']:>12,}  {f['name']}" for f in info["files"]]
    return "\n".join(lines)


def export_embeddings(model_dir: str | Path, out: str | Path, member: int = 0) -> dict:
    """``xhyp export``: a model's label and training-example embeddings as one ``.npz`` file.

    The arrays (all points of the model's space: the Poincaré ball of curvature -1, or
    Euclidean space for ``geometry="euclidean"``; see Gerald & Baskiotis 2019, section 2):

    * ``label_embeddings`` ``(L, n)`` float32: row ``i`` is label ``label_ids[i]``;
    * ``label_ids`` ``(L,)`` int64 (``0 .. L-1``, the label ids of the training files);
    * ``label_frequency`` ``(L,)`` int64: training examples carrying each label;
    * ``train_embeddings`` ``(N, n)`` float32: the training examples as the kNN database holds
      them (embedded by the best model);
    * ``train_label_indptr`` ``(N + 1,)`` int64 and ``train_label_ids`` ``(nnz,)`` int64: the
      training examples' label ids in CSR layout (example ``j`` has labels
      ``train_label_ids[train_label_indptr[j]:train_label_indptr[j + 1]]``);
    * ``geometry`` (string), ``dim`` (int), ``max_norm`` (float).

    Read it with ``numpy.load(out)``; the file is written atomically.

    Args:
        model_dir: model directory, or ensemble directory (then member number ``member``).
        out: output ``.npz`` path (kept as given; no suffix is added).
        member: which learner of an ensemble (0-based).

    Returns:
        summary dict (``out``, ``model``, ``n_labels``, ``n_train``, ``dim``, ``geometry``).

    Raises:
        FileNotFoundError: not a complete model directory. ValueError: no such member.
    """
    import numpy as np
    import scipy.sparse as sp
    import torch

    from .prediction.ensemble import Ensemble, is_ensemble_dir
    from .embedding.model import HyperbolicXMC
    from .prediction.predictor import PREDICTOR_FILES
    from .utils import atomic_save_npz

    d = Path(model_dir)
    if is_ensemble_dir(d):
        dirs = Ensemble.load(d).member_dirs
        if not 0 <= member < len(dirs):
            raise ValueError(f"{d} has {len(dirs)} members; --member {member} is out of range")
        d = dirs[member]
    for name in PREDICTOR_FILES:
        if not (d / name).is_file():
            raise FileNotFoundError(f"{d / name} is missing: {d} is not a complete xhyp model directory")
    model = HyperbolicXMC.load(d)
    W = model.labels.detach().cpu().numpy().astype(np.float32)
    E = torch.load(d / "train_emb.pt", weights_only=True).cpu().numpy().astype(np.float32)
    Y = sp.load_npz(d / "train_labels.npz").tocsr()
    Y.sort_indices()
    freq = np.diff(Y.tocsc().indptr).astype(np.int64)
    atomic_save_npz(out, label_embeddings=W, label_ids=np.arange(W.shape[0], dtype=np.int64),
                    label_frequency=freq, train_embeddings=E,
                    train_label_indptr=Y.indptr.astype(np.int64), train_label_ids=Y.indices.astype(np.int64),
                    geometry=np.array(model.config.geometry), dim=np.array(model.config.dim),
                    max_norm=np.array(model.config.max_norm))
    return {"out": str(out), "model": str(d), "n_labels": int(W.shape[0]), "n_train": int(E.shape[0]),
            "dim": int(model.config.dim), "geometry": model.config.geometry}


def _find_histories(path: Path) -> list[tuple[str, list]]:
    """``[(name, history records)]`` of a history.json, a model, run or ensemble directory."""
    from .prediction.ensemble import is_ensemble_dir

    if path.is_file():
        return [(path.parent.name, _read_json(path))]
    if not path.is_dir():
        raise FileNotFoundError(f"{path}: no such file or directory")
    if is_ensemble_dir(path):
        meta = _read_json(path / "ensemble.json")
        out = [(m, _read_json(path / m / "history.json")) for m in meta.get("members", [])
               if (path / m / "history.json").is_file()]
        if out:
            return out
    for cand in (path / "history.json", path / "model" / "history.json"):  # model dir, `xhyp run` dir
        if cand.is_file():
            return [(path.name, _read_json(cand))]
    raise FileNotFoundError(f"{path}: no history.json there (nor in {path}/model or in ensemble members)")


def plot_history(history: str | Path, out: str | Path, title: str | None = None, dpi: int = 110) -> dict:
    """``xhyp plot --history``: training loss and validation P@1 against epochs, as a PNG.

    Left panel: mean sampled-softmax loss of each epoch (Gerald & Baskiotis 2019, section 2.3);
    right panel: validation P@1 (%) of each epoch, the best epoch marked (the one whose weights
    the model keeps). An ensemble directory draws one line per learner. Written atomically
    with matplotlib's non-interactive ``Agg`` backend.

    Args:
        history: a ``history.json`` file, a model directory, an ``xhyp run`` output directory
            (its ``model/``) or an ensemble directory.
        out: output PNG path.
        title: figure title (default: the directory and the dataset's name).
        dpi: resolution.

    Returns:
        ``{"out", "series": [{"name", "epochs", "best_epoch", "best_val_p1"}]}``.

    Raises:
        FileNotFoundError: no history found. ValueError: a history without any epoch.
    """
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    from .utils import atomic_write

    p = Path(history)
    series = _find_histories(p)
    if not any(h for _, h in series):
        raise ValueError(f"{p}: the training history has no epoch yet")
    fig, (ax_l, ax_p) = plt.subplots(1, 2, figsize=(9.0, 3.6))
    info = []
    for name, h in series:
        ep = [r["epoch"] for r in h]
        line, = ax_l.plot(ep, [r["loss"] for r in h], marker="o", ms=3, lw=1.2, label=name)
        val = [(r["epoch"], 100 * r["val_p1"]) for r in h if r.get("val_p1") is not None]
        c = curve_summary(h)
        if val:
            ax_p.plot([e for e, _ in val], [v for _, v in val], marker="o", ms=3, lw=1.2, color=line.get_color(),
                      label=name)
            ax_p.plot([c["best_epoch"]], [100 * c["val_p1_best"]], marker="*", ms=11, color=line.get_color())
        info.append({"name": name, "epochs": len(h), "best_epoch": c.get("best_epoch"),
                     "best_val_p1": c.get("val_p1_best")})
    ax_l.set_xlabel("epoch")
    ax_l.set_ylabel("training loss (sampled softmax)")
    ax_p.set_xlabel("epoch")
    ax_p.set_ylabel("validation P@1 (%)  (* best epoch)")
    for ax in (ax_l, ax_p):
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
    if len(series) > 1:
        ax_l.legend(fontsize=7)
    if title is None:
        d = p.parent if p.is_file() else p
        cfg = next((c for c in (d / "config.json", d / "ensemble.json", d / "model" / "config.json") if c.is_file()),
                   None)
        ds = _read_json(cfg).get("dataset") if cfg is not None else None
        title = f"{d.name}" + (f" ({ds})" if ds else "")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    atomic_write(out, lambda f: fig.savefig(f, format="png", dpi=dpi))
    plt.close(fig)
    return {"out": str(out), "series": info}
