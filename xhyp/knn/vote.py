"""Label voting: from the k nearest training examples of each query to top-K label scores.

Gerald & Baskiotis (CAp 2019), section 2.5: a query's labels are ranked by how many of its k
nearest training examples carry them; an ensemble of learners sums those votes (section 2.6).

This module owns the vote's weights (:func:`neighbour_weights`: the only place they are
defined; the compiled kernel takes them precomputed) and its two sums:

* :func:`vote_members` (and :func:`vote` for one learner): the *full* votes of M learners summed,
  then cut to the top ``top_k`` labels;
* :func:`sum_top_scores`: the sum of score matrices that were already cut to their top labels,
  which is what an ensemble of saved learners does (:meth:`xhyp.prediction.ensemble.Ensemble.predict`,
  ``xhyp aggregate``); with member lists at least as long as the number of labels voted, the two
  are equal.

:func:`vote_members` runs the compiled kernel (:func:`xhyp.knn.kernels.vote_topk`, C++/OpenMP)
when it is available (``backend="auto"``), else the scipy reference
(:func:`xhyp.knn.reference.summed_votes`); the kernel repeats scipy's arithmetic in the same
order, so both backends return identical matrices (same entries, same float32 values, tested in
``tests/test_kernels.py``). Rankings follow :func:`xhyp.metrics.topk_from_scores`: score
descending, then the lower label id.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..config import WEIGHTINGS, check_choice  # (WEIGHTINGS re-exported)
from ..metrics import topk_from_scores
from . import extension, kernels
from .reference import summed_votes

BACKENDS = ("auto", "kernel", "scipy")


def neighbour_weights(dist_qk: np.ndarray, weighting: str = "count", alpha: float = 1.0) -> np.ndarray:
    """Weight of each neighbour's vote.

    * ``"count"``: 1 per neighbour, plus a tie-break of ``1e-3 * exp(-(d - d_1))`` (``d_1``: the
      nearest neighbour's distance) so that among labels with equal counts the one held by
      nearer neighbours ranks first (the count still decides).
    * ``"distance"``: ``exp(-alpha (d - d_1))``, the softmax weight of the training objective
      (pass the model's ``alpha``); shifting by ``d_1`` only rescales a query's scores.

    Args:
        dist_qk: ``(Q, k)`` float distances, ascending (``inf`` for missing neighbours).
        weighting: one of :data:`WEIGHTINGS`.
        alpha: softmax scale for ``"distance"``.

    Returns:
        ``(Q, k)`` float64 weights (0 for missing neighbours).

    Raises:
        ValueError: unknown weighting.

    Source: Gerald & Baskiotis (CAp 2019), section 2.5 (count vote); the distance weights are the
    softmax of the training objective (section 2.3).
    """
    check_choice("weighting", weighting, WEIGHTINGS)
    d = np.asarray(dist_qk, dtype=np.float64)
    d1 = d[:, :1] if d.shape[1] else d
    d1 = np.where(np.isfinite(d1), d1, 0.0)
    if weighting == "count":
        return np.where(np.isfinite(d), 1.0 + 1e-3 * np.exp(-(d - d1)), 0.0)
    return np.exp(-alpha * (d - d1))  # "distance"; exp(-inf) = 0 for missing neighbours


def top_k_rows(S: sp.csr_matrix, top_k: int) -> sp.csr_matrix:
    """Keep the ``top_k`` largest entries of each row of a CSR matrix (ties: lower column first,
    the ranking of :func:`xhyp.metrics.topk_from_scores`).

    Args:
        S: ``(Q, L)`` CSR scores.
        top_k: entries kept per row.

    Returns:
        ``(Q, L)`` float32 CSR with sorted indices and at most ``top_k`` entries a row (rows
        with no more than ``top_k`` entries are kept whole, explicit zeros dropped).
    """
    S = S.tocsr()
    S.sort_indices()
    if np.diff(S.indptr).max(initial=0) <= top_k:
        out = S.astype(np.float32)
        out.eliminate_zeros()
        return out
    ids, vals = topk_from_scores(S, top_k, return_scores=True)
    keep = ids >= 0
    rows = np.repeat(np.arange(S.shape[0]), top_k).reshape(ids.shape)
    out = sp.csr_matrix((vals[keep].astype(np.float32), (rows[keep], ids[keep])), shape=S.shape)
    out.sort_indices()
    return out


def _use_kernel(backend: str) -> bool:
    check_choice("backend", backend, BACKENDS)
    if backend == "scipy":
        return False
    if extension.ext_available("cpu"):
        return True
    if backend == "kernel":
        raise RuntimeError(f"backend='kernel' but the compiled kernels are not available: {extension.ext_error()}")
    return False


def _as_numpy(a, dtype):
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=dtype)


def _kernel_vote(ids_list, weights_list, Y_list, top_k: int) -> sp.csr_matrix:
    """Run :func:`xhyp.knn.kernels.vote_topk` on precomputed weights and build scipy's CSR result."""
    n_labels = Y_list[0].shape[1]
    indptr, indices = [], []
    for Y in Y_list:
        Y = Y.tocsr()
        indptr.append(torch.from_numpy(Y.indptr.astype(np.int64)))
        indices.append(torch.from_numpy(Y.indices.astype(np.int64)))
    ids = [torch.from_numpy(np.ascontiguousarray(_as_numpy(i, np.int64))) for i in ids_list]
    w = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)) for x in weights_list]
    labels, scores, n_scored = kernels.vote_topk(ids, w, indptr, indices, n_labels, top_k)
    labels, scores, n_scored = labels.numpy(), scores.numpy(), n_scored.numpy()
    Q = labels.shape[0]
    keep = labels >= 0
    if n_scored.max(initial=0) <= top_k:
        keep &= scores != 0  # top_k_rows' first branch: astype(float32) + eliminate_zeros
    # CSR with sorted column indices, built directly (rows of the kernel output are by score)
    order = np.argsort(np.where(keep, labels, np.iinfo(np.int64).max), axis=1, kind="stable")
    keep = np.take_along_axis(keep, order, 1)
    cols = np.take_along_axis(labels, order, 1)[keep].astype(np.int32)
    vals = np.take_along_axis(scores, order, 1)[keep]
    indptr = np.zeros(Q + 1, dtype=np.int32)
    np.cumsum(keep.sum(1), out=indptr[1:])
    out = sp.csr_matrix((vals.astype(np.float32), cols, indptr), shape=(Q, n_labels))
    out.has_sorted_indices = True
    return out


