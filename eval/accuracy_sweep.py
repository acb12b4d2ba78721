"""Accuracy sweep: training and prediction variants on a held-out part of the training split.

Protocol (the project's held-out rule: choose on part of train, never on test):

* ``--split holdout`` (the default): a seeded ``--holdout`` share of the **training** split
  (:func:`xhyp.eval.common.holdout_split`, seed ``--holdout-seed``) is set aside; every
  learner trains on the rest. Inside that, the trainer keeps its own validation split
  (``val_fraction``, 5 %) for early stopping and for the after-training choices it stores with
  the model (vote ``k``, re-ranker weight: :func:`xhyp.training.prediction_fit.fit_prediction`); the
  held-out part is never seen by training and is only scored here.
* ``--split test``: the same variants trained on the whole training split and scored on the test
  split: run only for the settings chosen on the held-out part.

Every variant (:data:`VARIANTS`: model and training settings, spelled out in full where they
differ from the library defaults so a variant keeps its meaning when the defaults change; the
training flags of ``xhyp train`` given here, e.g. ``--threads 1``, apply on top of every variant)
is trained with seeds ``--seed .. --seed + M - 1`` (``M = max(--learners)``) into the learner
cache of :mod:`xhyp.eval.common` (``CACHE/SPLIT/DATASET/VARIANT-HASH``, an ensemble directory
whose name changes with the variant's settings); each learner's top-100 scores, with and without
its re-ranker, are kept beside it, so later runs (more variants, larger ensembles) reuse them. An
ensemble of ``m`` learners sums the first ``m`` learners' scores (Gerald & Baskiotis 2019, section
2.6). ``--peers parabel bonsai`` also trains omikuji's Parabel and Bonsai (``bench/peers.py``'s
settings) on the same split, so every figure has its peers beside it.

Reported per (data set, variant, ensemble size): P@1/3/5 and PSP@1/3/5 (Jain et al. 2016
propensities from the training labels, ``A, B`` from the registry), training seconds (sum over
learners), the after-training step's seconds and the scorers' weights (learner 0), with more than
one learner also the mean of the single learners (``(mean of single learners)``, with each
learner's ``rho`` and the mean label-norm percentiles), and for learner 0 the Spearman
correlation of label frequency with the label embedding's distance to the origin (``rho``;
negative: frequent labels nearer the centre) and the median label norm, and with a learned softmax scale (``learn_alpha``) its value at the best epoch
(first three learners).

``--paired A B`` (repeatable) compares two of the variants seed by seed: each seed's single learner
of ``A`` against the same seed's of ``B`` (mean difference, its standard error, seeds ahead;
:func:`paired_differences`), a table of its own in the Markdown and ``"paired"`` in the JSON.

Example::

    python -m xhyp.eval.accuracy_sweep --datasets bibtex delicious --data-dir ../shared/data \\
        --out runs/accuracy --variants paper rerank --learners 1 --peers parabel bonsai --threads 1

Writes ``OUT/accuracy_sweep.md`` and ``OUT/accuracy_sweep.json`` (all results so far: each run
merges its rows into them).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xhyp.config import AFTER_TRAINING_KEYS, RUNTIME_KEYS
from xhyp.datasets import load_split
from xhyp.datasets.registry import propensity_params
from xhyp.eval.common import (KS, holdout_split, loadavg, log, md_table, member_test_scores, prefix_metrics,
                              run_script, script_parser, train_cell)
from xhyp.metrics import inv_propensity
from xhyp.prediction.ensemble import learner_name
from xhyp.utils import atomic_save_json, atomic_save_sparse

METRICS = tuple(f"{m}@{k}" for m in ("P", "PSP") for k in KS)
TOP_K = 100

# the defaults before this sweep: kNN vote with k = 20, no re-ranker (pinned so the variants below
# keep their meaning whatever the library defaults are)
_PAPER = {"alpha": 30.0, "lr_labels": 0.003, "knn": 20, "knn_grid": "", "rerank": "none", "radial_weight": 0.0,
          "radial_power": 0.0}
_RERANK = dict(_PAPER, knn_grid="5,10,20,30,50", rerank="linear", rerank_knn=50, rerank_c=1.0,
               rerank_weights="0,0.5,1,2,4,8", rerank_shortlist=0, rerank_negatives=0, rerank_prune=0.0,
               rerank_tol=1e-4)

VARIANTS: dict[str, dict] = {
    "paper": {"model": {}, "train": dict(_PAPER),
              "note": "the previous defaults: alpha 30, 500 shared negatives, kNN vote k = 20"},
    "auto-k": {"model": {}, "train": dict(_PAPER, knn_grid="5,10,20,30,50"),
               "note": "vote k chosen on the validation split after training"},
    "rerank": {"model": {}, "train": dict(_RERANK),
               "note": "shortlist of 50 neighbours re-ranked by per-label linear SVMs on mined hard negatives"},
}


def _variant(name: str, note: str, base: str = "rerank", model: dict | None = None, **train) -> None:
    """Register ``name``: the variant ``base`` with these model / training changes."""
    b = VARIANTS[base]
    VARIANTS[name] = {"model": dict(b["model"], **(model or {})), "train": dict(b["train"], **train), "note": note}


def _refit(name: str, note: str, base: str, **train) -> None:
    """Register ``name``: the learners of ``base`` with only after-training options changed
    (:data:`xhyp.config.AFTER_TRAINING_KEYS`): their embeddings are reused, the scorers and the
    choice of ``k`` and ``w`` fitted again (:func:`refit_learner`; the same result as training the
    variant, which is deterministic with one thread, at the cost of the after-training step only)."""
    bad = sorted(set(train) - set(AFTER_TRAINING_KEYS))
    if bad:
        raise ValueError(f"{name}: {bad} change the embedding; register it with _variant")
    _variant(name, note, base, **train)
    VARIANTS[name]["refit_of"] = base


# where the optimum sits in the ball: label step size, softmax scale, initialisation
for _lrl in (0.01, 0.03, 0.1):
    _variant(f"rerank-lrl{_lrl}", f"label learning rate {_lrl}", lr_labels=_lrl)
for _a, _lrl in ((10, 0.03), (10, 0.1), (5, 0.03), (5, 0.1), (5, 0.3), (4, 0.1), (3, 0.03), (3, 0.1), (3, 0.3), (2, 0.1),
                 (1, 0.1)):
    _variant(f"rerank-a{_a}-lrl{_lrl}", f"alpha {_a}, label learning rate {_lrl}", alpha=float(_a), lr_labels=_lrl)
_variant("rerank-init0.01-lrl0.03", "labels initialised with std 1e-2, label learning rate 0.03",
         model={"init_std_labels": 0.01}, lr_labels=0.03)
for _std in (0.05, 0.1):
    _variant(f"rerank-a5-lrl0.1-init{_std}", f"alpha 5, label learning rate 0.1, labels initialised with std {_std}",
             "rerank-a5-lrl0.1", model={"init_std_labels": _std})
# negatives: without replacement (Bibtex: all 159 labels, the full softmax), all labels on Delicious too
_variant("rerank-unique", "500 shared negatives drawn without replacement", negative_draw="unique")
_variant("rerank-full", "full softmax: every label a negative", negative_draw="unique", shared_negatives=100000)
_variant("rerank-a5-lrl0.1-full", "alpha 5, label learning rate 0.1, full softmax", "rerank-a5-lrl0.1",
         negative_draw="unique", shared_negatives=100000)
# capacity and features
for _d in (100, 200):
    _variant(f"rerank-dim{_d}", f"embedding dimension {_d}", model={"dim": _d})
_variant("rerank-a5-lrl0.1-dim100", "alpha 5, label learning rate 0.1, dimension 100", "rerank-a5-lrl0.1",
         model={"dim": 100})
_variant("rerank-mlp", "MLP projector (hidden 256)", model={"projector": "mlp"})
_variant("rerank-tfidf", "tf-idf features", features="tfidf")
# the re-ranker's own settings
for _c in (0.3, 3.0):
    _variant(f"rerank-c{_c}", f"SVM C = {_c}", rerank_c=_c)
_variant("rerank-sl100", "shortlists of 100 neighbours", rerank_knn=100)
_variant("rerank-euclid", "Euclidean geometry", model={"geometry": "euclidean"})
_variant("rerank-a5-lrl0.1-untrained", "ablation: the re-ranker on an untrained (random) embedding",
         "rerank-a5-lrl0.1", epochs=0)
for _a in (3, 5):
    _variant(f"rerank-a{_a}-lrl0.1-euclid", f"Euclidean geometry, alpha {_a}, label learning rate 0.1",
             f"rerank-a{_a}-lrl0.1", model={"geometry": "euclidean"})

# the re-ranker's cost bounds (the learners of rerank-a5-lrl0.1, re-fitted after training)
_A5 = "rerank-a5-lrl0.1"
for _t in (0.01, 0.03, 0.1, 0.3):
    _refit(f"{_A5}-prune{_t}", f"scorer weights below {_t} pruned", _A5, rerank_prune=_t)
for _s in (50, 100, 200):
    _refit(f"{_A5}-sl{_s}", f"shortlists cut to their top {_s} labels", _A5, rerank_shortlist=_s)
for _m in (100, 300, 1000):
    _refit(f"{_A5}-neg{_m}", f"at most {_m} hard negatives a label", _A5, rerank_negatives=_m)
for _tol in (0.01, 0.1):
    _refit(f"{_A5}-tol{_tol}", f"SVM stopping tolerance {_tol}", _A5, rerank_tol=_tol)
    for _t in (0.05, 0.1):  # the bounds together (s200-p0.05-tol0.1: the library's defaults)
        _refit(f"{_A5}-s200-p{_t}-tol{_tol}", f"shortlists of 200 labels, weights below {_t} pruned, tolerance {_tol}",
               _A5, rerank_shortlist=200, rerank_prune=_t, rerank_tol=_tol)

# a learned softmax scale (TrainConfig.learn_alpha) on top of the current defaults (the bounded
# re-ranker: rerank-a5-lrl0.1-s200-p0.1-tol0.01), and the same defaults in Euclidean space
_DEF = f"{_A5}-s200-p0.1-tol0.01"
_variant("default-euclid", "the current defaults (alpha 5, label step 0.1, bounded re-ranker), Euclidean geometry",
         _DEF, model={"geometry": "euclidean"})
for _lra in (0.003, 0.01, 0.03):
    _variant(f"default-learnalpha{_lra}", f"the current defaults with a learned softmax scale (from 5, step {_lra})",
             _DEF, learn_alpha=True, lr_alpha=_lra)
    _variant(f"default-learnalpha{_lra}-euclid", f"learned softmax scale (from 5, step {_lra}), Euclidean geometry",
             f"default-learnalpha{_lra}", model={"geometry": "euclidean"})
_variant("rerank-learnalpha0.01", "the alpha-30 re-ranker (label step 3e-3) with a learned softmax scale (step 0.01)",
         learn_alpha=True, lr_alpha=0.01)
for _lra, _a in ((0.01, 2), (0.01, 10), (0.01, 30), (0.003, 2)):
    _variant(f"default-learnalpha{_lra}-from{_a}", f"learned softmax scale from {_a} (step {_lra})",
             f"default-learnalpha{_lra}", alpha=float(_a))

# a radial term in the loss (TrainConfig.radial_weight): each (example, positive) pair pulls its label
# towards the origin, on top of the current defaults
for _rw in (0.003, 0.01, 0.03, 0.1, 0.3, 1.0):
    _variant(f"default-radial{_rw}", f"the current defaults with the radial term, weight {_rw}", _DEF, radial_weight=_rw)
for _rw in (0.1, 0.3, 1.0):  # each pair's share grows with its label's count (radial_power 1: a pull ~ count^2)
    _variant(f"default-radialf{_rw}", f"the current defaults with the frequency-weighted radial term (weight {_rw}, "
             "power 1)", _DEF, radial_weight=_rw, radial_power=1.0)
_variant("default-radialf0.3-euclid", "the frequency-weighted radial term (weight 0.3, power 1), Euclidean geometry",
         "default-radialf0.3", model={"geometry": "euclidean"})
for _rw, _rp in ((0.1, 0.5), (0.3, 0.5), (1.0, 0.5), (0.03, 2.0), (0.1, 2.0)):  # other shapes of the pull ~ count^(1+P)
    _variant(f"default-radialf{_rw}-p{_rp}", f"the radial term with weight {_rw}, power {_rp}", _DEF, radial_weight=_rw,
             radial_power=_rp)
_variant("default-radialf0.3-p0.5-euclid", "the radial term with weight 0.3, power 0.5, Euclidean geometry",
         "default-radialf0.3-p0.5", model={"geometry": "euclidean"})
for _d in (5, 10):  # the geometries at low dimension (the paper's Table 4 regime)
    _variant(f"default-radialf0.3-dim{_d}", f"the frequency-weighted radial term, dimension {_d}", "default-radialf0.3",
             model={"dim": _d})
    _variant(f"default-radialf0.3-dim{_d}-euclid", f"the frequency-weighted radial term, dimension {_d}, Euclidean",
             "default-radialf0.3", model={"dim": _d, "geometry": "euclidean"})


def variant_config(name: str) -> dict:
    """``{"model": ..., "train": ...}`` of a registered variant.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    return {"model": dict(v.get("model", {})), "train": dict(v.get("train", {}))}


