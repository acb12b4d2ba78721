"""Prediction from a model directory against an independent NumPy computation.

The reference re-embeds the raw features with the saved weights (L2 rows, ``X W``, the map
``p(u) = u / (1 + sqrt(1 + |u|^2))``), takes float64 Poincaré distances to the re-embedded
training examples, and votes by hand; it shares no code with :mod:`xhyp.prediction.predictor`. Settings (k,
weighting, alpha, index, nprobe) come from the directory's config.json or from the caller/CLI.
"""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.cli import main
from xhyp.datasets.formats import write_xc
from xhyp.prediction import Predictor
from xhyp.training import train

from conftest import np_top_k, np_vote, require
from test_learning import noisy_toy

TRAIN = dict(epochs=3, batch_size=32, negatives=7, sampling="uniform", alpha=5.0, lr=0.03, lr_labels=0.03,
             optimizer="radam", val_fraction=0.1, patience=100, knn=7, weighting="distance", features="l2",
             input_dropout=0.0, seed=0, device="cpu", threads=1, rerank="none", knn_grid="")
L = 8


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory):
    (X, Y), (Xq, Yq) = noisy_toy(500, n_lab=L, seed=2), noisy_toy(120, n_lab=L, seed=3)
    d = tmp_path_factory.mktemp("pred") / "m"
    train(X, Y, {"dim": 6, "projector": "linear", "geometry": "poincare"}, TRAIN, out_dir=d, progress=False)
    return d, (X, Y), (Xq, Yq)


# ------------------------------------------------------------------------------------------------
# the independent reference
# ------------------------------------------------------------------------------------------------
def np_embed(model_dir, X):
    W = torch.load(model_dir / "model.pt", weights_only=True)["bag.weight"].double().numpy()
    Xd = X.toarray().astype(np.float64)
    Xd /= np.maximum(np.linalg.norm(Xd, axis=1, keepdims=True), 1e-300)
    u = Xd @ W
    return u / (1.0 + np.sqrt(1.0 + (u * u).sum(1, keepdims=True)))


def np_poincare(q, db):
    sq = ((q[:, None, :] - db[None, :, :]) ** 2).sum(-1)
    den = (1 - (q * q).sum(1))[:, None] * (1 - (db * db).sum(1))[None, :]
    return np.arccosh(1 + 2 * sq / den)


def np_knn(q, db, k, floor=1.0):
    D = np_poincare(q, db)
    order = np.argsort(D, axis=1, kind="stable")
    Ds = np.take_along_axis(D, order, 1)
    # rows whose k-th and (k+1)-th neighbours are clearly apart (float32 search cannot swap them)
    clear = (Ds[:, k] - Ds[:, k - 1]) > 1e-4 * np.maximum(Ds[:, k], floor) if Ds.shape[1] > k else np.ones(len(q), bool)
    return order[:, :k], Ds[:, :k], clear


def reference(model_dir, X_train, Y_train, Xq, k, weighting, alpha, top_k):
    I, D, clear = np_knn(np_embed(model_dir, Xq), np_embed(model_dir, X_train), k)
    return np_top_k(np_vote(I, D, Y_train, weighting, alpha), top_k), clear


def assert_matches(S, ref, clear, min_clear=0.9):
    S = S.toarray() if sp.issparse(S) else S
    assert clear.mean() >= min_clear
    np.testing.assert_allclose(S[clear], ref[clear], rtol=2e-4, atol=1e-6)


# ------------------------------------------------------------------------------------------------
def test_saved_database_is_the_training_set_embedded(model_dir):
    d, (X, Y), _ = model_dir
    emb = torch.load(d / "train_emb.pt", weights_only=True).double().numpy()
    np.testing.assert_allclose(emb, np_embed(d, X), rtol=1e-4, atol=1e-6)
    assert (sp.load_npz(d / "train_labels.npz") != Y).nnz == 0


@pytest.mark.parametrize("kw,k,weighting", [
    ({}, 7, "distance"),  # everything from config.json: knn=7, distance weighting with alpha=5
    ({"k": 3}, 3, "distance"),
    ({"weighting": "count"}, 7, "count"),
    ({"k": 12, "weighting": "count", "index": "torch"}, 12, "count"),
    ({"k": 5, "index": "clustered", "index_params": {"n_clusters": 4, "nprobe": 4}}, 5, "distance"),  # all probed
])
def test_predictor_load_matches_numpy(model_dir, kw, k, weighting):
    d, (X, Y), (Xq, _) = model_dir
    cfg = json.loads((d / "config.json").read_text())["train"]
    assert (cfg["knn"], cfg["weighting"], cfg["alpha"]) == (7, "distance", 5.0)
    S = Predictor.load(d).predict(Xq, top_k=L, **kw)
    ref, clear = reference(d, X, Y, Xq, k, weighting, 5.0, L)
    assert_matches(S, ref, clear)
    # the cut to top_k: the 3 best labels (ties by lower label id)
    S3 = Predictor.load(d).predict(Xq, top_k=3, **kw).toarray()
    ref3 = np_top_k(ref, 3)
    srt = -np.sort(-ref, axis=1)
    clear3 = clear & (srt[:, 2] - srt[:, 3] > 1e-4)
    np.testing.assert_allclose(S3[clear3], ref3[clear3], rtol=2e-4, atol=1e-6)
    assert (np.count_nonzero(S3, axis=1) <= 3).all()


