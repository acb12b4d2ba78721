"""Evaluation metrics for extreme multi-label classification (XMC) and hierarchical MLC.

The ranking metrics follow pyxclib (``xclib/evaluation/xc_metrics.py``: ``precision``, ``ndcg``,
``psprecision``, ``psndcg``, ``compute_inv_propesity``) exactly, and agree with
``napkinxc.metrics`` (``precision_at_k``, ``ndcg_at_k``, ``psprecision_at_k``, ``psndcg_at_k``
with ``normalize=True``), which uses the same definitions.  All values are fractions in [0, 1];
:func:`format_table` shows them as percentages.

Notation: ``N`` test rows, ``L`` labels, ``y_i`` the set of true labels of row ``i``,
``r_i(1..k)`` the ``k`` labels ranked highest for row ``i`` and ``q_l`` the inverse propensity of
label ``l``.  Every "@k" function returns the whole curve ``[m@1, ..., m@k]`` (shape ``(k,)``,
float64), as pyxclib does.

* ``P@k      = mean_i (1/k) sum_{j<=k} [r_i(j) in y_i]``  (rows with no true label count as 0;
  the mean is over all ``N`` rows).
* ``nDCG@k   = mean_i DCG_i@k / IDCG_i@k`` with ``DCG_i@k = sum_{j<=k} [r_i(j) in y_i] / log2(j+1)``
  and ``IDCG_i@k = sum_{j<=min(k,|y_i|)} 1 / log2(j+1)``; rows with ``|y_i| = 0`` count as 0.
* ``PSP@k    = sum_i (1/k) sum_{j<=k} q_{r_i(j)} [r_i(j) in y_i]  /  sum_i (1/k) sum_{j<=k} q_{s_i(j)}``
  where ``s_i`` is the *ideal* ranking: the true labels of row ``i`` sorted by decreasing ``q``
  (only ``min(k, |y_i|)`` of them exist).  This is a ratio of sums over the data set (equivalently
  of means), **not** a mean of per-row ratios; it is what pyxclib's ``psprecision`` computes
  (``_precision(eval_flags) / _precision(ps_eval_flags)``), what napkinxc computes
  (``sum / best_sum``) and what Jain et al.'s Matlab code reports.  ``normalize=False`` returns the
  numerator alone (the unnormalised PSP@k of Jain et al. 2016, a mean over rows).
* ``PSnDCG@k = sum_i PSDCG_i@k / IDCG_i@k  /  sum_i PSDCG*_i@k / IDCG_i@k`` with
  ``PSDCG_i@k = sum_{j<=k} q_{r_i(j)} [r_i(j) in y_i] / log2(j+1)``, ``PSDCG*`` the same for the
  ideal ranking ``s_i`` and ``IDCG_i@k`` the *unweighted* ideal DCG defined above (pyxclib's
  ``psndcg`` and napkinxc's ``psndcg_at_k`` both divide per row by this unit-gain IDCG, then take
  the ratio of the two sums).  Rows with no true label contribute 0 to both sums.
  ``normalize=False`` returns ``mean_i PSDCG_i@k / IDCG_i@k`` (Jain et al.'s PSnDCG@k).

Ranking convention (:func:`topk_from_scores`): higher score first, ties broken by the lower label
id; in a sparse score matrix the missing entries are never ranked, and a row with fewer than ``k``
ranked entries is padded with ``-1`` (a padding slot never counts as a hit).  ``-inf`` and ``NaN``
scores (sparse or dense) are treated as missing, so a dense matrix with ``-inf`` at the missing
positions of a CSR matrix gives the same ranking as that CSR matrix.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import scipy.sparse as sp

__all__ = [
    "inv_propensity",
    "topk_from_scores",
    "precision_at_k",
    "ndcg_at_k",
    "psprecision_at_k",
    "psndcg_at_k",
    "evaluate",
    "most_common_baseline",
    "format_table",
    "micro_f1",
    "macro_f1",
    "au_prc",
]

# Number of float64 cells materialised at once when ranking (chunks of rows): 2**22 cells = 32 MiB.
_CHUNK_CELLS = 1 << 22


# ------------------------------------------------------------------------------------------------
# helpers
# ------------------------------------------------------------------------------------------------
def _as_binary_csr(Y) -> sp.csr_matrix:
    """Return ``Y`` (CSR/any sparse/dense, N x L) as a binary float64 CSR matrix with sorted indices
    and no explicit zeros (every stored nonzero counts as a positive)."""
    if sp.issparse(Y):
        Y = sp.csr_matrix(Y, copy=True)
    else:
        Y = sp.csr_matrix(np.asarray(Y))
    Y.eliminate_zeros()
    Y.sum_duplicates()  # also sorts the indices
    Y.sort_indices()
    Y.data = np.ones_like(Y.data, dtype=np.float64)
    return Y.astype(np.float64)


def _topk_dense_block(S: np.ndarray, k: int) -> np.ndarray:
    """Top-``k`` column positions of a dense float64 block ``S`` (n x m), highest score first, ties
    to the lower column, ``-inf``/``NaN`` treated as absent (-> -1). Returns int64 (n, k)."""
    n, m = S.shape
    out = np.full((n, k), -1, dtype=np.int64)
    if n == 0 or m == 0:
        return out
    S = np.where(np.isnan(S), -np.inf, S)
    kk = min(k, m)
    if m > kk:
        # v = kk-th largest value of each row; every entry > v is in the top kk, and the remaining
        # slots go to the entries == v with the lowest column ids.
        v = np.partition(S, m - kk, axis=1)[:, m - kk][:, None]
        gt = S > v
        eq = S == v
        need = kk - gt.sum(axis=1, keepdims=True)
        sel = gt | (eq & (np.cumsum(eq, axis=1) <= need))
        cols = np.nonzero(sel)[1].reshape(n, kk)  # row-major: ascending column within a row
    else:
        cols = np.broadcast_to(np.arange(m, dtype=np.int64), (n, m)).copy()
    vals = np.take_along_axis(S, cols, axis=1)
    order = np.argsort(-vals, axis=1, kind="stable")  # stable: ties keep ascending column order
    cols = np.take_along_axis(cols, order, axis=1)
    vals = np.take_along_axis(vals, order, axis=1)
    cols[vals == -np.inf] = -1
    out[:, :kk] = cols
    return out


def topk_from_scores(scores, k: int, return_scores: bool = False):
    """Indices of the ``k`` highest-scored labels of every row: the one ranking rule of xhyp
    (the metrics, the votes, the estimator's ``predict`` and the kernels' fallbacks use it).

    Parameters
    ----------
    scores : scipy.sparse matrix (N x L, any float/int dtype; converted to CSR) or np.ndarray (N x L)
        Prediction scores.  In a sparse matrix only the stored entries are ranked (a missing entry
        behaves like ``-inf``, i.e. it is never ranked above a stored one, even a stored negative
        or zero score).  ``-inf`` and ``NaN`` entries are treated as missing in both formats.
    k : int >= 1
    return_scores : bool
        Also return the scores of the ranked labels.

    Returns
    -------
    np.ndarray, int64, shape (N, k)
        Label ids sorted by decreasing score; equal scores are ordered by increasing label id
        (deterministic).  Rows with fewer than ``k`` ranked entries are padded with ``-1``.
    np.ndarray, float64, shape (N, k)
        With ``return_scores``: their scores (0 at the padding).

    Raises
    ------
    ValueError
        ``k < 1`` or scores that are not 2-D.

    Vectorised: dense input is processed in chunks of rows with ``np.partition``; CSR input is
    turned into padded dense blocks (rows grouped by their number of stored entries so that a few
    long rows do not inflate the blocks) and ranked the same way.
    """
    k = int(k)
    if k < 1:
        raise ValueError("k must be >= 1")
    if sp.issparse(scores):
        out, vals = _topk_csr(sp.csr_matrix(scores), k)
        return (out, vals) if return_scores else out
    S = np.asarray(scores)
    if S.ndim != 2:
        raise ValueError(f"scores must be 2-D, got shape {S.shape}")
    n, m = S.shape
    out = np.empty((n, k), dtype=np.int64)
    vals = np.zeros((n, k)) if return_scores else None
    step = max(1, _CHUNK_CELLS // max(m, 1))
    for i in range(0, n, step):
        block = np.asarray(S[i:i + step], dtype=np.float64)
        out[i:i + step] = _topk_dense_block(block, k)
        if return_scores:
            vals[i:i + step] = np.where(out[i:i + step] >= 0,
                                        np.take_along_axis(block, np.maximum(out[i:i + step], 0), 1), 0.0)
    return (out, vals) if return_scores else out


def _topk_csr(X: sp.csr_matrix, k: int):
    """``(ids (n, k) int64, scores (n, k) float64)`` of the stored entries of a CSR matrix."""
    n = X.shape[0]
    out = np.full((n, k), -1, dtype=np.int64)
    vals = np.zeros((n, k))
    if n == 0 or X.nnz == 0:
        return out, vals
    if not X.has_canonical_format:
        X = X.copy()
        X.sum_duplicates()  # scipy semantics for duplicate entries; also sorts the indices
    if not X.has_sorted_indices:
        X = X.sorted_indices()  # ascending label id inside a row = tie-break order
    indptr = X.indptr.astype(np.int64)
    indices = X.indices.astype(np.int64)
    data = X.data.astype(np.float64)
    nnz = np.diff(indptr)
    order = np.argsort(nnz, kind="stable")  # process rows by increasing length
    sorted_nnz = nnz[order]
    start = int(np.searchsorted(sorted_nnz, 1))  # rows with no entry stay all -1
    i = start
    while i < n:
        # rows order[i:j] have lengths <= sorted_nnz[j-1]; keep (j - i) * width <= _CHUNK_CELLS
        j = min(n, i + max(1, _CHUNK_CELLS // int(sorted_nnz[i])))
        while j - i > 1 and (j - i) * int(sorted_nnz[j - 1]) > _CHUNK_CELLS:
            j = i + max(1, _CHUNK_CELLS // int(sorted_nnz[j - 1]))
        rows = order[i:j]
        width = int(sorted_nnz[j - 1])
        lens = nnz[rows]
        starts = indptr[rows]
        # padded (len(rows) x width) block of values / label ids, positions in label order
        pos = np.arange(width, dtype=np.int64)[None, :]
        valid = pos < lens[:, None]
        src = (starts[:, None] + pos)[valid]
        V = np.full((len(rows), width), -np.inf)
        V[valid] = data[src]
        ids = np.full((len(rows), width), -1, dtype=np.int64)
        ids[valid] = indices[src]
        p = _topk_dense_block(V, k)
        lab = np.take_along_axis(ids, np.maximum(p, 0), axis=1)
        lab[p < 0] = -1
        out[rows] = lab
        vals[rows] = np.where(p >= 0, np.take_along_axis(V, np.maximum(p, 0), axis=1), 0.0)
        i = j
    return out, vals


def _hits(Y: sp.csr_matrix, idx: np.ndarray) -> np.ndarray:
    """``H[i, j] = 1.0`` if label ``idx[i, j]`` is a true label of row ``i`` (``-1`` -> 0).
    ``Y``: binary CSR with sorted indices (from :func:`_as_binary_csr`). Returns float64 (N, k)."""
    n, k = idx.shape
    L = Y.shape[1]
    if Y.nnz == 0:
        return np.zeros((n, k))
    row_of_nnz = np.repeat(np.arange(n, dtype=np.int64), np.diff(Y.indptr))
    keys = row_of_nnz * (L + 1) + Y.indices.astype(np.int64)  # ascending (sorted indices)
    q = np.arange(n, dtype=np.int64)[:, None] * (L + 1) + idx
    pos = np.searchsorted(keys, q)
    pos = np.minimum(pos, keys.size - 1)
    return ((keys[pos] == q) & (idx >= 0)).astype(np.float64)


def _check_shapes(Y, idx):
    if Y.shape[0] != idx.shape[0]:
        raise ValueError(f"Y_true has {Y.shape[0]} rows but scores have {idx.shape[0]}")


def _discounts(k: int) -> np.ndarray:
    """``1 / log2(j + 1)`` for ranks ``j = 1..k``."""
    return 1.0 / np.log2(np.arange(1, k + 1) + 1.0)


def _idcg(Y: sp.csr_matrix, k: int) -> np.ndarray:
    """Unit-gain ideal DCG, ``IDCG_i@j = sum_{r <= min(j, |y_i|)} 1/log2(r+1)``, shape (N, k);
    rows with no true label get ``inf`` so that ``DCG / IDCG = 0`` for them."""
    n_pos = np.diff(Y.indptr).astype(np.int64)
    csum = np.concatenate([[0.0], np.cumsum(_discounts(k))])  # csum[r] = sum of first r discounts
    ranks = np.arange(1, k + 1)[None, :]
    idcg = csum[np.minimum(ranks, n_pos[:, None])]
    idcg[n_pos == 0] = np.inf
    return idcg


def _mean_rows(M: np.ndarray) -> np.ndarray:
    return M.mean(axis=0) if M.shape[0] else np.zeros(M.shape[1])


def _safe_ratio(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), 0.0)


def _ideal_ps_ranking(Y: sp.csr_matrix, inv_prop: np.ndarray, k: int) -> np.ndarray:
    """Ideal ranking for the PS metrics: each row's true labels by decreasing ``inv_prop``."""
    W = sp.csr_matrix((inv_prop[Y.indices], Y.indices, Y.indptr), shape=Y.shape)
    return topk_from_scores(W, k)


