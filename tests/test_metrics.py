"""Tests for xhyp.metrics: hand-computed cases, edge cases, napkinxc / sklearn cross-checks."""
import math
import time

import numpy as np
import pytest
import scipy.sparse as sp

from xhyp import metrics as M
from conftest import require

L3 = math.log2(3)  # discount of rank 2 is 1/log2(3); rank 1 -> 1/log2(2) = 1; rank 3 -> 1/log2(4) = 1/2


# ------------------------------------------------------------------------------------------------
# the running hand-computed example: 2 rows, 5 labels
# ------------------------------------------------------------------------------------------------
# row 0: y = {0, 2};    scores [0.9, 0.8, 0.7, 0.1, 0.0] -> ranking 0, 1, 2, 3, 4 -> hits 1, 0, 1, 0, 0
# row 1: y = {1, 3, 4}; scores [0.9, 0.2, 0.1, 0.5, 0.8] -> ranking 0, 4, 3, 1, 2 -> hits 0, 1, 1, 1, 0
S_EX = np.array([[0.9, 0.8, 0.7, 0.1, 0.0],
                 [0.9, 0.2, 0.1, 0.5, 0.8]])
Y_EX = sp.csr_matrix(np.array([[1, 0, 1, 0, 0],
                               [0, 1, 0, 1, 1]]))
Q_EX = np.array([1.0, 2.0, 3.0, 4.0, 5.0])  # inverse propensities chosen by hand


def test_topk_example():
    np.testing.assert_array_equal(M.topk_from_scores(S_EX, 3), [[0, 1, 2], [0, 4, 3]])
    # sp.csr_matrix drops the 0.0 score of row 0 / label 4, so that label is missing -> padded with -1
    np.testing.assert_array_equal(M.topk_from_scores(sp.csr_matrix(S_EX), 5),
                                  [[0, 1, 2, 3, -1], [0, 4, 3, 1, 2]])
    np.testing.assert_array_equal(M.topk_from_scores(S_EX, 5), [[0, 1, 2, 3, 4], [0, 4, 3, 1, 2]])
    assert M.topk_from_scores(S_EX, 3).dtype == np.int64


def test_precision_by_hand():
    # P@1 = (1 + 0) / 2 = 1/2
    # P@2 = (1/2 + 1/2) / 2 = 1/2
    # P@3 = (2/3 + 2/3) / 2 = 2/3
    # P@5 = (2/5 + 3/5) / 2 = 1/2
    p = M.precision_at_k(Y_EX, S_EX, k=5)
    assert p.shape == (5,)
    np.testing.assert_allclose(p[[0, 1, 2, 4]], [1 / 2, 1 / 2, 2 / 3, 1 / 2])


def test_ndcg_by_hand():
    # row 0: DCG@3 = 1 + 1/log2(4) = 3/2;            IDCG@3 = 1 + 1/log2(3)          (|y| = 2 < 3)
    # row 1: DCG@3 = 1/log2(3) + 1/2;                IDCG@3 = 1 + 1/log2(3) + 1/2
    # nDCG@1 = (1/1 + 0/1) / 2 = 1/2
    # nDCG@2: row 0 = 1 / (1 + 1/L3); row 1 = (1/L3) / (1 + 1/L3)
    r0 = 1.5 / (1 + 1 / L3)
    r1 = (1 / L3 + 0.5) / (1 + 1 / L3 + 0.5)
    n = M.ndcg_at_k(Y_EX, S_EX, k=3)
    np.testing.assert_allclose(n[0], 0.5)
    np.testing.assert_allclose(n[1], (1 / (1 + 1 / L3) + (1 / L3) / (1 + 1 / L3)) / 2)
    np.testing.assert_allclose(n[2], (r0 + r1) / 2)