def test_alpha_changes_distance_votes(model_dir):
    """The training alpha reaches the distance weighting: another alpha gives other scores."""
    d, (X, Y), (Xq, _) = model_dir
    S = Predictor.load(d).predict(Xq, top_k=L).toarray()
    ref1, clear = reference(d, X, Y, Xq, 7, "distance", 1.0, L)
    assert np.abs(S[clear] - ref1[clear]).max() > 1e-2


def test_clustered_index_with_few_probes_matches_numpy(model_dir):
    """nprobe reaches the clustered index: probing 1 of 4 random-centroid clusters, by hand."""
    d, (X, Y), (Xq, _) = model_dir
    k, C, nprobe = 5, 4, 1
    db, q = np_embed(d, X), np_embed(d, Xq)
    cid = torch.randperm(len(db), generator=torch.Generator().manual_seed(0))[:C].sort().values.numpy()
    assign = np.argmin(np_poincare(db, db[cid]), axis=1)
    probe = np.argsort(np_poincare(q, db[cid]), axis=1)[:, :nprobe]
    S_ref = np.zeros((len(q), L))
    clear = np.ones(len(q), bool)
    for r in range(len(q)):
        cand = np.flatnonzero(np.isin(assign, probe[r]))
        I, D, c = np_knn(q[r:r + 1], db[cand], k)
        clear[r] = c[0]
        S_ref[r] = np_vote(cand[I], D, Y, "distance", 5.0)[0]
    S = Predictor.load(d).predict(Xq, k=k, top_k=L, index="clustered", index_params={"n_clusters": C, "nprobe": nprobe})
    assert_matches(S, S_ref, clear)
    exact, _ = reference(d, X, Y, Xq, k, "distance", 5.0, L)
    assert np.abs(S_ref - exact).max() > 1e-3  # one probe is not exact search here


def test_cli_predict_settings(model_dir, tmp_path):
    """`xhyp predict`: defaults from the model directory, --k/--weighting/--index/--nprobe from the flags."""
    require("faiss")  # a test dependency: fails under CI when missing
    d, (X, Y), (Xq, Yq) = model_dir
    write_xc(tmp_path / "q.txt", Xq, Yq)
    base = ["predict", "--model", str(d), "--file", str(tmp_path / "q.txt"), "--top-k", str(L)]

    def run(*flags):
        out = tmp_path / "s.npz"
        assert main([*base, "--out", str(out), *flags]) == 0
        return sp.load_npz(out).toarray()

    ref, clear = reference(d, X, Y, Xq, 7, "distance", 5.0, L)
    assert_matches(run(), ref, clear)
    ref, clear = reference(d, X, Y, Xq, 4, "count", 5.0, L)
    assert_matches(run("--k", "4", "--weighting", "count"), ref, clear)
    # faiss IVF (15 lists on 500 points): probing every list is exact, probing one is not
    ref, clear = reference(d, X, Y, Xq, 7, "distance", 5.0, L)
    assert_matches(run("--index", "faiss-ivf", "--nprobe", "64"), ref, clear)
    one = run("--index", "faiss-ivf", "--nprobe", "1")
    assert np.abs(one - ref).max() > 1e-3


def np_tfidf_l2(X_fit, X):
    """scikit-learn's smooth idf by hand: idf = ln((1 + n) / (1 + df)) + 1, then rows L2-normalised."""
    n = X_fit.shape[0]
    df = np.asarray((X_fit > 0).sum(0)).ravel()
    idf = np.log((1.0 + n) / (1.0 + df)) + 1.0
    Xd = X.toarray().astype(np.float64) * idf
    return Xd / np.maximum(np.linalg.norm(Xd, axis=1, keepdims=True), 1e-300)