def _check_inv_prop(inv_prop, L: int) -> np.ndarray:
    q = np.asarray(inv_prop, dtype=np.float64).ravel()
    if q.shape[0] != L:
        raise ValueError(f"inv_prop has {q.shape[0]} entries, expected {L} (one per label)")
    return q


def _gather(q: np.ndarray, idx: np.ndarray) -> np.ndarray:
    return np.where(idx >= 0, q[np.maximum(idx, 0)], 0.0)


# -- core computations from a ranking (shared by the public functions and evaluate) ------------
def _precision_from_topk(Y, idx):
    k = idx.shape[1]
    return _mean_rows(np.cumsum(_hits(Y, idx), axis=1) / np.arange(1, k + 1))


def _ndcg_from_topk(Y, idx):
    k = idx.shape[1]
    dcg = np.cumsum(_hits(Y, idx) * _discounts(k), axis=1)
    return _mean_rows(dcg / _idcg(Y, k))


def _psp_from_topk(Y, idx, q, normalize=True):
    k = idx.shape[1]
    denom = np.arange(1, k + 1)
    num = _mean_rows(np.cumsum(_hits(Y, idx) * _gather(q, idx), axis=1) / denom)
    if not normalize:
        return num
    best = _ideal_ps_ranking(Y, q, k)
    den = _mean_rows(np.cumsum(_gather(q, best), axis=1) / denom)  # ideal: all hits
    return _safe_ratio(num, den)