def split_data(dataset: str, split: str, data_dir, holdout: float, holdout_seed: int):
    """``(X_fit, Y_fit, X_eval, Y_eval)`` of a data set: train/held-out part, or train/test."""
    X, Y = load_split(dataset, "train", data_dir=data_dir)
    if split == "test":
        Xt, Yt = load_split(dataset, "test", data_dir=data_dir)
        return X, Y, Xt, Yt
    fit, out = holdout_split(X.shape[0], holdout, holdout_seed)
    return X[fit], Y[fit], X[out], Y[out]


def label_space_stats(model, train_emb, Y_fit: sp.csr_matrix) -> dict:
    """Spearman rho of label frequency against ``d(0, w_l)``, the label-norm quartiles, the
    median norm of the training examples, and ``rho_centred``: rho about the training examples'
    midpoint instead of the origin (Poincaré: the Einstein midpoint moved to the origin by a
    Möbius translation, an isometry; Euclidean: the mean), i.e. "frequent labels near the centre of
    the data" whatever point of the ball the data sits around.

    Args:
        model: a trained :class:`xhyp.embedding.model.HyperbolicXMC`. train_emb: ``(N, n)`` its
            training examples' embeddings. Y_fit: ``(N, L)`` their labels.
    """
    import torch

    from xhyp.plot import distance_to_origin, spearman_frequency_distance

    W = model.labels.detach().double().cpu()
    E = train_emb.double()
    freq = np.asarray(Y_fit.sum(0)).ravel()
    rho, _ = spearman_frequency_distance(freq, distance_to_origin(W.numpy(), model.config.geometry))
    if model.config.geometry == "poincare":
        import geoopt

        ball = geoopt.PoincareBall()
        Wc = ball.mobius_add(-ball.weighted_midpoint(E, reducedim=[0])[None, :], W)
    else:
        Wc = W - E.mean(0, keepdim=True)
    rho_c, _ = spearman_frequency_distance(freq, distance_to_origin(Wc.numpy(), model.config.geometry))
    q = np.quantile(torch.linalg.norm(W, dim=1).numpy(), [0.1, 0.5, 0.9])
    return {"rho": rho, "rho_centred": rho_c, "label_norm_q10_50_90": [float(v) for v in q],
            "example_norm_median": float(torch.linalg.norm(E, dim=1).median())}


