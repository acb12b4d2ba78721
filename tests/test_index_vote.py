"""Exact kNN against a float64 brute force, label voting against hand-computed cases."""
import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.embedding import manifold as M
from xhyp.knn.index import ExactIndex, make_index
from xhyp.knn.vote import neighbour_weights, sum_top_scores, top_k_rows, vote


def ball_points(n, dim, rng, rmax=0.999):
    v = rng.normal(size=(n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    return v * rng.uniform(0, rmax, size=(n, 1)) ** 0.3


def brute64(q, db, k):
    d = M.pairwise_dist(torch.from_numpy(q).double(), torch.from_numpy(db).double()).numpy()
    idx = np.argsort(d, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(d, idx, 1), idx


@pytest.mark.parametrize("k", [1, 5, 17])
def test_exact_index_matches_float64_bruteforce(k):
    rng = np.random.default_rng(k)
    db = ball_points(3000, 8, rng)
    q = ball_points(200, 8, rng)
    idx = ExactIndex(query_batch=64, db_batch=700).add(torch.from_numpy(db).float())
    D, I = idx.search(torch.from_numpy(q).float(), k)
    Dr, Ir = brute64(q, db, k)
    np.testing.assert_allclose(D.numpy(), Dr, rtol=2e-3, atol=1e-5)
    # same neighbour sets except where float32 cannot separate two distances
    agree = (I.numpy() == Ir).mean()
    assert agree > 0.99


def test_exact_index_near_boundary_and_duplicates():
    rng = np.random.default_rng(1)
    v = rng.normal(size=(500, 4))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    db = v * (1 - 10 ** rng.uniform(-5, -2, size=(500, 1)))
    db = np.vstack([db, db[:10]])  # duplicates
    t = M.project(torch.from_numpy(db).float())
    D, I = make_index("exact").add(t).search(t[:10], 3)
    assert torch.isfinite(D).all()
    # each of the first 10 points has itself and its duplicate at distance ~0
    for r in range(10):
        assert set(I[r, :2].tolist()) == {r, 500 + r}
        assert D[r, :2].max() < 1e-3


def test_k_larger_than_database_pads():
    db = torch.tensor([[0.1, 0.0], [0.0, 0.2]])
    D, I = ExactIndex().add(db).search(torch.tensor([[0.1, 0.01]]), 4)
    assert I.tolist() == [[0, 1, -1, -1]]
    assert torch.isinf(D[0, 2:]).all()


def test_euclidean_index():
    rng = np.random.default_rng(2)
    db = rng.normal(size=(300, 5)).astype(np.float32)
    q = rng.normal(size=(20, 5)).astype(np.float32)
    D, I = ExactIndex(geometry="euclidean").add(torch.from_numpy(db)).search(torch.from_numpy(q), 4)
    d = np.linalg.norm(q[:, None] - db[None], axis=-1)
    np.testing.assert_array_equal(I.numpy(), np.argsort(d, 1)[:, :4])


def test_index_errors():
    with pytest.raises(RuntimeError):
        ExactIndex().search(torch.zeros(1, 2), 1)
    with pytest.raises(ValueError):
        ExactIndex().add(torch.zeros(3, 2)).search(torch.zeros(1, 3), 1)
    with pytest.raises(ValueError):
        make_index("nope")


def test_vote_counts_hand_computed():
    # training labels: ex0 {0, 2}, ex1 {2}, ex2 {1, 2}, ex3 {3}
    Y = sp.csr_matrix(np.array([[1, 0, 1, 0], [0, 0, 1, 0], [0, 1, 1, 0], [0, 0, 0, 1]], dtype=np.float32))
    ids = np.array([[0, 1, 2], [3, 3, -1]])
    dist = np.array([[0.1, 0.2, 0.3], [0.5, 0.6, np.inf]])
    S = vote(ids, dist, Y, top_k=10).toarray()
    # query 0: label 2 has 3 votes, labels 0 and 1 one each (0 nearer, so ranked first)
    assert np.round(S[0]).tolist() == [1, 1, 3, 0]
    assert S[0, 0] > S[0, 1]
    # query 1: neighbour 3 twice -> label 3 gets 2 votes, the missing neighbour nothing
    assert np.round(S[1]).tolist() == [0, 0, 0, 2]
    top1 = vote(ids, dist, Y, top_k=1).toarray()
    assert (top1 > 0).sum(1).tolist() == [1, 1]
    assert top1[0, 2] > 0 and top1[1, 3] > 0


def test_distance_weighting_is_softmax_of_alpha_d():
    w = neighbour_weights(np.array([[1.0, 2.0, np.inf]]), "distance", alpha=2.0)
    np.testing.assert_allclose(w, [[1.0, np.exp(-2.0), 0.0]])
    with pytest.raises(ValueError):
        neighbour_weights(np.zeros((1, 1)), "majority")


def test_top_k_rows_ties_by_lower_column():
    S = sp.csr_matrix(np.array([[0, 2, 2, 1, 2], [5, 0, 0, 0, 0]], dtype=np.float32))
    T = top_k_rows(S, 2).toarray()
    assert T[0].tolist() == [0, 2, 2, 0, 0]
    assert T[1].tolist() == [5, 0, 0, 0, 0]


def test_top_k_rows_in_row_blocks_equals_one_block(monkeypatch):
    import xhyp.knn.vote as V

    rng = np.random.default_rng(0)
    A = sp.random(300, 50, density=0.3, format="csr", random_state=1, dtype=np.float64).toarray()
    A[A > 0] = rng.integers(1, 5, size=int((A > 0).sum()))  # many ties
    A[7] = 0  # an empty row
    S = sp.csr_matrix(A)
    whole = V.top_k_rows(S, 4)
    import xhyp.metrics as MET

    monkeypatch.setattr(MET, "_CHUNK_CELLS", 64)  # the ranking runs in blocks of a few rows
    blocks = V.top_k_rows(S, 4)
    assert blocks.dtype == np.float32 and blocks.has_sorted_indices
    assert (blocks != whole).nnz == 0 and np.array_equal(blocks.indptr, whole.indptr)
    assert np.diff(blocks.indptr).max() == 4 and np.diff(blocks.indptr)[7] == 0


def test_sum_top_scores_sums_members():
    a = sp.csr_matrix(np.array([[1, 0, 2]], dtype=np.float32))
    b = sp.csr_matrix(np.array([[0, 3, 1]], dtype=np.float32))
    assert sum_top_scores([a, b], top_k=2).toarray().tolist() == [[0, 3, 3]]
    with pytest.raises(ValueError):
        sum_top_scores([])
    with pytest.raises(ValueError):
        sum_top_scores([a, sp.csr_matrix((2, 3))])