def test_psp_by_hand():
    # q = [1, 2, 3, 4, 5]
    # PSP@1: numerator  = row 0 top-1 label 0 is a hit -> q0 = 1; row 1 top-1 label 0 miss -> 0; sum = 1
    #        ideal      = row 0 best true label by q is 2 (q=3); row 1 best is 4 (q=5);   sum = 8
    #        PSP@1 = 1/8
    # PSP@3: numerator  = row 0 hits {0, 2}: (1 + 3)/3; row 1 hits {4, 3}: (5 + 4)/3;  sum = 13/3
    #        ideal      = row 0 {2, 0}: (3 + 1)/3;      row 1 {4, 3, 1}: (5 + 4 + 2)/3; sum = 15/3
    #        PSP@3 = 13/15
    # PSP@5: every true label is in the top 5 -> numerator = ideal -> 1
    p = M.psprecision_at_k(Y_EX, S_EX, Q_EX, k=5)
    np.testing.assert_allclose(p[[0, 2, 4]], [1 / 8, 13 / 15, 1.0])
    # unnormalised (Jain et al.): mean over rows of the numerator -> PSP@1 = 1/2, PSP@3 = 13/6
    pu = M.psprecision_at_k(Y_EX, S_EX, Q_EX, k=3, normalize=False)
    np.testing.assert_allclose(pu[[0, 2]], [1 / 2, 13 / 6])


def test_psndcg_by_hand():
    # PSnDCG@1: row 0: PSDCG = q0 = 1, ideal = q2 = 3, IDCG@1 = 1; row 1: PSDCG = 0, ideal = q4 = 5
    #           -> (1 + 0) / (3 + 5) = 1/8
    # PSnDCG@3: row 0: PSDCG = 1 + 3/log2(4) = 5/2;       ideal = 3 + 1/log2(3);            I0 = 1 + 1/L3
    #           row 1: PSDCG = 5/log2(3) + 4/2;           ideal = 5 + 4/log2(3) + 2/2;      I1 = 1 + 1/L3 + 1/2
    #           -> (5/2/I0 + (2 + 5/L3)/I1) / ((3 + 1/L3)/I0 + (6 + 4/L3)/I1)
    I0 = 1 + 1 / L3
    I1 = 1 + 1 / L3 + 0.5
    want3 = (2.5 / I0 + (2 + 5 / L3) / I1) / ((3 + 1 / L3) / I0 + (6 + 4 / L3) / I1)
    p = M.psndcg_at_k(Y_EX, S_EX, Q_EX, k=3)
    np.testing.assert_allclose(p[[0, 2]], [1 / 8, want3])
    pu = M.psndcg_at_k(Y_EX, S_EX, Q_EX, k=3, normalize=False)
    np.testing.assert_allclose(pu[2], (2.5 / I0 + (2 + 5 / L3) / I1) / 2)


def test_evaluate_keys_and_values():
    r = M.evaluate(Y_EX, S_EX, ks=(1, 3), inv_prop=Q_EX)
    assert list(r) == ["P@1", "P@3", "nDCG@1", "nDCG@3", "PSP@1", "PSP@3", "PSnDCG@1", "PSnDCG@3"]
    assert all(isinstance(v, float) and 0.0 <= v <= 1.0 for v in r.values())
    np.testing.assert_allclose([r["P@1"], r["P@3"], r["PSP@1"], r["PSP@3"]], [0.5, 2 / 3, 1 / 8, 13 / 15])
    r2 = M.evaluate(Y_EX, S_EX)
    assert set(r2) == {"P@1", "P@3", "P@5", "nDCG@1", "nDCG@3", "nDCG@5"}  # no PS metrics
    assert r2["nDCG@3"] == pytest.approx(r["nDCG@3"])