def cell_dir(base: Path, variant: str, cfg: dict) -> Path:
    """The ensemble directory of a variant's learners: its name and a hash of its settings (a
    changed variant trains anew; the run-time options, e.g. ``threads``, do not count)."""
    what = {"model": cfg["model"], "train": {k: v for k, v in cfg["train"].items() if k not in RUNTIME_KEYS}}
    digest = hashlib.sha1(json.dumps(what, sort_keys=True).encode()).hexdigest()[:10]
    return base / f"{variant}-{digest}"


def learner_info(ld: Path, summ: dict, Y_fit) -> dict:
    """Timings, the settings chosen after training and :func:`label_space_stats` of a learner
    directory (the statistics cached in ``label_space.json`` beside it)."""
    from xhyp.prediction import Predictor

    pc = {k: v for k, v in (json.loads((ld / "config.json").read_text()).get("predict") or {}).items()
          if k != "selection"}
    info = {"train_seconds": summ["train_seconds"], "best_epoch": summ["best_epoch"], "predict_settings": pc,
            "after_seconds": round(pc.get("fit_seconds", 0.0) + pc.get("select_seconds", 0.0), 2)}
    stats_f = ld / "label_space.json"
    if not stats_f.is_file():
        p = Predictor.load(ld)
        atomic_save_json(label_space_stats(p.model, p.train_emb, Y_fit), stats_f)
    info.update(json.loads(stats_f.read_text()))
    return info


