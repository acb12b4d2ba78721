"""Nearest-neighbour search among training-example embeddings.

All indexes share faiss's interface: ``index.add(db)`` then ``index.search(q, k) -> (D, I)``
with ``D`` the ``(Q, k)`` float32 distances (ascending) and ``I`` the ``(Q, k)`` int64 row ids of
the database (``-1`` / ``inf`` where fewer than ``k`` points are found). :func:`make_index`
builds one from a name, as the CLI's ``--index`` does (``--nprobe`` arrives as ``nprobe=``):

==============  ===========================================================================
kind            search
==============  ===========================================================================
``exact``       exact brute force with the fused C++/CUDA kernel (:func:`xhyp.knn.kernels.knn`);
                falls back to ``torch`` when the extension is missing
``torch``       exact brute force in pure torch (chunked GEMM + top-k + exact re-scoring),
                the reference implementation
``clustered``   Gerald & Baskiotis (CAp 2019), section 2.6: random training points as
                centroids (default ``N / 3000``), exact search in the ``nprobe`` nearest
                clusters (``n_clusters``, ``nprobe``, ``seed``)
``ann``         :class:`AnnIndex`: balanced k-means clusters (``n_clusters``, default
                ``N / 384``, big clusters split), query-major scan of the ``nprobe`` nearest
                (default 30) with one heap per query, rows bounded from int8 residual codes
                (``codes``); exact distances, approximate only in which clusters are scanned.
                The fastest setting at recall@10 >= 0.95 (``bench/README.md``)
``faiss-flat``  faiss ``IndexFlatIP`` on the hyperboloid lift (exact up to float32), re-ranked
``faiss-ivf``   faiss ``IndexIVFFlat`` on the lift with the inner product (``nlist``,
                ``nprobe``), re-ranked
``faiss-hnsw``  faiss ``IndexHNSWFlat`` (``M``, ``efSearch``, ``efConstruction``) with the L2
                metric on the lift's spatial coordinates (``space="spatial"``, default), or
                with the inner product on the lift (``space="lift"``), re-ranked
==============  ===========================================================================

Hyperboloid lift (``xhyp.embedding.manifold.lift_hyperboloid``, ``hyperboloid_query``): with
``h(y) = ((1 + |y|^2), 2y) / (1 - |y|^2)`` and the query ``(-h0(x), h1..n(x))``, the inner
product is ``-cosh d(x, y)``, so Poincaré kNN is maximum-inner-product search. The faiss
indexes take ``space=``:

* ``"lift"``: inner product on the lift, the exact reduction above (default of flat and IVF);
* ``"spatial"``: L2 on ``u = h1..n(y) = 2y / (1 - |y|^2)`` (:func:`xhyp.embedding.manifold.from_ball`), a
  proxy: along the sphere of radius ``|u|`` the hyperboloid's metric is the Euclidean one in
  ``u`` and radial steps are stretched by ``cosh r``; on clustered data the 40 nearest points in
  ``u`` contained 99.9 % of the 10 hyperbolic nearest (``bench/bench_knn.py``);
* ``"ball"``: L2 on the raw ball coordinates (a poorer proxy: 94.5 % in the same test).

Euclidean geometry uses faiss's L2 indexes on the raw vectors (``space`` is ignored).

Why HNSW defaults to ``space="spatial"``: faiss builds the HNSW graph by searching each new
database vector among the stored ones, i.e. with the *Euclidean* inner product
``<h(y), h(z)>`` between lifted database points, not the Lorentzian one ``-cosh d(y, z)`` (which
needs the query-side sign flip). The graph therefore links points with large lifted norms
instead of hyperbolic neighbours, and recall@10 stays around 0.3-0.55 even with large
``efSearch`` (``tests/test_faiss_index.py``, ``bench/bench_knn.py``). An L2 graph is consistent
between construction and search.

**Float32 limit of the lift.** ``|h(y)| ~ 2 / (1 - |y|)``: at ``|y| = 1 - 1e-4`` the lifted
coordinates are ~2e4, their products ~4e8, and float32 rounds an inner product to a few units,
while close neighbours differ in ``cosh d`` by ~``d^2 / 2``. So near the boundary the faiss
scores cannot order close neighbours (or even separate them from farther ones); every faiss
index therefore returns a candidate list of ``rerank * k`` points (``rerank`` default 4) that is
re-ranked with the exact Poincaré distance computed in float64 from the float32 coordinates.
The re-rank fixes the order among the candidates; it cannot bring back a neighbour that the
float32 scores pushed out of the list (tested in ``tests/test_faiss_index.py``). The spatial
coordinates have an absolute float32 resolution of ~``|u| 6e-8`` (6e-3 at ``|y| = 1 - 1e-5``),
far better than the lift's ``|h|^2 6e-8``. The ``exact`` kernel has no such limit.

faiss is imported lazily (``pip install faiss-cpu``; ``faiss-gpu`` is used when importable, the
database is on a CUDA device and the index type has a GPU version).
"""
from __future__ import annotations

