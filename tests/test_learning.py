"""Training must change the model: tests an untrained model (epochs=0) fails by a wide margin.

* a toy problem on which an untrained model is near the most-frequent-label rate and a trained
  one is (near) perfect, for every option that changes training;
* every parameter moves, inverted input dropout, early stopping and the best-epoch restore with a
  fixed sequence of validation scores;
* the paper's Adam over many steps against an independent float64 NumPy implementation.

Every setting a test depends on is passed explicitly (defaults may change).
"""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import xhyp.training.loop as T
import xhyp.training.loss as LS
from xhyp.metrics import precision_at_k
from xhyp.training.optim import PaperAdam
from xhyp.prediction import Predictor
from xhyp.training import train


def noisy_toy(n, n_lab=8, own=6, informative=3, noise_pool=300, noise=20, seed=0):
    """Single-label data whose raw features hide the label: ``informative`` of the label's ``own``
    features plus ``noise`` features drawn from a shared pool of ``noise_pool``.

    Random projections keep the raw-feature neighbourhoods, which the noise dominates, so an
    untrained model's kNN vote is about the most-frequent-label rate (~0.2); a trained projector
    drops the noise and separates the labels (P@1 ~1).
    """
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_lab + 1) ** 0.5  # unequal frequencies (frequency sampling differs)
    p /= p.sum()
    labels = rng.choice(n_lab, size=n, p=p)
    rows, cols = [], []
    for i, lab in enumerate(labels):
        f = list(lab * own + rng.choice(own, size=informative, replace=False))
        f += list(n_lab * own + rng.choice(noise_pool, size=noise, replace=False))
        rows += [i] * len(f)
        cols += f
    X = sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(n, n_lab * own + noise_pool))
    Y = sp.csr_matrix((np.ones(n, np.float32), (np.arange(n), labels)), shape=(n, n_lab))
    return X, Y


BASE_TRAIN = dict(epochs=10, batch_size=32, negatives=7, sampling="uniform", alpha=10.0, lr=0.03, lr_labels=0.03,
                  optimizer="radam", val_fraction=0.0, patience=100, knn=10, weighting="count", features="l2",
                  input_dropout=0.0, seed=0, device="cpu", threads=1, negative_mode="batch", shared_negatives=500,
                  label_update="sparse", lr_scaling="sqrt", prefetch=2, rerank="none", knn_grid="")
BASE_MODEL = dict(dim=8, hidden=32, projector="linear", geometry="poincare")
MODEL_KEYS = set(BASE_MODEL)

# one option changed at a time from the base, plus two combinations
OPTIONS = [{}, {"projector": "mlp"}, {"sampling": "frequency"}, {"features": "tfidf"}, {"input_dropout": 0.5},
           {"optimizer": "paper"}, {"geometry": "euclidean"}, {"projector": "mlp", "optimizer": "paper"},
           {"geometry": "euclidean", "projector": "mlp", "features": "tfidf"}]


def configs(option, **train_overrides):
    m = dict(BASE_MODEL, **{k: v for k, v in option.items() if k in MODEL_KEYS})
    t = dict(BASE_TRAIN, **{k: v for k, v in option.items() if k not in MODEL_KEYS}, **train_overrides)
    return m, t


@pytest.fixture(scope="module")
def toy():
    return noisy_toy(600, seed=0), noisy_toy(300, seed=1)


def test_p1(res, X, Y):
    return float(precision_at_k(Y, Predictor.from_train_result(res).predict(X, top_k=1), k=1)[0])


test_p1.__test__ = False  # a helper, not a test


