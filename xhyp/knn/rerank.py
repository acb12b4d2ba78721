"""Shortlist re-ranking: the kNN vote fused with per-label linear scorers trained on mined hard negatives.

The kNN vote (Gerald & Baskiotis, CAp 2019, section 2.5) ranks the labels of a query's nearest
training examples in the ball. Here those neighbours also give the query a **shortlist**: every
label that one of its ``K`` nearest training examples (``rerank_knn``) carries. Each shortlisted
label ``l`` is then scored

    s(q, l) = v_k(q, l) / k + w * sigmoid(<a_l, x_q> + b_l)

where ``v_k(q, l)`` is the vote of the ``k`` nearest neighbours (:func:`xhyp.knn.vote.vote`,
``weighting`` as chosen), ``x_q`` the query's preprocessed sparse features (the model's
:class:`xhyp.embedding.features.FeaturePipeline`) and ``(a_l, b_l)`` label ``l``'s linear scorer; labels
outside the shortlist are not scored. ``w = 0`` is the plain vote.

Training the scorers follows the shortlist-classifier stage of SiameseXML (Dahiya et al., ICML
2021) and DEXA (Dahiya et al., KDD 2023) and the hard-negative mining of NGAME (Dahiya et al.,
WSDM 2023): label ``l`` is trained on its positive training examples against its
**hard negatives**, the training examples that do not carry ``l`` but whose own shortlist (the
labels of their ``K`` nearest *other* training examples in the learned space) contains it. Each
scorer is an L2-regularised squared-hinge linear SVM (scikit-learn's ``LinearSVC``, i.e.
liblinear, the classifier Parabel trains in its leaves: Prabhu et al., WWW 2018). A label's
training set is its positives plus its shortlist negatives, so the cost follows the shortlists
(``N K`` label occurrences), not ``N L``.

The scorers are fitted, and ``k`` and ``w`` chosen on the trainer's validation split (the examples
early stopping already holds out), after training by :mod:`xhyp.training.prediction_fit`; they are
stored in the model directory (``reranker.npz``, ``config.json["predict"]``) and used by
:class:`xhyp.prediction.predictor.Predictor` by default.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from ..config import RERANKERS  # noqa: F401  (re-exported)
from ..utils import atomic_save_npz

RERANK_FILE = "reranker.npz"
"""The scorers' file in a model directory (present when ``rerank="linear"``)."""
_MARGIN_BLOCK_CELLS = 1 << 22  # (queries x shortlisted labels) cells of one dense margin block


def neighbour_labels(ids, Y_db: sp.csr_matrix, self_ids=None) -> sp.csr_matrix:
    """How many of each query's neighbours carry each label: the shortlist with its counts.

    Args:
        ids: ``(Q, K)`` int neighbour ids into ``Y_db`` (``-1``: no neighbour), a tensor or array.
        Y_db: ``(N, L)`` CSR labels of the database.
        self_ids: ``(Q,)`` database id of each query when the queries are database points
            (training examples): that neighbour is left out (leave-one-out shortlists).

    Returns:
        ``(Q, L)`` float32 CSR of neighbour counts (its pattern is the shortlist).
    """
    ids = np.asarray(ids.numpy() if hasattr(ids, "numpy") else ids, dtype=np.int64)
    keep = ids >= 0
    if self_ids is not None:
        keep &= ids != np.asarray(self_ids, dtype=np.int64)[:, None]
    Q, K = ids.shape
    rows = np.repeat(np.arange(Q), K)[keep.ravel()]
    A = sp.csr_matrix((np.ones(len(rows), dtype=np.float32), (rows, ids.ravel()[keep.ravel()])),
                      shape=(Q, Y_db.shape[0]))
    out = (A @ sp.csr_matrix(Y_db, dtype=np.float32)).tocsr()
    out.sort_indices()
    return out