import math

import numpy as np
import torch

from ..config import ANN_CODES, INDEX_KINDS, check_choice  # (INDEX_KINDS re-exported)
from ..embedding import manifold
from . import extension, kernels
from .reference import sorted_topk


class _Base:
    """Shared checks of ``add`` / ``search``."""

    geometry = "poincare"
    db = None

    def _check_db(self, db: torch.Tensor) -> None:
        if db.dim() != 2:
            raise ValueError(f"database must be (M, n), got shape {tuple(db.shape)}")

    def _check_search(self, q: torch.Tensor, k: int) -> None:
        if self.db is None:
            raise RuntimeError("search() before add()")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if q.dim() != 2 or q.shape[-1] != self.db.shape[1]:
            raise ValueError(f"query dimension {q.shape[-1]} != database dimension {self.db.shape[1]}")

    @staticmethod
    def _batched(q: torch.Tensor, k: int, batch: int, search_block):
        """``search_block(q[s:s + batch])`` over the query blocks, results concatenated on the CPU:
        ``(D, I)`` of shape ``(Q, k)`` (empty ``(0, k)`` tensors of ``q``'s dtype for ``Q = 0``)."""
        Ds, Is = [], []
        for s in range(0, q.shape[0], batch):
            D, I = search_block(q[s:s + batch])
            Ds.append(D.cpu())
            Is.append(I.cpu())
        if not Ds:
            return torch.empty(0, k, dtype=q.dtype), torch.empty(0, k, dtype=torch.long)
        return torch.cat(Ds), torch.cat(Is)

    @property
    def ntotal(self) -> int:
        """Number of database points."""
        return 0 if self.db is None else int(self.db.shape[0])


class TorchIndex(_Base):
    """Exact brute-force kNN in pure torch (the reference backend, any dtype, any device).

    Distances for a ``(query chunk x database chunk)`` block come from one GEMM
    (:func:`xhyp.embedding.manifold.pairwise_dist`), a running top-``k'`` is kept per query, and the final
    shortlist (``k' = min(M, 2k)``) is re-scored with the exact :func:`xhyp.embedding.manifold.dist`.
    Memory is bounded by ``query_batch x db_batch`` floats. See :func:`xhyp.knn.kernels.torch_knn`.

    Args:
        geometry: ``"poincare"`` or ``"euclidean"``.
        query_batch: queries per block.
        db_batch: database rows per block.
        device: where to compute (``None``: where the database is).
    """

    def __init__(self, geometry: str = "poincare", query_batch: int = 1024, db_batch: int = 65536,
                 device=None):
        manifold.check_geometry(geometry)
        self.geometry = geometry
        self.query_batch = query_batch
        self.db_batch = db_batch
        self.device = device
        self.db = None

    def add(self, db: torch.Tensor) -> "TorchIndex":
        """Set the database: ``(M, n)`` float tensor (in the ball for Poincaré geometry)."""
        self._check_db(db)
        self.db = db.to(self.device) if self.device is not None else db
        return self

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int):
        """k nearest database points of each query.

        Args:
            q: ``(Q, n)`` queries (converted to the database's dtype and device).
            k: neighbours per query (``>= 1``).

        Returns:
            ``(D, I)`` on the CPU: ``(Q, k)`` distances ascending, ``(Q, k)`` int64 ids.

        Raises:
            RuntimeError: if :meth:`add` was not called. ValueError: bad ``k`` or dimension.
        """
        self._check_search(q, k)
        D, I = kernels.torch_knn(q, self.db, k, self.geometry, self.query_batch, self.db_batch)
        return D.cpu(), I.cpu()


