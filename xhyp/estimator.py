"""A scikit-learn-style estimator over the whole pipeline: ``fit``, ``predict``, ``save``, ``load``.

:class:`XHypClassifier` trains one learner (or an ensemble of ``n_learners`` learners, Gerald &
Baskiotis, CAp 2019, section 2.6) with exactly the code the CLI runs (:func:`xhyp.commands.train_model`
/ :func:`xhyp.commands.ensemble_model`), into a model directory of the same layout as ``xhyp
train`` / ``xhyp ensemble`` write, and predicts with :class:`xhyp.prediction.predictor.Predictor` /
:class:`xhyp.prediction.ensemble.Ensemble` loaded from that directory. With the same settings and seed it
therefore gives the same predictions as ``xhyp train`` followed by ``xhyp predict``.

Example (Bibtex, see the README)::

    from xhyp import XHypClassifier
    from xhyp.datasets import read_xc

    X, Y = read_xc("../shared/data/bibtex/train.txt")
    X_test, Y_test = read_xc("../shared/data/bibtex/test.txt")
    clf = XHypClassifier(dim=50, alpha=5.0, seed=0).fit(X, Y)
    ids, scores = clf.predict(X_test, k=5)          # (Q, 5) label ids and scores
    clf.save("runs/bibtex-api")                      # a model directory, as `xhyp train` writes
    clf2 = XHypClassifier.load("runs/bibtex-api")   # also loads CLI-trained directories

Every field of :class:`xhyp.embedding.model.ModelConfig` (except ``n_features``/``n_labels``, taken from
the data) and of :class:`xhyp.training.loop.TrainConfig` is a constructor keyword with the same default
as the CLI flag of the same name (``--dim`` -> ``dim``, ``--lr-labels`` -> ``lr_labels``); the
parameter list is generated from the two dataclasses, so fields added there appear here too.
:meth:`~sklearn.base.BaseEstimator.get_params` / ``set_params`` and :func:`sklearn.base.clone`
work as for any scikit-learn estimator.
"""
from __future__ import annotations

import inspect
import json
import os
import shutil
import tempfile
import uuid
import weakref
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.base import BaseEstimator

from .config import ModelConfig, TrainConfig

_DATA_FIELDS = ("n_features", "n_labels")  # ModelConfig fields taken from the data

# estimator parameters that are neither ModelConfig nor TrainConfig fields, with their defaults
EXTRA_PARAMS = {
    "n_learners": 1,   # learners of the ensemble (1: a single model directory)
    "jobs": 1,         # learners trained at once, one process each
    "index": "exact",  # kNN search backend at prediction (xhyp.knn.index.INDEX_KINDS)
    "nprobe": None,    # clusters probed by the clustered / IVF indexes (None: the index's default)
    "top_k": 100,      # labels kept per query (and per ensemble member before summing)
    "progress": False,  # tqdm bars and per-epoch lines while fitting
}


def _dataclass_defaults(cls, skip=()) -> dict:
    out = {}
    for f in fields(cls):
        if f.name in skip:
            continue
        if f.default is not MISSING:
            out[f.name] = f.default
        elif f.default_factory is not MISSING:  # pragma: no cover - no such field today
            out[f.name] = f.default_factory()
        else:  # pragma: no cover - a required field without a default cannot be a keyword
            raise TypeError(f"{cls.__name__}.{f.name} has no default")
    return out


def model_param_names() -> list[str]:
    """Names of the :class:`~xhyp.embedding.model.ModelConfig` fields that are estimator parameters."""
    return [f.name for f in fields(ModelConfig) if f.name not in _DATA_FIELDS]


def train_param_names() -> list[str]:
    """Names of the :class:`~xhyp.training.loop.TrainConfig` fields (all are estimator parameters)."""
    return [f.name for f in fields(TrainConfig)]


def param_defaults() -> dict:
    """``{name: default}`` of every :class:`XHypClassifier` parameter, in constructor order.

    ModelConfig fields first, then TrainConfig fields, then :data:`EXTRA_PARAMS`.

    Raises:
        TypeError: a dataclass field name collides with another parameter.
    """
    out = _dataclass_defaults(ModelConfig, _DATA_FIELDS)
    for name, value in list(_dataclass_defaults(TrainConfig).items()) + list(EXTRA_PARAMS.items()):
        if name in out:
            raise TypeError(f"estimator parameter {name!r} is defined twice (ModelConfig, TrainConfig, extras)")
        out[name] = value
    return out


