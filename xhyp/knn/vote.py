"""Label voting: from the k nearest training examples of each query to top-K label scores.

Gerald & Baskiotis (CAp 2019), section 2.5: a query's labels are ranked by how many of its k
nearest training examples carry them; an ensemble of learners sums those votes (section 2.6).

The scipy code below is the reference implementation. :func:`vote` and :func:`vote_ensemble`
dispatch to the compiled kernel (:func:`xhyp.kernels.vote_topk`, C++/OpenMP) when it is available
(``backend="auto"``): the weights are still computed here with numpy, and the kernel repeats
scipy's arithmetic in the same order, so both backends return identical matrices (same entries,
same float32 values, tested in ``tests/test_kernels.py``).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from .config import WEIGHTINGS  # noqa: F401 (re-exported)
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
    """
    d = np.asarray(dist_qk, dtype=np.float64)
    d1 = d[:, :1] if d.shape[1] else d
    d1 = np.where(np.isfinite(d1), d1, 0.0)
    if weighting == "count":
        return np.where(np.isfinite(d), 1.0 + 1e-3 * np.exp(-(d - d1)), 0.0)
    if weighting == "distance":
        return np.exp(-alpha * (d - d1))  # exp(-inf) = 0 for missing neighbours
    raise ValueError(f"unknown weighting {weighting!r}; choose from {WEIGHTINGS}")


def vote_matrix(ids_qk, weights_qk, n_db: int) -> sp.csr_matrix:
    """Sparse ``(Q, n_db)`` matrix with the neighbour weights at the neighbour ids (``-1`` ids skipped)."""
    ids = np.asarray(ids_qk.numpy() if isinstance(ids_qk, torch.Tensor) else ids_qk, dtype=np.int64)
    w = np.asarray(weights_qk, dtype=np.float64)
    Q, k = ids.shape
    rows = np.repeat(np.arange(Q), k)
    keep = ids.ravel() >= 0
    return sp.csr_matrix((w.ravel()[keep], (rows[keep], ids.ravel()[keep])), shape=(Q, n_db))


_TOPK_BLOCK_ENTRIES = 1 << 22  # padded (rows x longest row) entries per block in top_k_rows


def top_k_rows(S: sp.csr_matrix, top_k: int) -> sp.csr_matrix:
    """Keep the ``top_k`` largest entries of each row of a CSR matrix (ties: lower column first).

    Args:
        S: ``(Q, L)`` CSR scores.
        top_k: entries kept per row.

    Returns:
        ``(Q, L)`` float32 CSR with sorted indices and at most ``top_k`` entries a row.
    """
    S = S.tocsr()
    S.sort_indices()
    indptr, indices, data = S.indptr, S.indices, S.data
    counts = np.diff(indptr)
    Q = S.shape[0]
    if counts.max(initial=0) <= top_k:
        out = S.astype(np.float32)
        out.eliminate_zeros()
        return out
    # pad rows into a dense (Q, maxlen) block and take a row-wise partial sort; blocks of rows
    # bound that block's memory (e.g. 100K queries x 15 members x 100 labels would need 1.2 GB)
    maxlen = counts.max()
    block = max(1, _TOPK_BLOCK_ENTRIES // int(maxlen))
    if Q > block:
        out = sp.vstack([top_k_rows(S[i:i + block], top_k) for i in range(0, Q, block)], format="csr")
        out.has_sorted_indices = True
        return out
    row = np.repeat(np.arange(Q), counts)
    pos = np.arange(len(indices)) - np.repeat(indptr[:-1], counts)
    vals = np.full((Q, maxlen), -np.inf)
    cols = np.full((Q, maxlen), np.iinfo(np.int64).max, dtype=np.int64)
    vals[row, pos] = data
    cols[row, pos] = indices
    # sort by (-value, column): lexsort keys are applied last-first
    order = np.lexsort((cols, -vals), axis=1)[:, :top_k]
    v = np.take_along_axis(vals, order, 1)
    c = np.take_along_axis(cols, order, 1)
    keep = np.isfinite(v)
    r = np.repeat(np.arange(Q), top_k).reshape(Q, top_k)
    out = sp.csr_matrix((v[keep].astype(np.float32), (r[keep], c[keep])), shape=S.shape)
    out.sort_indices()
    return out


def _use_kernel(backend: str) -> bool:
    if backend not in BACKENDS:
        raise ValueError(f"unknown backend {backend!r}; choose from {BACKENDS}")
    if backend == "scipy":
        return False
    from . import kernels

    if kernels.ext_available("cpu"):
        return True
    if backend == "kernel":
        raise RuntimeError(f"backend='kernel' but the compiled kernels are not available: {kernels.ext_error()}")
    return False


def _as_numpy(a, dtype):
    return np.asarray(a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else a, dtype=dtype)


def _kernel_vote(ids_list, weights_list, Y_list, top_k: int) -> sp.csr_matrix:
    """Run :func:`xhyp.kernels.vote_topk` on precomputed weights and build scipy's CSR result."""
    from . import kernels

    n_labels = Y_list[0].shape[1]
    indptr, indices = [], []
    for Y in Y_list:
        Y = Y.tocsr()
        indptr.append(torch.from_numpy(Y.indptr.astype(np.int64)))
        indices.append(torch.from_numpy(Y.indices.astype(np.int64)))
    ids = [torch.from_numpy(np.ascontiguousarray(_as_numpy(i, np.int64))) for i in ids_list]
    w = [torch.from_numpy(np.ascontiguousarray(x, dtype=np.float64)) for x in weights_list]
    labels, scores, n_scored = kernels.vote_topk(ids, w, indptr, indices, n_labels, top_k, "weight")
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
    return vote_ensemble([ids_qk], [dist_qk], Y_train, top_k, weighting, alpha, backend)


def vote_ensemble(ids_list, dist_list, Y_train, top_k: int = 100, weighting: str = "count",
                  alpha: float = 1.0, backend: str = "auto") -> sp.csr_matrix:
    """Sum the full votes of M learners, then keep the top ``top_k`` labels (section 2.6).

    Unlike :func:`aggregate` (which sums score matrices already cut to their top ``top_k``),
    every label voted by any member keeps its whole score until the final cut.

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
        raise ValueError("vote_ensemble() needs as many id arrays as distance arrays (at least one)")
    Ys = list(Y_train) if isinstance(Y_train, (list, tuple)) else [Y_train]
    if len(Ys) not in (1, len(ids_list)) or len({Y.shape[1] for Y in Ys}) != 1:
        raise ValueError("Y_train: one label matrix, or one per learner with the same number of labels")
    ws = [neighbour_weights(_as_numpy(d, np.float64), weighting, alpha) for d in dist_list]
    if _use_kernel(backend):
        return _kernel_vote(ids_list, ws, Ys, top_k)
    total = None
    for m, (ids, w) in enumerate(zip(ids_list, ws)):
        Y = Ys[0] if len(Ys) == 1 else Ys[m]
        Yb = Y.tocsr().astype(np.float64)
        Yb.data[:] = 1.0
        S = vote_matrix(ids, w, Y.shape[0]) @ Yb
        total = S if total is None else total + S
    return top_k_rows(total.tocsr(), top_k)


def aggregate(score_list, top_k: int = 100) -> sp.csr_matrix:
    """Sum the score matrices of ensemble members (Gerald & Baskiotis 2019: summed votes).

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
        raise ValueError("aggregate() needs at least one score matrix")
    return top_k_rows(total.tocsr(), top_k)