def vote(ids_qk, dist_qk, Y_train: sp.csr_matrix, top_k: int = 100,
         weighting: str = "count", alpha: float = 1.0, backend: str = "auto") -> sp.csr_matrix:
    """Rank labels for each query by the (weighted) votes of its nearest training examples.

    ``score[q, l] = sum_{j in kNN(q)} w(q, j) * Y_train[j, l]``.

    Args:
        ids_qk: ``(Q, k)`` int64 neighbour ids into the rows of ``Y_train`` (``-1`` = none).
        dist_qk: ``(Q, k)`` float distances of those neighbours.
        Y_train: ``(N, L)`` CSR binary label matrix of the indexed training examples.
        top_k: labels kept per query.
        weighting: see :func:`neighbour_weights`.
        alpha: softmax scale of the ``"distance"`` weighting.
        backend: ``"auto"`` (the compiled kernel when available, else scipy), ``"kernel"`` or
            ``"scipy"``; all give the same result.

    Returns:
        ``(Q, L)`` float32 CSR score matrix with at most ``top_k`` entries per row.
    """
    return vote_members([ids_qk], [dist_qk], Y_train, top_k, weighting, alpha, backend)


def vote_members(ids_list, dist_list, Y_train, top_k: int = 100, weighting: str = "count",
                 alpha: float = 1.0, backend: str = "auto") -> sp.csr_matrix:
    """Sum the full votes of M learners, then keep the top ``top_k`` labels (section 2.6).

    Unlike :func:`sum_top_scores` (which sums score matrices already cut to their top labels, as
    an ensemble of saved learners does), every label voted by any member keeps its whole score
    until the final cut.

    Args:
        ids_list: M ``(Q, k_m)`` neighbour id arrays, one per learner (same queries).
        dist_list: M ``(Q, k_m)`` distance arrays.
        Y_train: one ``(N, L)`` CSR label matrix shared by all learners, or a list of M (same
            ``L``; row ``j`` of matrix ``m`` belongs to learner ``m``'s database point ``j``).
        top_k, weighting, alpha, backend: see :func:`vote`.

    Returns:
        ``(Q, L)`` float32 CSR.

    Raises:
        ValueError: empty or mismatching lists.
    """
    ids_list, dist_list = list(ids_list), list(dist_list)
    if not ids_list or len(ids_list) != len(dist_list):
        raise ValueError("vote_members() needs as many id arrays as distance arrays (at least one)")
    Ys = list(Y_train) if isinstance(Y_train, (list, tuple)) else [Y_train]
    if len(Ys) not in (1, len(ids_list)) or len({Y.shape[1] for Y in Ys}) != 1:
        raise ValueError("Y_train: one label matrix, or one per learner with the same number of labels")
    ws = [neighbour_weights(_as_numpy(d, np.float64), weighting, alpha) for d in dist_list]
    if _use_kernel(backend):
        return _kernel_vote(ids_list, ws, Ys, top_k)
    return top_k_rows(summed_votes([_as_numpy(i, np.int64) for i in ids_list], ws, Ys), top_k)


def sum_top_scores(score_list, top_k: int = 100) -> sp.csr_matrix:
    """Sum score matrices that were each cut to their top labels (the members' predictions of an
    ensemble, Gerald & Baskiotis 2019, section 2.6), then keep the top ``top_k`` labels.

    A label that a member cut away adds nothing for that member; :func:`vote_members` sums the
    full votes instead.

    Args:
        score_list: iterable of ``(Q, L)`` CSR score matrices of the same shape.
        top_k: labels kept per query after summing.

    Returns:
        ``(Q, L)`` float32 CSR.

    Raises:
        ValueError: empty list or mismatching shapes.
    """
    total = None
    for S in score_list:
        if total is not None and S.shape != total.shape:
            raise ValueError(f"score matrices differ in shape: {S.shape} vs {total.shape}")
        total = S.astype(np.float64) if total is None else total + S
    if total is None:
        raise ValueError("sum_top_scores() needs at least one score matrix")
    return top_k_rows(total.tocsr(), top_k)