def _as_csr(M, what: str) -> sp.csr_matrix:
    if sp.issparse(M):
        M = sp.csr_matrix(M, dtype=np.float32)
    else:
        a = np.asarray(M)
        if a.ndim != 2:
            raise ValueError(f"{what} must be a 2-D matrix (scipy sparse or dense), got shape {a.shape}")
        M = sp.csr_matrix(a, dtype=np.float32)
    M.sort_indices()
    return M


def topk_arrays(S: sp.csr_matrix, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The ``k`` highest-scored labels of each row of a sparse score matrix, as dense arrays.

    Ranking: decreasing score, equal scores by increasing label id (the order of
    :func:`xhyp.metrics.topk_from_scores`, which the metrics use). Only stored entries are
    ranked.

    Args:
        S: ``(Q, L)`` sparse scores.
        k: labels per row (``>= 1``).

    Returns:
        ``(ids (Q, k) int64, scores (Q, k) float32)``; a row with fewer than ``k`` stored
        entries is padded with id ``-1`` and score ``0``.

    Raises:
        ValueError: ``k < 1``.
    """
    from .metrics import topk_from_scores

    k = int(k)
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    ids, scores = topk_from_scores(sp.csr_matrix(S), k, return_scores=True)
    return ids, scores.astype(np.float32)


class XHypClassifier(BaseEstimator):
    """Joint hyperbolic example/label embedding with kNN voting, as a scikit-learn estimator.

    The constructor takes keyword arguments only: every :class:`xhyp.embedding.model.ModelConfig` field
    (``dim``, ``projector``, ``hidden``, ``geometry``, ``max_norm``, ...), every
    :class:`xhyp.training.loop.TrainConfig` field (``epochs``, ``alpha``, ``negatives``, ``lr``,
    ``lr_labels``, ``knn``, ``weighting``, ``seed``, ``device``, ...) with the CLI's defaults,
    and

    * ``n_learners`` (1): ``M > 1`` trains an ensemble (learner ``i`` with seed ``seed + i``,
      summed votes; Gerald & Baskiotis 2019, section 2.6), as ``xhyp ensemble --learners M``;
    * ``jobs`` (1): ensemble learners trained at once, one process each;
    * ``index`` (``"exact"``), ``nprobe`` (``None``): the kNN search backend used by
      :meth:`predict` / :meth:`predict_scores` (``xhyp predict --index/--nprobe``);
    * ``top_k`` (100): labels kept per query (and per member before an ensemble sums), as
      ``xhyp predict --top-k``;
    * ``progress`` (``False``): progress bars and per-epoch lines while fitting.

    ``knn`` and ``weighting`` are used twice: for the validation P@1 that selects the best epoch
    while fitting, and as the neighbours / vote weighting of predictions; with a non-empty
    ``knn_grid`` (the default) predictions use the ``k`` chosen on the validation split after
    fitting instead of ``knn`` (and, with ``rerank="linear"``, the re-ranker's weight chosen there:
    :mod:`xhyp.knn.rerank`). Changing ``knn``, ``knn_grid``, ``weighting``, ``index``, ``nprobe`` or
    ``top_k`` with :meth:`set_params` after fitting changes later predictions without refitting;
    every other parameter takes effect at the next :meth:`fit`.

    Attributes:
        model_dir_: :class:`pathlib.Path` of the fitted model (or ensemble) directory: the
            ``out_dir`` given to :meth:`fit`, the directory given to :meth:`load`, or a temporary
            directory (removed when the estimator is garbage-collected; use :meth:`save`).
        n_features_in_: ``F``, features of the training data.
        n_labels_: ``L``, labels of the training data.
        best_epoch_: best epoch by validation P@1 (a list, one per learner, for an ensemble).
        history_: per-epoch records of ``history.json`` (a list of them for an ensemble).
        summary_: the training summary (``train_summary.json`` / ``ensemble_summary.json``
            contents; ``{}`` after :meth:`load` when the file is absent).
    """

    def __init__(self, **params):
        defaults = param_defaults()
        unknown = sorted(set(params) - set(defaults))
        if unknown:
            raise TypeError(f"XHypClassifier got unexpected parameters {unknown}; "
                            f"see XHypClassifier.get_params() for the valid ones")
        for name, default in defaults.items():
            setattr(self, name, params.get(name, default))

    # -- configuration ----------------------------------------------------------------------
    def model_config(self) -> dict:
        """The :class:`~xhyp.embedding.model.ModelConfig` fields (without ``n_features``/``n_labels``) as a dict."""
        return {n: getattr(self, n) for n in model_param_names()}

    def train_config(self) -> dict:
        """The :class:`~xhyp.training.loop.TrainConfig` fields as a dict."""
        return {n: getattr(self, n) for n in train_param_names()}

    def _predict_kw(self) -> dict:
        # with a knn_grid, the k chosen after training (config.json["predict"]); else knn
        kw = {"k": None if str(self.knn_grid).strip() else int(self.knn), "weighting": self.weighting,
              "index": self.index}
        if self.nprobe is not None:
            kw["index_params"] = {"nprobe": int(self.nprobe)}
        return kw

    # -- fitting ----------------------------------------------------------------------------
    def fit(self, X, Y, out_dir: str | Path | None = None, resume: bool = False,
            name: str | None = None) -> "XHypClassifier":
        """Train on ``(X, Y)`` (``xhyp train``, or ``xhyp ensemble`` when ``n_learners > 1``).

        Args:
            X: ``(N, F)`` raw features, scipy sparse or dense (converted to float32 CSR); the
                feature preprocessing (``features``, default row L2 normalisation) is fitted here.
            Y: ``(N, L)`` binary labels, scipy sparse or dense.
            out_dir: model directory to train into (created; an ensemble directory when
                ``n_learners > 1``); ``None``: a temporary directory, see :meth:`save`.
            resume: continue an interrupted run in ``out_dir`` (``xhyp train --resume``; an
                ensemble always skips complete learners and resumes interrupted ones).
            name: dataset name recorded in ``config.json["dataset"]`` (default ``"array"``).

        Returns:
            ``self``.

        Raises:
            ValueError: ``X`` and ``Y`` have different numbers of rows, an invalid parameter
                value (see :class:`~xhyp.embedding.model.ModelConfig` / :class:`~xhyp.training.loop.TrainConfig`),
                or ``out_dir`` holds a model trained on other data or settings.
        """
        from . import commands

        X = _as_csr(X, "X")
        Y = _as_csr(Y, "Y")
        if X.shape[0] != Y.shape[0]:
            raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
        n_learners = int(self.n_learners)
        if n_learners < 1:
            raise ValueError(f"n_learners must be >= 1, got {n_learners}")
        self._release()
        if out_dir is None:
            out_dir = Path(tempfile.mkdtemp(prefix="xhyp-model-"))
            self._tmp_finalizer = weakref.finalize(self, shutil.rmtree, str(out_dir), True)
        out_dir = Path(out_dir)
        name = name or "array"
        import torch

        threads = torch.get_num_threads()  # training sets torch's thread count (``threads``): restore it
        try:
            if n_learners == 1:
                summary = commands.train_model(out_dir, dataset=name, model=self.model_config(),
                                               train_cfg=self.train_config(), resume=resume,
                                               progress=bool(self.progress), data=(X, Y))
            else:
                summary = commands.ensemble_model(out_dir, dataset=name, model=self.model_config(),
                                                  train_cfg=self.train_config(), n_learners=n_learners,
                                                  jobs=int(self.jobs), progress=bool(self.progress), data=(X, Y))
        finally:
            torch.set_num_threads(threads)
        self._attach(out_dir, summary)
        return self

    def _release(self) -> None:
        fin = getattr(self, "_tmp_finalizer", None)
        if fin is not None:
            fin()
            self._tmp_finalizer = None
        for a in ("model_dir_", "predictor_", "n_features_in_", "n_labels_", "best_epoch_", "history_",
                  "summary_"):
            self.__dict__.pop(a, None)

    def _attach(self, directory: Path, summary: dict | None = None) -> None:
        """Load the predictor(s) of a finished model or ensemble directory."""
        from .prediction import Predictor
        from .prediction.ensemble import SUMMARY_FILE, Ensemble, is_ensemble_dir

        d = Path(directory)
        if is_ensemble_dir(d):
            pred = Ensemble.load(d)
            dirs = pred.member_dirs
            summary_file = d / "ensemble_summary.json"
        else:
            pred = Predictor.load(d)
            dirs = [d]
            summary_file = d / SUMMARY_FILE
        cfg = json.loads((dirs[0] / "config.json").read_text())
        hist = [json.loads((m / "history.json").read_text()) if (m / "history.json").is_file() else []
                for m in dirs]
        best = []
        for m, h in zip(dirs, hist):
            s = m / SUMMARY_FILE
            best.append(json.loads(s.read_text()).get("best_epoch") if s.is_file() else None)
        if summary is None:
            summary = json.loads(summary_file.read_text()) if summary_file.is_file() else {}
        self.model_dir_ = d
        self.predictor_ = pred
        self.n_features_in_ = int(cfg["model"]["n_features"])
        self.n_labels_ = int(cfg["model"]["n_labels"])
        self.summary_ = summary
        ensemble = is_ensemble_dir(d)
        self.history_ = hist if ensemble else hist[0]
        self.best_epoch_ = best if ensemble else best[0]

    def _check_fitted(self) -> None:
        if not hasattr(self, "predictor_"):
            raise RuntimeError("this XHypClassifier is not fitted yet: call fit(X, Y) or XHypClassifier.load(dir)")

    # -- prediction -------------------------------------------------------------------------
    def predict_scores(self, X, top_k: int | None = None) -> sp.csr_matrix:
        """Sparse label scores of each query (what ``xhyp predict`` saves).

        Scores are kNN votes (Gerald & Baskiotis 2019, section 2.5; summed over the learners of
        an ensemble, section 2.6) with the estimator's ``knn``, ``weighting``, ``index`` and
        ``nprobe``.

        Args:
            X: ``(Q, F)`` raw query features, scipy sparse or dense.
            top_k: labels kept per query (default: the ``top_k`` parameter, 100).

        Returns:
            ``(Q, L)`` float32 CSR matrix with at most ``top_k`` stored entries a row.

        Raises:
            RuntimeError: not fitted. ValueError: ``X`` has another number of features than the
                training data.
        """
        self._check_fitted()
        X = _as_csr(X, "X")
        if X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, the model was trained on {self.n_features_in_}")
        top_k = int(self.top_k if top_k is None else top_k)
        return self.predictor_.predict(X, top_k=top_k, **self._predict_kw())

    def predict(self, X, k: int = 5) -> tuple[np.ndarray, np.ndarray]:
        """The ``k`` best labels of each query and their scores.

        The ranking is that of :meth:`predict_scores` with ``top_k = max(k, self.top_k)``
        (decreasing score, ties by increasing label id, as the metrics rank), so ``P@k`` computed
        from ``ids`` equals ``P@k`` of ``xhyp predict`` + ``xhyp evaluate`` with the same settings.

        Args:
            X: ``(Q, F)`` raw query features, scipy sparse or dense.
            k: labels per query.

        Returns:
            ``(ids, scores)``: ``(Q, k)`` int64 label ids and ``(Q, k)`` float32 scores, best
            first. A query with fewer than ``k`` scored labels (its neighbours carry fewer than
            ``k`` distinct labels) is padded with id ``-1`` and score ``0``.

        Raises:
            RuntimeError: not fitted. ValueError: ``k < 1`` or a feature-count mismatch.
        """
        if int(k) < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        S = self.predict_scores(X, top_k=max(int(k), int(self.top_k)))
        return topk_arrays(S, int(k))

    def score(self, X, Y, k: int = 1) -> float:
        """Precision at ``k`` (a fraction in [0, 1]) of the predictions for ``X`` against ``Y``.

        Used by scikit-learn's model selection (``GridSearchCV``, ``cross_val_score``): higher is
        better. P@k as in :func:`xhyp.metrics.precision_at_k` (Jain et al. 2016).

        Args:
            X: ``(Q, F)`` query features. Y: ``(Q, L)`` true labels. k: cut-off.
        """
        from .metrics import precision_at_k

        S = self.predict_scores(X, top_k=max(int(k), int(self.top_k)))
        return float(precision_at_k(_as_csr(Y, "Y"), S, k=int(k))[-1])

    # -- persistence ------------------------------------------------------------------------
    def save(self, directory: str | Path, overwrite: bool = False) -> Path:
        """Write the fitted model (or ensemble) directory to ``directory``.

        The result is the directory ``xhyp train`` (``xhyp ensemble``) writes: ``xhyp predict
        --model directory``, ``xhyp info``, ``xhyp export`` and :meth:`load` all read it. The
        copy is made beside ``directory`` and renamed into place, so ``directory`` never holds a
        partial model. Saving to the directory the estimator was fitted in (or loaded from) does
        nothing.

        Args:
            directory: target directory (must not exist or be empty, unless ``overwrite``).
            overwrite: replace an existing non-empty ``directory``.

        Returns:
            the target path.

        Raises:
            RuntimeError: not fitted. FileExistsError: ``directory`` is not empty and
                ``overwrite`` is false.
        """
        self._check_fitted()
        target = Path(directory)
        if target.exists() and target.resolve() == self.model_dir_.resolve():
            return target
        if target.exists() and any(target.iterdir()) and not overwrite:
            raise FileExistsError(f"{target} is not empty; pass overwrite=True to replace it")
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
        shutil.copytree(self.model_dir_, tmp)
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.{uuid.uuid4().hex[:8]}.old")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return target

    @classmethod
    def load(cls, directory: str | Path, **params) -> "XHypClassifier":
        """Open a model directory (``xhyp train``) or ensemble directory (``xhyp ensemble``).

        The parameters are read from the directory's configuration (``config.json``, or
        ``ensemble.json`` and its members), so ``get_params()`` describes the loaded model;
        ``params`` then override them, e.g. ``index="clustered", nprobe=8`` or ``knn=10`` for
        the predictions.

        Args:
            directory: the directory.
            **params: estimator parameters to set after loading.

        Returns:
            a fitted :class:`XHypClassifier`.

        Raises:
            FileNotFoundError: not a complete model or ensemble directory (the message names the
                missing file).
            TypeError: an unknown parameter name.
        """
        from .prediction.ensemble import ENSEMBLE_FILE, is_ensemble_dir

        d = Path(directory)
        if is_ensemble_dir(d):
            meta = json.loads((d / ENSEMBLE_FILE).read_text())
            cfg = {"model": meta.get("model", {}), "train": dict(meta.get("train", {}))}
            cfg["train"]["seed"] = meta.get("seed", cfg["train"].get("seed", 0))
            n_learners = len(meta.get("members", [])) or 1
        else:
            if not (d / "config.json").is_file():
                raise FileNotFoundError(f"{d / 'config.json'} is missing: {d} is not an xhyp model or "
                                        "ensemble directory")
            cfg = json.loads((d / "config.json").read_text())
            n_learners = 1
        defaults = param_defaults()
        stored = {k: v for k, v in {**cfg.get("model", {}), **cfg.get("train", {})}.items() if k in defaults}
        est = cls(**{**stored, "n_learners": n_learners})
        if params:
            est.set_params(**params)
        est._attach(d)
        return est

    def __getstate__(self):
        state = super().__getstate__()
        if getattr(self, "_tmp_finalizer", None) is not None:
            raise TypeError("a fitted XHypClassifier whose model lives in a temporary directory cannot be "
                            "pickled; save(dir) it and XHypClassifier.load(dir) instead")
        state.pop("_tmp_finalizer", None)
        return state


def _init_signature() -> inspect.Signature:
    params = [inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(n, inspect.Parameter.KEYWORD_ONLY, default=v) for n, v in param_defaults().items()]
    return inspect.Signature(params)


# scikit-learn (get_params, clone, repr) and help() read the parameters from this signature
XHypClassifier.__init__.__signature__ = _init_signature()

__all__ = ["XHypClassifier", "topk_arrays", "param_defaults", "model_param_names", "train_param_names",
           "EXTRA_PARAMS"]