# ------------------------------------------------------------------------------------------------
# edge cases
# ------------------------------------------------------------------------------------------------
def test_row_without_true_labels_counts_as_zero():
    # add a third row with no true label: every metric's per-row sum is unchanged, the mean is over 3
    Y = sp.vstack([Y_EX, sp.csr_matrix((1, 5))]).tocsr()
    S = np.vstack([S_EX, [0.1, 0.2, 0.3, 0.4, 0.5]])
    np.testing.assert_allclose(M.precision_at_k(Y, S, 3), M.precision_at_k(Y_EX, S_EX, 3) * 2 / 3)
    np.testing.assert_allclose(M.ndcg_at_k(Y, S, 3), M.ndcg_at_k(Y_EX, S_EX, 3) * 2 / 3)
    # PS metrics are ratios of sums: a row with no label adds 0 to numerator and denominator
    np.testing.assert_allclose(M.psprecision_at_k(Y, S, Q_EX, 3), M.psprecision_at_k(Y_EX, S_EX, Q_EX, 3))
    np.testing.assert_allclose(M.psndcg_at_k(Y, S, Q_EX, 3), M.psndcg_at_k(Y_EX, S_EX, Q_EX, 3))
    # all rows empty -> zeros, no NaN
    Z = sp.csr_matrix((2, 5))
    for v in (M.precision_at_k(Z, S_EX, 3), M.ndcg_at_k(Z, S_EX, 3),
              M.psprecision_at_k(Z, S_EX, Q_EX, 3), M.psndcg_at_k(Z, S_EX, Q_EX, 3)):
        np.testing.assert_array_equal(v, 0.0)


def test_sparse_row_with_fewer_than_k_entries():
    # row 0 stores {1: 0.7, 3: 0.2}; row 1 stores only {2: -5.0} (a stored negative still ranks above
    # the missing entries); row 2 stores nothing; row 3 stores an explicit 0 at label 4
    S = sp.csr_matrix((np.array([0.7, 0.2, -5.0, 0.0]), np.array([1, 3, 2, 4]), np.array([0, 2, 3, 3, 4])),
                      shape=(4, 5))
    assert S.nnz == 4
    np.testing.assert_array_equal(M.topk_from_scores(S, 3),
                                  [[1, 3, -1], [2, -1, -1], [-1, -1, -1], [4, -1, -1]])
    # y: row 0 {3, 0}, row 1 {2}, row 2 {0}, row 3 {4, 0}
    Y = sp.csr_matrix(np.array([[1, 0, 0, 1, 0], [0, 0, 1, 0, 0], [1, 0, 0, 0, 0], [1, 0, 0, 0, 1]]))
    # P@3: row 0 hits {3} -> 1/3; row 1 {2} -> 1/3; row 2 none; row 3 {4} -> 1/3  => mean = 1/4
    # P@1: row 0 label 1 miss; row 1 hit; row 2 pad; row 3 hit => 2/4
    np.testing.assert_allclose(M.precision_at_k(Y, S, 3)[[0, 2]], [1 / 2, 1 / 4])
    # nDCG@3: row 0: (1/log2 3) / (1 + 1/log2 3); row 1: 1/1; row 2: 0; row 3: 1 / (1 + 1/log2 3)
    want = ((1 / L3) / (1 + 1 / L3) + 1 + 0 + 1 / (1 + 1 / L3)) / 4
    np.testing.assert_allclose(M.ndcg_at_k(Y, S, 3)[2], want)


def test_ties_broken_by_lower_label_id():
    # scores with ties at the partition boundary
    s = np.array([[0.5, 0.9, 0.5, 0.5, 0.1]])
    np.testing.assert_array_equal(M.topk_from_scores(s, 1), [[1]])
    np.testing.assert_array_equal(M.topk_from_scores(s, 2), [[1, 0]])
    np.testing.assert_array_equal(M.topk_from_scores(s, 3), [[1, 0, 2]])
    np.testing.assert_array_equal(M.topk_from_scores(s, 7), [[1, 0, 2, 3, 4, -1, -1]])  # k > L: padded
    np.testing.assert_array_equal(M.topk_from_scores(sp.csr_matrix(s), 3), [[1, 0, 2]])
    # all equal: ranking 0, 1, 2 -> with y = {1}: P@1 = 0, P@2 = 1/2
    s = np.ones((1, 4))
    y = sp.csr_matrix(np.array([[0, 1, 0, 0]]))
    np.testing.assert_allclose(M.precision_at_k(y, s, 2), [0.0, 0.5])
    # CSR with unsorted stored indices gives the same tie order
    S = sp.csr_matrix((np.array([1.0, 1.0, 1.0]), np.array([3, 0, 2]), np.array([0, 3])), shape=(1, 4))
    np.testing.assert_array_equal(M.topk_from_scores(S, 3), [[0, 2, 3]])