def test_tfidf_model_embeds_with_training_idf(tmp_path):
    (X, Y), (Xq, _) = noisy_toy(300, n_lab=L, seed=6), noisy_toy(40, n_lab=L, seed=7)
    d = tmp_path / "m"
    train(X, Y, {"dim": 4}, dict(TRAIN, epochs=1, features="tfidf"), out_dir=d, progress=False)
    W = torch.load(d / "model.pt", weights_only=True)["bag.weight"].double().numpy()

    def emb(Z):
        u = np_tfidf_l2(X, Z) @ W
        return u / (1.0 + np.sqrt(1.0 + (u * u).sum(1, keepdims=True)))

    np.testing.assert_allclose(torch.load(d / "train_emb.pt", weights_only=True).numpy(), emb(X), rtol=1e-4, atol=1e-6)
    np.testing.assert_allclose(Predictor.load(d).embed(Xq).numpy(), emb(Xq), rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("weighting", ["count", "distance"])
def test_validation_score_is_knn_p1_of_held_out_rows(tmp_path, weighting):
    """history's val P@1: the held-out rows' top-1 kNN vote among the other training rows, by hand,
    with the configured k, weighting and alpha (a barely trained model, so that neighbours disagree)."""
    X, Y = noisy_toy(400, n_lab=L, seed=8)
    cfg = dict(TRAIN, epochs=1, val_fraction=0.25, knn=9, weighting=weighting, alpha=3.0, seed=4, lr=5e-4,
               lr_labels=5e-4, radial_weight=0.0)  # (a model on which k = 5 and k = 9 score differently)
    d = tmp_path / "m"
    res = train(X, Y, {"dim": 4}, cfg, out_dir=d, progress=False)
    perm = np.random.default_rng(4).permutation(400)  # the split: a seeded permutation, the first 25 % held out
    va, tr = np.sort(perm[:100]), np.sort(perm[100:])
    emb = np_embed(d, X)

    def p1_range(k, weighting, alpha):
        """Bounds of the by-hand P@1: rows whose k-th/(k+1)-th neighbours float32 could swap may go
        either way; the others are exact."""
        I, D, clear = np_knn(emb[va], emb[tr], k, floor=1e-2)
        S = np_top_k(np_vote(I, D, Y[tr], weighting, alpha), 1)
        hits = ((S > 0) & (Y[va].toarray() > 0)).any(1)
        assert clear.mean() > 0.9
        return hits[clear].sum() / 100 - 1e-12, (hits[clear].sum() + (~clear).sum()) / 100 + 1e-12

    got = res.history[0]["val_p1"]
    lo, hi = p1_range(9, weighting, 3.0)
    assert lo <= got <= hi, (got, lo, hi)
    # another k gives another score here (the weighting and alpha change the top-1 vote of too few
    # rows of this toy set to tell them apart; scripts/mutation.py lists them as survivors)
    olo, ohi = p1_range(5, weighting, 3.0)
    assert ohi < lo or olo > hi, ((olo, ohi), (lo, hi))


def test_index_cache_follows_the_parameters(model_dir):
    d, _, (Xq, _) = model_dir
    pred = Predictor.load(d)
    kw = dict(k=5, top_k=L, index="clustered")
    a = pred.predict(Xq, index_params={"n_clusters": 4, "nprobe": 1}, **kw).toarray()
    b = pred.predict(Xq, index_params={"n_clusters": 4, "nprobe": 4}, **kw).toarray()
    np.testing.assert_array_equal(b, Predictor.load(d).predict(Xq, index_params={"n_clusters": 4, "nprobe": 4},
                                                               **kw).toarray())
    np.testing.assert_array_equal(a, Predictor.load(d).predict(Xq, index_params={"n_clusters": 4, "nprobe": 1},
                                                               **kw).toarray())
    assert np.abs(a - b).max() > 1e-3


def test_predict_device_cpu_equals_auto_and_cuda_is_refused_without_a_gpu(model_dir, tmp_path, capsys):
    """--device: cpu gives the default's scores; a GPU that is not there is one clear error."""
    d, (X, Y), (Xq, Yq) = model_dir
    p = Predictor.load(d)
    a = p.predict(Xq, top_k=L).toarray()
    np.testing.assert_array_equal(p.predict(Xq, top_k=L, device="cpu").toarray(), a)
    if torch.cuda.is_available():  # a GPU machine: the exact kernel there gives the same votes
        np.testing.assert_allclose(p.predict(Xq, top_k=L, device="cuda").toarray(), a, rtol=1e-5, atol=1e-6)
        return
    with pytest.raises(ValueError, match="no CUDA GPU is available"):
        p.predict(Xq, top_k=L, device="cuda")
    write_xc(tmp_path / "q.txt", Xq, Yq)
    rc = main(["predict", "--model", str(d), "--file", str(tmp_path / "q.txt"), "--out", str(tmp_path / "s.npz"),
               "--device", "cuda"])
    err = capsys.readouterr().err
    assert rc == 2 and "no CUDA GPU is available" in err and len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "s.npz").exists()
