"""Shortlist re-ranking: the kNN vote fused with per-label linear scorers trained on mined hard negatives.

The kNN vote (Gerald & Baskiotis, CAp 2019, section 2.5) ranks the labels of a query's nearest
training examples in the ball. Here those neighbours also give the query a **shortlist**: every
label that one of its ``K`` nearest training examples (``rerank_knn``) carries. Each shortlisted
label ``l`` is then scored

    s(q, l) = v_k(q, l) / k + w * sigmoid(<a_l, x_q> + b_l)

where ``v_k(q, l)`` is the vote of the ``k`` nearest neighbours (:func:`xhyp.vote.vote`,
``weighting`` as chosen), ``x_q`` the query's preprocessed sparse features (the model's
:class:`xhyp.features.FeaturePipeline`) and ``(a_l, b_l)`` label ``l``'s linear scorer; labels
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

``k`` and ``w`` are chosen after training on the trainer's validation split
(:func:`select_settings`, the examples early stopping already holds out), stored in the model's
``config.json["predict"]`` and used by :class:`xhyp.predict.Predictor` by default.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from scipy.special import expit

from .utils import atomic_save_npz

RERANKERS = ("none", "linear")
RERANK_FILE = "reranker.npz"
"""The scorers' file in a model directory (present when ``rerank="linear"``)."""
_MARGIN_BLOCK_CELLS = 1 << 22  # (queries x shortlisted labels) cells of one dense margin block


def parse_grid(text: str, kind=float, name: str = "grid") -> list:
    """``"1,2,4"`` -> ``[1.0, 2.0, 4.0]`` (``kind`` of each item; ``""`` -> ``[]``).

    Raises:
        ValueError: an item that is not a number of ``kind``, or a negative one.
    """
    items = [s.strip() for s in str(text).split(",") if s.strip()]
    try:
        vals = [kind(s) for s in items]
    except ValueError:
        raise ValueError(f"{name} must be a comma-separated list of {kind.__name__} values, got {text!r}") from None
    if any(v < 0 for v in vals):
        raise ValueError(f"{name} must hold non-negative values, got {text!r}")
    return vals


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
        votes: ``(Q, L)`` CSR vote of the ``k`` nearest neighbours (:func:`xhyp.vote.vote`).
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


SELECTION_METRICS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")
"""Metrics whose mean picks the vote ``k`` and fusion weight on the validation split."""
FALLBACK_WEIGHT = 2.0
"""Fusion weight used without a validation split to choose one (``val_fraction=0``)."""


def select_settings(D, I, Y_db: sp.csr_matrix, Y_q: sp.csr_matrix, k_grid, w_grid, margins=None,
                    weighting: str = "count", alpha: float = 1.0, inv_prop=None) -> tuple[dict, list]:
    """Choose the vote's ``k`` and the fusion weight ``w`` on held-out queries with known labels.

    Every ``(k, w)`` of the grid scores the queries with :func:`fuse` and is evaluated by
    :func:`xhyp.eval.metrics.evaluate`; the best has the highest mean of
    :data:`SELECTION_METRICS` (ties: the earlier grid entry).

    Args:
        D, I: ``(Q, K)`` distances and ids of the queries' nearest database points, ``K >= max(k_grid)``.
        Y_db: ``(N, L)`` database labels. Y_q: ``(Q, L)`` the queries' true labels.
        k_grid: vote neighbour counts. w_grid: fusion weights (``[0]`` without scorers).
        margins: ``(Q, L)`` CSR of the scorers' margins on the queries' shortlists (``None``: no scorer).
        weighting, alpha: of the vote (:func:`xhyp.vote.vote`). inv_prop: ``(L,)`` inverse
            propensities for PSP@k (default: Jain et al.'s with ``A = 0.55, B = 1.5`` from ``Y_db``).

    Returns:
        ``(best, grid)``: the best ``{"k", "weight", metric: value...}`` and every grid entry.

    Raises:
        ValueError: an empty grid, a ``k`` above ``K``, or weights > 0 without margins.
    """
    from .eval.metrics import evaluate, inv_propensity
    from .vote import vote

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
        V = vote(I[:, :k], D[:, :k], Y_db, top_k=Y_db.shape[1], weighting=weighting, alpha=alpha)
        for w in w_grid:
            S = fuse(V, margins if margins is not None else V, lambda pat: values_at(margins, pat), w, k)
            m = evaluate(Y_q, S, ks=(1, 3, 5), inv_prop=inv_prop)
            row = {"k": int(k), "weight": float(w), **{n: float(m[n]) for n in SELECTION_METRICS}}
            row["score"] = float(np.mean([row[n] for n in SELECTION_METRICS]))
            grid.append(row)
    best = max(grid, key=lambda r: r["score"])  # max keeps the first of equal scores
    return best, grid