def test_dense_nan_and_minus_inf_are_missing():
    s = np.array([[np.nan, 0.3, -np.inf, 0.1]])
    np.testing.assert_array_equal(M.topk_from_scores(s, 4), [[1, 3, -1, -1]])


def test_dense_and_csr_agree_random():
    rng = np.random.default_rng(0)
    N, L, k = 300, 40, 5
    # rounded scores create many ties; ~70% entries missing, some rows with < k entries
    D = np.round(rng.random((N, L)), 1)
    mask = rng.random((N, L)) < 0.3
    mask[:10] = rng.random((10, L)) < 0.05
    D[~mask] = 0.0
    S = sp.csr_matrix((D[mask], np.nonzero(mask)[1], np.r_[0, np.cumsum(mask.sum(1))]), shape=(N, L))
    dense = np.where(mask, D, -np.inf)
    Y = sp.csr_matrix(rng.random((N, L)) < 0.1)
    q = M.inv_propensity(Y)
    np.testing.assert_array_equal(M.topk_from_scores(S, k), M.topk_from_scores(dense, k))
    for f in (M.precision_at_k, M.ndcg_at_k):
        np.testing.assert_allclose(f(Y, S, k), f(Y, dense, k))
    for f in (M.psprecision_at_k, M.psndcg_at_k):
        np.testing.assert_allclose(f(Y, S, q, k), f(Y, dense, q, k))
    # the ranking equals a stable sort on (-score, label id)
    ref = np.argsort(-dense, axis=1, kind="stable")[:, :k]
    ref = np.where(np.take_along_axis(dense, ref, 1) == -np.inf, -1, ref)
    np.testing.assert_array_equal(M.topk_from_scores(dense, k), ref)


def test_topk_chunking(monkeypatch):
    # tiny chunk budget: many chunks, rows of very different lengths -> same answer
    rng = np.random.default_rng(1)
    S = sp.random(200, 60, density=0.2, random_state=2, format="csr")
    S = S + sp.csr_matrix(np.eye(200, 60))  # ensure variety of lengths
    want = M.topk_from_scores(S.toarray() + np.where(S.toarray() == 0, -np.inf, 0), 7)
    monkeypatch.setattr(M, "_CHUNK_CELLS", 37)
    np.testing.assert_array_equal(M.topk_from_scores(S, 7), want)
    D = rng.random((50, 60))
    monkeypatch.setattr(M, "_CHUNK_CELLS", 100)
    got = M.topk_from_scores(D, 4)
    np.testing.assert_array_equal(got, np.argsort(-D, axis=1, kind="stable")[:, :4])


def test_topk_csr_speed_100k_rows():
    # 100k rows, 0..99 stored scores per row (~5M nnz); built directly (sp.random is slow here)
    rng = np.random.default_rng(0)
    N, L = 100_000, 5_000
    indptr = np.r_[0, np.cumsum(rng.integers(0, 100, size=N))]
    S = sp.csr_matrix((rng.random(indptr[-1]).astype(np.float32), rng.integers(0, L, size=indptr[-1]),
                       indptr), shape=(N, L))
    t = time.perf_counter()
    idx = M.topk_from_scores(S, 5)
    dt = time.perf_counter() - t
    assert idx.shape == (100_000, 5)
    assert dt < 10.0, f"topk on 100k CSR rows took {dt:.1f}s"


# ------------------------------------------------------------------------------------------------
# inverse propensity, baseline, table
# ------------------------------------------------------------------------------------------------
def test_inv_propensity_by_hand():
    # N = 4 training points, label counts N_l = [3, 1, 0]
    Y = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 0], [0, 0, 0]]))
    A, B = 0.55, 1.5
    C = (math.log(4) - 1) * (B + 1) ** A  # = (1.386294 - 1) * 2.5**0.55
    want = [1 + C * (3 + B) ** -A, 1 + C * (1 + B) ** -A, 1 + C * (0 + B) ** -A]
    got = M.inv_propensity(Y)
    assert got.dtype == np.float64 and got.shape == (3,)
    np.testing.assert_allclose(got, want)
    # label with N_l = 1 under B = 1.5: (1 + B)^-A * (B + 1)^A = 1 -> q = 1 + (ln 4 - 1) exactly
    np.testing.assert_allclose(got[1], math.log(4))
    # Amazon parameters
    np.testing.assert_allclose(M.inv_propensity(Y, 0.6, 2.6)[0],
                               1 + (math.log(4) - 1) * 3.6 ** 0.6 * 5.6 ** -0.6)