def _psndcg_from_topk(Y, idx, q, normalize=True):
    k = idx.shape[1]
    disc = _discounts(k)
    idcg = _idcg(Y, k)
    num = _mean_rows(np.cumsum(_hits(Y, idx) * _gather(q, idx) * disc, axis=1) / idcg)
    if not normalize:
        return num
    best = _ideal_ps_ranking(Y, q, k)
    den = _mean_rows(np.cumsum(_gather(q, best) * disc, axis=1) / idcg)
    return _safe_ratio(num, den)


# ------------------------------------------------------------------------------------------------
# public API
# ------------------------------------------------------------------------------------------------
def inv_propensity(Y_train, A: float | None = None, B: float | None = None) -> np.ndarray:
    """Inverse label propensities of Jain, Prabhu & Varma (KDD 2016), as in pyxclib's
    ``compute_inv_propesity`` and napkinxc's ``Jain_et_al_inverse_propensity``::

        C     = (ln N - 1) * (B + 1)^A
        q_l   = 1 / p_l = 1 + C * (N_l + B)^(-A)

    with ``N`` the number of training points and ``N_l`` the number of training points tagged
    with label ``l`` (every stored nonzero of ``Y_train`` counts once; identical to pyxclib's
    column sums for a binary matrix).  ``None`` takes the default of
    :data:`xhyp.datasets.registry.PROPENSITY_AB` (the values of the data set families, 0.55/1.5
    by default, live there; :func:`xhyp.datasets.registry.propensity_params` gives a data set's).

    Parameters
    ----------
    Y_train : CSR (or dense) matrix, N x L, binary
    A, B : float

    Returns
    -------
    np.ndarray, float64, shape (L,)
    """
    if A is None or B is None:
        from xhyp.datasets.registry import PROPENSITY_AB

        A = PROPENSITY_AB["default"][0] if A is None else A
        B = PROPENSITY_AB["default"][1] if B is None else B
    Y = _as_binary_csr(Y_train)
    n = Y.shape[0]
    freqs = np.bincount(Y.indices, minlength=Y.shape[1]).astype(np.float64)
    C = (np.log(n) - 1.0) * (B + 1.0) ** A
    return 1.0 + C * np.power(freqs + B, -A)