class ExactIndex(TorchIndex):
    """Exact brute-force kNN with the fused kernel (:func:`xhyp.knn.kernels.knn`).

    The database's per-row precomputation is done once in :meth:`add`; queries are searched in
    chunks of ``query_batch``. float32 data on a device the extension supports goes through the
    kernel (exact top-k of the float32 inputs, also near the boundary); anything else (float64
    data, no extension) through :class:`TorchIndex`.

    Args:
        geometry: ``"poincare"`` or ``"euclidean"``.
        query_batch: queries per kernel call (bounds the output and heap memory).
        db_batch: database rows per block of the pure-torch fallback.
        device: where to compute (``None``: where the database is).
    """

    def __init__(self, geometry: str = "poincare", query_batch: int = 65536, db_batch: int = 65536,
                 device=None):
        super().__init__(geometry, query_batch, db_batch, device)
        self.aug = None

    def add(self, db: torch.Tensor) -> "ExactIndex":
        """Set the database: ``(M, n)`` float tensor (in the ball for Poincaré geometry)."""
        super().add(db)
        self.db = self.db.contiguous()
        self.aug = kernels.knn_prepare(self.db, self.geometry) if self.db.dtype == torch.float32 else None
        return self

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int):
        """k nearest database points of each query; see :meth:`TorchIndex.search`."""
        self._check_search(q, k)
        if self.aug is None:
            D, I = kernels.torch_knn(q, self.db, k, self.geometry, min(self.query_batch, 1024), self.db_batch)
            return D.cpu(), I.cpu()
        q = q.to(self.db.device, self.db.dtype)
        return self._batched(q, k, self.query_batch,
                             lambda qb: kernels.knn(qb, self.db, k, self.geometry, self.aug))


class _Clusters(_Base):
    """Shared parts of the indexes whose database is stored sorted by cluster (``offsets``)."""

    nprobe = 1
    offsets = None

    @property
    def cluster_sizes(self) -> torch.Tensor:
        """``(C,)`` number of points per cluster."""
        return torch.diff(self.offsets)

    def _nprobe(self, q: torch.Tensor, k: int, nprobe: int | None) -> int:
        """Check a search and return its ``nprobe`` (the call's, else the constructor's)."""
        self._check_search(q, k)
        return int(nprobe or self.nprobe)