def refit_learner(base_dir: Path, out_dir: Path, data, train: dict) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    """A trained learner with its after-training step done again with other options.

    The learner of ``base_dir`` keeps its embedding; :func:`xhyp.training.prediction_fit.fit_prediction`
    runs on it with its own training configuration updated by the after-training keys of
    ``train`` (the same call and the same rows as :func:`xhyp.training.train`); the evaluation
    rows are scored with and without the re-ranker. Cached in ``out_dir``.

    Returns:
        ``(scores, vote-only scores, {"fit_seconds", "predict_settings"})``.
    """
    from xhyp.config import TrainConfig
    from xhyp.prediction import Predictor
    from xhyp.training.loop import validation_split
    from xhyp.training.prediction_fit import fit_prediction

    X_fit, _, X_eval, _ = data
    info_f, s_f, v_f = out_dir / "refit.json", out_dir / "eval_scores.npz", out_dir / "eval_scores_vote.npz"
    base_cfg = json.loads((base_dir / "config.json").read_text())["train"]
    tcfg = TrainConfig.from_dict({**base_cfg, **{k: train[k] for k in AFTER_TRAINING_KEYS if k in train}})
    want = {"base": str(base_dir), "train": tcfg.to_dict(), "rows": int(X_eval.shape[0]), "nnz": int(X_eval.nnz)}
    if info_f.is_file() and s_f.is_file() and v_f.is_file():
        info = json.loads(info_f.read_text())
        if info.get("want") == want:
            return sp.load_npz(s_f).tocsr(), sp.load_npz(v_f).tocsr(), info
    p = Predictor.load(base_dir)
    Xp = p.pipeline.transform(X_fit)
    Xp.sort_indices()
    tr, va = validation_split(X_fit.shape[0], tcfg.val_fraction, tcfg.seed)
    t0 = time.time()
    settings, scorer = fit_prediction(p.model, Xp, p.train_labels, tr, va, p.train_emb, tcfg)
    fit_s = time.time() - t0
    q = Predictor(p.model, p.pipeline, p.train_emb, p.train_labels, {"train": tcfg.to_dict(), "predict": settings},
                  scorer)
    S = q.predict(X_eval, top_k=TOP_K)
    S_vote = q.predict(X_eval, top_k=TOP_K, rerank_weight=0.0) if scorer is not None else S
    info = {"want": want, "fit_seconds": round(fit_s, 2),
            "predict_settings": {k: v for k, v in settings.items() if k != "selection"}}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_save_sparse(s_f, S)
    atomic_save_sparse(v_f, S_vote)
    atomic_save_json(info, info_f)
    return S, S_vote, info


