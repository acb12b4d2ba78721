"""The compiled kNN and voting operators: Python wrappers with their pure-torch fallbacks.

Each wrapper checks its inputs, then calls ``torch.ops.xhyp_ext.*`` (C++/OpenMP on the CPU, CUDA
on a GPU; loaded by :mod:`xhyp.knn.extension`) or, when the extension is missing, was built
without CUDA for a CUDA input, or gets inputs it does not handle (float64: the pure-torch path
keeps the precision), its pure-torch fallback. Every operator has a float64 reference in
:mod:`xhyp.knn.reference`, against which the tests check both paths.

Conventions: points are rows, ``(Q, n)`` queries and ``(M, n)`` database; ``geometry`` is
``"poincare"`` (the open unit ball, curvature -1) or ``"euclidean"``; kNN results are
``(D, I)``, ``(Q, k)`` float32 distances ascending and ``(Q, k)`` int64 row ids, ties broken by
the lower id (:func:`xhyp.knn.reference.sorted_topk`), padded with ``inf`` / ``-1`` when fewer
than ``k`` points are searched.

Numerics (as in :mod:`xhyp.embedding.manifold`): ``d(x, y) = 2 asinh(sqrt(s))``,
``s = |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))``, ``1 - |x|^2 = (1 - |x|)(1 + |x|)``; distances are
finite for norms up to the max-norm guard ``1 - 1e-5`` (and large but finite beyond).
"""
from __future__ import annotations

import numpy as np
import torch

from ..embedding import manifold
from . import extension as ext
from .reference import member_lists, pad_neighbours, ref_ivf_knn, ref_pairwise_dist, sorted_topk, summed_votes

CUDA_MAX_K = 128
"""Largest ``k`` of the CUDA kNN kernels (per-thread lists); larger ``k`` uses the torch path."""


def _euclidean(geometry: str) -> bool:
    return manifold.check_geometry(geometry) == "euclidean"


def _check_points(x: torch.Tensor, name: str) -> None:
    if x.dim() != 2:
        raise ValueError(f"{name} must be 2-D (rows, dim), got shape {tuple(x.shape)}")


# ------------------------------------------------------------------------------------------------
# pure-torch fallbacks (float32 or the input dtype)


def torch_knn(q: torch.Tensor, db: torch.Tensor, k: int, geometry: str = "poincare",
              query_batch: int = 1024, db_batch: int = 65536):
    """Pure-torch exact kNN (the original ``ExactIndex`` algorithm), any dtype/device.

    Distances of a ``(query_batch x db_batch)`` block come from one GEMM
    (:func:`xhyp.embedding.manifold.pairwise_dist`), a running top-``min(M, 2k)`` is kept per query and the
    shortlist is re-scored with the exact :func:`xhyp.embedding.manifold.dist`. Near the boundary the GEMM's
    cancellation can push true neighbours out of the shortlist (see :func:`knn` for a kernel
    that cannot).

    Returns:
        ``(D, I)`` on the device of ``db``.
    """
    from ..embedding import manifold

    eucl = _euclidean(geometry)
    M = db.shape[0]
    q = q.to(db.device, db.dtype)
    if M == 0:
        return pad_neighbours(torch.empty(q.shape[0], 0, dtype=db.dtype, device=db.device),
                    torch.empty(q.shape[0], 0, dtype=torch.long, device=db.device), k)
    kk = min(M, 2 * k)
    Ds, Is = [], []
    for qs in range(0, q.shape[0], query_batch):
        qc = q[qs:qs + query_batch]
        best_d = torch.empty(qc.shape[0], 0, dtype=db.dtype, device=db.device)
        best_i = torch.empty(qc.shape[0], 0, dtype=torch.long, device=db.device)
        for ds in range(0, M, db_batch):
            chunk = db[ds:ds + db_batch]
            dd = manifold.pairwise_distance(qc, chunk, geometry)
            v, i = torch.topk(dd, min(kk, dd.shape[1]), dim=1, largest=False)
            best_d = torch.cat([best_d, v], 1)
            best_i = torch.cat([best_i, i + ds], 1)
            if best_d.shape[1] > kk:
                best_d, sel = torch.topk(best_d, kk, dim=1, largest=False)
                best_i = torch.gather(best_i, 1, sel)
        cand = db[best_i]
        exact = manifold.distance(qc[:, None, :], cand, geometry)
        v, sel = torch.topk(exact, min(k, exact.shape[1]), dim=1, largest=False)
        Ds.append(v)
        Is.append(torch.gather(best_i, 1, sel))
    D = torch.cat(Ds) if Ds else torch.empty(0, min(k, M), dtype=db.dtype, device=db.device)
    I = torch.cat(Is) if Is else torch.empty(0, min(k, M), dtype=torch.long, device=db.device)
    return pad_neighbours(D, I, k)


