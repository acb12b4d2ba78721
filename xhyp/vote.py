"""Label voting: from the k nearest training examples of each query to top-K label scores.

Gerald & Baskiotis (CAp 2019), section 2.5: a query's labels are ranked by how many of its k
nearest training examples carry them; an ensemble of learners sums those votes (section 2.6).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

WEIGHTINGS = ("count", "distance")


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
    # pad rows into a dense (Q, maxlen) block and take a row-wise partial sort
    maxlen = counts.max()
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


def vote(ids_qk, dist_qk, Y_train: sp.csr_matrix, top_k: int = 100,
         weighting: str = "count", alpha: float = 1.0) -> sp.csr_matrix:
    """Rank labels for each query by the (weighted) votes of its nearest training examples.

    ``score[q, l] = sum_{j in kNN(q)} w(q, j) * Y_train[j, l]``.

    Args:
        ids_qk: ``(Q, k)`` int64 neighbour ids into the rows of ``Y_train`` (``-1`` = none).
        dist_qk: ``(Q, k)`` float distances of those neighbours.
        Y_train: ``(N, L)`` CSR binary label matrix of the indexed training examples.
        top_k: labels kept per query.
        weighting: see :func:`neighbour_weights`.
        alpha: softmax scale of the ``"distance"`` weighting.

    Returns:
        ``(Q, L)`` float32 CSR score matrix with at most ``top_k`` entries per row.
    """
    d = dist_qk.numpy() if isinstance(dist_qk, torch.Tensor) else dist_qk
    A = vote_matrix(ids_qk, neighbour_weights(d, weighting, alpha), Y_train.shape[0])
    Yb = Y_train.tocsr().astype(np.float64)
    Yb.data[:] = 1.0
    return top_k_rows(A @ Yb, top_k)


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