@pytest.mark.parametrize("option", [{}, {"projector": "mlp"}, {"optimizer": "paper"}, {"geometry": "euclidean"},
                                    {"projector": "mlp", "geometry": "euclidean"}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_every_parameter_moves(toy, option):
    """One epoch changes every parameter tensor (projector, MLP layer and bias, labels)."""
    (X, Y), _ = toy
    m, t = configs(option, epochs=1)
    def trainable(res):  # (the ball's curvature is a frozen parameter)
        return {k: v.detach().clone() for k, v in res.model.named_parameters() if v.requires_grad}

    before = trainable(train(X, Y, m, dict(t, epochs=0), progress=False))
    after = trainable(train(X, Y, m, t, progress=False))
    assert set(before) == set(after)
    names = set(before)
    if m["projector"] == "mlp":
        assert {"mlp.1.weight", "mlp.1.bias"} <= names
    for name in names:
        change = (after[name] - before[name]).abs().max().item()
        assert change > 1e-4, f"{name} did not move in one epoch ({change})"
    # the labels stay inside the ball
    if m["geometry"] == "poincare":
        assert after["labels"].norm(dim=-1).max() < 1.0


def spy_steps(monkeypatch):
    """Record every batch the training loop hands to :func:`xhyp.training.loop.train_step` (what the
    optimiser step sees: feature ids, input weights after dropout, pairs, negatives)."""
    seen = []
    step = T.train_step

    def spy(model, opts, b, alpha, *args, **kw):
        assert model.training
        seen.append(b)
        return step(model, opts, b, alpha, *args, **kw)

    monkeypatch.setattr(T, "train_step", spy)
    return seen


@pytest.mark.parametrize("label_update", ["sparse", "dense"])
def test_input_dropout_is_inverted_dropout(toy, monkeypatch, label_update):
    """Training inputs: each feature dropped with probability p, the kept ones scaled by 1/(1-p)."""
    (X, Y), _ = toy
    seen = spy_steps(monkeypatch)
    m, t = configs({"label_update": label_update}, epochs=1, features="none", input_dropout=0.25)
    train(X, Y, m, t, progress=False)  # raw binary features: all values 1
    assert seen, "the training loop no longer calls xhyp.training.loop.train_step; re-target this test"
    w = torch.cat([b.w for b in seen]).numpy()
    assert len(w) == X.nnz  # one epoch, no validation split: one weight per non-zero input feature
    kept = w[w != 0]
    np.testing.assert_allclose(kept, 1.0 / (1.0 - 0.25), rtol=1e-6)
    assert abs((w == 0).mean() - 0.25) < 0.02
    seen.clear()
    train(X, Y, m, dict(t, input_dropout=0.0), progress=False)
    np.testing.assert_array_equal(torch.cat([b.w for b in seen]).numpy(), 1.0)


def test_batches_are_reshuffled_every_epoch(toy, monkeypatch):
    """Each epoch visits every training example once, in a new order."""
    (X, Y), _ = toy
    seen = spy_steps(monkeypatch)
    m, t = configs({}, epochs=2, batch_size=50)
    train(X, Y, m, t, progress=False)
    batches = [b.idx for b in seen]
    assert len(batches) == 2 * 12  # 600 examples in batches of 50, twice
    ep1, ep2 = torch.cat(batches[:12]), torch.cat(batches[12:])
    assert torch.equal(ep1.sort().values, ep2.sort().values)  # the same examples (features)...
    assert not torch.equal(batches[0], batches[12])  # ...in another order


# the label optimiser each (geometry, optimizer, label_update) gets; only that one may step
LABEL_OPTIMIZERS = {("poincare", "paper", "sparse"): "SparsePaperAdam", ("poincare", "paper", "dense"): "PaperAdam",
                    ("poincare", "radam", "sparse"): "SparseRiemannianAdam",
                    ("poincare", "radam", "dense"): "RiemannianAdam"}


@pytest.mark.parametrize("optimizer,sampling,negative_mode,label_update", [
    ("paper", "frequency", "batch", "sparse"), ("radam", "uniform", "batch", "sparse"),
    ("radam", "frequency", "pair", "dense"), ("paper", "uniform", "pair", "dense")])
def test_options_reach_the_loop(toy, monkeypatch, optimizer, sampling, negative_mode, label_update):
    """optimizer, label_update, sampling, negatives (per pair or shared) and alpha reach the label
    optimiser, the sampler, the batches and the loss."""
    import geoopt

    import xhyp.training.optim as O

    (X, Y), _ = toy
    seen = {"steps": {}, "kinds": [], "alphas": set()}

    def spy_class(owner, name):
        base = getattr(owner, name)

        class Spy(base):
            def step(self, closure=None):
                seen["steps"][name] = seen["steps"].get(name, 0) + 1
                return super().step(closure)

        monkeypatch.setattr(owner, name, Spy)

    for name in ("PaperAdam", "SparsePaperAdam", "SparseRiemannianAdam"):
        spy_class(O, name)
    spy_class(geoopt.optim, "RiemannianAdam")

    class SpySampler(T.NegativeSampler):
        def __init__(self, label_freq, kind, generator, **kw):
            seen["kinds"].append(kind)
            super().__init__(label_freq, kind, generator, **kw)

    loss = LS.batch_loss

    def spy_loss(model, r, batch, alpha, *args, **kw):
        seen["alphas"].add(alpha)
        return loss(model, r, batch, alpha, *args, **kw)

    monkeypatch.setattr(T, "NegativeSampler", SpySampler)
    monkeypatch.setattr(LS, "batch_loss", spy_loss)
    batches = spy_steps(monkeypatch)
    m, t = configs({"optimizer": optimizer, "sampling": sampling, "negative_mode": negative_mode,
                    "label_update": label_update}, epochs=1, negatives=4, shared_negatives=6, alpha=7.0)
    train(X, Y, m, t, progress=False)
    n_steps = len(batches)
    assert n_steps == 600 // 32 + 1
    assert seen["steps"] == {LABEL_OPTIMIZERS["poincare", optimizer, label_update]: n_steps}
    assert seen["kinds"] == [sampling]
    assert seen["alphas"] == {7.0}
    for b in batches:
        P = b.pos.shape[0]
        assert tuple(b.neg.shape) == ((6,) if negative_mode == "batch" else (P, 4))
        # the mask flags exactly the negatives that are the example's own label (single-label data)
        own = b.pos[:, None] if negative_mode == "pair" else torch.zeros(len(b.off), dtype=torch.long).index_put_(
            (b.ex,), b.pos)[:, None]
        assert torch.equal(b.is_pos, b.neg.expand(own.shape[0], -1) == own)
    if negative_mode == "pair":  # ~2400 draws: the sampling option decides which negatives are drawn
        neg = torch.cat([b.neg.ravel() for b in batches])
        counts = torch.bincount(neg, minlength=8).double() / len(neg)
        if sampling == "uniform":
            assert (counts - 1 / 8).abs().max() < 0.04, counts
        else:  # frequency^0.75: label 0 is drawn ~2.2 times as often as label 7
            assert counts[0] > 1.5 * counts[7], counts


# ------------------------------------------------------------------------------------------------
# early stopping and best-epoch restore, driven by a fixed sequence of validation scores
# ------------------------------------------------------------------------------------------------
def fixed_scores(monkeypatch, seq):
    calls = []

    def fake(scores, Y_val):
        calls.append(Y_val.shape[0])
        return float(seq[len(calls) - 1])

    monkeypatch.setattr(T, "precision_at_1", fake)
    return calls


def _state(path):
    return torch.load(path, map_location="cpu", weights_only=False)


@pytest.mark.parametrize("patience,seq,epochs_run,best_epoch", [
    # best at 2; 0.5 at epoch 4 ties (not better); 3 epochs without improvement -> stop after 5
    (3, [0.2, 0.5, 0.4, 0.5, 0.3, 0.9, 0.95, 0.99], 5, 2),
    (1, [0.3, 0.6, 0.1, 0.9, 0.95, 0.99, 0.99, 0.99], 3, 2),
    (2, [0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8], 8, 8),  # always improving: all epochs, the last is best
])
def test_early_stopping_and_best_epoch_restore(tmp_path, toy, monkeypatch, patience, seq, epochs_run, best_epoch):
    (X, Y), _ = toy
    m, t = configs({}, epochs=len(seq), val_fraction=0.1, patience=patience, input_dropout=0.5)
    calls = fixed_scores(monkeypatch, seq)
    res = train(X, Y, m, t, out_dir=tmp_path / "long", progress=False)
    assert len(calls) == epochs_run and set(calls) == {60}  # once per epoch, on the 60 validation rows
    assert len(res.history) == epochs_run
    assert [h["val_p1"] for h in res.history] == seq[:epochs_run]
    assert res.best_epoch == best_epoch and res.best_val_p1 == seq[best_epoch - 1]
    assert json.loads((tmp_path / "long" / "history.json").read_text()) == res.history

    # the same run stopped after its best epoch: its final weights are the best epoch's weights
    fixed_scores(monkeypatch, seq)
    ref = train(X, Y, m, dict(t, epochs=best_epoch), out_dir=tmp_path / "ref", progress=False)
    want = ref.model.state_dict()
    got_file = torch.load(tmp_path / "long" / "model.pt", weights_only=True)
    got_mem = res.model.state_dict()
    for name, v in want.items():
        torch.testing.assert_close(got_file[name], v, rtol=0, atol=0)
        torch.testing.assert_close(got_mem[name], v, rtol=0, atol=0)
    # the kNN database was embedded by the best model, in memory and on disk
    emb = torch.load(tmp_path / "long" / "train_emb.pt", weights_only=True)
    torch.testing.assert_close(emb, ref.train_emb, rtol=0, atol=0)
    torch.testing.assert_close(res.train_emb, ref.train_emb, rtol=0, atol=0)
    assert emb.shape[0] == X.shape[0]  # validation examples included
    if epochs_run > best_epoch:  # the last epoch's weights (checkpoint) are not the ones kept
        last = _state(tmp_path / "long" / "checkpoint.pt")["model"]
        assert (last["labels"] - want["labels"]).abs().max() > 1e-4
    # the directory predicts with the best epoch's model
    S_long = Predictor.load(tmp_path / "long").predict(X[:100], top_k=3)
    S_ref = Predictor.load(tmp_path / "ref").predict(X[:100], top_k=3)
    np.testing.assert_array_equal(S_long.toarray(), S_ref.toarray())


# ------------------------------------------------------------------------------------------------
# the paper's Adam against an independent float64 implementation
# ------------------------------------------------------------------------------------------------
def paper_adam_reference(x0, grads, lr, b1, b2, eps, max_norm):
    """Gerald & Baskiotis (CAp 2019, section 2.4) / Nickel & Kiela (2017, eq. 4-5), in NumPy:
    g' = ((1 - |x|^2) / 2)^2 g; Adam moments of g' with bias correction; step; clip to max_norm."""
    x = x0.astype(np.float64).copy()
    m = np.zeros_like(x)
    v = np.zeros_like(x)
    out = []
    for t, g in enumerate(grads, start=1):
        sq = np.sum(x * x, axis=1, keepdims=True)
        gr = ((1.0 - sq) / 2.0) ** 2 * g
        m = b1 * m + (1.0 - b1) * gr
        v = b2 * v + (1.0 - b2) * gr * gr
        m_hat = m / (1.0 - b1 ** t)
        v_hat = v / (1.0 - b2 ** t)
        x = x - lr * m_hat / (np.sqrt(v_hat) + eps)
        norm = np.linalg.norm(x, axis=1, keepdims=True)
        x = np.where(norm > max_norm, x * (max_norm / norm), x)
        out.append(x.copy())
    return out


@pytest.mark.parametrize("betas,lr", [((0.9, 0.999), 0.01), ((0.7, 0.95), 0.05)])
def test_paper_adam_many_steps_matches_numpy(betas, lr):
    rng = np.random.default_rng(0)
    n_rows, dim, steps, max_norm = 40, 5, 50, 1.0 - 1e-3
    v = rng.normal(size=(n_rows, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    x0 = v * rng.uniform(0.0, 0.999, size=(n_rows, 1))
    x0[:5] = v[:5] * (max_norm - 1e-6)  # some rows start at the max-norm guard
    # gradients that vary in scale and sign from step to step (and pull some rows outwards)
    grads = [rng.normal(size=(n_rows, dim)) * rng.uniform(0.1, 3.0) - 0.5 * x0 for _ in range(steps)]
    ref = paper_adam_reference(x0, grads, lr, *betas, 1e-8, max_norm)
    p = torch.nn.Parameter(torch.from_numpy(x0.copy()))  # float64
    opt = PaperAdam([p], lr=lr, betas=betas, eps=1e-8, max_norm=max_norm)
    clipped = 0
    for t, g in enumerate(grads):
        p.grad = torch.from_numpy(g.copy())
        opt.step()
        np.testing.assert_allclose(p.detach().numpy(), ref[t], rtol=1e-9, atol=1e-12, err_msg=f"step {t + 1}")
        clipped += int((np.linalg.norm(ref[t], axis=1) >= max_norm - 1e-12).sum())
    assert clipped > 0  # the max-norm projection was exercised
    # far from the start point: a wrong beta would have shown up
    assert np.abs(ref[-1] - x0).max() > 10 * lr


@pytest.mark.parametrize("option", [{}, {"optimizer": "paper"}, {"geometry": "euclidean"}, {"projector": "mlp"},
                                    {"label_update": "dense"}, {"label_update": "dense", "optimizer": "paper"},
                                    {"label_update": "dense", "geometry": "euclidean"}],
                         ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_learning_rates_reach_their_parameters(toy, option):
    """`lr` drives the projector, `lr_labels` the label embeddings (a tiny one freezes its part;
    torch's SparseAdam refuses 0)."""
    (X, Y), _ = toy
    m, t = configs(option, epochs=1)

    def params(**kw):
        r = train(X, Y, m, dict(t, **kw), progress=False).model
        return {k: v.detach().clone() for k, v in r.named_parameters() if v.requires_grad}

    init = params(epochs=0)
    frozen_labels = params(lr_labels=1e-12)
    frozen_projector = params(lr=1e-12)
    for name, v in init.items():
        moved_a = (frozen_labels[name] - v).abs().max().item()
        moved_b = (frozen_projector[name] - v).abs().max().item()
        if name == "labels":
            assert moved_a < 1e-8 and moved_b > 1e-4, (name, moved_a, moved_b)
        else:
            assert moved_a > 1e-4 and moved_b < 1e-8, (name, moved_a, moved_b)


def test_uniform_sampler_covers_every_label():
    s = T.NegativeSampler(np.array([5.0, 0.0, 1.0, 9.0, 2.0]), "uniform", torch.Generator().manual_seed(2))
    draws = s.sample((100000,)).numpy()
    np.testing.assert_allclose(np.bincount(draws, minlength=5) / len(draws), 0.2, atol=6e-3)
    assert draws.min() == 0 and draws.max() == 4


@pytest.mark.parametrize("name", ["PaperAdam", "SparsePaperAdam", "SparseRiemannianAdam", "LazyAdam"])
def test_ball_optimiser_defaults_are_adams(name):
    import xhyp.training.optim as O

    p = torch.nn.Parameter(torch.zeros(2, 2))
    d = getattr(O, name)([p]).defaults
    assert d["lr"] == 1e-3 and tuple(d["betas"]) == (0.9, 0.999) and d["eps"] == 1e-8


# the option grid last: the cheaper tests above fail first on a broken loop (scripts/mutation.py runs -x)
@pytest.mark.parametrize("option", OPTIONS, ids=lambda o: "-".join(f"{k}={v}" for k, v in o.items()) or "base")
def test_trained_far_above_untrained(toy, option):
    (X, Y), (Xt, Yt) = toy
    m, t = configs(option)
    untrained = test_p1(train(X, Y, m, dict(t, epochs=0), progress=False), Xt, Yt)
    trained = train(X, Y, m, t, progress=False)
    p1 = test_p1(trained, Xt, Yt)
    assert untrained < 0.4, untrained  # the raw-feature neighbourhoods do not give the label away
    assert p1 >= 0.95, (p1, untrained)
    assert p1 - untrained >= 0.55, (p1, untrained)
    losses = [h["loss"] for h in trained.history]
    assert len(losses) == t["epochs"] and losses[-1] < 0.5 * losses[0]
    # the joint embedding: a test example's nearest label embedding is its label (the objective)
    model = trained.model
    D = model.pairwise_distance(Predictor.from_train_result(trained).embed(Xt), model.labels.detach())
    nearest_label_p1 = (Yt.toarray()[np.arange(Xt.shape[0]), D.argmin(1).numpy()] > 0).mean()
    assert nearest_label_p1 >= 0.95, nearest_label_p1
