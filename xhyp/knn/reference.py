"""Float64 references of the kNN and voting operators (:mod:`xhyp.knn.kernels`), for tests.

Each reference computes the whole ``(Q, M)`` distance matrix in float64 with
:func:`xhyp.embedding.manifold.dist64` (direct coordinate differences, no matrix-product
expansion) and ranks it with :func:`sorted_topk`, the one tie rule of the kNN results:
distance ascending, then the lower id; padding ``inf`` / ``-1``. Slow and memory-hungry (they
materialise the full matrices), meant for tests; the pure-torch fallbacks of the wrappers reuse
:func:`ref_ivf_knn` and :func:`sorted_topk`.

The vote's references: :func:`summed_votes`, the scipy sum of the neighbours' weighted label
rows (the arithmetic the compiled ``vote_topk`` repeats operation for operation), and
:func:`ref_vote_topk`, an independent dense float64 version of the operator. The weights
themselves are defined once, in :func:`xhyp.knn.vote.neighbour_weights`.

Conventions: points are rows, ``(Q, n)`` queries and ``(M, n)`` database; ``geometry`` is one of
:data:`xhyp.embedding.manifold.GEOMETRIES`.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from ..embedding import manifold


def pad_neighbours(D: torch.Tensor, I: torch.Tensor, k: int):
    """``(D, I)`` of shape ``(Q, k' < k)`` padded to ``(Q, k)`` with ``inf`` / ``-1`` (unchanged
    when ``k' >= k``)."""
    if D.shape[1] >= k:
        return D, I
    pad = k - D.shape[1]
    D = torch.cat([D, torch.full((D.shape[0], pad), float("inf"), dtype=D.dtype, device=D.device)], 1)
    I = torch.cat([I, torch.full((I.shape[0], pad), -1, dtype=torch.long, device=I.device)], 1)
    return D, I




def ref_pairwise_dist(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """float64 reference of :func:`xhyp.knn.kernels.pairwise_dist`: direct differences, no GEMM
    expansion (:func:`xhyp.embedding.manifold.dist64` of every pair).

    Args:
        x: ``(Q, n)``; y: ``(M, n)``; any float dtype (converted to float64).

    Returns:
        ``(Q, M)`` float64 distances.

    Raises:
        ValueError: an unknown geometry.
    """
    return manifold.dist64(x[:, None, :], y[None, :, :], geometry)


def sorted_topk(d: torch.Tensor, ids: torch.Tensor, k: int):
    """Top-``k`` of each row of ``d`` by (distance, id): the tie rule of every kNN result.

    Args:
        d: ``(Q, C)`` float distances of ``C`` candidates (``inf``: no candidate).
        ids: ``(1, C)`` or ``(Q, C)`` int64 ids of the candidates (the tie-break key).
        k: neighbours kept.

    Returns:
        ``(D, I)``: ``(Q, k)`` distances ascending (dtype of ``d``) and int64 ids; ``inf``
        entries and missing columns become ``inf`` / ``-1`` padding.
    """
    order = torch.argsort(ids.expand_as(d), dim=1, stable=True)
    d1 = torch.gather(d, 1, order)
    i1 = torch.gather(ids.expand_as(d), 1, order)
    order2 = torch.argsort(d1, dim=1, stable=True)[:, :k]
    D = torch.gather(d1, 1, order2)
    I = torch.gather(i1, 1, order2)
    I = torch.where(torch.isinf(D), torch.full_like(I, -1), I)
    return pad_neighbours(D, I, k)


def ref_knn(q: torch.Tensor, db: torch.Tensor, k: int, geometry: str = "poincare"):
    """float64 reference of :func:`xhyp.knn.kernels.knn` (full distance matrix, stable sort).

    Returns:
        ``(D, I)``: ``(Q, k)`` float64 distances, ``(Q, k)`` int64 ids (ties: lower id first).
    """
    d = ref_pairwise_dist(q, db, geometry)
    return sorted_topk(d, torch.arange(db.shape[0])[None, :], k)


def ref_clustered_knn(q, db_sorted, ids, offsets, centroids, k: int, nprobe: int, geometry: str = "poincare"):
    """float64 reference of :func:`xhyp.knn.kernels.clustered_knn`: exact search restricted to the probed clusters.

    Returns:
        ``(D, I)`` as :func:`ref_knn`, ``I`` in original ids.
    """
    Q = q.shape[0]
    C = centroids.shape[0]
    cd = ref_pairwise_dist(q, centroids, geometry)
    probe = torch.argsort(cd, dim=1, stable=True)[:, :min(nprobe, C)]
    cluster_of_row = torch.repeat_interleave(torch.arange(C), torch.diff(offsets.cpu()))
    allowed = torch.zeros(Q, C, dtype=torch.bool)
    allowed.scatter_(1, probe, True)
    d = ref_pairwise_dist(q, db_sorted, geometry)
    d = torch.where(allowed[:, cluster_of_row], d, torch.full_like(d, float("inf")))
    return sorted_topk(d, ids.cpu()[None, :], k)


def ref_ivf_knn(q, db_sorted, ids, offsets, probes, k: int, geometry: str = "poincare"):
    """float64 reference of :func:`xhyp.knn.kernels.ivf_knn`: exact search restricted to each query's probed clusters.

    Args:
        probes: ``(Q, P)`` int64 cluster numbers (``-1``: none; repeats allowed).

    Returns:
        ``(D, I)`` as :func:`ref_knn`, ``I`` in original ids (ties: lower original id).
    """
    Q, C = q.shape[0], offsets.shape[0] - 1
    cluster_of_row = torch.repeat_interleave(torch.arange(C), torch.diff(offsets.cpu()))
    allowed = torch.zeros(Q, C + 1, dtype=torch.bool)
    allowed.scatter_(1, torch.where(probes < 0, torch.full_like(probes, C), probes).cpu(), True)
    d = ref_pairwise_dist(q, db_sorted, geometry)
    d = torch.where(allowed[:, cluster_of_row], d, torch.full_like(d, float("inf")))
    return sorted_topk(d, ids.cpu()[None, :], k)



def member_lists(ids, weights, indptr, indices):
    """The arguments of ``vote_topk`` as four lists of contiguous tensors (one member: lists of one).

    Returns:
        ``(ids, weights, indptr, indices)``: int64, float32/float64, int64, int64 tensors.

    Raises:
        ValueError: lists of different lengths, or label matrices neither shared nor one per member.
    """
    as_list = (lambda v: list(v) if isinstance(v, (list, tuple)) else [v])
    ids_l, d_l, ip_l, ix_l = as_list(ids), as_list(weights), as_list(indptr), as_list(indices)
    if len(ids_l) != len(d_l) or not ids_l:
        raise ValueError("ids and weights must be lists of the same (non-zero) length")
    if len(ip_l) != len(ix_l) or len(ip_l) not in (1, len(ids_l)):
        raise ValueError("indptr/indices: one label matrix per member, or one shared by all")
    conv = (lambda t, dt: torch.as_tensor(np.asarray(t) if not isinstance(t, torch.Tensor) else t).to(dt))
    ids_l = [conv(t, torch.long).contiguous() for t in ids_l]
    d_l = [torch.as_tensor(t).contiguous() for t in d_l]
    d_l = [t if t.dtype in (torch.float32, torch.float64) else t.double() for t in d_l]
    ip_l = [conv(t, torch.long).contiguous() for t in ip_l]
    ix_l = [conv(t, torch.long).contiguous() for t in ix_l]
    return ids_l, d_l, ip_l, ix_l


def vote_matrix(ids_qk, weights_qk, n_db: int) -> sp.csr_matrix:
    """Sparse ``(Q, n_db)`` float64 matrix with the neighbour weights at the neighbour ids
    (``-1`` ids skipped; the weights of a repeated id are summed).

    Args:
        ids_qk: ``(Q, k)`` int64 neighbour ids (numpy or torch). weights_qk: ``(Q, k)`` weights.
        n_db: number of database rows.
    """
    ids = np.asarray(ids_qk.numpy() if isinstance(ids_qk, torch.Tensor) else ids_qk, dtype=np.int64)
    w = np.asarray(weights_qk, dtype=np.float64)
    Q, k = ids.shape
    rows = np.repeat(np.arange(Q), k)
    keep = ids.ravel() >= 0
    return sp.csr_matrix((w.ravel()[keep], (rows[keep], ids.ravel()[keep])), shape=(Q, n_db))


def summed_votes(ids_list, weights_list, Y_list) -> sp.csr_matrix:
    """The scipy reference of the vote: ``S[q, l] = sum_m sum_j w_m(q, j) Y_m[ids_m(q, j), l]``.

    Gerald & Baskiotis (CAp 2019), sections 2.5-2.6. Per member, the weights of repeated
    neighbour ids are summed first (:func:`vote_matrix`), then multiplied by the binarised label
    matrix (scipy's CSR product order: ascending neighbour id); members are added in order. The
    compiled ``vote_topk`` repeats this arithmetic, so its scores are bit-identical.

    Args:
        ids_list: M ``(Q, k_m)`` int64 neighbour ids. weights_list: M ``(Q, k_m)`` weights.
        Y_list: one ``(N, L)`` CSR label matrix shared by every member, or M of them.

    Returns:
        ``(Q, L)`` float64 CSR of the full summed votes (zero sums not stored).
    """
    total = None
    for m, (ids, w) in enumerate(zip(ids_list, weights_list)):
        Y = Y_list[0] if len(Y_list) == 1 else Y_list[m]
        Yb = Y.tocsr().astype(np.float64)
        Yb.data[:] = 1.0
        S = vote_matrix(ids, w, Y.shape[0]) @ Yb
        total = S if total is None else total + S
    return total.tocsr()


def ref_vote_topk(ids, weights, indptr, indices, n_labels: int, top_k: int):
    """float64 dense reference of :func:`xhyp.knn.kernels.vote_topk`.

    Args:
        ids, weights, indptr, indices, n_labels, top_k: see :func:`xhyp.knn.kernels.vote_topk`.

    Returns:
        ``(labels, scores, n_scored)``: ``(Q, top_k)`` int64 (``-1`` pad), ``(Q, top_k)`` float64
        (0 pad), ``(Q,)`` int64.
    """
    ids_l, w_l, ip_l, ix_l = member_lists(ids, weights, indptr, indices)
    total = None
    for m, (I, W) in enumerate(zip(ids_l, w_l)):
        ip, ix = (ip_l[0], ix_l[0]) if len(ip_l) == 1 else (ip_l[m], ix_l[m])
        N = ip.shape[0] - 1
        Y = torch.zeros(N, n_labels, dtype=torch.float64)
        rows = torch.repeat_interleave(torch.arange(N), torch.diff(ip))
        Y.index_put_((rows, ix), torch.ones(ix.shape[0], dtype=torch.float64), accumulate=True)
        A = torch.zeros(I.shape[0], N, dtype=torch.float64)
        keep = I >= 0
        r = torch.arange(I.shape[0])[:, None].expand_as(I)
        A.index_put_((r[keep], I[keep]), W.double()[keep], accumulate=True)
        S = A @ Y
        total = S if total is None else total + S
    order = torch.argsort(-total, dim=1, stable=True)[:, :top_k]
    scores = torch.gather(total, 1, order)
    labels = torch.where(scores != 0, order, torch.full_like(order, -1))
    scores = torch.where(scores != 0, scores, torch.zeros_like(scores))
    if labels.shape[1] < top_k:
        p = top_k - labels.shape[1]
        labels = torch.cat([labels, torch.full((labels.shape[0], p), -1, dtype=labels.dtype)], 1)
        scores = torch.cat([scores, torch.zeros(scores.shape[0], p, dtype=scores.dtype)], 1)
    return labels, scores, (total != 0).sum(1)
