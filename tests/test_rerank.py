"""Shortlist re-ranking (xhyp.knn.rerank), the prediction settings chosen after training
(xhyp.training.prediction_fit), and the shared negatives drawn without replacement."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.config import TrainConfig
from xhyp.knn import rerank as R
from xhyp.knn.vote import vote
from xhyp.metrics import evaluate, inv_propensity
from xhyp.modeldir import ModelDirError
from xhyp.prediction import Predictor
from xhyp.training import prediction_fit as PF
from xhyp.training import train
from xhyp.training.batches import NegativeSampler

from test_train import toy_data


def random_binary(rng, shape, density):
    M = sp.random(*shape, density=density, random_state=rng, format="csr", dtype=np.float32)
    M.data[:] = 1.0
    return M


def by_hand_shortlist(ids, dists, Y, cap, self_ids=None):
    """The shortlist by hand, float64: neighbour counts of each label (self left out), the top
    ``cap`` by count, ties by the tie-break of the count vote (the nearer neighbours)."""
    Yd = Y.toarray().astype(np.float64)
    out = np.zeros((ids.shape[0], Y.shape[1]))
    for q in range(ids.shape[0]):
        keep = [j for j in range(ids.shape[1]) if ids[q, j] >= 0]
        if self_ids is not None:
            own = [j for j in keep if ids[q, j] == self_ids[q]]
            keep.remove(own[0] if own else keep[-1])
        d1 = dists[q, keep[0]]
        score = sum((1 + 1e-3 * np.exp(-(dists[q, j] - d1))) * Yd[ids[q, j]] for j in keep)
        order = sorted(np.flatnonzero(score), key=lambda l: (-score[l], l))
        for l in order[:cap or None]:
            out[q, l] = score[l]
    return out


@pytest.mark.parametrize("cap", [0, 3])
def test_shortlist_counts_caps_and_leaves_self_out(cap):
    rng = np.random.default_rng(0)
    Y = random_binary(rng, (30, 8), 0.3)
    ids = rng.integers(0, 30, size=(6, 5))
    ids[:, 0] = np.arange(6)  # every query is its own first neighbour...
    ids[4, :2] = [7, 4]       # ...but query 4, its second
    ids[5] = [9, 10, 11, 12, 13]  # and query 5 is not among its neighbours: its farthest is dropped
    ids[2, 4] = -1
    D = np.sort(rng.random((6, 5)), 1).astype(np.float32)
    D[2, 4] = np.inf
    got = R.shortlist(ids, D, Y, cap).toarray()
    np.testing.assert_allclose(got, by_hand_shortlist(ids, D, Y, cap), rtol=1e-6)
    got_loo = R.shortlist(torch.from_numpy(ids), torch.from_numpy(D), Y, cap, self_ids=np.arange(6)).toarray()
    np.testing.assert_allclose(got_loo, by_hand_shortlist(ids, D, Y, cap, np.arange(6)), rtol=1e-6)
    if cap:
        assert ((got > 0).sum(1) <= cap).all() and ((got_loo > 0).sum(1) <= cap).all()
    I, _ = R.drop_self(ids, D, np.arange(6))
    assert I.shape == (6, 4) and list(I[4]).count(4) == list(ids[4]).count(4) - 1 and I[4, 0] == 7
    assert I[5].tolist() == [9, 10, 11, 12]


def test_top_votes_blocks_equal_one_vote(monkeypatch):
    rng = np.random.default_rng(9)
    Y = random_binary(rng, (50, 40), 0.2)
    ids = rng.integers(-1, 50, size=(23, 6))
    D = np.sort(rng.random((23, 6)), 1)
    ref = vote(ids, D, Y, top_k=40, weighting="distance", alpha=2.0)
    monkeypatch.setattr(R, "_VOTE_BLOCK_CELLS", 30)  # a few queries a block
    got = R.top_votes(ids, D, Y, 0, "distance", 2.0)
    np.testing.assert_array_equal(got.toarray(), ref.toarray())
    np.testing.assert_array_equal(R.top_votes(ids, D, Y, 4, "distance", 2.0).toarray(),
                                  vote(ids, D, Y, top_k=4, weighting="distance", alpha=2.0).toarray())


def test_values_at_reads_entries_and_zero_elsewhere():
    rng = np.random.default_rng(1)
    S = sp.random(7, 9, density=0.3, random_state=rng, format="csr")
    P = random_binary(rng, (7, 9), 0.4)
    got = R.values_at(S, P)
    rows = np.repeat(np.arange(7), np.diff(P.indptr))
    np.testing.assert_array_equal(got, S.toarray()[rows, P.indices])
    assert R.values_at(sp.csr_matrix((7, 9)), P).tolist() == [0.0] * P.nnz


@pytest.mark.parametrize("prune, max_neg, tol", [(0.0, 0, 1e-4), (0.05, 4, 0.1)])
def test_label_scorer_fit_trains_each_label_on_its_positives_and_hardest_negatives(prune, max_neg, tol):
    from sklearn.svm import LinearSVC

    rng = np.random.default_rng(2)
    X = sp.random(60, 15, density=0.3, random_state=rng, format="csr", dtype=np.float32)
    Y = random_binary(rng, (60, 5), 0.25).toarray()
    Y[:, 4] = 0  # a label nobody carries
    SL = (random_binary(rng, (60, 5), 0.3).toarray() * rng.integers(1, 9, size=(60, 5))).astype(np.float32)
    SL[:, 3] = Y[:, 3]  # label 3: shortlisted only where positive -> no negative
    Y, SL = sp.csr_matrix(Y), sp.csr_matrix(SL)
    sc = R.LabelScorer.fit(X, Y, SL, C=0.7, seed=3, prune=prune, max_negatives=max_neg, threads=2, tol=tol)
    Yd, Sd = Y.toarray() > 0, SL.toarray()
    for l in range(3):
        neg = np.flatnonzero((Sd[:, l] > 0) & ~Yd[:, l])
        if max_neg:  # the hardest: largest shortlist value, then the lower row
            neg = np.array(sorted(neg, key=lambda i: (-Sd[i, l], i))[:max_neg])
            assert len(neg) == min(max_neg, int(((Sd[:, l] > 0) & ~Yd[:, l]).sum()))
        rows = np.union1d(np.flatnonzero(Yd[:, l]), neg)
        ref = LinearSVC(C=0.7, loss="squared_hinge", dual=True, tol=tol, random_state=3, max_iter=2000).fit(
            X[rows], Yd[rows, l])
        w = ref.coef_.ravel()
        w = np.where(np.abs(w) >= prune, w, 0.0)
        np.testing.assert_allclose(sc.coef[:, l].toarray().ravel(), w, rtol=1e-5, atol=1e-6)
        assert sc.intercept[l] == pytest.approx(ref.intercept_[0], rel=1e-5, abs=1e-6)
        if prune:
            assert (np.abs(sc.coef[:, l].data) >= prune).all() and np.count_nonzero(w) < np.count_nonzero(ref.coef_)
    assert sc.coef[:, 3].nnz == 0 and sc.intercept[3] == 1.0   # only positives
    assert sc.coef[:, 4].nnz == 0 and sc.intercept[4] == -1.0  # no positive
    with pytest.raises(ValueError, match="prune"):
        R.LabelScorer.fit(X, Y, SL, prune=-1.0)
    with pytest.raises(ValueError, match="tol"):
        R.LabelScorer.fit(X, Y, SL, tol=0.0)


def test_margins_match_dense_float64_reference(tmp_path, monkeypatch):
    rng = np.random.default_rng(3)
    coef = sp.random(12, 40, density=0.5, random_state=rng, format="csc")
    b = rng.normal(size=40)
    sc = R.LabelScorer(coef, b)
    X = sp.random(25, 12, density=0.4, random_state=rng, format="csr")
    P = random_binary(rng, (25, 40), 0.2)
    ref = (X.toarray().astype(np.float64) @ coef.toarray() + b)[np.repeat(np.arange(25), np.diff(P.indptr)), P.indices]
    monkeypatch.setattr(R, "_MARGIN_BLOCK_CELLS", 50)  # many small blocks of queries
    np.testing.assert_allclose(sc.margins(X, P), ref, rtol=1e-5, atol=1e-5)
    sc.save(tmp_path / "s.npz")
    back = R.LabelScorer.load(tmp_path / "s.npz")
    np.testing.assert_array_equal(back.coef.toarray(), sc.coef.toarray())
    np.testing.assert_array_equal(back.intercept, sc.intercept)
    with pytest.raises(ValueError, match="do not fit"):
        sc.margins(X[:, :5], P)


def test_fuse_is_vote_over_k_plus_weighted_sigmoid_on_the_shortlist():
    rng = np.random.default_rng(4)
    votes = sp.csr_matrix(np.array([[3, 0, 1, 0, 0], [0, 0, 0, 0, 0], [0, 2, 0, 0, 0]], dtype=np.float32))
    shortlist = sp.csr_matrix(np.array([[1, 1, 0, 0, 0], [0, 0, 0, 1, 0], [0, 1, 0, 0, 1]], dtype=np.float32))
    M = rng.normal(size=(3, 5))
    calls = []

    def margins(pat):
        calls.append(pat.nnz)
        return M[np.repeat(np.arange(3), np.diff(pat.indptr)), pat.indices]

    S = R.fuse(votes, shortlist, margins, weight=2.0, k=4).toarray()
    union = (votes.toarray() > 0) | (shortlist.toarray() > 0)
    ref = np.where(union, votes.toarray() / 4 + 2.0 / (1 + np.exp(-M)), 0.0)
    np.testing.assert_allclose(S, ref, rtol=1e-6)
    assert calls == [int(union.sum())]
    plain = R.fuse(votes, shortlist, margins, weight=0.0, k=4)
    np.testing.assert_allclose(plain.toarray(), votes.toarray() / 4)
    assert len(calls) == 1  # weight 0: no scorer call, the vote's own labels only


def test_select_settings_picks_the_best_mean_of_p_and_psp():
    rng = np.random.default_rng(5)
    Y_db = random_binary(rng, (40, 6), 0.3)
    Y_q = random_binary(rng, (10, 6), 0.3)
    I = torch.from_numpy(rng.integers(0, 40, size=(10, 8)))
    D = torch.sort(torch.rand(10, 8), 1).values
    sl = R.shortlist(I, D, Y_db)
    sl.data[:] = 1
    margins = sp.csr_matrix((rng.normal(size=sl.nnz), sl.indices, sl.indptr), shape=sl.shape)
    best, grid = PF.select_settings(D, I, Y_db, Y_q, [2, 8], [0.0, 1.0, 5.0], margins)
    assert len(grid) == 6 and best == max(grid, key=lambda r: r["score"])
    g = grid[4]  # k = 8, w = 1
    S = R.fuse(vote(I, D, Y_db, top_k=6), sl, lambda p: R.values_at(margins, p), 1.0, 8)
    m = evaluate(Y_q, S, ks=(1, 3, 5), inv_prop=inv_propensity(Y_db))
    assert (g["k"], g["weight"]) == (8, 1.0)
    assert g["score"] == pytest.approx(np.mean([m[n] for n in PF.SELECTION_METRICS]))
    with pytest.raises(ValueError, match="exceeds"):
        PF.select_settings(D, I, Y_db, Y_q, [9], [0.0])
    with pytest.raises(ValueError, match="margins"):
        PF.select_settings(D, I, Y_db, Y_q, [2], [1.0])


def test_trained_model_stores_scorers_and_choices_and_reloads(tmp_path):
    X, Y = toy_data(seed=6)
    cfg = {"epochs": 3, "val_fraction": 0.2, "seed": 1, "knn_grid": "3,10", "rerank": "linear",
           "rerank_weights": "0,1,3"}
    res = train(X, Y, {"dim": 6}, cfg, out_dir=tmp_path / "m", progress=False)
    pc = json.loads((tmp_path / "m" / "config.json").read_text())["predict"]
    assert pc["reranker"] == R.RERANK_FILE and (tmp_path / "m" / R.RERANK_FILE).is_file()
    best = max(pc["selection"], key=lambda r: r["score"])
    assert (pc["k"], pc["rerank_weight"]) == (best["k"], best["weight"]) and len(pc["selection"]) == 6
    man = json.loads((tmp_path / "m" / "manifest.json").read_text())
    assert R.RERANK_FILE in man["files"]
    loaded = Predictor.load(tmp_path / "m")
    S1 = loaded.predict(X[:40], top_k=5, rerank_weight=2.0)
    S2 = Predictor.from_train_result(res).predict(X[:40], top_k=5, rerank_weight=2.0)
    np.testing.assert_allclose(S1.toarray(), S2.toarray(), rtol=1e-6)
    # the fused scores are the vote over k plus the weighted sigmoid of the scorer's margin
    p = Predictor.from_train_result(res)
    Xp = p.features(X[:40])
    D, I = p.index().search(p.model.embed(Xp), pc["rerank_knn"])
    V = vote(I[:, :4], D[:, :4], p.train_labels, top_k=Y.shape[1])
    ref = R.fuse(V, R.shortlist(I, D, p.train_labels), lambda pat: p.scorer.margins(Xp, pat), 2.0, 4)
    np.testing.assert_allclose(p.predict(X[:40], k=4, top_k=Y.shape[1], rerank_weight=2.0).toarray(),
                               ref.toarray(), rtol=1e-6)
    # a shortlist cap of 3: the vote's top 3 labels and the shortlist's top 3 only
    ref3 = R.fuse(vote(I[:, :4], D[:, :4], p.train_labels, top_k=3), R.shortlist(I, D, p.train_labels, 3),
                  lambda pat: p.scorer.margins(Xp, pat), 2.0, 4)
    got3 = p.predict(X[:40], k=4, top_k=Y.shape[1], rerank_weight=2.0, rerank_shortlist=3)
    np.testing.assert_allclose(got3.toarray(), ref3.toarray(), rtol=1e-6)
    assert np.diff(got3.indptr).max() <= 6 < np.diff(ref.indptr).max()
    # weight 0 is the plain vote
    V = vote(*reversed(p.index().search(p.model.embed(Xp), 4)), p.train_labels, top_k=5)
    np.testing.assert_allclose(p.predict(X[:40], k=4, top_k=5, rerank_weight=0).toarray(), V.toarray())
    # a damaged scorer file is refused by the manifest check
    path = tmp_path / "m" / R.RERANK_FILE
    path.write_bytes(path.read_bytes()[:-8] + b"\0" * 8)
    with pytest.raises(ModelDirError, match="reranker.npz"):
        Predictor.load(tmp_path / "m")


def test_default_caps_bound_what_is_fitted_stored_and_scored(tmp_path, monkeypatch):
    """The re-ranker's caps are on by default, and each one limits what the fit trains on, what
    reranker.npz stores and what prediction scores (against the same training without caps)."""
    d = TrainConfig()
    assert d.rerank == "linear" and d.rerank_shortlist > 0 and d.rerank_prune > 0
    X, Y = toy_data(seed=8)
    seen = {}
    fit = R.LabelScorer.fit.__func__

    def spy(cls, X_, Y_, shortlist, **kw):
        seen["shortlist"], seen["Y"] = shortlist, Y_
        return fit(cls, X_, Y_, shortlist, **kw)

    monkeypatch.setattr(R.LabelScorer, "fit", classmethod(spy))
    base = {"epochs": 2, "val_fraction": 0.2, "seed": 2, "knn_grid": "5", "rerank_weights": "1"}
    out = {}
    for name, caps in (("free", {"rerank_shortlist": 0, "rerank_prune": 0.0}),
                       ("capped", {"rerank_shortlist": 3, "rerank_prune": 0.2})):
        res = train(X, Y, {"dim": 6}, {**base, **caps}, out_dir=tmp_path / name, progress=False)
        S, Yt = sp.csr_matrix(seen["shortlist"]), sp.csr_matrix(seen["Y"])
        negatives = int((S != 0).sum() - (S != 0).multiply(Yt != 0).sum())  # (example, label) negative pairs
        stored = R.LabelScorer.load(tmp_path / name / R.RERANK_FILE)
        scored = Predictor.from_train_result(res).predict(X[:60], top_k=Y.shape[1])
        out[name] = (np.diff(S.indptr).max(), negatives, stored, np.diff(scored.indptr).max(),
                     (tmp_path / name / R.RERANK_FILE).stat().st_size)
    (sl_free, neg_free, w_free, q_free, mb_free), (sl_cap, neg_cap, w_cap, q_cap, mb_cap) = out["free"], out["capped"]
    n_tr = S.shape[0]
    assert sl_cap <= 3 < sl_free and neg_cap <= 3 * n_tr < neg_free  # the mined negatives
    assert (np.abs(w_cap.coef.data) >= 0.2).all() and w_cap.coef.nnz < w_free.coef.nnz  # the weights
    assert (np.abs(w_free.coef.data) < 0.2).any() and mb_cap < mb_free  # (pruning removed some)
    assert q_cap <= 2 * 3 < q_free  # labels scored a query: the vote's top 3 and the shortlist's top 3


def test_model_without_reranker_refuses_a_weight(tmp_path):
    X, Y = toy_data(seed=7)
    res = train(X, Y, {"dim": 4}, {"epochs": 1, "rerank": "none", "knn_grid": "2,5"}, out_dir=tmp_path / "m",
                progress=False)
    pc = res.config["predict"]
    assert pc["reranker"] is None and pc["rerank_weight"] == 0.0 and pc["k"] in (2, 5)
    assert not (tmp_path / "m" / R.RERANK_FILE).exists()
    with pytest.raises(ValueError, match="no shortlist scorers"):
        Predictor.load(tmp_path / "m").predict(X[:3], rerank_weight=1.0)


def test_prediction_option_validation():
    for bad in ({"rerank": "mlp"}, {"knn_grid": "5,x"}, {"knn_grid": "0,5"}, {"rerank_weights": "-1"},
                {"rerank_knn": 0}, {"rerank_c": 0.0}, {"rerank_tol": 0.0}, {"negative_draw": "some"}):
        with pytest.raises(ValueError):
            TrainConfig(**bad)


def test_unique_shared_negatives():
    gen = torch.Generator().manual_seed(0)
    s = NegativeSampler(np.ones(10), "uniform", gen, unique=True)
    assert s.sample_shared(25).tolist() == list(range(10))  # k >= L: the full softmax
    for _ in range(20):
        d = s.sample_shared(7)
        assert len(set(d.tolist())) == 7 and d.min() >= 0 and d.max() < 10
    f = NegativeSampler(np.array([1.0, 0.0, 5.0, 9.0, 2.0]), "frequency", gen, unique=True)
    for _ in range(20):
        d = f.sample_shared(3).tolist()
        assert len(set(d)) == 3 and 1 not in d  # a label of frequency 0 is never drawn
    # replace (the default) keeps the previous stream
    a = NegativeSampler(np.ones(10), "uniform", torch.Generator().manual_seed(4)).sample_shared(30)
    b = NegativeSampler(np.ones(10), "uniform", torch.Generator().manual_seed(4)).sample((30,))
    assert torch.equal(a, b)


def test_predict_config_takes_the_callers_then_the_chosen_then_the_training_settings():
    from xhyp.config import PredictConfig

    train_cfg = {"knn": 7, "rerank_knn": 30}
    chosen = {"k": 12, "rerank_weight": 2.0, "rerank_knn": 40}
    got = PredictConfig().for_model(train_cfg, chosen)
    assert (got.k, got.rerank_weight, got.rerank_knn) == (12, 2.0, 40)
    got = PredictConfig(k=3, rerank_weight=0.0, rerank_knn=9).for_model(train_cfg, chosen)
    assert (got.k, got.rerank_weight, got.rerank_knn) == (3, 0.0, 9)
    got = PredictConfig().for_model(train_cfg, None)  # a model without chosen settings: the plain vote
    assert (got.k, got.rerank_weight, got.rerank_knn) == (7, 0.0, 30)
    for bad in ({"rerank_weight": -1.0}, {"rerank_weight": float("inf")}, {"rerank_knn": 0}):
        with pytest.raises(ValueError):
            PredictConfig(**bad)


def test_cli_predict_rerank_flags(tmp_path):
    from xhyp.cli import main
    from xhyp.datasets.formats import write_xc

    X, Y = toy_data(seed=8)
    train(X, Y, {"dim": 5}, {"epochs": 2, "val_fraction": 0.2, "rerank_weights": "1,3", "knn_grid": "3,6"},
          out_dir=tmp_path / "m", progress=False)
    write_xc(tmp_path / "q.txt", X[:50], Y[:50])
    p = Predictor.load(tmp_path / "m")
    assert p.config["predict"]["rerank_weight"] in (1.0, 3.0)

    def cli(*flags):
        assert main(["predict", "--model", str(tmp_path / "m"), "--file", str(tmp_path / "q.txt"), "--top-k", "8",
                     "--out", str(tmp_path / "s.npz"), *flags]) == 0
        return sp.load_npz(tmp_path / "s.npz").toarray()

    Xq = X[:50]
    np.testing.assert_allclose(cli(), p.predict(Xq, top_k=8).toarray(), rtol=1e-6)
    vote_only = cli("--rerank-weight", "0")
    np.testing.assert_allclose(vote_only, p.predict(Xq, top_k=8, rerank_weight=0.0).toarray(), rtol=1e-6)
    other = cli("--rerank-weight", "5", "--rerank-knn", "4")
    np.testing.assert_allclose(other, p.predict(Xq, top_k=8, rerank_weight=5.0, rerank_knn=4).toarray(), rtol=1e-6)
    assert not np.allclose(other, cli())


@pytest.mark.parametrize("L,n", [(10, 100), (983, 5000), (1000, 50), (7, 3), (5, 0)])
def test_unique_inverse_matches_numpy(L, n):
    """Both branches (dense marks when L <= 4 n, else a sort) give np.unique's ids and inverse."""
    from xhyp.knn.rerank import _unique_inverse

    cols = np.random.default_rng(L + n).integers(0, L, n)
    uniq, inv = _unique_inverse(cols, L)
    ref_u, ref_i = np.unique(cols, return_inverse=True)
    assert np.array_equal(uniq, ref_u) and np.array_equal(np.ravel(inv), np.ravel(ref_i))
    assert np.array_equal(uniq[np.ravel(inv)], cols)