def test_inv_propensity_matches_napkinxc():
    nm = require("napkinxc.metrics")
    Y = sp.csr_matrix(np.random.default_rng(3).random((500, 80)) < 0.05, dtype=np.float64)
    for A, B in [(0.55, 1.5), (0.6, 2.6), (0.5, 0.4)]:
        np.testing.assert_allclose(M.inv_propensity(Y, A, B), nm.Jain_et_al_inverse_propensity(Y, A, B))


def test_most_common_baseline():
    # label counts over 4 training rows: [1, 3, 3, 0, 2] -> most common: 1, 2 (tie -> lower id first), 4, 0
    Y = sp.csr_matrix(np.array([[0, 1, 1, 0, 1],
                                [1, 1, 1, 0, 0],
                                [0, 1, 0, 0, 1],
                                [0, 0, 1, 0, 0]]))
    S = M.most_common_baseline(Y, n_rows=3, k=3)
    assert sp.isspmatrix_csr(S) and S.shape == (3, 5)
    np.testing.assert_array_equal(M.topk_from_scores(S, 3), [[1, 2, 4]] * 3)
    np.testing.assert_allclose(S.toarray()[0], [0, 3 / 4, 3 / 4, 0, 2 / 4])  # relative frequencies
    # k larger than the number of seen labels: label 3 (never seen) is not predicted
    S = M.most_common_baseline(Y, n_rows=2, k=5)
    np.testing.assert_array_equal(M.topk_from_scores(S, 5), [[1, 2, 4, 0, -1]] * 2)
    # P@1 of the baseline on test rows {1}, {0}: top-1 is label 1 -> (1 + 0) / 2
    Yt = sp.csr_matrix(np.array([[0, 1, 0, 0, 0], [1, 0, 0, 0, 0]]))
    assert M.precision_at_k(Yt, M.most_common_baseline(Y, 2, 5), 1)[0] == pytest.approx(0.5)


def test_format_table():
    rows = {"Most-Common": {"P@1": 0.12345, "P@3": 0.5}, "Ours": {"P@1": 1.0, "nDCG@1": 0.333333}}
    t = M.format_table(rows)
    assert t.splitlines() == [
        "| Method | P@1 | P@3 | nDCG@1 |",
        "|---|---:|---:|---:|",
        "| Most-Common | 12.35 | 50.00 | - |",
        "| Ours | 100.00 | - | 33.33 |",
    ]
    t = M.format_table(rows, metrics=["nDCG@1", "P@1"])
    assert t.splitlines()[0] == "| Method | nDCG@1 | P@1 |"
    assert t.splitlines()[2] == "| Most-Common | - | 12.35 |"