def precision_at_k(Y_true, scores, k: int = 5) -> np.ndarray:
    """Precision P@1..P@k (pyxclib ``precision``):
    ``P@j = mean_i (1/j) sum_{r<=j} [rank_i(r) in y_i]``, averaged over all N rows.

    Y_true: CSR (N x L) binary; scores: CSR or dense (N x L), see :func:`topk_from_scores`.
    Returns float64 array of shape (k,).
    """
    Y = _as_binary_csr(Y_true)
    idx = topk_from_scores(scores, k)
    _check_shapes(Y, idx)
    return _precision_from_topk(Y, idx)


def ndcg_at_k(Y_true, scores, k: int = 5) -> np.ndarray:
    """nDCG@1..nDCG@k (pyxclib ``ndcg``):
    ``nDCG@j = mean_i [sum_{r<=j} [rank_i(r) in y_i] / log2(r+1)] / [sum_{r<=min(j,|y_i|)} 1/log2(r+1)]``;
    rows with no true label contribute 0 (but are counted in the mean).
    Returns float64 array of shape (k,).
    """
    Y = _as_binary_csr(Y_true)
    idx = topk_from_scores(scores, k)
    _check_shapes(Y, idx)
    return _ndcg_from_topk(Y, idx)


def psprecision_at_k(Y_true, scores, inv_prop, k: int = 5, normalize: bool = True) -> np.ndarray:
    """Propensity-scored precision PSP@1..PSP@k (pyxclib ``psprecision``, napkinxc
    ``psprecision_at_k``)::

        PSP@j = sum_i (1/j) sum_{r<=j} q[rank_i(r)] [rank_i(r) in y_i]
                / sum_i (1/j) sum_{r<=min(j,|y_i|)} q[ideal_i(r)]

    ``ideal_i`` = true labels of row i sorted by decreasing ``q``; the normaliser is the PSP of
    that ideal ranking *summed over the data set* (ratio of sums, not a mean of ratios).
    ``normalize=False`` returns the numerator divided by N (unnormalised PSP, Jain et al. 2016).

    inv_prop: float array (L,), e.g. from :func:`inv_propensity`.  Returns float64 (k,).
    """
    Y = _as_binary_csr(Y_true)
    q = _check_inv_prop(inv_prop, Y.shape[1])
    idx = topk_from_scores(scores, k)
    _check_shapes(Y, idx)
    return _psp_from_topk(Y, idx, q, normalize)