class ClusteredIndex(_Clusters):
    """Centroid-clustered approximate kNN (Gerald & Baskiotis, CAp 2019, section 2.6).

    :meth:`add` draws ``n_clusters`` centroids at random among the database points (default
    ``max(1, N // 3000)``), puts every point in the cluster of its nearest centroid (by the
    geometry's distance, exact kernel) and stores the points sorted by cluster. :meth:`search`
    finds each query's ``nprobe`` nearest centroids and searches those clusters exactly
    (:func:`xhyp.knn.kernels.clustered_knn`). Recall grows with ``nprobe``; ``nprobe >= n_clusters``
    is exact search.

    Args:
        geometry: ``"poincare"`` or ``"euclidean"``.
        nprobe: clusters searched per query.
        n_clusters: number of centroids (``None``: ``max(1, N // points_per_cluster)``).
        points_per_cluster: the paper's default cluster size, 3000.
        seed: seeds the choice of centroids (and k-means).
        centroids: ``"random"`` (the paper: random database points) or ``"kmeans"``: k-means
            (``kmeans_iters`` Lloyd iterations, faiss when installed, else scikit-learn) on the
            points' coordinates in the ball; the means are convex combinations of ball points,
            so they lie in the ball (the max-norm guard is applied), and points are then assigned
            to their nearest centroid by Poincaré distance as with random centroids. (k-means on
            the hyperboloid's spatial coordinates ``2x / (1 - |x|^2)`` was tried and rejected:
            points near the boundary dominate the means and one cluster takes most points.)
            k-means clusters are more even in size than random ones, so a probe scans fewer
            points for the same recall (``bench/README.md``).
        kmeans_iters: Lloyd iterations of ``"kmeans"``.
        query_batch: queries per kernel call.
        device: where to compute (``None``: where the database is).

    Raises:
        ValueError: ``nprobe < 1``, ``n_clusters < 1`` or an unknown ``centroids``.
    """

    def __init__(self, geometry: str = "poincare", nprobe: int = 8, n_clusters: int | None = None,
                 points_per_cluster: int = 3000, seed: int = 0, centroids: str = "random",
                 kmeans_iters: int = 20, query_batch: int = 65536, device=None):
        manifold.check_geometry(geometry)
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if centroids not in ("random", "kmeans"):
            raise ValueError(f"centroids must be 'random' or 'kmeans', got {centroids!r}")
        self.centroid_init = centroids
        self.kmeans_iters = int(kmeans_iters)
        self.geometry = geometry
        self.nprobe = int(nprobe)
        self.n_clusters = n_clusters
        self.points_per_cluster = int(points_per_cluster)
        self.seed = int(seed)
        self.query_batch = query_batch
        self.device = device
        self.db = None

    @torch.no_grad()
    def add(self, db: torch.Tensor) -> "ClusteredIndex":
        """Cluster and store the database: ``(M, n)`` float tensor."""
        self._check_db(db)
        db = db.to(self.device) if self.device is not None else db
        db = db.contiguous()
        N = db.shape[0]
        C = self.n_clusters or max(1, N // self.points_per_cluster)
        C = max(1, min(C, N)) if N > 0 else 0
        if self.centroid_init == "kmeans" and C > 1:
            self.centroids = self._kmeans_centroids(db, C).to(db.device, db.dtype).contiguous()
        else:
            gen = torch.Generator().manual_seed(self.seed)
            cid = torch.randperm(N, generator=gen)[:C].sort().values.to(db.device)
            self.centroids = db[cid].contiguous()
        if C > 0:  # nearest centroid of every point (exact; ties: lower centroid index)
            assign = kernels.knn(db, self.centroids, 1, self.geometry)[1][:, 0].to(db.device)
        else:
            assign = torch.zeros(0, dtype=torch.long, device=db.device)
        order = torch.argsort(assign, stable=True)
        self.ids = order.to(torch.long)
        self.offsets = torch.zeros(C + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(torch.bincount(assign.cpu(), minlength=C), 0)
        self.db_sorted = db[order].contiguous()
        self.aug = kernels.knn_prepare(self.db_sorted, self.geometry)
        self.db = db
        return self

    def _kmeans_centroids(self, db: torch.Tensor, C: int) -> torch.Tensor:
        """``(C, n)`` k-means centroids in the ball (see the class docstring)."""
        u = np.ascontiguousarray(db.detach().cpu().float().numpy())
        try:
            import faiss
        except ImportError:
            faiss = None
        if faiss is not None:
            km = faiss.Kmeans(u.shape[1], C, niter=self.kmeans_iters, seed=self.seed, verbose=False,
                              max_points_per_centroid=256)
            km.train(u)
            cen = torch.from_numpy(np.asarray(km.centroids, dtype=np.float64))
        else:
            from sklearn.cluster import KMeans

            km = KMeans(C, n_init=1, max_iter=self.kmeans_iters, random_state=self.seed).fit(u)
            cen = torch.from_numpy(km.cluster_centers_.astype(np.float64))
        return manifold.project(cen).float() if self.geometry == "poincare" else cen.float()

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int, nprobe: int | None = None):
        """Approximate k nearest neighbours; see :meth:`TorchIndex.search` for the output.

        Args:
            nprobe: overrides the constructor's ``nprobe`` for this call.
        """
        nprobe = self._nprobe(q, k, nprobe)
        q = q.to(self.db.device, self.db.dtype)
        return self._batched(q, k, self.query_batch, lambda qb: kernels.clustered_knn(
            qb, self.db_sorted, self.ids, self.offsets, self.centroids, k, nprobe, self.geometry, self.aug))


def _kmeans(u: np.ndarray, C: int, iters: int, seed: int, chunk: int = 65536) -> np.ndarray:
    """``(C, d)`` float64 k-means centroids of the rows of ``u`` (Lloyd's algorithm in torch).

    Initialisation: ``C`` distinct random rows (``seed``); each iteration assigns every row to
    its nearest centre (squared Euclidean distance, one GEMM per chunk of rows) and moves each
    centre to the mean of its rows; a centre left empty restarts at a random row. (faiss's
    k-means was used at first: under a loaded machine its OpenMP barriers made the many small
    k-means of the cluster splits take seconds each.)
    """
    import scipy.sparse as sp

    threads = torch.get_num_threads()
    if u.shape[0] * C * u.shape[1] < 2e8:  # small problems: one thread (no OpenMP barriers per op)
        torch.set_num_threads(1)
    try:
        return _lloyd(u, C, iters, seed, chunk, sp)
    finally:
        torch.set_num_threads(threads)


def _lloyd(u, C, iters, seed, chunk, sp):
    x = torch.from_numpy(np.ascontiguousarray(u, dtype=np.float32))
    N = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    cen = x[torch.randperm(N, generator=gen)[:C]].clone()
    xsq = (x * x).sum(1)
    xd = x.double().numpy()
    for _ in range(max(1, iters)):
        assign = torch.empty(N, dtype=torch.long)
        csq = (cen * cen).sum(1)
        for s in range(0, N, chunk):
            d = xsq[s:s + chunk, None] - 2.0 * (x[s:s + chunk] @ cen.T) + csq[None, :]
            assign[s:s + chunk] = d.argmin(1)
        onehot = sp.csr_matrix((np.ones(N), (assign.numpy(), np.arange(N))), shape=(C, N))
        sums = torch.from_numpy(onehot @ xd)  # (index_add_ was 100x slower here)
        cnt = torch.bincount(assign, minlength=C)
        empty = cnt == 0
        cen = (sums / cnt.clamp_min(1)[:, None]).float()
        if empty.any():
            cen[empty] = x[torch.randint(0, N, (int(empty.sum()),), generator=gen)]
    return cen.double().numpy()


class AnnIndex(_Clusters):
    """Approximate kNN: balanced k-means inverted file, query-major exact scan of the probes.

    :meth:`add` runs k-means (``kmeans_iters`` Lloyd iterations on the ball coordinates, in
    torch; the means are projected into the ball) to ``n_clusters`` centroids, puts
    every point in the cluster of its nearest centroid by the geometry's distance (exact kernel)
    and then *balances* the clusters: a cluster with more than ``balance * N / C`` points is
    split by k-means on its own points into ``ceil(size / (N / C))`` clusters (random centroids
    or plain k-means leave a few clusters with many times the mean size, and queries fall into
    them most often). The database is stored sorted by cluster and packed in blocks of 16 rows
    (:func:`xhyp.knn.kernels.ivf_pack`).

    :meth:`search` ranks the centroids of every query in one pass (:func:`xhyp.knn.kernels.ivf_probe`)
    and scans the ``nprobe`` nearest clusters, nearest first, with one heap per query: with
    ``codes="int8"`` (default) each row is first bounded from int8 residual codes (72 bytes a row
    at dimension 50 instead of 200, :func:`xhyp.knn.kernels.ivf_pack8`,
    :func:`xhyp.knn.kernels.ivf_knn8`), with ``codes="float"`` from float32 augmented rows
    (:func:`xhyp.knn.kernels.ivf_knn`); either way only rows whose rigorous lower bound can enter
    the top-k get their exact distance, so the returned neighbours and distances are exact among
    the scanned points and both codes return the same result; recall depends only on
    ``nprobe / n_clusters``.

    Args:
        geometry: ``"poincare"`` or ``"euclidean"``.
        nprobe: clusters scanned per query (``nprobe >= n_clusters`` is exact search).
        n_clusters: number of clusters before balancing (``None``: ``max(1, N // points_per_cluster)``).
        points_per_cluster: default cluster size, 384 (chosen with ``nprobe`` 30 on a held-out
            synthetic draw, ``bench/README.md``).
        balance: clusters larger than ``balance`` times the mean size are split (``0`` or
            ``None``: no splitting).
        kmeans_iters: Lloyd iterations; seed: seeds k-means.
        query_batch: queries per kernel call (bounds the output memory).
        codes: ``"int8"`` (compressed scan, needs the compiled kernels; the float32 scan is used
            without them) or ``"float"``.

    Raises:
        ValueError: ``nprobe < 1``, ``n_clusters < 1``, ``balance`` in ``(0, 1)`` or an unknown
            ``codes``.

    Source: inverted-file search with residual codes (Jégou et al., PAMI 2011, section IV) and
    rigorous lower bounds (``cpp_ext/cpu/ivf_cpu.cpp``); clusters of Gerald & Baskiotis
    (CAp 2019, section 2.6) replaced by balanced k-means.
    """

    def __init__(self, geometry: str = "poincare", nprobe: int = 30, n_clusters: int | None = None,
                 points_per_cluster: int = 384, balance: float | None = 1.5, kmeans_iters: int = 10,
                 seed: int = 0, query_batch: int = 65536, codes: str = "int8"):
        manifold.check_geometry(geometry)
        check_choice("codes", codes, ANN_CODES)
        self.codes = codes
        if nprobe < 1:
            raise ValueError(f"nprobe must be >= 1, got {nprobe}")
        if n_clusters is not None and n_clusters < 1:
            raise ValueError(f"n_clusters must be >= 1, got {n_clusters}")
        if balance and balance < 1:
            raise ValueError(f"balance must be >= 1 (or 0 for no splitting), got {balance}")
        self.geometry = geometry
        self.nprobe = int(nprobe)
        self.n_clusters = n_clusters
        self.points_per_cluster = int(points_per_cluster)
        self.balance = float(balance) if balance else 0.0
        self.kmeans_iters = int(kmeans_iters)
        self.seed = int(seed)
        self.query_batch = int(query_batch)
        self.db = None

    def _centroids(self, u: np.ndarray, C: int) -> torch.Tensor:
        cen = torch.from_numpy(_kmeans(u, C, self.kmeans_iters, self.seed))
        return (manifold.project(cen) if self.geometry == "poincare" else cen).float().contiguous()

    def _split_big(self, db, u, cen, assign, target, rounds: int = 4):
        """Split clusters above ``balance * target`` points by k-means on their own points.

        Sub-cluster 0 keeps the cluster's number, the others get new numbers; a cluster's points
        only move between its sub-clusters (nearest sub-centroid, exact kernel). Repeated up to
        ``rounds`` times (a dense core can stay big after one split).
        """
        for _ in range(rounds):
            C = cen.shape[0]
            sizes = torch.bincount(assign, minlength=C)
            big = torch.nonzero(sizes > self.balance * target).flatten().tolist()
            if not big:
                break
            parts, new_assign, nxt = [cen.clone()], assign.clone(), C
            for c in big:
                members = torch.nonzero(assign == c).flatten()
                m = int(math.ceil(len(members) / target))
                sub = self._centroids(u[members.numpy()], m)
                a = kernels.knn(db[members], sub, 1, self.geometry)[1][:, 0]
                parts[0][c] = sub[0]
                parts.append(sub[1:])
                new_assign[members] = torch.where(a == 0, torch.full_like(a, c), a - 1 + nxt)
                nxt += m - 1
            cen, assign = torch.cat(parts).contiguous(), new_assign
        return cen, assign

    @torch.no_grad()
    def add(self, db: torch.Tensor) -> "AnnIndex":
        """Cluster, balance and store the database: ``(M, n)`` float32 CPU tensor."""
        self._check_db(db)
        db = db.detach().cpu().float().contiguous()
        N = db.shape[0]
        C = self.n_clusters or max(1, N // self.points_per_cluster)
        C = max(1, min(C, N)) if N > 0 else 0
        u = db.numpy()
        if C > 1:
            cen = self._centroids(u, C)
            assign = kernels.knn(db, cen, 1, self.geometry)[1][:, 0]
        else:
            cen = db[:C].clone()
            assign = torch.zeros(N, dtype=torch.long)
        if self.balance and C > 1:
            cen, assign = self._split_big(db, u, cen, assign, N / C)
        C = cen.shape[0]
        order = torch.argsort(assign, stable=True)
        self.centroids = cen
        self.ids = order.to(torch.long)
        self.offsets = torch.zeros(C + 1, dtype=torch.long)
        self.offsets[1:] = torch.cumsum(torch.bincount(assign, minlength=C), 0)
        self.db_sorted = db[order].contiguous()
        if self._int8():
            self.packed, self.block_offsets = kernels.ivf_pack8(self.db_sorted, self.offsets, cen, self.geometry)
        else:
            self.packed, self.block_offsets = kernels.ivf_pack(_aug(self.db_sorted, self.geometry), self.offsets)
        self.cen_aug = _aug(cen, self.geometry)
        self.db = db
        return self

    def _int8(self) -> bool:
        """Whether the scan uses the int8 codes (``codes="int8"`` and the compiled kernels)."""
        return self.codes == "int8" and extension.ext_available("cpu")

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int, nprobe: int | None = None):
        """Approximate k nearest neighbours (exact distances); see :meth:`TorchIndex.search`.

        Args:
            nprobe: overrides the constructor's ``nprobe`` for this call.
        """
        nprobe = self._nprobe(q, k, nprobe)
        q = q.detach().cpu().float()
        def block(qs):
            qs = qs.contiguous()
            probes = kernels.ivf_probe(qs, self.cen_aug, nprobe, self.geometry)
            if self._int8():
                return kernels.ivf_knn8(qs, self.db_sorted, self.packed, self.block_offsets, self.centroids,
                                        self.ids, self.offsets, probes, k, self.geometry)
            return kernels.ivf_knn(qs, self.db_sorted, self.packed, self.block_offsets, self.ids, self.offsets,
                                   probes, k, self.geometry)

        return self._batched(q, k, self.query_batch if extension.ext_available("cpu") else 256, block)


def _aug(x: torch.Tensor, geometry: str) -> torch.Tensor:
    """:func:`xhyp.knn.kernels.knn_prepare` rows, computed in torch when the extension is missing."""
    aug = kernels.knn_prepare(x, geometry)
    if aug is not None:
        return aug
    n = x.shape[1]
    xd = x.double()
    sq = (xd ** 2).sum(1, keepdim=True)
    c = torch.ones_like(sq) if geometry == "euclidean" else 1.0 / ((1 - sq.sqrt()) * (1 + sq.sqrt()))
    g = 1.0 - 2.0 * 2.0 * (n + 4) * 2.0 ** -24
    return torch.cat([-2.0 * xd * c, g * c, g * sq * c], 1).float().contiguous()


def _import_faiss():
    try:
        import faiss
    except ImportError as e:  # pragma: no cover - depends on the environment
        raise ImportError("the faiss-* indexes need faiss: `pip install faiss-cpu` (or faiss-gpu with CUDA); "
                          "the exact and clustered indexes work without it") from e
    return faiss


class FaissIndex(_Base):
    """faiss search on the hyperboloid lift (Poincaré) or the raw vectors (Euclidean), re-ranked.

    The faiss index proposes ``max(k, rerank * k)`` candidates per query (maximum inner product
    ``<(-h0(x), h(x)), h(y)> = -cosh d(x, y)``), which are re-ranked by the exact distance
    computed in float64 from the float32 coordinates. See the module docstring for the float32
    limit of the lift near the boundary.

    Args:
        kind: ``"flat"``, ``"ivf"`` or ``"hnsw"``.
        geometry: ``"poincare"`` or ``"euclidean"``.
        rerank: candidates per requested neighbour.
        nlist: IVF lists (default ``4 sqrt(N)``, at least 1, at most ``N / 39``); nprobe: IVF lists
            visited per query (default 16).
        M: HNSW graph degree (default 32); efSearch: HNSW search breadth (default 128, raised to
            the number of candidates); efConstruction: HNSW build breadth (default 80).
        space: ``"lift"`` (inner product on the hyperboloid lift), ``"spatial"`` (L2 on the lift's
            spatial coordinates) or ``"ball"`` (L2 on the ball coordinates); default ``"lift"``
            for flat and IVF, ``"spatial"`` for HNSW (see the module docstring).
        gpu: use faiss-gpu when available and the data is on CUDA (flat and IVF only).
        threads: faiss OpenMP threads (``None``: faiss's default).
        seed: seeds the IVF k-means.
    """

    SPACES = ("lift", "spatial", "ball")
    RERANK_CHUNK = 4096

    def __init__(self, kind: str = "flat", geometry: str = "poincare", rerank: int = 4,
                 nlist: int | None = None, nprobe: int = 16, M: int = 32, efSearch: int = 128,
                 efConstruction: int = 80, space: str | None = None, gpu: bool = True,
                 threads: int | None = None, seed: int = 0):
        manifold.check_geometry(geometry)
        if kind not in ("flat", "ivf", "hnsw"):
            raise ValueError(f"unknown faiss index kind {kind!r}")
        space = space or ("spatial" if kind == "hnsw" else "lift")
        if space not in self.SPACES:
            raise ValueError(f"space must be one of {self.SPACES}, got {space!r}")
        if rerank < 1 or nprobe < 1 or M < 2 or efSearch < 1:
            raise ValueError("rerank, nprobe, efSearch must be >= 1 and M >= 2")
        self.faiss = _import_faiss()
        self.kind = kind
        self.geometry = geometry
        self.rerank = int(rerank)
        self.nlist = nlist
        self.nprobe = int(nprobe)
        self.M = int(M)
        self.efSearch = int(efSearch)
        self.efConstruction = int(efConstruction)
        self.space = "ball" if geometry == "euclidean" else space
        self.gpu = gpu
        self.threads = threads
        self.seed = seed
        self.db = None
        self.index = None

    def _vectors(self, x: torch.Tensor, query: bool) -> np.ndarray:
        """float32 vectors given to faiss: lift / query lift, spatial coordinates or raw."""
        x = x.detach().cpu().double()
        if self.space == "lift":
            v = manifold.hyperboloid_query(x) if query else manifold.lift_hyperboloid(x)
        elif self.space == "spatial":
            v = manifold.from_ball(x)
        else:
            v = x
        return np.ascontiguousarray(v.float().numpy())

    @torch.no_grad()
    def add(self, db: torch.Tensor) -> "FaissIndex":
        """Build the faiss index over the (lifted) database: ``(M, n)`` float tensor."""
        self._check_db(db)
        faiss = self.faiss
        if self.threads is not None:
            faiss.omp_set_num_threads(int(self.threads))
        self.db = db
        self._db_cpu = db.detach().cpu().float().contiguous()
        x = self._vectors(db, query=False)
        N, d = x.shape
        ip = self.space == "lift"
        metric = faiss.METRIC_INNER_PRODUCT if ip else faiss.METRIC_L2
        if self.kind == "flat":
            index = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
        elif self.kind == "ivf":
            nlist = self.nlist or int(round(4 * math.sqrt(max(N, 1))))
            nlist = max(1, min(nlist, max(1, N // 39)))
            self.nlist_used = nlist
            quantizer = faiss.IndexFlatIP(d) if ip else faiss.IndexFlatL2(d)
            index = faiss.IndexIVFFlat(quantizer, d, nlist, metric)
            index.cp.seed = int(self.seed)
            if N > 0:
                index.train(x)
            index.nprobe = min(self.nprobe, nlist)
            self._quantizer = quantizer  # keep it alive (faiss holds a raw pointer)
        else:
            index = faiss.IndexHNSWFlat(d, self.M, metric)
            index.hnsw.efConstruction = self.efConstruction
        if self.gpu and self.kind != "hnsw" and db.is_cuda and hasattr(faiss, "StandardGpuResources"):
            self._res = faiss.StandardGpuResources()
            index = faiss.index_cpu_to_gpu(self._res, db.device.index or 0, index)
        if N > 0:
            index.add(x)
        self.index = index
        return self

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int):
        """Approximate k nearest neighbours (exact distances); see :meth:`TorchIndex.search`."""
        self._check_search(q, k)
        faiss = self.faiss
        if self.threads is not None:
            faiss.omp_set_num_threads(int(self.threads))
        N = self.db.shape[0]
        kc = min(max(k, self.rerank * k), N) if N > 0 else 0
        Q = q.shape[0]
        if kc == 0 or Q == 0:
            return (torch.full((Q, k), float("inf")), torch.full((Q, k), -1, dtype=torch.long))
        if self.kind == "hnsw":
            self.index.hnsw.efSearch = max(self.efSearch, kc)
        elif self.kind == "ivf":
            self.index.nprobe = min(self.nprobe, self.nlist_used)
        _, cand = self.index.search(self._vectors(q, query=True), kc)
        cand = torch.from_numpy(cand).long()
        qc = q.detach().cpu().float()
        Ds, Is = [], []
        for s in range(0, Q, self.RERANK_CHUNK):  # chunks bound the (chunk, kc, n) float64 buffers
            c = cand[s:s + self.RERANK_CHUNK]
            valid = c >= 0
            d = manifold.dist64(qc[s:s + self.RERANK_CHUNK, None, :], self._db_cpu[c.clamp_min(0)], self.geometry)
            d = torch.where(valid, d, torch.full_like(d, float("inf")))
            key = torch.where(valid, c, torch.full_like(c, torch.iinfo(torch.long).max))
            D, I = sorted_topk(d, key, k)
            Ds.append(D.float())
            Is.append(I)
        return torch.cat(Ds), torch.cat(Is)


_PARAMS = {
    "exact": ("query_batch", "db_batch", "device"),
    "torch": ("query_batch", "db_batch", "device"),
    "clustered": ("nprobe", "n_clusters", "points_per_cluster", "seed", "centroids", "kmeans_iters",
                  "query_batch", "device"),
    "ann": ("nprobe", "n_clusters", "points_per_cluster", "balance", "kmeans_iters", "seed", "query_batch", "codes"),
    "faiss-flat": ("rerank", "space", "gpu", "threads"),
    "faiss-ivf": ("rerank", "nlist", "nprobe", "space", "gpu", "threads", "seed"),
    "faiss-hnsw": ("rerank", "M", "efSearch", "efConstruction", "space", "threads"),
}
DEVICE_INDEXES = tuple(kind for kind, names in _PARAMS.items() if "device" in names)
"""Index kinds that search on the device of their ``device`` argument (CUDA kernels on a GPU)."""


def make_index(kind: str = "exact", geometry: str = "poincare", **params):
    """Build an index by name.

    Args:
        kind: one of :data:`INDEX_KINDS`.
        geometry: ``"poincare"`` or ``"euclidean"``.
        **params: passed to the index constructor; ``None`` values are dropped (so the CLI can
            pass ``nprobe=None``).

    Raises:
        ValueError: unknown ``kind`` or a parameter the kind does not take.
        ImportError: a faiss kind without faiss installed.

    Example:
        >>> idx = make_index("clustered", nprobe=4).add(torch.rand(100, 5) * 0.1)
        >>> D, I = idx.search(torch.rand(3, 5) * 0.1, 10)
    """
    check_choice("index", kind, INDEX_KINDS)
    params = {k: v for k, v in params.items() if v is not None}
    bad = sorted(set(params) - set(_PARAMS[kind]))
    if bad:
        raise ValueError(f"index {kind!r} does not take {bad}; it takes {list(_PARAMS[kind])}")
    if kind == "exact":
        return ExactIndex(geometry=geometry, **params)
    if kind == "torch":
        return TorchIndex(geometry=geometry, **params)
    if kind == "clustered":
        return ClusteredIndex(geometry=geometry, **params)
    if kind == "ann":
        return AnnIndex(geometry=geometry, **params)
    return FaissIndex(kind[len("faiss-"):], geometry=geometry, **params)
