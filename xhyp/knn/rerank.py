"""Shortlist re-ranking: the kNN vote fused with per-label linear scorers trained on mined hard negatives.

The kNN vote (Gerald & Baskiotis, CAp 2019, section 2.5) ranks the labels of a query's nearest
training examples in the ball. Here those neighbours also give the query a **shortlist**: the
labels that its ``K`` nearest training examples (``rerank_knn``) carry, ranked by how many of them
carry each (ties: the label of the nearer neighbours first, the count vote of
:func:`xhyp.knn.vote.vote`), at most ``S`` of them (``rerank_shortlist``; 0: all). Each label
``l`` of the shortlist or of the vote is then scored

    s(q, l) = v_k(q, l) / k + w * sigmoid(<a_l, x_q> + b_l)

where ``v_k(q, l)`` is the vote of the ``k`` nearest neighbours (:func:`xhyp.knn.vote.vote`,
``weighting`` as chosen; its top ``S`` labels), ``x_q`` the query's preprocessed sparse features
(the model's :class:`xhyp.embedding.features.FeaturePipeline`) and ``(a_l, b_l)`` label ``l``'s
linear scorer; other labels are not scored. ``w = 0`` is the plain vote. A query costs at most
``2 S`` margins.

Training the scorers follows the shortlist-classifier stage of SiameseXML (Dahiya et al., ICML
2021) and DEXA (Dahiya et al., KDD 2023) and the hard-negative mining of NGAME (Dahiya et al.,
WSDM 2023): label ``l`` is trained on its positive training examples against its
**hard negatives**, the training examples that do not carry ``l`` but whose own shortlist (the
labels of their ``K`` nearest *other* training examples in the learned space) contains it. Each
scorer is an L2-regularised squared-hinge linear SVM (scikit-learn's ``LinearSVC``, i.e.
liblinear, the classifier Parabel trains in its leaves: Prabhu et al., WWW 2018). The cost is
bounded by these rules (:meth:`LabelScorer.fit`; the defaults of :class:`xhyp.config.TrainConfig`
in brackets, chosen on held-out parts of Bibtex and Delicious train, docs/accuracy.md):

* a training example's shortlist holds at most ``S`` labels (``rerank_shortlist``, 200), so all
  the labels' negatives together are at most ``N S`` rows (not ``N K`` label occurrences, nor
  ``N L``): the fit's time grows as ``N (S + labels per example) x features per example``,
  whatever ``L``;
* weights with ``|a_l[f]| < t`` (``rerank_prune``, 0.1) are set to 0 after the fit, as Parabel
  prunes its classifiers (``t = 0.1``, Prabhu et al. 2018, section 4): the model keeps the
  features that matter, not every feature its rows touch (at most ``N (S + labels per example)
  x features per example`` weights before pruning, whatever ``L``);
* each SVM stops at tolerance ``rerank_tol`` (0.01; scikit-learn's default 1e-4 takes about
  1.5-2 times as long for the same held-out accuracy; liblinear's own 0.1 is faster still but,
  with pruning, costs held-out Bibtex accuracy: its weights stay smaller);
* optionally, a label keeps at most ``M`` negatives (``rerank_negatives``, 0: all), the hardest:
  those whose shortlist ranks it highest (most neighbours carrying it). This one costs accuracy
  (held-out Bibtex and Delicious), hence off by default.

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
_VOTE_BLOCK_CELLS = 1 << 24  # (queries x labels kept) cells of one vote call
_FIT_CHUNK = 32  # labels per task of the fitting threads


def _ids_dists(ids, dists):
    """``(Q, K)`` int64 ids and the distances (their float dtype kept) as numpy arrays."""
    def arr(a, dt=None):
        return np.asarray(a.detach().cpu().numpy() if hasattr(a, "detach") else a, dtype=dt)

    return arr(ids, np.int64), arr(dists)


def drop_self(ids, dists, self_ids):
    """Leave-one-out neighbours: each row without its own database id.

    Args:
        ids, dists: ``(Q, K + 1)`` neighbour ids (ascending distance) and distances.
        self_ids: ``(Q,)`` the database id of each query.

    Returns:
        ``(Q, K)`` int64 ids and distances: the row without ``self_ids[q]`` where it
        appears, else without its last (farthest) neighbour; order kept.
    """
    I, D = _ids_dists(ids, dists)
    drop = I == np.asarray(self_ids, dtype=np.int64)[:, None]
    drop[:, -1] |= ~drop.any(1)
    drop &= np.cumsum(drop, 1) == 1  # (one entry a row, should an id repeat)
    keep = ~drop
    Q, K1 = I.shape
    return I[keep].reshape(Q, K1 - 1), D[keep].reshape(Q, K1 - 1)


def top_votes(ids, dists, Y_db: sp.csr_matrix, top: int = 0, weighting: str = "count",
              alpha: float = 1.0) -> sp.csr_matrix:
    """The vote of the given neighbours (:func:`xhyp.knn.vote.vote`), its top ``top`` labels
    (0: every label a neighbour carries), computed a block of queries at a time.

    Unlike ``vote(..., top_k=L)`` this never asks the kernel for more labels a query than its
    neighbours carry, so memory follows the shortlists, not ``Q x L``.

    Args:
        ids, dists: ``(Q, K)`` neighbour ids into ``Y_db`` (``-1``: none) and distances, ascending.
        Y_db: ``(N, L)`` CSR labels of the database. top: labels kept per query (0: all).
        weighting, alpha: of the vote.

    Returns:
        ``(Q, L)`` float32 CSR, at most ``top`` entries a row.
    """
    from .vote import vote

    I, D = _ids_dists(ids, dists)
    Q, L = I.shape[0], Y_db.shape[1]
    per_row = np.diff(Y_db.indptr)
    carried = np.where(I >= 0, per_row[np.maximum(I, 0)], 0).sum(1) if I.size else np.zeros(Q, np.int64)
    width = max(1, min(top or L, L, int(carried.max(initial=1))))
    block = max(1, _VOTE_BLOCK_CELLS // width)
    parts = []
    for start in range(0, Q, block):
        w = max(1, min(width, int(carried[start:start + block].max(initial=1))))
        parts.append(vote(I[start:start + block], D[start:start + block], Y_db, top_k=w, weighting=weighting,
                          alpha=alpha))
    return sp.vstack(parts).tocsr() if parts else sp.csr_matrix((0, L), dtype=np.float32)


def shortlist(ids, dists, Y_db: sp.csr_matrix, cap: int = 0, self_ids=None) -> sp.csr_matrix:
    """A query's shortlist: the labels its neighbours carry, ranked by how many of them carry each.

    The ranking is the count vote (:func:`xhyp.knn.vote.neighbour_weights` ``"count"``: the
    number of neighbours carrying the label, ties broken towards the nearer ones); the top
    ``cap`` labels are kept.

    Args:
        ids, dists: ``(Q, K)`` neighbour ids into ``Y_db`` (``-1``: no neighbour) and distances,
            ascending (tensors or arrays); ``(Q, K + 1)`` with ``self_ids``.
        Y_db: ``(N, L)`` CSR labels of the database.
        cap: labels kept per query (0: all).
        self_ids: ``(Q,)`` database id of each query when the queries are database points
            (training examples): that neighbour is left out (leave-one-out shortlists,
            :func:`drop_self`).

    Returns:
        ``(Q, L)`` float32 CSR; its pattern is the shortlist, its values the count vote (the
        number of neighbours carrying the label, plus at most 0.001 a neighbour as tie-break).
    """
    if self_ids is not None:
        ids, dists = drop_self(ids, dists, self_ids)
    return top_votes(ids, dists, Y_db, cap, "count")


def _unique_inverse(cols: np.ndarray, L: int) -> tuple[np.ndarray, np.ndarray]:
    """``np.unique(cols, return_inverse=True)`` for label ids in ``[0, L)``: by marking a dense
    ``(L,)`` array (no sort) when ``L`` is small against ``cols``, else by sorting."""
    if L <= 4 * cols.size:
        mark = np.zeros(L, dtype=np.int64)
        mark[cols] = 1
        return np.flatnonzero(mark), (np.cumsum(mark) - 1)[cols]
    return np.unique(cols, return_inverse=True)


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
            seed: int = 0, threads: int = 1, prune: float = 0.0, max_negatives: int = 0,
            tol: float = 1e-4) -> "LabelScorer":
        """Train one linear SVM per label on its positives and its shortlist (hard) negatives.

        Label ``l``'s training rows are its positives ``{i : Y[i, l] = 1}`` and its negatives
        ``{i : shortlist[i, l] != 0, Y[i, l] = 0}``; with ``max_negatives = M > 0`` only the ``M``
        negatives with the largest ``shortlist[i, l]`` (most neighbours carrying ``l``; ties: the
        lower row) are kept. Target ``Y[i, l]``; a label with positives but no negative gets
        ``a_l = 0, b_l = 1``, a label with no positive ``a_l = 0, b_l = -1``. Solver:
        ``sklearn.svm.LinearSVC(C=C, loss="squared_hinge", tol=tol)`` (liblinear's L2-regularised
        L2-loss SVM, dual coordinate descent, stopped at tolerance ``tol``); then weights with ``|a_l[f]| < prune`` are set to 0
        (Parabel's pruning, Prabhu et al., WWW 2018).

        Args:
            X: ``(N, F)`` preprocessed features (CSR). Y: ``(N, L)`` binary labels (CSR).
            shortlist: ``(N, L)`` sparse, non-zero where a label is shortlisted for an example,
                larger for harder negatives (:func:`shortlist` with ``self_ids``).
            C: inverse regularisation strength. seed: liblinear's shuffling seed.
            threads: labels trained at once (liblinear runs without the GIL; the largest labels
                start first); the result does not depend on it.
            prune: weights below this magnitude are dropped (0: none).
            max_negatives: negatives kept per label (0: all).
            tol: the solver's stopping tolerance (liblinear's ``eps``; its own default is 0.1).

        Returns:
            the fitted :class:`LabelScorer` (float32 weights, ``int32`` feature ids).

        Raises:
            ValueError: shapes that do not agree, ``C <= 0``, ``tol <= 0``, ``prune < 0`` or
                ``max_negatives < 0``.
        """
        from concurrent.futures import ThreadPoolExecutor

        from sklearn.svm import LinearSVC

        X = sp.csr_matrix(X, dtype=np.float32)
        if not (X.shape[0] == Y.shape[0] == shortlist.shape[0]) or Y.shape[1] != shortlist.shape[1]:
            raise ValueError(f"X {X.shape}, Y {Y.shape} and shortlist {shortlist.shape} do not agree")
        if not C > 0 or not tol > 0 or not prune >= 0 or max_negatives < 0:
            raise ValueError(f"C and tol must be positive and prune, max_negatives >= 0 "
                             f"(got {C}, {tol}, {prune}, {max_negatives})")
        Yc = sp.csc_matrix(Y)
        Yc.eliminate_zeros()
        Yc.sort_indices()
        Sc = sp.csc_matrix(shortlist, dtype=np.float32)
        Sc.eliminate_zeros()
        Sc.sort_indices()
        L, F = Y.shape[1], X.shape[1]

        def rows_of(l):
            pos = Yc.indices[Yc.indptr[l]:Yc.indptr[l + 1]]
            cand, hard = Sc.indices[Sc.indptr[l]:Sc.indptr[l + 1]], Sc.data[Sc.indptr[l]:Sc.indptr[l + 1]]
            is_neg = ~np.isin(cand, pos, assume_unique=True)
            neg, hard = cand[is_neg], hard[is_neg]
            if 0 < max_negatives < len(neg):  # the hardest: largest shortlist value, then lower row
                neg = np.sort(neg[np.argsort(-hard, kind="stable")[:max_negatives]])
            return pos, neg

        def one(l):
            pos, neg = rows_of(l)
            if len(pos) == 0 or len(neg) == 0:
                return None, None, -1.0 if len(pos) == 0 else 1.0
            rows = np.union1d(pos, neg)
            y = np.isin(rows, pos, assume_unique=True)
            svm = LinearSVC(C=C, loss="squared_hinge", dual=True, tol=tol, random_state=seed,
                            max_iter=2000).fit(X[rows], y)
            w = svm.coef_.astype(np.float32).ravel()
            nz = np.flatnonzero(np.abs(w) >= prune if prune > 0 else w != 0)
            # (the dual solution is 0 on features absent from the rows)
            return nz.astype(np.int32), w[nz], float(svm.intercept_[0])

        # tasks of about _FIT_CHUNK labels of mixed sizes (dealt round-robin from the largest
        # label down by rows), the largest labels in the first tasks: the threads finish together
        n_pos, n_cand = np.diff(Yc.indptr), np.diff(Sc.indptr)
        order = np.argsort(-(n_pos + np.minimum(n_cand, max_negatives or n_cand)), kind="stable")
        n_tasks = max(1, -(-L // _FIT_CHUNK))
        chunks = [order[j::n_tasks] for j in range(n_tasks)]
        idx, val = [None] * L, [None] * L
        bias = np.empty(L, dtype=np.float32)

        def run(chunk):
            for l in chunk:
                idx[l], val[l], bias[l] = one(l)

        with ThreadPoolExecutor(max_workers=max(1, int(threads))) as pool:
            list(pool.map(run, chunks))
        counts = np.array([0 if i is None else len(i) for i in idx], dtype=np.int64)
        indptr = np.zeros(L + 1, dtype=np.int64)
        np.cumsum(counts, out=indptr[1:])
        keep = [i for i in idx if i is not None]
        coef = sp.csc_matrix((np.concatenate([v for v in val if v is not None]) if keep else np.zeros(0, np.float32),
                              np.concatenate(keep) if keep else np.zeros(0, np.int32), indptr), shape=(F, L))
        return cls(coef, bias)

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
        L = self.n_labels
        n_labels_used = int(np.count_nonzero(np.bincount(pattern.indices, minlength=L)))
        block = max(1, _MARGIN_BLOCK_CELLS // max(1, n_labels_used))
        for start in range(0, Q, block):
            stop = min(Q, start + block)
            a, b = pattern.indptr[start], pattern.indptr[stop]
            uniq, inv = _unique_inverse(pattern.indices[a:b], L)
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