def _torch_clustered_knn(q, db_sorted, ids, offsets, centroids, k, nprobe, geometry):
    Q, C = q.shape[0], centroids.shape[0]
    dev = db_sorted.device
    P = max(1, min(nprobe, C))
    Dall = torch.full((Q, P * k), float("inf"), dtype=db_sorted.dtype, device=dev)
    Iall = torch.full((Q, P * k), -1, dtype=torch.long, device=dev)
    if C == 0 or Q == 0:
        return pad_neighbours(Dall[:, :k], Iall[:, :k], k)
    _, probe = torch_knn(q, centroids, P, geometry)
    off = offsets.tolist()
    for c in range(C):
        a, b = off[c], off[c + 1]
        hit = (probe == c).nonzero()
        if a == b or hit.shape[0] == 0:
            continue
        qi, slot = hit[:, 0], hit[:, 1]
        D, I = torch_knn(q[qi], db_sorted[a:b], k, geometry)
        I = torch.where(I >= 0, ids[(I + a).clamp_min(0)], I)
        cols = slot[:, None] * k + torch.arange(k, device=dev)[None, :]
        Dall[qi[:, None], cols] = D.to(Dall.dtype)
        Iall[qi[:, None], cols] = I
    Iall_key = torch.where(Iall >= 0, Iall, torch.full_like(Iall, torch.iinfo(torch.long).max))
    D, I = sorted_topk(Dall, Iall_key, k)
    return D, torch.where(torch.isinf(D), torch.full_like(I, -1), I)


# ------------------------------------------------------------------------------------------------
# wrappers