def fit_prediction(model, Xp: sp.csr_matrix, Y: sp.csr_matrix, tr_idx, va_idx, emb, cfg) -> tuple[dict, object]:
    """After training: fit the shortlist scorers and choose the prediction settings.

    The scorers (``cfg.rerank == "linear"``) are trained on the training part ``tr_idx`` with
    leave-one-out shortlists of ``cfg.rerank_knn`` neighbours among the training part
    (:func:`neighbour_labels`, :meth:`LabelScorer.fit`). With a validation part, the vote ``k``
    (``cfg.knn_grid``) and the weight (``cfg.rerank_weights``) are chosen on it by
    :func:`select_settings`, the validation queries searching the training part (as the
    per-epoch validation does); without one, ``k = cfg.knn`` and ``w =``
    :data:`FALLBACK_WEIGHT` (0 without scorers).

    Args:
        model: the trained :class:`xhyp.model.HyperbolicXMC` (its geometry is used).
        Xp: ``(N, F)`` preprocessed features. Y: ``(N, L)`` labels (CSR, sorted indices).
        tr_idx, va_idx: sorted row ids of the training and validation parts.
        emb: ``(N, n)`` embeddings of all rows by the final model.
        cfg: the :class:`xhyp.train.TrainConfig` (``knn``, ``knn_grid``, ``weighting``, ``alpha``,
            ``rerank``, ``rerank_knn``, ``rerank_c``, ``rerank_weights``, ``seed``).

    Returns:
        ``(settings, scorer)``: ``settings`` is stored as ``config.json["predict"]`` (``k``,
        ``rerank_weight``, ``rerank_knn``, ``reranker`` (file name or ``None``), the selection
        grid and timings); ``scorer`` a :class:`LabelScorer` or ``None``.
    """
    import time

    from .index import make_index

    t0 = time.time()
    k_grid = parse_grid(cfg.knn_grid, int, "knn_grid") or [cfg.knn]
    scorer = None
    w_grid = [0.0]
    K = max(k_grid)
    Y_tr = Y[tr_idx]
    index = make_index("exact", geometry=model.config.geometry).add(emb[tr_idx])
    if cfg.rerank == "linear" and len(tr_idx) > 1:
        K = max(K, cfg.rerank_knn)
        w_grid = parse_grid(cfg.rerank_weights, float, "rerank_weights") or [FALLBACK_WEIGHT]
        _, I = index.search(emb[tr_idx], min(cfg.rerank_knn + 1, len(tr_idx)))
        shortlist = neighbour_labels(I, Y_tr, self_ids=np.arange(len(tr_idx)))
        import torch

        scorer = LabelScorer.fit(Xp[tr_idx], Y_tr, shortlist, C=cfg.rerank_c, seed=cfg.seed,
                                 threads=cfg.threads or torch.get_num_threads())
    out = {"k": int(cfg.knn if len(k_grid) > 1 else k_grid[0]), "rerank_weight": FALLBACK_WEIGHT if scorer else 0.0,
           "rerank_knn": int(K), "reranker": RERANK_FILE if scorer is not None else None,
           "fit_seconds": round(time.time() - t0, 3)}
    K = min(K, len(tr_idx))
    k_grid = [k for k in k_grid if k <= K] or [K]
    if len(va_idx) > 0 and len(tr_idx) > 0 and (len(k_grid) > 1 or len(w_grid) > 1):
        t1 = time.time()
        D, I = index.search(emb[va_idx], K)
        margins = None
        if scorer is not None:
            sl = neighbour_labels(I, Y_tr)
            sl.data[:] = 1.0
            margins = sp.csr_matrix((scorer.margins(Xp[va_idx], sl), sl.indices, sl.indptr), shape=sl.shape)
        best, grid = select_settings(D, I, Y_tr, Y[va_idx], k_grid, w_grid, margins, cfg.weighting, cfg.alpha)
        out.update(k=best["k"], rerank_weight=best["weight"], selection=grid,
                   select_seconds=round(time.time() - t1, 3))
    return out, scorer