def psndcg_at_k(Y_true, scores, inv_prop, k: int = 5, normalize: bool = True) -> np.ndarray:
    """Propensity-scored nDCG PSnDCG@1..PSnDCG@k (pyxclib ``psndcg``, napkinxc ``psndcg_at_k``)::

        PSnDCG@j = sum_i PSDCG_i@j / IDCG_i@j  /  sum_i PSDCG*_i@j / IDCG_i@j
        PSDCG_i@j  = sum_{r<=j} q[rank_i(r)] [rank_i(r) in y_i] / log2(r+1)
        PSDCG*_i@j = sum_{r<=min(j,|y_i|)} q[ideal_i(r)] / log2(r+1)
        IDCG_i@j   = sum_{r<=min(j,|y_i|)} 1 / log2(r+1)      (unit gains)

    Rows with no true label contribute 0 to both sums.  ``normalize=False`` returns
    ``mean_i PSDCG_i@j / IDCG_i@j`` (Jain et al. 2016's PSnDCG).  Returns float64 (k,).
    """
    Y = _as_binary_csr(Y_true)
    q = _check_inv_prop(inv_prop, Y.shape[1])
    idx = topk_from_scores(scores, k)
    _check_shapes(Y, idx)
    return _psndcg_from_topk(Y, idx, q, normalize)


def evaluate(Y_true, scores, ks: Sequence[int] = (1, 3, 5), inv_prop=None) -> dict:
    """All ranking metrics at the cut-offs ``ks`` from a single top-k computation.

    Returns ``{"P@1": .., "P@3": .., "P@5": .., "nDCG@1": .., ..}`` and, when ``inv_prop`` is
    given, also ``"PSP@k"`` and ``"PSnDCG@k"``; values are Python floats in [0, 1] (fractions,
    not percentages).

    Args:
        Y_true: ``(N, L)`` true labels (CSR or dense, binary).
        scores: ``(N, L)`` scores (CSR or dense; see :func:`topk_from_scores`).
        ks: cut-offs.
        inv_prop: ``(L,)`` inverse propensities (:func:`inv_propensity`) for the PS metrics, or ``None``.

    Raises:
        ValueError: empty or non-positive ``ks``, shapes that disagree, or ``inv_prop`` of the wrong length.
    """
    ks = [int(k) for k in ks]
    if not ks or min(ks) < 1:
        raise ValueError("ks must be a non-empty sequence of positive integers")
    K = max(ks)
    Y = _as_binary_csr(Y_true)
    idx = topk_from_scores(scores, K)
    _check_shapes(Y, idx)
    curves = {"P": _precision_from_topk(Y, idx), "nDCG": _ndcg_from_topk(Y, idx)}
    if inv_prop is not None:
        q = _check_inv_prop(inv_prop, Y.shape[1])
        curves["PSP"] = _psp_from_topk(Y, idx, q)
        curves["PSnDCG"] = _psndcg_from_topk(Y, idx, q)
    out = {}
    for name, curve in curves.items():
        for k in ks:
            out[f"{name}@{k}"] = float(curve[k - 1])
    return out