def pairwise_dist(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """All-pairs distance matrix, numerically stable near the boundary.

    Unlike :func:`xhyp.embedding.manifold.pairwise_dist` (one GEMM, cancels for close pairs), every pair is
    computed from its coordinate differences: ``s = |x - y|^2 c(x) c(y)`` with
    ``c(x) = 1 / ((1 - |x|)(1 + |x|))`` in double precision, ``d = 2 asinh(sqrt(s))``.

    Args:
        x: ``(Q, n)`` float32 points (CPU or CUDA), in the ball for ``"poincare"``.
        y: ``(M, n)`` float32 points, same device.
        geometry: ``"poincare"`` or ``"euclidean"``.

    Returns:
        ``(Q, M)`` float32 distances (finite for norms up to ``1 - 1e-5``).

    Example:
        >>> x = torch.tensor([[0.0, 0.0], [0.5, 0.0]])
        >>> pairwise_dist(x, x)[0, 1].item()  # 2 artanh(0.5)
        1.0986123...

    Raises:
        ValueError: an unknown geometry, inputs that are not 2-D, or different dimensions.

    Source: Nickel & Kiela, NIPS 2017, eq. 1; kernel ``cpp_ext/cpu/knn_cpu.cpp``
    (``pairwise_dist``), ``cpp_ext/cuda/kernels.cu``.
    """
    eucl = _euclidean(geometry)
    _check_points(x, "x")
    _check_points(y, "y")
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y differ in dimension: {x.shape[1]} vs {y.shape[1]}")
    if ext.use_ext("pairwise_dist", x, y):
        return torch.ops.xhyp_ext.pairwise_dist(x.contiguous(), y.contiguous(), eucl)
    out = torch.empty(x.shape[0], y.shape[0], dtype=x.dtype, device=x.device)
    step = max(1, 2 ** 24 // max(1, y.shape[0] * max(1, x.shape[1])))
    for s in range(0, x.shape[0], step):
        out[s:s + step] = ref_pairwise_dist(x[s:s + step], y, geometry).to(x.dtype)
    return out


def knn_prepare(db: torch.Tensor, geometry: str = "poincare") -> torch.Tensor | None:
    """Per-database precomputation for :func:`knn` / :func:`clustered_knn` (compute it once).

    Args:
        db: ``(M, n)`` float32 database.

    Returns:
        ``(M, n + 2)`` float32 augmented rows ``[-2 c y, (1 - 2g) c, (1 - 2g) c |y|^2]``, or
        ``None`` when the extension is not used for this input (the fallback needs nothing).
    """
    eucl = _euclidean(geometry)
    _check_points(db, "db")
    if ext.use_ext("knn", db):
        return torch.ops.xhyp_ext.knn_prepare(db.contiguous(), eucl)
    return None


def knn(q: torch.Tensor, db: torch.Tensor, k: int, geometry: str = "poincare",
        db_aug: torch.Tensor | None = None):
    """Exact k nearest neighbours, fused: no ``Q x M`` distance matrix is materialised.

    CPU: blocks of 64 queries x 4096 database rows go through one small GEMM giving a rigorous
    float32 lower bound of ``t = |x - y|^2 / (1 - |y|^2)`` (monotone in the distance); a
    vectorised pass keeps only rows whose bound beats the query's running top-k (a heap), and
    those get their exact ``t`` in double precision. So the result is the exact top-k of the
    float32 inputs even next to the boundary, where a GEMM alone cannot separate neighbours.
    CUDA: one block per query, direct differences, per-thread sorted lists merged in the block
    (``k <= CUDA_MAX_K``; larger ``k`` runs the pure-torch path).

    Args:
        q: ``(Q, n)`` float32 queries.
        db: ``(M, n)`` float32 database, same device.
        k: neighbours per query (``>= 1``; ``k > M`` pads with ``inf`` / ``-1``).
        geometry: ``"poincare"`` or ``"euclidean"``.
        db_aug: the output of :func:`knn_prepare` for ``db`` (recomputed when ``None``).

    Returns:
        ``(D, I)``: ``(Q, k)`` float32 distances ascending, ``(Q, k)`` int64 ids (ties: lower id).

    Example:
        >>> db = torch.tensor([[0.0, 0.0], [0.5, 0.0], [0.0, 0.9]])
        >>> knn(torch.tensor([[0.4, 0.0]]), db, 2)[1].tolist()
        [[1, 0]]

    Raises:
        ValueError: an unknown geometry, inputs that are not 2-D, ``k < 1`` or different dimensions.
        RuntimeError: (extension) a ``db_aug`` that is not :func:`knn_prepare` of ``db``.

    Source: kernel ``cpp_ext/cpu/knn_cpu.cpp`` (``knn``), ``cpp_ext/cuda/kernels.cu``; fallback
    :func:`torch_knn`; reference :func:`ref_knn`.
    """
    eucl = _euclidean(geometry)
    _check_points(q, "q")
    _check_points(db, "db")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    if q.shape[1] != db.shape[1]:
        raise ValueError(f"query dimension {q.shape[1]} != database dimension {db.shape[1]}")
    if (not db.is_cuda or k <= CUDA_MAX_K) and ext.use_ext("knn", q, db):
        aug = db_aug if db_aug is not None else torch.empty(0, device=db.device)
        return torch.ops.xhyp_ext.knn(q.contiguous(), db.contiguous(), aug, int(k), eucl)
    return torch_knn(q, db, k, geometry)


def clustered_knn(q: torch.Tensor, db_sorted: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor,
                  centroids: torch.Tensor, k: int, nprobe: int, geometry: str = "poincare",
                  db_aug: torch.Tensor | None = None):
    """Approximate kNN: exact search inside the ``nprobe`` clusters nearest to each query.

    Gerald & Baskiotis (CAp 2019), section 2.6. Build the inputs with
    :class:`xhyp.knn.index.ClusteredIndex` (random training points as centroids, every point in the
    cluster of its nearest centroid). Empty clusters are skipped; when the probed clusters hold
    fewer than ``k`` points the rows are padded with ``inf`` / ``-1``.

    Args:
        q: ``(Q, n)`` float32 queries.
        db_sorted: ``(M, n)`` float32 database rows sorted by cluster.
        ids: ``(M,)`` int64 original id of each sorted row (returned in ``I``).
        offsets: ``(C + 1,)`` int64, cluster ``c`` is rows ``offsets[c]:offsets[c + 1]``.
        centroids: ``(C, n)`` float32.
        k: neighbours per query; nprobe: clusters searched per query (``>= 1``, capped at ``C``).
        geometry: ``"poincare"`` or ``"euclidean"``.
        db_aug: :func:`knn_prepare` of ``db_sorted`` (recomputed when ``None``).

    Returns:
        ``(D, I)``: ``(Q, k)`` float32 distances ascending, ``(Q, k)`` int64 original ids.

    Example:
        >>> db = torch.tensor([[0.0, 0.1], [0.0, 0.2], [0.5, 0.0], [0.6, 0.0]])
        >>> ids, off = torch.arange(4), torch.tensor([0, 2, 4])
        >>> clustered_knn(torch.tensor([[0.55, 0.0]]), db, ids, off, db[[0, 2]], 3, 1)[1].tolist()
        [[2, 3, -1]]

    Raises:
        ValueError: an unknown geometry, inputs that are not 2-D, ``k`` or ``nprobe`` below 1,
            different dimensions, or ``offsets`` of the wrong length.
        RuntimeError: (extension) offsets that do not start at 0, end at ``M`` and never decrease.

    Source: kernel ``cpp_ext/cpu/knn_cpu.cpp`` (``clustered_knn``), ``cpp_ext/cuda/kernels.cu``;
    reference :func:`ref_clustered_knn`.
    """
    eucl = _euclidean(geometry)
    for t, name in ((q, "q"), (db_sorted, "db_sorted"), (centroids, "centroids")):
        _check_points(t, name)
    if k < 1 or nprobe < 1:
        raise ValueError(f"k and nprobe must be >= 1, got k={k}, nprobe={nprobe}")
    if not (q.shape[1] == db_sorted.shape[1] == centroids.shape[1]):
        raise ValueError("q, db_sorted and centroids must have the same dimension")
    if offsets.shape[0] != centroids.shape[0] + 1:
        raise ValueError(f"offsets must have n_clusters + 1 = {centroids.shape[0] + 1} entries")
    if (not db_sorted.is_cuda or k <= CUDA_MAX_K) and ext.use_ext("clustered_knn", q, db_sorted, centroids):
        dev = db_sorted.device
        aug = db_aug if db_aug is not None else torch.empty(0, device=dev)
        return torch.ops.xhyp_ext.clustered_knn(
            q.contiguous(), db_sorted.contiguous(), aug, ids.to(dev, torch.long).contiguous(),
            offsets.to(dev, torch.long).contiguous(), centroids.contiguous(), int(k), int(nprobe), eucl)
    return _torch_clustered_knn(q, db_sorted, ids.to(db_sorted.device), offsets, centroids, k, nprobe, geometry)


def vote_topk(ids, weights, indptr, indices, n_labels: int, top_k: int):
    """Top-``top_k`` labels per query by the weighted votes of its neighbours, over M learners.

    ``score[q, l] = sum_m sum_{j in kNN_m(q)} w_m(q, j) Y_m[j, l]`` with precomputed weights
    (:func:`xhyp.knn.vote.neighbour_weights`, the one definition of the vote weights). Ranking:
    score descending, then label id ascending (the ranking of :mod:`xhyp.metrics`); labels with
    a zero score are not returned. The CPU kernel reproduces the arithmetic of
    :func:`xhyp.knn.reference.summed_votes` exactly (same summation order).

    Args:
        ids: ``(Q, k)`` int64 neighbour ids (``-1`` = none), or a list of M such tensors (one per
            ensemble member, ``k`` may differ).
        weights: ``(Q, k)`` float32/float64 weights of those neighbours (0 for missing ones), or
            a list.
        indptr: ``(N + 1,)`` int64 CSR row pointer of the ``(N, L)`` training label matrix, or a
            list (one per member; a single one is shared).
        indices: ``(nnz,)`` int64 CSR label ids, or a list.
        n_labels: ``L``. top_k: labels returned per query.

    Returns:
        ``(labels, scores, n_scored)``: ``(Q, top_k)`` int64 (``-1`` pad), ``(Q, top_k)``
        float32 (0 pad), ``(Q,)`` int64 number of labels with a non-zero score.

    Raises:
        ValueError: ``top_k < 1`` or inconsistent lists. RuntimeError (extension): bad shapes,
            ids or label ids out of range, a bad ``indptr``.

    Example:
        >>> ip, ix = torch.tensor([0, 2, 3]), torch.tensor([0, 2, 2])  # ex0 {0, 2}, ex1 {2}
        >>> vote_topk(torch.tensor([[0, 1]]), torch.tensor([[1.0, 1.0]]), ip, ix, 3, 2)[0].tolist()
        [[2, 0]]

    Source: Gerald & Baskiotis, CAp 2019, sections 2.5-2.6; kernels ``cpp_ext/cpu/vote_cpu.cpp``,
    ``cpp_ext/cuda/kernels.cu``; reference :func:`xhyp.knn.reference.ref_vote_topk`.
    """
    if top_k < 1:
        raise ValueError(f"top_k must be >= 1, got {top_k}")
    ids_l, w_l, ip_l, ix_l = member_lists(ids, weights, indptr, indices)
    if ext.ext_available(ids_l[0].device):
        return torch.ops.xhyp_ext.vote_topk(ids_l, w_l, ip_l, ix_l, int(n_labels), int(top_k))
    ext.warn_fallback("vote_topk", ids_l[0].device)
    return _scipy_vote_topk(ids_l, w_l, ip_l, ix_l, n_labels, top_k)


def _scipy_vote_topk(ids_l, w_l, ip_l, ix_l, n_labels, top_k):
    """Fallback of :func:`vote_topk`: :func:`~xhyp.knn.reference.summed_votes`, then the ranking
    of :func:`xhyp.metrics.topk_from_scores`."""
    import scipy.sparse as sp

    from ..metrics import topk_from_scores

    Ys = [sp.csr_matrix((np.ones(ix.shape[0]), ix.cpu().numpy(), ip.cpu().numpy()), shape=(ip.shape[0] - 1, n_labels))
          for ip, ix in zip(ip_l, ix_l)]
    total = summed_votes([I.cpu().numpy() for I in ids_l], [w.cpu().numpy() for w in w_l], Ys)
    total.eliminate_zeros()
    labels, scores = topk_from_scores(total, top_k, return_scores=True)
    n_scored = np.diff(total.indptr).astype(np.int64)
    dev = ids_l[0].device
    return (torch.from_numpy(labels).to(dev), torch.from_numpy(scores.astype(np.float32)).to(dev),
            torch.from_numpy(n_scored).to(dev))


# ------------------------------------------------------------------------------------------------
# ann index: inverted file with a query-major scan (cpp_ext/cpu/ivf_cpu.cpp)

IVF_LANES = 16
"""Rows per packed block of :func:`ivf_pack`."""


def ivf_pack(db_aug: torch.Tensor, offsets: torch.Tensor):
    """Pack augmented rows sorted by cluster into blocks of 16 rows stored dimension-major.

    Args:
        db_aug: ``(M, K)`` float32 rows sorted by cluster (:func:`knn_prepare` of the sorted
            database, ``K = n + 2``).
        offsets: ``(C + 1,)`` int64, cluster ``c`` is rows ``offsets[c]:offsets[c + 1]``.

    Returns:
        ``(packed, block_offsets)``: ``(B, K, 16)`` float32 (padding lanes zero; every cluster
        starts a block) and ``(C + 1,)`` int64 block offsets of the clusters.

    Raises:
        RuntimeError: bad offsets (not starting at 0, not ending at ``M``, decreasing).
    """
    if ext.load() and db_aug.dtype == torch.float32 and not db_aug.is_cuda:
        return torch.ops.xhyp_ext.ivf_pack(db_aug.contiguous(), offsets.to(torch.long).contiguous())
    off = offsets.cpu().long()
    sizes = torch.diff(off)
    nblk = (sizes + IVF_LANES - 1) // IVF_LANES
    boff = torch.zeros_like(off)
    boff[1:] = torch.cumsum(nblk, 0)
    K = db_aug.shape[1]
    packed = torch.zeros(int(boff[-1]), IVF_LANES, K, dtype=db_aug.dtype, device=db_aug.device)
    if db_aug.shape[0]:
        cl = torch.repeat_interleave(torch.arange(len(sizes)), sizes)
        j = torch.arange(db_aug.shape[0]) - off[cl]
        packed[(boff[cl] + j // IVF_LANES).to(db_aug.device), (j % IVF_LANES).to(db_aug.device)] = db_aug
    return packed.transpose(1, 2).contiguous(), boff


def ivf_probe(q: torch.Tensor, cen_aug: torch.Tensor, nprobe: int, geometry: str = "poincare") -> torch.Tensor:
    """The ``nprobe`` nearest centroids of each query, nearest first (float32 bound ranking).

    One GEMM of the queries' rows ``[x, |x|^2, 1]`` with the centroids' augmented rows gives
    ``g = c(m) ((1 - 2 gamma)(|x|^2 + |m|^2) - 2 <x, m>)``, the float32 lower bound of
    ``t = c(m) |x - m|^2`` (monotone in the Poincaré distance) that the fused kernel uses
    (``cpp_ext/cpu/knn_cpu.cpp``); the ``nprobe`` smallest are selected (ties: lower index). The
    probes are the exact nearest centroids up to float32 rounding.

    Args:
        q: ``(Q, n)`` float32 queries.
        cen_aug: ``(C, n + 2)`` float32 :func:`knn_prepare` rows of the centroids.
        nprobe: probes per query (``>= 1``, capped at ``C``).
        geometry: ``"poincare"`` or ``"euclidean"`` (already folded into ``cen_aug``).

    Returns:
        ``(Q, max(1, min(nprobe, C)))`` int64 centroid indices (``-1`` when ``C = 0``).

    Raises:
        ValueError: an unknown geometry, inputs that are not 2-D, ``nprobe < 1`` or a ``cen_aug``
            without ``n + 2`` columns.

    Source: ``cpp_ext/cpu/ivf_cpu.cpp`` (``ivf_probe``).
    """
    eucl = _euclidean(geometry)
    _check_points(q, "q")
    _check_points(cen_aug, "cen_aug")
    if nprobe < 1:
        raise ValueError(f"nprobe must be >= 1, got {nprobe}")
    if cen_aug.shape[1] != q.shape[1] + 2:
        raise ValueError(f"cen_aug must have n + 2 = {q.shape[1] + 2} columns, got {cen_aug.shape[1]}")
    if ext.use_ext("ivf_probe", q, cen_aug) and not q.is_cuda:
        return torch.ops.xhyp_ext.ivf_probe(q.contiguous(), cen_aug.contiguous(), int(nprobe), eucl)
    C = cen_aug.shape[0]
    P = max(1, min(nprobe, C))
    if C == 0 or q.shape[0] == 0:
        return torch.full((q.shape[0], P), -1, dtype=torch.long)
    xa = torch.cat([q, (q.double() ** 2).sum(1, keepdim=True).to(q.dtype), torch.ones_like(q[:, :1])], 1)
    g = xa.float() @ cen_aug.float().T
    return torch.argsort(g, dim=1, stable=True)[:, :P].contiguous()


def ivf_knn(q: torch.Tensor, db_sorted: torch.Tensor, packed: torch.Tensor, block_offsets: torch.Tensor,
            ids: torch.Tensor, offsets: torch.Tensor, probes: torch.Tensor, k: int, geometry: str = "poincare"):
    """Exact top-k of the union of each query's probed clusters (the ``ann`` index's scan).

    Query-major: queries run ordered by their first probe (neighbouring queries scan the same
    clusters while they are in cache); each query scans its probes in the given order (nearest
    first) with one top-k heap shared by all of them, 16 rows at a time through the float32
    lower bound ``g <= t`` (AVX-512 when available); only rows with ``g`` below the heap's
    ``k``-th ``t`` get the exact ``t`` in double precision. Repeated probes are scanned once.

    Args:
        q: ``(Q, n)`` float32 queries.
        db_sorted: ``(M, n)`` float32 rows sorted by cluster.
        packed, block_offsets: :func:`ivf_pack` of ``knn_prepare(db_sorted)`` and ``offsets``.
        ids: ``(M,)`` int64 original ids; offsets: ``(C + 1,)`` int64 cluster offsets.
        probes: ``(Q, P)`` int64 clusters to scan per query (``-1``: none), e.g. :func:`ivf_probe`.
        k: neighbours per query (``>= 1``; fewer rows pad with ``inf`` / ``-1``).

    Returns:
        ``(D, I)``: ``(Q, k)`` float32 distances ascending, ``(Q, k)`` int64 original ids.

    Raises:
        RuntimeError (extension) / ValueError: inconsistent shapes, offsets or probe values.

    Source: ``cpp_ext/cpu/ivf_cpu.cpp`` (``ivf_knn``); reference :func:`ref_ivf_knn`.
    """
    eucl = _check_ivf_scan(q, db_sorted, k, geometry)
    if ext.use_ext("ivf_knn", q, db_sorted, packed) and not q.is_cuda:
        return torch.ops.xhyp_ext.ivf_knn(q.contiguous(), db_sorted.contiguous(), packed.contiguous(),
                                          block_offsets.long().contiguous(), ids.long().contiguous(),
                                          offsets.long().contiguous(), probes.long().contiguous(), int(k), eucl)
    return _ivf_scan_fallback(q, db_sorted, ids, offsets, probes, k, geometry)


def _check_ivf_scan(q, db_sorted, k: int, geometry: str) -> bool:
    """Checks shared by :func:`ivf_knn` and :func:`ivf_knn8`; returns whether the geometry is Euclidean."""
    eucl = _euclidean(geometry)
    _check_points(q, "q")
    _check_points(db_sorted, "db_sorted")
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return eucl


def _ivf_scan_fallback(q, db_sorted, ids, offsets, probes, k: int, geometry: str):
    """The float64 reference as the scan without the extension (same result: exact among the probes)."""
    C = offsets.shape[0] - 1
    if probes.numel() and (int(probes.min()) < -1 or int(probes.max()) >= C):
        raise ValueError(f"probes must hold cluster numbers in [0, {C}) or -1")
    D, I = ref_ivf_knn(q, db_sorted, ids, offsets, probes, k, geometry)
    return D.to(q.dtype), I


# ------------------------------------------------------------------------------------------------
# ann index, compressed scan: int8 residual codes with a rigorous per-row bound (cpp_ext/cpu/ivf_cpu.cpp)

IVF8_ROW_CONSTS = 5
"""float32 constants per row of an :func:`ivf_pack8` block (after the codes)."""


def _need_ext(what: str) -> None:
    if not ext.ext_available("cpu"):
        raise RuntimeError(f"{what} needs the compiled kernels (xhyp._C: {ext.ext_error()}); "
                           "xhyp.knn.index.AnnIndex(codes='float') works without them")


def ivf_pack8(db_sorted: torch.Tensor, offsets: torch.Tensor, centroids: torch.Tensor, geometry: str = "poincare"):
    """Code rows sorted by cluster as int8 residuals with the constants of a rigorous lower bound.

    Row ``y`` of cluster ``c`` is coded relative to ``m = centroids[c]``: ``r = y - m = s_y rc + e_y``
    (``rc`` in ``[-127, 127]^n``, ``s_y = max |r_d| / 127``). With the query coded once as
    ``x = s_x xc + e_x``, the identity ``|x - y|^2 = |x - m|^2 + |r|^2 + 2 <m, r> - 2 <x, r>`` and
    Cauchy-Schwarz on both quantisation errors give, for ``t = c(y) |x - y|^2`` (``c(y) = 1 / (1 -
    |y|^2)``, Euclidean 1)::

        t >= C |x - m|^2 + CR - CS s_x <xc, rc> - CF |e_x| - CE |x|

    with five float32 constants per row (``C = c``, ``CR = c (|r|^2 + 2 <m, r>)``, ``CS = 2 c s_y``,
    ``CF = 2 c s_y |rc|``, ``CE = 2 c |e_y|``) carrying a margin that covers every float32 rounding of
    the bound's evaluation (``cpp_ext/cpu/ivf_cpu.cpp`` derives it). ``<xc, rc>`` is exact integer
    arithmetic (AVX-512 VNNI ``vpdpbusd`` when the CPU has it).

    Args:
        db_sorted: ``(M, n)`` float32 rows sorted by cluster (``n <= 40000``).
        offsets: ``(C + 1,)`` int64, cluster ``c`` is rows ``offsets[c]:offsets[c + 1]``.
        centroids: ``(C, n)`` float32 reference point of each cluster (any point works; a
            cluster's centre keeps the residuals, hence the bound's error, small).
        geometry: ``"poincare"`` or ``"euclidean"`` (folded into the constants).

    Returns:
        ``(blocks, block_offsets)``: ``(B, 64 (ceil(n / 4) + 5))`` uint8 blocks of 16 rows (codes
        + 128 as 4-byte groups per row, then the five constants x 16 lanes; every cluster starts a
        block) and the ``(C + 1,)`` int64 block offsets of the clusters. 72 bytes a row at
        ``n = 50`` (float32 rows: 200).

    Raises:
        RuntimeError: bad offsets or shapes, or the extension missing.

    Source: Jégou et al., "Product quantization for nearest neighbor search" (PAMI 2011),
    section IV (residual coding in an inverted file), with an exact bound instead of an estimate.
    """
    eucl = _euclidean(geometry)
    _check_points(db_sorted, "db_sorted")
    _check_points(centroids, "centroids")
    _need_ext("ivf_pack8")
    return torch.ops.xhyp_ext.ivf_pack8(db_sorted.float().contiguous(), offsets.long().contiguous(),
                                        centroids.float().contiguous(), eucl)


def ivf_knn8(q: torch.Tensor, db_sorted: torch.Tensor, blocks: torch.Tensor, block_offsets: torch.Tensor,
             centroids: torch.Tensor, ids: torch.Tensor, offsets: torch.Tensor, probes: torch.Tensor, k: int,
             geometry: str = "poincare"):
    """:func:`ivf_knn` with the int8 lower bound of :func:`ivf_pack8`: same results, less memory read.

    Rows whose bound is below a query's running k-th ``t`` get their exact ``t`` from the float32
    rows, in increasing order of the bound while the query's heap is not full; the result is the
    exact top-k (ties: lower id) of the union of each query's probed clusters, as :func:`ivf_knn`.

    Args:
        q, db_sorted, ids, offsets, probes, k: as :func:`ivf_knn` (``db_sorted``: the float32 rows
            of the exact re-check).
        blocks, block_offsets: :func:`ivf_pack8` of ``db_sorted``, ``offsets`` and ``centroids``.
        centroids: ``(C, n)`` float32, the reference points given to :func:`ivf_pack8`.
        geometry: the geometry given to :func:`ivf_pack8`.

    Returns and raises as :func:`ivf_knn`.

    Source: ``cpp_ext/cpu/ivf_cpu.cpp`` (``ivf_knn8``); reference :func:`ref_ivf_knn`.
    """
    eucl = _check_ivf_scan(q, db_sorted, k, geometry)
    if ext.use_ext("ivf_knn8", q, db_sorted, centroids) and not q.is_cuda:
        return torch.ops.xhyp_ext.ivf_knn8(q.contiguous(), db_sorted.contiguous(), blocks.contiguous(),
                                           block_offsets.long().contiguous(), centroids.contiguous(),
                                           ids.long().contiguous(), offsets.long().contiguous(),
                                           probes.long().contiguous(), int(k), eucl)
    return _ivf_scan_fallback(q, db_sorted, ids, offsets, probes, k, geometry)


def ivf_bounds8(q: torch.Tensor, blocks: torch.Tensor, block_offsets: torch.Tensor, centroids: torch.Tensor,
                offsets: torch.Tensor) -> torch.Tensor:
    """The int8 lower bounds of ``t = c(y) |x - y|^2`` of every query and row (for tests).

    Args:
        q: ``(Q, n)`` float32 queries; blocks, block_offsets, centroids, offsets: as
            :func:`ivf_knn8`.

    Returns:
        ``(Q, M)`` float32 bounds, rows in sorted (cluster) order; ``<= t`` computed exactly.

    Source: ``cpp_ext/cpu/ivf_cpu.cpp`` (``ivf_bounds8``; ``XHYP_PORTABLE_KERNELS=1`` in the
    environment selects the portable code instead of AVX-512 VNNI).
    """
    _check_points(q, "q")
    _need_ext("ivf_bounds8")
    return torch.ops.xhyp_ext.ivf_bounds8(q.float().contiguous(), blocks.contiguous(),
                                          block_offsets.long().contiguous(), centroids.float().contiguous(),
                                          offsets.long().contiguous())
