"""Nearest-neighbour search among training-example embeddings.

All indexes share faiss's interface: ``index.add(db)`` then ``index.search(q, k) -> (D, I)``
with ``D`` the ``(Q, k)`` float32 distances (ascending) and ``I`` the ``(Q, k)`` int64 row ids of
the database (``-1`` where the database has fewer than ``k`` points). :func:`make_index` builds
one from a name, as the CLI's ``--index`` does.
"""
from __future__ import annotations

import torch

from . import manifold

INDEX_KINDS = ("exact",)


class ExactIndex:
    """Exact brute-force kNN in the Poincaré ball (or Euclidean space), batched in pure torch.

    Distances for a ``(query chunk x database chunk)`` block come from one GEMM
    (:func:`xhyp.manifold.pairwise_dist`), a running top-``k'`` is kept per query, and the final
    shortlist (``k' = min(M, 2k)``) is re-scored with the exact :func:`xhyp.manifold.dist`, so
    the GEMM's cancellation for very close pairs cannot reorder the returned neighbours.
    Memory is bounded by ``query_batch x db_batch`` floats.

    Args:
        geometry: ``"poincare"`` or ``"euclidean"``.
        query_batch: queries per block.
        db_batch: database rows per block.
        device: where to compute (``None``: where the database is).
    """

    def __init__(self, geometry: str = "poincare", query_batch: int = 1024, db_batch: int = 65536,
                 device=None):
        if geometry not in ("poincare", "euclidean"):
            raise ValueError(f"unknown geometry {geometry!r}")
        self.geometry = geometry
        self.query_batch = query_batch
        self.db_batch = db_batch
        self.device = device
        self.db = None

    def _pair(self, q, d):
        if self.geometry == "poincare":
            return manifold.pairwise_dist(q, d)
        return torch.cdist(q, d)

    def _exact(self, q, d):
        if self.geometry == "poincare":
            return manifold.dist(q, d)
        return (q - d).pow(2).sum(-1).sqrt()

    def add(self, db: torch.Tensor) -> "ExactIndex":
        """Set the database.

        Args:
            db: ``(M, n)`` float tensor of points (in the ball for Poincaré geometry).
        """
        if db.dim() != 2:
            raise ValueError(f"database must be (M, n), got shape {tuple(db.shape)}")
        self.db = db.to(self.device) if self.device is not None else db
        return self

    @torch.no_grad()
    def search(self, q: torch.Tensor, k: int):
        """k nearest database points of each query.

        Args:
            q: ``(Q, n)`` queries, same dtype as the database.
            k: neighbours per query (``>= 1``).

        Returns:
            ``(D, I)``: ``(Q, k)`` float distances ascending, ``(Q, k)`` int64 ids (``-1`` and
            ``inf`` beyond the database size).

        Raises:
            RuntimeError: if :meth:`add` was not called. ValueError: bad ``k`` or dimension.
        """
        if self.db is None:
            raise RuntimeError("search() before add()")
        if k < 1:
            raise ValueError(f"k must be >= 1, got {k}")
        if q.shape[-1] != self.db.shape[1]:
            raise ValueError(f"query dimension {q.shape[-1]} != database dimension {self.db.shape[1]}")
        db = self.db
        q = q.to(db.device, db.dtype)
        M = db.shape[0]
        kk = min(M, 2 * k)
        Ds, Is = [], []
        for qs in range(0, q.shape[0], self.query_batch):
            qc = q[qs:qs + self.query_batch]
            best_d = torch.empty(qc.shape[0], 0, dtype=db.dtype, device=db.device)
            best_i = torch.empty(qc.shape[0], 0, dtype=torch.long, device=db.device)
            for ds in range(0, M, self.db_batch):
                dd = self._pair(qc, db[ds:ds + self.db_batch])
                kc = min(kk, dd.shape[1])
                v, i = torch.topk(dd, kc, dim=1, largest=False)
                best_d = torch.cat([best_d, v], 1)
                best_i = torch.cat([best_i, i + ds], 1)
                if best_d.shape[1] > kk:
                    best_d, sel = torch.topk(best_d, kk, dim=1, largest=False)
                    best_i = torch.gather(best_i, 1, sel)
            # exact re-scoring of the shortlist
            exact = self._exact(qc[:, None, :], db[best_i])
            kc = min(k, exact.shape[1])
            v, sel = torch.topk(exact, kc, dim=1, largest=False)
            i = torch.gather(best_i, 1, sel)
            Ds.append(v)
            Is.append(i)
        D = torch.cat(Ds) if Ds else torch.empty(0, min(k, M), dtype=db.dtype)
        I = torch.cat(Is) if Is else torch.empty(0, min(k, M), dtype=torch.long)
        if k > M:
            pad = k - M
            D = torch.cat([D, torch.full((D.shape[0], pad), float("inf"), dtype=D.dtype, device=D.device)], 1)
            I = torch.cat([I, torch.full((I.shape[0], pad), -1, dtype=torch.long, device=I.device)], 1)
        return D.cpu(), I.cpu()


def make_index(kind: str = "exact", geometry: str = "poincare", **params):
    """Build an index by name.

    Args:
        kind: one of :data:`INDEX_KINDS`.
        geometry: ``"poincare"`` or ``"euclidean"``.
        **params: passed to the index constructor.

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind == "exact":
        return ExactIndex(geometry=geometry, **params)
    raise ValueError(f"unknown index {kind!r}; choose from {INDEX_KINDS}")