# ------------------------------------------------------------------------------------------------
# cross-checks against napkinxc on random data
# ------------------------------------------------------------------------------------------------
def _to_lists(Y):
    Y = sp.csr_matrix(Y)
    return [[int(j) for j in Y.indices[Y.indptr[i]:Y.indptr[i + 1]]] for i in range(Y.shape[0])]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_against_napkinxc_random(seed):
    nm = require("napkinxc.metrics")
    rng = np.random.default_rng(seed)
    N, L, k = 400, 60, 5
    Y = sp.csr_matrix(rng.random((N, L)) < rng.uniform(0.01, 0.1, size=(N, 1)))
    Y = sp.vstack([sp.csr_matrix((20, L)), Y[20:]]).tocsr()  # some rows with no true label
    Y_train = sp.csr_matrix(rng.random((1000, L)) < 0.05)
    q = M.inv_propensity(Y_train)
    S = rng.random((N, L))  # continuous scores: no ties
    # napkinxc gets Python int label lists, and an independently computed ranking
    y_lists = _to_lists(Y)
    ranking = [[int(j) for j in row] for row in np.argsort(-S, axis=1)[:, :k]]
    np.testing.assert_allclose(M.precision_at_k(Y, S, k), nm.precision_at_k(y_lists, ranking, k=k))
    np.testing.assert_allclose(M.ndcg_at_k(Y, S, k), nm.ndcg_at_k(y_lists, ranking, k=k))
    np.testing.assert_allclose(M.psprecision_at_k(Y, S, q, k), nm.psprecision_at_k(y_lists, ranking, q, k=k))
    np.testing.assert_allclose(M.psndcg_at_k(Y, S, q, k), nm.psndcg_at_k(y_lists, ranking, q, k=k))
    # unnormalised variants: napkinxc divides by the row count when normalize=False
    np.testing.assert_allclose(M.psprecision_at_k(Y, S, q, k, normalize=False),
                               nm.psprecision_at_k(y_lists, ranking, q, k=k, normalize=False))
    np.testing.assert_allclose(M.psndcg_at_k(Y, S, q, k, normalize=False),
                               nm.psndcg_at_k(y_lists, ranking, q, k=k, normalize=False))


def test_against_napkinxc_sparse_short_rows():
    nm = require("napkinxc.metrics")
    rng = np.random.default_rng(7)
    N, L, k = 300, 50, 5
    Y = sp.csr_matrix(rng.random((N, L)) < 0.08)
    S = sp.random(N, L, density=0.06, random_state=8, format="csr")  # many rows with < 5 entries
    S.data += 0.01  # strictly positive, continuous
    assert (np.diff(S.indptr) < k).any()
    q = M.inv_propensity(sp.csr_matrix(rng.random((800, L)) < 0.04))
    y_lists = _to_lists(Y)
    ranking = []
    for i in range(N):
        ids, vals = S.indices[S.indptr[i]:S.indptr[i + 1]], S.data[S.indptr[i]:S.indptr[i + 1]]
        ranking.append([int(j) for j in ids[np.argsort(-vals)][:k]])
    np.testing.assert_allclose(M.precision_at_k(Y, S, k), nm.precision_at_k(y_lists, ranking, k=k))
    np.testing.assert_allclose(M.ndcg_at_k(Y, S, k), nm.ndcg_at_k(y_lists, ranking, k=k))
    np.testing.assert_allclose(M.psprecision_at_k(Y, S, q, k), nm.psprecision_at_k(y_lists, ranking, q, k=k))
    np.testing.assert_allclose(M.psndcg_at_k(Y, S, q, k), nm.psndcg_at_k(y_lists, ranking, q, k=k))


def _pyxclib_style_reference(Y, S, q, k):
    """Per-row loop transcribing pyxclib's structure: PSP = _precision(weighted hits) /
    _precision(ideal weighted hits), PSnDCG = _ndcg(weighted) / _ndcg(ideal) with the unit-gain IDCG."""
    Yd = Y.toarray() > 0
    N = Yd.shape[0]
    disc = 1 / np.log2(np.arange(k) + 2)
    p = np.zeros(k); nd = np.zeros(k); pn = np.zeros(k); pd = np.zeros(k); gn = np.zeros(k); gd = np.zeros(k)
    for i in range(N):
        rank = np.argsort(-S[i], kind="stable")[:k]
        h = Yd[i, rank].astype(float)
        w = h * q[rank]
        ideal = np.sort(q[Yd[i]])[::-1][:k]
        ideal = np.r_[ideal, np.zeros(k - ideal.size)]
        npos = Yd[i].sum()
        idcg = np.cumsum(disc * (np.arange(k) < npos))
        j = np.arange(1, k + 1)
        p += np.cumsum(h) / j
        pn += np.cumsum(w) / j
        pd += np.cumsum(ideal) / j
        if npos:
            nd += np.cumsum(h * disc) / idcg
            gn += np.cumsum(w * disc) / idcg
            gd += np.cumsum(ideal * disc) / idcg
    return p / N, nd / N, pn / pd, gn / gd