def most_common_baseline(Y_train, n_rows: int, k: int = 5) -> sp.csr_matrix:
    """Most-Common baseline (Gerald & Baskiotis, CAp 2019, Table 2): every test point receives the
    ``k`` labels most frequent in the training set.

    Scores are the labels' relative training frequencies ``N_l / N`` (so the ranking is by
    frequency; ties -> lower label id).  Labels never seen in training are not predicted, so a row
    has ``min(k, #labels with N_l > 0)`` entries.

    Returns a float64 CSR matrix of shape (n_rows, L), identical rows.
    """
    Y = _as_binary_csr(Y_train)
    n, L = Y.shape
    freq = np.bincount(Y.indices, minlength=L).astype(np.float64) / max(n, 1)
    top = topk_from_scores(np.where(freq > 0, freq, -np.inf)[None, :], k)[0]
    top = top[top >= 0]
    m = top.size
    indptr = np.arange(n_rows + 1, dtype=np.int64) * m
    indices = np.tile(top, n_rows)
    data = np.tile(freq[top], n_rows)
    S = sp.csr_matrix((data, indices, indptr), shape=(n_rows, L))
    S.sort_indices()
    return S


def format_table(rows: Mapping[str, Mapping[str, float]], metrics: Iterable[str] | None = None) -> str:
    """Markdown table: one line per method (``rows`` key), one column per metric.

    Values (fractions) are printed as percentages with 2 decimals (0.12345 -> ``12.35``); a missing
    or ``None`` value prints as ``-``.  ``metrics`` chooses and orders the columns; by default the
    union of the metric names in first-seen order.
    """
    if metrics is None:
        metrics = []
        for r in rows.values():
            for name in r:
                if name not in metrics:
                    metrics.append(name)
    metrics = list(metrics)
    header = "| Method | " + " | ".join(metrics) + " |"
    sep = "|---|" + "".join("---:|" for _ in metrics)
    lines = [header, sep]
    for method, vals in rows.items():
        cells = []
        for name in metrics:
            v = vals.get(name)
            cells.append("-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100.0 * float(v):.2f}")
        lines.append(f"| {method} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


# -- hierarchical multi-label metrics ----------------------------------------------------------
def _confusion_per_label(Y_true, Y_pred):
    T = _as_binary_csr(Y_true)
    P = _as_binary_csr(Y_pred)
    if T.shape != P.shape:
        raise ValueError(f"shape mismatch: {T.shape} vs {P.shape}")
    tp = np.asarray(T.multiply(P).sum(axis=0)).ravel()
    n_true = np.bincount(T.indices, minlength=T.shape[1]).astype(np.float64)
    n_pred = np.bincount(P.indices, minlength=P.shape[1]).astype(np.float64)
    return tp, n_pred - tp, n_true - tp  # tp, fp, fn


def micro_f1(Y_true, Y_pred_binary) -> float:
    """Micro-averaged F1 = 2 TP / (2 TP + FP + FN), counts pooled over all (row, label) pairs
    (= sklearn ``f1_score(average='micro')``); 0 when there is no positive at all.
    Inputs: N x L, dense or sparse; any nonzero counts as 1."""
    tp, fp, fn = (x.sum() for x in _confusion_per_label(Y_true, Y_pred_binary))
    d = 2 * tp + fp + fn
    return float(2 * tp / d) if d > 0 else 0.0


def macro_f1(Y_true, Y_pred_binary, zero_division: float = 0.0) -> float:
    """Macro-averaged F1: mean over all L labels of ``2 TP_l / (2 TP_l + FP_l + FN_l)``; a label
    with no true and no predicted positive scores ``zero_division`` (= sklearn
    ``f1_score(average='macro', zero_division=0)`` with the default)."""
    tp, fp, fn = _confusion_per_label(Y_true, Y_pred_binary)
    d = 2 * tp + fp + fn
    f1 = np.where(d > 0, 2 * tp / np.where(d > 0, d, 1.0), zero_division)
    return float(f1.mean()) if f1.size else 0.0


def au_prc(Y_true, scores_dense, labels=None) -> float:
    """Area under the micro-averaged precision-recall curve, as in C-HMCNN (Giunchiglia &
    Lukasiewicz 2020): ``sklearn.metrics.average_precision_score(Y_true, scores,
    average='micro')``.  ``labels`` (optional index array) restricts the evaluation to those
    columns (C-HMCNN drops the root / labels absent from the test set this way).

    Y_true: N x L binary (dense or sparse); scores_dense: N x L float array.
    """
    from sklearn.metrics import average_precision_score

    T = Y_true.toarray() if sp.issparse(Y_true) else np.asarray(Y_true)
    S = scores_dense.toarray() if sp.issparse(scores_dense) else np.asarray(scores_dense)
    T = (T != 0).astype(np.int64)
    if labels is not None:
        T = T[:, labels]
        S = S[:, labels]
    return float(average_precision_score(T, S, average="micro"))


def au_prc_fast(Y_true, scores) -> float:
    """:func:`au_prc` (micro-averaged average precision, ``sum_n (R_n - R_{n-1}) P_n`` over the
    distinct score thresholds, ties grouped, as sklearn's ``average_precision_score``) without
    input validation and without an argsort of the flattened matrix: the recall only moves at
    the positives' distinct scores ``v``, where ``P = tp(v) / (tp(v) + fp(v))``, ``tp(v)`` and
    ``fp(v)`` the positives and negatives scoring ``>= v`` (``fp`` by a binary search in the
    sorted negative scores). The per-epoch validation score of :mod:`xhyp.hmc.train`; equal to
    :func:`au_prc` up to floating-point rounding of the sum.

    Args:
        Y_true: ``(N, L)`` binary (dense or sparse). scores: ``(N, L)`` float array.

    Returns:
        the area (0 when there is no positive).
    """
    t = (Y_true.toarray() if sp.issparse(Y_true) else np.asarray(Y_true)).ravel() != 0
    s = (scores.toarray() if sp.issparse(scores) else np.asarray(scores)).ravel()
    n_pos = int(t.sum())
    if n_pos == 0 or s.size == 0:
        return 0.0
    values, counts = np.unique(s[t], return_counts=True)  # ascending distinct positive scores
    values, counts = values[::-1], counts[::-1]
    tp = np.cumsum(counts)
    negatives = np.sort(s[~t])
    fp = negatives.size - np.searchsorted(negatives, values, side="left")
    return float(np.sum(counts / n_pos * (tp / (tp + fp))))


def threshold_f1(Y_true, probs, threshold: float, labels=None) -> dict:
    """Micro- and macro-F1 of ``probs >= threshold`` (HiddeN reports them at 0.5).

    Args:
        Y_true: ``(N, L)`` binary (dense or sparse). probs: ``(N, L)`` float scores in [0, 1].
        threshold: decision threshold. labels: optional column ids to keep.

    Returns:
        ``{"micro_f1": float, "macro_f1": float}``.
    """
    T = Y_true.toarray() if sp.issparse(Y_true) else np.asarray(Y_true)
    S = probs.toarray() if sp.issparse(probs) else np.asarray(probs)
    if labels is not None:
        T, S = T[:, labels], S[:, labels]
    P = S >= threshold
    return {"micro_f1": micro_f1(T, P), "macro_f1": macro_f1(T, P)}


def choose_threshold(Y_val, probs_val, grid=None, labels=None) -> tuple[float, float]:
    """The threshold maximising micro-F1 on validation data (ties: the lowest threshold).

    Args:
        Y_val: ``(N, L)`` binary validation labels. probs_val: ``(N, L)`` scores.
        grid: candidate thresholds (default 0.02, 0.04, ..., 0.98).
        labels: optional column ids to keep.

    Returns:
        ``(threshold, validation micro-F1 at it)``.
    """
    grid = np.round(np.arange(0.02, 0.99, 0.02), 2) if grid is None else np.asarray(grid, np.float64)
    T = Y_val.toarray() if sp.issparse(Y_val) else np.asarray(Y_val)
    S = probs_val.toarray() if sp.issparse(probs_val) else np.asarray(probs_val)
    if labels is not None:
        T, S = T[:, labels], S[:, labels]
    T = T != 0
    n_true = T.sum()
    best = (float(grid[0]), -1.0)
    for t in grid:
        P = S >= t
        tp = np.logical_and(P, T).sum()
        d = P.sum() + n_true
        f = 2.0 * tp / d if d else 0.0
        if f > best[1]:
            best = (float(t), float(f))
    return best


def hmc_evaluate(Y_true, probs, threshold: float = 0.5, labels=None, ks: Sequence[int] = (1, 3, 5)) -> dict:
    """The HMC metrics of one score matrix: AU(PRC) (C-HMCNN), micro/macro-F1 at ``threshold``
    (chosen on validation, :func:`choose_threshold`) and at 0.5 (HiddeN), and P@k (pyxclib).

    Args:
        Y_true: ``(N, L)`` binary labels. probs: ``(N, L)`` scores in [0, 1] (dense or CSR).
        threshold: F1 threshold. labels: evaluated column ids (e.g. without the GO roots).
        ks: P@k cut-offs.

    Returns:
        ``{"au_prc", "micro_f1", "macro_f1", "micro_f1@0.5", "macro_f1@0.5", "threshold", "P@k"...}``.
    """
    T = Y_true.toarray() if sp.issparse(Y_true) else np.asarray(Y_true)
    S = probs.toarray() if sp.issparse(probs) else np.asarray(probs, dtype=np.float64)
    if labels is not None:
        T, S = T[:, labels], S[:, labels]
    out = {"au_prc": au_prc(T, S), **threshold_f1(T, S, threshold), "threshold": float(threshold)}
    half = threshold_f1(T, S, 0.5)
    out["micro_f1@0.5"], out["macro_f1@0.5"] = half["micro_f1"], half["macro_f1"]
    pk = precision_at_k(sp.csr_matrix(T), S, k=max(ks))
    out.update({f"P@{k}": float(pk[k - 1]) for k in ks})
    return out


def _distances(emb: np.ndarray, geometry: str) -> np.ndarray:
    """``(L, L)`` float64 distances between the rows of ``emb`` (:func:`xhyp.embedding.manifold.dist64`)."""
    import torch

    from .embedding import manifold

    x = torch.from_numpy(np.asarray(emb, np.float64))
    if manifold.check_geometry(geometry) == "poincare" and bool((x.norm(dim=1) >= 1).any()):
        raise ValueError("Poincaré embeddings must lie inside the unit ball (|x| < 1)")
    out = np.empty((x.shape[0], x.shape[0]))
    step = max(1, (1 << 24) // max(1, x.shape[0] * x.shape[1]))  # rows a block: (step, L, n) float64 differences
    for s in range(0, x.shape[0], step):
        out[s:s + step] = manifold.dist64(x[s:s + step, None, :], x[None, :, :], geometry).numpy()
    return out


def hierarchy_reconstruction(emb, ancestors, geometry: str = "poincare") -> dict:
    """How well label embeddings reconstruct a known hierarchy (Nickel & Kiela 2017, section
    4.1, "reconstruction"): for every node ``u`` with ancestors, all other nodes are ranked by
    distance to ``u``; each true ancestor ``v`` gets the rank of ``d(u, v)`` among ``{d(u, v)} U
    {d(u, w): w not an ancestor of u}`` (1 = closer than every non-ancestor), and the ranking gets
    the average precision of retrieving the ancestor set.

    Args:
        emb: ``(L, n)`` label embeddings (inside the unit ball for ``"poincare"``).
        ancestors: length-``L`` sequence of sets of ancestor ids (strict, transitive).
        geometry: ``"poincare"`` (``arccosh(1 + 2|x-y|^2/((1-|x|^2)(1-|y|^2)))``, computed by
            :func:`xhyp.embedding.manifold.dist64`) or ``"euclidean"``.

    Returns:
        ``{"mean_rank": mean over (u, v) pairs, "map": mean over nodes u of AP(u), "n_nodes", "n_pairs"}``;
        NaN values when no node has an ancestor.

    Raises:
        ValueError: a Poincaré point outside the ball, or ``len(ancestors) != L``.
    """
    emb = np.asarray(emb, np.float64)
    if len(ancestors) != len(emb):
        raise ValueError(f"{len(ancestors)} ancestor sets for {len(emb)} embeddings")
    D = _distances(emb, geometry)
    ranks, aps = [], []
    for u, anc in enumerate(ancestors):
        anc = np.fromiter(anc, np.int64) if len(anc) else np.zeros(0, np.int64)
        if not len(anc):
            continue
        d = D[u]
        rel = np.zeros(len(d), bool)
        rel[anc] = True
        others = np.ones(len(d), bool)
        others[u] = False
        neg = np.sort(d[others & ~rel])
        # rank of each ancestor among the non-ancestors (ties count against it)
        ranks.extend((1 + np.searchsorted(neg, d[anc], side="right")).tolist())
        # average precision: ancestors sorted by distance; precision at each one's position
        pos_sorted = np.sort(d[anc])
        n_neg_before = np.searchsorted(neg, pos_sorted, side="right")
        k = np.arange(1, len(anc) + 1)
        aps.append(float(np.mean(k / (k + n_neg_before))))
    if not aps:
        return {"mean_rank": float("nan"), "map": float("nan"), "n_nodes": 0, "n_pairs": 0}
    return {"mean_rank": float(np.mean(ranks)), "map": float(np.mean(aps)), "n_nodes": len(aps),
            "n_pairs": len(ranks)}


def norm_depth_spearman(emb, depth) -> float:
    """Spearman's rank correlation between the embedding norms ``|x_i|`` and the node depths
    (positive: deeper nodes lie further from the origin, as in Nickel & Kiela's embeddings).

    Args:
        emb: ``(L, n)`` embeddings. depth: ``(L,)`` depths (1 = top level).

    Returns:
        rho in [-1, 1] (NaN if either side is constant).
    """
    from scipy.stats import spearmanr

    norms = np.linalg.norm(np.asarray(emb, np.float64), axis=1)
    depth = np.asarray(depth, np.float64)
    if np.ptp(norms) == 0 or np.ptp(depth) == 0:
        return float("nan")
    return float(spearmanr(norms, depth).statistic)