def run_variant(base: Path, dataset: str, data, variant: str, cfg: dict, n_learners: int, seed: int) -> list:
    """Train (or reuse) a variant's ``n_learners`` learners and score the evaluation rows (a
    variant registered by :func:`_refit`: its base's learners, re-fitted after training).

    Returns:
        one ``(scores, vote-only scores (the same learner without its re-ranker), info)`` per
        learner; ``info`` holds its timings, the settings chosen after training and, for learner
        0, :func:`label_space_stats`.
    """
    X_fit, Y_fit, X_eval, _ = data
    base_variant = VARIANTS[variant].get("refit_of")
    if base_variant is not None:
        b_cfg = variant_config(base_variant)
        b_cfg["train"].update({k: v for k, v in cfg["train"].items() if k in RUNTIME_KEYS})
        b_dir, ens = _train(base, dataset, data, base_variant, b_cfg, n_learners, seed)
        out = []
        for i, summ in enumerate(ens["learners"][:n_learners]):
            S, S_vote, r = refit_learner(b_dir / learner_name(i), cell_dir(base, variant, cfg) / learner_name(i), data,
                                         cfg["train"])
            info = learner_info(b_dir / learner_name(i), summ, Y_fit)
            bp = info["predict_settings"]  # the base learner's after-training step, replaced by the refit
            info.update(predict_settings=r["predict_settings"], after_seconds=r["fit_seconds"],
                        train_seconds=round(summ["train_seconds"] - bp.get("fit_seconds", 0.0)
                                            - bp.get("select_seconds", 0.0) + r["fit_seconds"], 2))
            out.append((S, S_vote, info))
        return out
    d, ens = _train(base, dataset, data, variant, cfg, n_learners, seed)
    out = []
    for i, summ in enumerate(ens["learners"][:n_learners]):
        ld = d / learner_name(i)
        S, t_pred = member_test_scores(ld, X_eval, TOP_K, name="eval_scores")
        info = learner_info(ld, summ, Y_fit)
        S_vote = (member_test_scores(ld, X_eval, TOP_K, name="eval_scores_vote", rerank_weight=0.0)[0]
                  if info["predict_settings"].get("reranker") else S)
        if t_pred:
            pc = info["predict_settings"]
            log(f"[accuracy_sweep] {dataset} {variant} seed {seed + i}: {summ['train_seconds']:.1f}s train, "
                f"{t_pred:.1f}s predict, k {pc.get('k')}, w {pc.get('rerank_weight')}")
        out.append((S, S_vote, info))
    return out