def test_against_pyxclib_style_reference():
    rng = np.random.default_rng(11)
    N, L, k = 150, 30, 5
    Y = sp.csr_matrix(rng.random((N, L)) < 0.1)
    S = np.round(rng.random((N, L)), 2)  # some ties, resolved by lower id in both
    q = M.inv_propensity(sp.csr_matrix(rng.random((500, L)) < 0.1), 0.5, 0.4)
    p, nd, psp, psn = _pyxclib_style_reference(Y, S, q, k)
    np.testing.assert_allclose(M.precision_at_k(Y, S, k), p)
    np.testing.assert_allclose(M.ndcg_at_k(Y, S, k), nd)
    np.testing.assert_allclose(M.psprecision_at_k(Y, S, q, k), psp)
    np.testing.assert_allclose(M.psndcg_at_k(Y, S, q, k), psn)


# ------------------------------------------------------------------------------------------------
# hierarchical multi-label metrics
# ------------------------------------------------------------------------------------------------
def test_f1_by_hand():
    # T = [[1,0,1],[0,1,0]], P = [[1,1,0],[0,1,0]]
    # label 0: tp 1 fp 0 fn 0 -> F1 1; label 1: tp 1 fp 1 fn 0 -> 2/3; label 2: tp 0 fp 0 fn 1 -> 0
    # micro: tp 2, fp 1, fn 1 -> 4 / (4 + 2) = 2/3; macro: (1 + 2/3 + 0) / 3 = 5/9
    T = np.array([[1, 0, 1], [0, 1, 0]])
    P = np.array([[1, 1, 0], [0, 1, 0]])
    assert M.micro_f1(T, P) == pytest.approx(2 / 3)
    assert M.macro_f1(T, P) == pytest.approx(5 / 9)
    assert M.micro_f1(sp.csr_matrix(T), sp.csr_matrix(P)) == pytest.approx(2 / 3)
    # a label with no true and no predicted positives counts as zero_division
    T2 = np.c_[T, [0, 0]]
    P2 = np.c_[P, [0, 0]]
    assert M.macro_f1(T2, P2) == pytest.approx(5 / 12)
    assert M.macro_f1(T2, P2, zero_division=1.0) == pytest.approx((5 / 3 + 1) / 4)


def test_f1_and_auprc_against_sklearn():
    from sklearn.metrics import average_precision_score, f1_score

    rng = np.random.default_rng(5)
    T = (rng.random((200, 15)) < 0.2).astype(int)
    T[:, 3] = 0  # label with no positive
    S = rng.random((200, 15))
    P = (S > 0.7).astype(int)
    P[:, 3] = 0
    assert M.micro_f1(T, P) == pytest.approx(f1_score(T, P, average="micro"))
    assert M.macro_f1(T, P) == pytest.approx(f1_score(T, P, average="macro", zero_division=0))
    assert M.au_prc(T, S) == pytest.approx(average_precision_score(T, S, average="micro"))
    keep = np.array([0, 1, 2, 4, 5])
    assert M.au_prc(sp.csr_matrix(T), S, labels=keep) == pytest.approx(
        average_precision_score(T[:, keep], S[:, keep], average="micro"))


def test_au_prc_by_hand():
    # flattened (score, label): (0.9,1) (0.8,0) (0.7,1) (0.1,0)
    # AP = sum_n (R_n - R_{n-1}) P_n = 1/2 * 1 + 1/2 * 2/3 = 5/6
    T = np.array([[1, 0], [1, 0]])
    S = np.array([[0.9, 0.8], [0.7, 0.1]])
    assert M.au_prc(T, S) == pytest.approx(5 / 6)


def test_csr_duplicate_entries_are_summed():
    # row 0 stores label 2 twice (0.3 + 0.4 = 0.7 > 0.5 of label 0) -> no label appears twice
    S = sp.csr_matrix((np.array([0.3, 0.5, 0.4]), np.array([2, 0, 2]), np.array([0, 3])), shape=(1, 3))
    np.testing.assert_array_equal(M.topk_from_scores(S, 3), [[2, 0, -1]])
