"""After training: the shortlist scorers and the prediction settings, chosen on the validation split.

:func:`fit_prediction` runs at the end of :func:`xhyp.training.loop.train` (``rerank`` /
``knn_grid`` of :class:`xhyp.config.TrainConfig`): it fits the per-label linear scorers of
:mod:`xhyp.knn.rerank` on hard negatives mined from the trained embedding, and chooses the vote's
``k`` and the fusion weight ``w`` on the examples that early stopping holds out
(:func:`select_settings`). The model directory stores them as ``reranker.npz`` and
``config.json["predict"]``; :class:`xhyp.prediction.predictor.Predictor` uses them by default.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

from ..config import parse_grid
from ..knn.rerank import RERANK_FILE, LabelScorer, fuse, shortlist, top_votes, values_at

SELECTION_METRICS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")
"""Metrics whose mean picks the vote ``k`` and fusion weight on the validation split."""
FALLBACK_WEIGHT = 2.0
"""Fusion weight used without a validation split to choose one (``val_fraction=0``)."""


def select_settings(D, I, Y_db: sp.csr_matrix, Y_q: sp.csr_matrix, k_grid, w_grid, margins=None,
                    weighting: str = "count", alpha: float = 1.0, inv_prop=None, shortlists=None,
                    cap: int = 0) -> tuple[dict, list]:
    """Choose the vote's ``k`` and the fusion weight ``w`` on held-out queries with known labels.

    Every ``(k, w)`` of the grid scores the queries as prediction does (:func:`xhyp.knn.rerank.fuse`
    of the vote's top ``cap`` labels and the shortlists) and is evaluated by
    :func:`xhyp.metrics.evaluate`; the best has the highest mean of :data:`SELECTION_METRICS`
    (ties: the earlier grid entry).

    Args:
        D, I: ``(Q, K)`` distances and ids of the queries' nearest database points, ``K >= max(k_grid)``.
        Y_db: ``(N, L)`` database labels. Y_q: ``(Q, L)`` the queries' true labels.
        k_grid: vote neighbour counts. w_grid: fusion weights (``[0]`` without scorers).
        margins: ``(Q, L)`` CSR of the scorers' margins, at least on every label a ``(k, w)``
            scores (the shortlists and each vote's top ``cap``); ``None``: no scorer.
        weighting, alpha: of the vote (:func:`xhyp.knn.vote.vote`). inv_prop: ``(L,)`` inverse
            propensities for PSP@k (default: Jain et al.'s with ``A = 0.55, B = 1.5`` from ``Y_db``).
        shortlists: ``(Q, L)`` CSR whose pattern is each query's shortlist (default: the
            pattern of ``margins``). cap: labels of each vote kept (0: all).

    Returns:
        ``(best, grid)``: the best ``{"k", "weight", metric: value...}`` and every grid entry.

    Raises:
        ValueError: an empty grid, a ``k`` above ``K``, or weights > 0 without margins.
    """
    from ..metrics import evaluate, inv_propensity

    k_grid, w_grid = list(k_grid), list(w_grid)
    if not k_grid or not w_grid:
        raise ValueError("select_settings needs at least one k and one weight")
    if max(k_grid) > I.shape[1]:
        raise ValueError(f"k = {max(k_grid)} exceeds the {I.shape[1]} neighbours searched")
    if margins is None and any(w > 0 for w in w_grid):
        raise ValueError("fusion weights > 0 need the scorers' margins")
    inv_prop = inv_propensity(Y_db) if inv_prop is None else inv_prop
    grid = []
    for k in k_grid:
        V = top_votes(I[:, :k], D[:, :k], Y_db, cap, weighting, alpha)
        sl = shortlists if shortlists is not None else margins if margins is not None else V
        for w in w_grid:
            S = fuse(V, sl, lambda pat: values_at(margins, pat), w, k)
            m = evaluate(Y_q, S, ks=(1, 3, 5), inv_prop=inv_prop)
            row = {"k": int(k), "weight": float(w), **{n: float(m[n]) for n in SELECTION_METRICS}}
            row["score"] = float(np.mean([row[n] for n in SELECTION_METRICS]))
            grid.append(row)
    best = max(grid, key=lambda r: r["score"])  # max keeps the first of equal scores
    return best, grid


def mine_shortlists(index, emb_tr, Y_tr: sp.csr_matrix, K: int, cap: int = 0) -> sp.csr_matrix:
    """The leave-one-out shortlists of the training examples, whose labels they do not carry are
    their hard negatives (:meth:`xhyp.knn.rerank.LabelScorer.fit`).

    Args:
        index: a kNN index over ``emb_tr`` (:func:`xhyp.knn.index.make_index`).
        emb_tr: ``(N, n)`` training embeddings. Y_tr: ``(N, L)`` their labels.
        K: neighbours (``rerank_knn``); each example's own row is left out. cap: labels kept a row.

    Returns:
        ``(N, L)`` float32 CSR (:func:`xhyp.knn.rerank.shortlist`).
    """
    N = emb_tr.shape[0]
    D, I = index.search(emb_tr, min(K + 1, N))
    return shortlist(I, D, Y_tr, cap, self_ids=np.arange(N))


def fit_prediction(model, Xp: sp.csr_matrix, Y: sp.csr_matrix, tr_idx, va_idx, emb, cfg,
                   device=None) -> tuple[dict, object]:
    """After training: fit the shortlist scorers and choose the prediction settings.

    The scorers (``cfg.rerank == "linear"``) are trained on the training part ``tr_idx`` with
    leave-one-out shortlists of ``cfg.rerank_knn`` neighbours among the training part, at most
    ``cfg.rerank_shortlist`` labels each (:func:`mine_shortlists`), ``cfg.rerank_negatives``
    negatives a label and weights pruned below ``cfg.rerank_prune`` (:meth:`LabelScorer.fit`,
    ``cfg.threads`` threads). With a validation part, the vote ``k`` (``cfg.knn_grid``) and the
    weight (``cfg.rerank_weights``) are chosen on it by :func:`select_settings`, the validation
    queries searching the training part (as the per-epoch validation does); without one,
    ``k = cfg.knn`` and ``w =`` :data:`FALLBACK_WEIGHT` (0 without scorers).

    Args:
        model: the trained :class:`xhyp.embedding.model.HyperbolicXMC` (its geometry is used).
        Xp: ``(N, F)`` preprocessed features. Y: ``(N, L)`` labels (CSR, sorted indices).
        tr_idx, va_idx: sorted row ids of the training and validation parts.
        emb: ``(N, n)`` embeddings of all rows by the final model.
        cfg: the :class:`xhyp.config.TrainConfig` (``knn``, ``knn_grid``, ``weighting``, ``alpha``,
            ``rerank``, ``rerank_knn``, ``rerank_c``, ``rerank_weights``, ``rerank_shortlist``,
            ``rerank_negatives``, ``rerank_prune``, ``rerank_tol``, ``seed``, ``threads``).
        device: where the kNN searches run (``None``: the CPU).

    Returns:
        ``(settings, scorer)``: ``settings`` is stored as ``config.json["predict"]`` (``k``,
        ``rerank_weight``, ``rerank_knn``, ``rerank_shortlist``, ``reranker`` (file name or
        ``None``), the selection grid, the scorers' size and timings); ``scorer`` a
        :class:`LabelScorer` or ``None``.
    """
    import time

    import torch

    from ..knn.index import make_index

    t0 = time.time()
    k_grid = parse_grid(cfg.knn_grid, int, "knn_grid") or [cfg.knn]
    scorer = None
    w_grid = [0.0]
    K = max(k_grid)
    cap = int(cfg.rerank_shortlist)
    Y_tr = Y[tr_idx]
    index = make_index("exact", geometry=model.config.geometry, device=device).add(emb[tr_idx])
    out = {}
    if cfg.rerank == "linear" and len(tr_idx) > 1:
        K = max(K, cfg.rerank_knn)
        w_grid = parse_grid(cfg.rerank_weights, float, "rerank_weights") or [FALLBACK_WEIGHT]
        mined = mine_shortlists(index, emb[tr_idx], Y_tr, cfg.rerank_knn, cap)
        t1 = time.time()
        scorer = LabelScorer.fit(Xp[tr_idx], Y_tr, mined, C=cfg.rerank_c, seed=cfg.seed,
                                 threads=cfg.threads or torch.get_num_threads(), prune=cfg.rerank_prune,
                                 max_negatives=cfg.rerank_negatives, tol=cfg.rerank_tol)
        out.update(mine_seconds=round(t1 - t0, 3), scorer_nnz=int(scorer.coef.nnz),
                   shortlist_mean=round(mined.nnz / max(1, mined.shape[0]), 2))
        del mined
    out.update(k=int(cfg.knn if len(k_grid) > 1 else k_grid[0]), rerank_weight=FALLBACK_WEIGHT if scorer else 0.0,
               rerank_knn=int(cfg.rerank_knn), rerank_shortlist=cap,
               reranker=RERANK_FILE if scorer is not None else None, fit_seconds=round(time.time() - t0, 3))
    K = min(K, len(tr_idx))
    k_grid = [k for k in k_grid if k <= K] or [K]
    if len(va_idx) > 0 and len(tr_idx) > 0 and (len(k_grid) > 1 or len(w_grid) > 1):
        t1 = time.time()
        D, I = index.search(emb[va_idx], K)
        margins = sl = None
        if scorer is not None:
            sl = shortlist(I[:, :cfg.rerank_knn], D[:, :cfg.rerank_knn], Y_tr, cap)
            pattern = abs(sl)
            for k in k_grid:  # every label a (k, w) of the grid scores
                pattern = pattern + abs(top_votes(I[:, :k], D[:, :k], Y_tr, cap, cfg.weighting, cfg.alpha))
            pattern = pattern.tocsr()
            pattern.sort_indices()
            margins = sp.csr_matrix((scorer.margins(Xp[va_idx], pattern), pattern.indices, pattern.indptr),
                                    shape=pattern.shape)
        best, grid = select_settings(D, I, Y_tr, Y[va_idx], k_grid, w_grid, margins, cfg.weighting, cfg.alpha,
                                     shortlists=sl, cap=cap)
        out.update(k=best["k"], rerank_weight=best["weight"], selection=grid,
                   select_seconds=round(time.time() - t1, 3))
    return out, scorer