class LabelScorer:
    """Per-label linear scorers ``m_l(x) = <a_l, x> + b_l`` on preprocessed sparse features.

    Args:
        coef: ``(F, L)`` sparse weights (column ``l`` is ``a_l``), stored as float32 CSC.
        intercept: ``(L,)`` biases ``b_l``.

    Raises:
        ValueError: shapes that do not agree.
    """

    def __init__(self, coef: sp.spmatrix, intercept: np.ndarray):
        self.coef = sp.csc_matrix(coef, dtype=np.float32)
        self.intercept = np.asarray(intercept, dtype=np.float32).ravel()
        if self.intercept.shape[0] != self.coef.shape[1]:
            raise ValueError(f"coef has {self.coef.shape[1]} labels but intercept {self.intercept.shape[0]}")

    @property
    def n_labels(self) -> int:
        """``L``, the number of labels scored."""
        return int(self.coef.shape[1])

    @classmethod
    def fit(cls, X: sp.csr_matrix, Y: sp.csr_matrix, shortlist: sp.csr_matrix, C: float = 1.0,
            seed: int = 0, threads: int = 1) -> "LabelScorer":
        """Train one linear SVM per label on its positives and its shortlist (hard) negatives.

        Label ``l``'s training rows are ``{i : Y[i, l] = 1} U {i : shortlist[i, l] != 0}``, with
        target ``Y[i, l]``; a label with positives but no negative gets ``a_l = 0, b_l = 1``, a label
        with no positive ``a_l = 0, b_l = -1``. Solver: ``sklearn.svm.LinearSVC(C=C,
        loss="squared_hinge")`` (liblinear's L2-regularised L2-loss SVM, dual coordinate descent).

        Args:
            X: ``(N, F)`` preprocessed features (CSR). Y: ``(N, L)`` binary labels (CSR).
            shortlist: ``(N, L)`` sparse, non-zero where a label is shortlisted for an example
                (:func:`neighbour_labels` with ``self_ids``).
            C: inverse regularisation strength. seed: liblinear's shuffling seed.
            threads: labels trained at once (liblinear runs without the GIL); the result does not
                depend on it.

        Returns:
            the fitted :class:`LabelScorer`.

        Raises:
            ValueError: shapes that do not agree, or ``C <= 0``.
        """
        from concurrent.futures import ThreadPoolExecutor

        from sklearn.svm import LinearSVC

        X = sp.csr_matrix(X, dtype=np.float32)
        if not (X.shape[0] == Y.shape[0] == shortlist.shape[0]) or Y.shape[1] != shortlist.shape[1]:
            raise ValueError(f"X {X.shape}, Y {Y.shape} and shortlist {shortlist.shape} do not agree")
        if not C > 0:
            raise ValueError(f"C must be positive, got {C}")
        Yc = sp.csc_matrix(Y)
        Yc.eliminate_zeros()
        Yc.sort_indices()
        Sc = sp.csc_matrix(shortlist)
        Sc.eliminate_zeros()
        L, F = Y.shape[1], X.shape[1]

        def one(l):
            pos = Yc.indices[Yc.indptr[l]:Yc.indptr[l + 1]]
            rows = np.union1d(pos, Sc.indices[Sc.indptr[l]:Sc.indptr[l + 1]])
            if len(pos) == 0 or len(pos) == len(rows):
                return np.zeros(0, np.int64), np.zeros(0, np.float32), -1.0 if len(pos) == 0 else 1.0
            y = np.isin(rows, pos, assume_unique=True)
            svm = LinearSVC(C=C, loss="squared_hinge", dual=True, random_state=seed, max_iter=2000).fit(X[rows], y)
            w = svm.coef_.astype(np.float32).ravel()
            nz = np.flatnonzero(w)  # (the dual solution is 0 on features absent from the rows)
            return nz, w[nz], float(svm.intercept_[0])

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            fitted = list(pool.map(one, range(L)))
        indptr = np.zeros(L + 1, dtype=np.int64)
        np.cumsum([len(f[0]) for f in fitted], out=indptr[1:])
        cat = (lambda parts, dt: np.concatenate(parts).astype(dt) if parts else np.zeros(0, dt))  # noqa: E731
        coef = sp.csc_matrix((cat([f[1] for f in fitted], np.float32), cat([f[0] for f in fitted], np.int64), indptr),
                             shape=(F, L))
        return cls(coef, np.array([f[2] for f in fitted], dtype=np.float32))

    def margins(self, X: sp.csr_matrix, pattern: sp.csr_matrix) -> np.ndarray:
        """``m_l(x_q)`` at every stored entry of ``pattern``, in CSR order.

        Args:
            X: ``(Q, F)`` preprocessed query features (CSR).
            pattern: ``(Q, L)`` CSR whose stored entries are the (query, label) pairs to score.

        Returns:
            ``(pattern.nnz,)`` float32 margins.

        Raises:
            ValueError: shapes that do not agree with the scorer.
        """
        X = sp.csr_matrix(X, dtype=np.float32)
        if X.shape[1] != self.coef.shape[0] or pattern.shape != (X.shape[0], self.n_labels):
            raise ValueError(f"features {X.shape} and pattern {pattern.shape} do not fit a scorer of "
                             f"{self.coef.shape[0]} features and {self.n_labels} labels")
        pattern = sp.csr_matrix(pattern)
        pattern.sort_indices()
        out = np.empty(pattern.nnz, dtype=np.float32)
        Q = X.shape[0]
        # blocks of queries whose dense (block x labels shortlisted in the block) margins stay small
        block = max(1, _MARGIN_BLOCK_CELLS // max(1, len(np.unique(pattern.indices))))
        for start in range(0, Q, block):
            stop = min(Q, start + block)
            a, b = pattern.indptr[start], pattern.indptr[stop]
            uniq, inv = np.unique(pattern.indices[a:b], return_inverse=True)
            M = (X[start:stop] @ self.coef[:, uniq]).toarray()
            r = np.repeat(np.arange(stop - start), np.diff(pattern.indptr[start:stop + 1]))
            out[a:b] = M[r, inv.ravel()] + self.intercept[uniq][inv.ravel()]
        return out

    def save(self, path: str | Path) -> None:
        """Write the scorers to an ``.npz`` file (atomically)."""
        c = self.coef
        atomic_save_npz(path, shape=np.array(c.shape, dtype=np.int64), data=c.data, indices=c.indices,
                        indptr=c.indptr, intercept=self.intercept)

    @classmethod
    def load(cls, path: str | Path) -> "LabelScorer":
        """Read scorers written by :meth:`save`.

        Raises:
            ValueError: a file whose arrays do not make a scorer.
        """
        with np.load(path) as z:
            shape = tuple(int(v) for v in z["shape"])
            coef = sp.csc_matrix((z["data"], z["indices"], z["indptr"]), shape=shape)
            return cls(coef, z["intercept"])


def fuse(votes: sp.csr_matrix, shortlist: sp.csr_matrix, margins_fn, weight: float, k: int) -> sp.csr_matrix:
    """Fused scores ``votes / k + weight * sigmoid(margin)`` on the shortlist (module docstring).

    Args:
        votes: ``(Q, L)`` CSR vote of the ``k`` nearest neighbours (:func:`xhyp.knn.vote.vote`).
        shortlist: ``(Q, L)`` CSR, non-zero at the shortlisted labels (the votes' labels are
            always included).
        margins_fn: ``pattern -> (pattern.nnz,) margins`` (e.g. :meth:`LabelScorer.margins` of
            the queries), called once, only when ``weight > 0``.
        weight: ``w >= 0``. k: the vote's neighbour count (the votes are divided by it).

    Returns:
        ``(Q, L)`` float32 CSR; with ``weight = 0``, ``votes / k`` (on the votes' pattern only).
    """
    votes = sp.csr_matrix(votes, dtype=np.float64) / float(k)
    votes.sort_indices()
    if weight <= 0:
        return votes.astype(np.float32).tocsr()
    pattern = (abs(sp.csr_matrix(shortlist, dtype=np.float64)) + abs(votes)).tocsr()
    pattern.sort_indices()
    m = np.asarray(margins_fn(pattern), dtype=np.float64)
    out = sp.csr_matrix((values_at(votes, pattern) + weight * expit(m), pattern.indices.copy(),
                         pattern.indptr.copy()), shape=pattern.shape)
    return out.astype(np.float32)


def values_at(S: sp.csr_matrix, pattern: sp.csr_matrix) -> np.ndarray:
    """The entries of ``S`` at the stored positions of ``pattern`` (0 where ``S`` stores none).

    Args:
        S, pattern: ``(Q, L)`` CSR matrices with sorted indices.

    Returns:
        ``(pattern.nnz,)`` float64, in ``pattern``'s CSR order.
    """
    L = pattern.shape[1]
    out = np.zeros(pattern.nnz, dtype=np.float64)
    if S.nnz == 0 or pattern.nnz == 0:
        return out
    keys_p = np.repeat(np.arange(pattern.shape[0], dtype=np.int64), np.diff(pattern.indptr)) * L + pattern.indices
    keys_s = np.repeat(np.arange(S.shape[0], dtype=np.int64), np.diff(S.indptr)) * L + S.indices
    at = np.searchsorted(keys_s, keys_p).clip(max=len(keys_s) - 1)
    hit = keys_s[at] == keys_p
    out[hit] = S.data[at[hit]]
    return out