def _train(base: Path, dataset: str, data, variant: str, cfg: dict, n_learners: int, seed: int):
    """A variant's learners in the learner cache (trained now where missing): ``(directory, summary)``."""
    X_fit, Y_fit = data[0], data[1]
    model = dict(cfg["model"])
    geometry, dim = model.pop("geometry", "poincare"), model.pop("dim", 50)
    return train_cell(dataset, X_fit, Y_fit, None, geometry, dim, n_learners, cfg["train"], seed,
                      directory=cell_dir(base, variant, cfg), model=model)


def _peers_module():
    """``bench/peers.py`` as a module (it is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "peers.py"
    spec = importlib.util.spec_from_file_location("xhyp_bench_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_peer(name: str, cell: Path, data, dataset: str, threads: int) -> tuple[sp.csr_matrix, dict]:
    """Parabel or Bonsai (omikuji, ``bench/peers.py``'s settings) on the same split, cached."""
    scores_path, info_path = cell / "scores.npz", cell / "info.json"
    if scores_path.is_file() and info_path.is_file():
        return sp.load_npz(scores_path).tocsr(), json.loads(info_path.read_text())
    peers = _peers_module()
    X_fit, Y_fit, X_eval, Y_eval = data
    d = peers.make_data(dataset, X_fit, Y_fit, X_eval, Y_eval)
    args = argparse.Namespace(threads=threads, top_k=TOP_K)
    r = dict(getattr(peers, f"run_{name}")(d, cell / "work", args))[name]
    info = {"train_seconds": round(r["train_seconds"], 2), "predict_seconds": round(r["predict_seconds"], 3),
            "settings": r["settings"], "load_avg": loadavg()}
    cell.mkdir(parents=True, exist_ok=True)
    atomic_save_sparse(scores_path, r["scores"])
    atomic_save_json(info, info_path)
    log(f"[accuracy_sweep] {name}: {r['train_seconds']:.1f}s train")
    return r["scores"], info


def sweep(datasets, variants, learners, split: str, cache: Path, data_dir, holdout: float, holdout_seed: int,
          seed: int, overrides: dict, peers=()) -> list[dict]:
    """Train and score every (data set, variant, seed) and the peers; returns one row per
    (data set, method, ensemble size)."""
    rows = []
    for ds in datasets:
        data = split_data(ds, split, data_dir, holdout, holdout_seed)
        inv_prop = inv_propensity(data[1], *propensity_params(ds))
        base = cache / (split if split == "test" else f"holdout{holdout}_seed{holdout_seed}") / ds
        for p in peers:
            S, info = run_peer(p, base / f"peer-{p}", data, ds, int(overrides.get("threads") or 1))
            m = prefix_metrics([S], data[3], [1], inv_prop=inv_prop, keep=METRICS)[1]
            rows.append({"dataset": ds, "split": split, "method": p, "learners": 1, **m,
                         "train_seconds": info["train_seconds"]})
        for v in variants:
            cfg = variant_config(v)
            cfg["train"].update(overrides)
            res = run_variant(base, ds, data, v, cfg, max(learners), seed)
            infos = [r[2] for r in res]
            with_vote = any(i["predict_settings"].get("reranker") for i in infos)
            for vote_only in (False, True) if with_vote else (False,):
                scores = [r[1 if vote_only else 0] for r in res]
                pm = prefix_metrics(scores, data[3], learners, top_k=TOP_K, inv_prop=inv_prop, keep=METRICS)
                if len(res) > 1:  # single learners' mean (the seed noise of one learner averaged out)
                    each = [prefix_metrics([S], data[3], [1], top_k=TOP_K, inv_prop=inv_prop, keep=METRICS)[1]
                            for S in scores]
                    rows.append({"dataset": ds, "split": split, "learners": len(res),
                                 "method": v + (" (vote only)" if vote_only else "") + " (mean of single learners)",
                                 **{k: float(np.mean([e[k] for e in each])) for k in METRICS},
                                 "train_seconds": round(float(np.mean([i["train_seconds"] for i in infos])), 1),
                                 "after_seconds": round(float(np.mean([i["after_seconds"] for i in infos])), 1),
                                 "scorer_nnz": int(np.mean([i["predict_settings"].get("scorer_nnz") or 0
                                                            for i in infos])),
                                 "rho": float(np.mean([i["rho"] for i in infos])),
                                 "rho_each": [i["rho"] for i in infos],
                                 "each": {k: [float(e[k]) for e in each] for k in METRICS},
                                 "label_norm_q10_50_90": np.mean([i["label_norm_q10_50_90"] for i in infos],
                                                                 0).tolist(),
                                 "label_norm_median": float(np.mean([i["label_norm_q10_50_90"][1] for i in infos]))})
                for m, metrics in pm.items():
                    rows.append({"dataset": ds, "split": split, "method": v + (" (vote only)" if vote_only else ""),
                                 "learners": m, **metrics,
                                 "train_seconds": round(sum(i["train_seconds"] for i in infos[:m]), 1),
                                 "after_seconds": infos[0]["after_seconds"],
                                 "scorer_nnz": infos[0]["predict_settings"].get("scorer_nnz"),
                                 "rho": infos[0]["rho"], "rho_centred": infos[0].get("rho_centred"),
                                 "label_norm_median": infos[0]["label_norm_q10_50_90"][1],
                                 "label_norm_q10_50_90": infos[0]["label_norm_q10_50_90"],
                                 "learned_alpha": [i["predict_settings"].get("alpha") for i in infos[:m]][:3],
                                 "example_norm_median": infos[0].get("example_norm_median"),
                                 "k": [i["predict_settings"].get("k") for i in infos[:m]][:3],
                                 "rerank_weight": [i["predict_settings"].get("rerank_weight") for i in infos[:m]][:3]})
    return rows


def markdown(rows: list[dict]) -> str:
    """One table per (split, data set): every method and ensemble size, metrics in percent."""
    lines = []
    for split, ds in sorted({(r["split"], r["dataset"]) for r in rows}):
        table = [[r["method"], r["learners"], *(f"{100 * r[m]:.2f}" for m in METRICS), r["train_seconds"],
                  _fmt(r.get("after_seconds"), ".1f"), _fmt(r.get("scorer_nnz"), ","),
                  *(_fmt(r.get(n), f) for n, f in (("rho", "+.2f"), ("rho_centred", "+.2f"),
                                                   ("label_norm_median", ".3f"), ("example_norm_median", ".3f"))),
                  "/".join(f"{a:.2f}" for a in r.get("learned_alpha") or [] if a is not None)]
                 for r in rows if (r["split"], r["dataset"]) == (split, ds)]
        lines += md_table(f"**{ds}, {split}** (P@k and PSP@k in %)",
                          ["method", "learners", *METRICS, "train (s)", "scorers (s)", "weights", "rho", "rho centred",
                           "label norm",
                           "example norm", "learned alpha"], table)
    return "\n".join(lines)


def paired_differences(rows: list[dict], a: str, b: str) -> list[dict]:
    """Variant ``a`` against ``b``, single learner against single learner of the same seed.

    From the ``(mean of single learners)`` rows of both (their per-learner metrics, ``each``), per
    (split, data set) where both have them: over the first ``n`` seeds common to both, the mean of
    ``a - b`` (in metric units: fractions, as the rows), its standard error ``s / sqrt(n)`` (``s``:
    the sample standard deviation of the differences; NaN with one seed) and the number of seeds
    on which ``a`` is ahead. A paired comparison removes what the two runs of a seed share (the
    validation split, the negative draws' seed): the seed-to-seed spread of a single learner
    (about 1 P@1 point on Bibtex) is not in the difference's error.

    Returns:
        one dict per (split, data set): ``split, dataset, a, b, n``, then per metric of
        :data:`METRICS` ``{"mean": ..., "se": ..., "wins": ...}``.
    """
    singles = {(r["split"], r["dataset"], r["method"]): r for r in rows
               if r["method"].endswith(" (mean of single learners)") and "each" in r}
    out = []
    for split, ds in sorted({(k[0], k[1]) for k in singles}):
        ra = singles.get((split, ds, f"{a} (mean of single learners)"))
        rb = singles.get((split, ds, f"{b} (mean of single learners)"))
        if ra is None or rb is None:
            continue
        n = min(len(ra["each"][METRICS[0]]), len(rb["each"][METRICS[0]]))
        row = {"split": split, "dataset": ds, "a": a, "b": b, "n": n}
        for m in METRICS:
            d = np.asarray(ra["each"][m][:n]) - np.asarray(rb["each"][m][:n])
            row[m] = {"mean": float(d.mean()), "se": float(d.std(ddof=1) / np.sqrt(n)) if n > 1 else float("nan"),
                      "wins": int((d > 0).sum())}
        out.append(row)
    return out


def paired_markdown(paired: list[dict]) -> str:
    """The rows of :func:`paired_differences` as one table (points: percent)."""
    table = [[r["split"], r["dataset"], f"{r['a']} - {r['b']}", r["n"],
              *(f"{100 * r[m]['mean']:+.2f} ± {100 * r[m]['se']:.2f} ({r[m]['wins']}/{r['n']})" for m in METRICS)]
             for r in paired]
    return "\n".join(md_table("**paired by seed** (single learners: mean difference in points ± standard error "
                              "(seeds ahead / seeds))", ["split", "data set", "a - b", "seeds", *METRICS], table,
                              align="lllr" + "r" * len(METRICS)))


def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line parser (``--help`` lists its options)."""
    p = script_parser("accuracy_sweep", __doc__)
    p.add_argument("--variants", nargs="+", default=["paper"], help=f"from: {', '.join(VARIANTS)}")
    p.add_argument("--learners", type=int, nargs="+", default=[1], help="ensemble sizes reported (default: 1)")
    p.add_argument("--split", choices=("holdout", "test"), default="holdout")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the training split held out")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--peers", nargs="*", default=[], choices=("parabel", "bonsai"))
    p.add_argument("--paired", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="also compare variant A with B seed by seed (single learners; with --learners > 1 "
                        "and both in --variants); repeatable")
    return p


def run(args, overrides: dict, cache: str, seed: int) -> tuple[str, dict]:
    """Run the sweep and merge its rows into ``OUT/accuracy_sweep.json``'s: ``(markdown, data)``."""
    for v in args.variants:
        variant_config(v)
    for a, b in args.paired:
        if a not in args.variants or b not in args.variants:
            raise SystemExit(f"--paired {a} {b}: both must be among --variants")
    if min(args.learners) < 1:
        raise SystemExit("--learners must be >= 1")
    load0 = loadavg()
    rows = sweep(args.datasets, args.variants, args.learners, args.split, Path(cache), args.data_dir, args.holdout,
                 args.holdout_seed, seed, overrides, args.peers)
    old_f = Path(args.out) / "accuracy_sweep.json"
    old = json.loads(old_f.read_text()) if old_f.is_file() else {}
    key = lambda r: (r["split"], r["dataset"], r["method"], r["learners"])  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = sorted([r for r in old.get("rows", []) if key(r) not in new_keys] + rows, key=key)
    runs = old.get("runs", []) + [{"datasets": args.datasets, "split": args.split, "variants": args.variants,
                                   "learners": args.learners, "peers": args.peers, "overrides": overrides,
                                   "load_avg_start": load0, "load_avg_end": loadavg()}]
    data = {"rows": merged, "runs": runs, "variants": {k: dict(v, **variant_config(k)) for k, v in VARIANTS.items()}}
    paired = [p for a, b in args.paired for p in paired_differences(rows, a, b)]
    pkey = lambda r: (r["split"], r["dataset"], r["a"], r["b"])  # noqa: E731
    data["paired"] = sorted([r for r in old.get("paired", []) if pkey(r) not in {pkey(q) for q in paired}] + paired,
                            key=pkey)
    log(markdown(rows) + ("\n\n" + paired_markdown(paired) if paired else ""))
    return markdown(merged) + ("\n\n" + paired_markdown(data["paired"]) if data["paired"] else ""), data


def main(argv=None) -> int:
    """Run the script on ``argv`` (default: the command line); writes Markdown and JSON; exit status."""
    return run_script("accuracy_sweep", build_parser(), run, argv)


if __name__ == "__main__":
    sys.exit(main())
