"""Model, loss, optimisers, training loop, checkpoints and resume."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp.embedding import manifold as M
from xhyp.embedding.model import HyperbolicXMC, ModelConfig, csr_to_bag
from xhyp.training.optim import PaperAdam
from xhyp.prediction import Predictor
from xhyp.config import TrainConfig
from xhyp.training import train
from xhyp.training.batches import NegativeSampler
from xhyp.training.loss import sampled_softmax_loss


def toy_data(n=400, n_feat=60, n_lab=12, seed=0):
    """Each label owns 5 features; an example has 1-2 labels and mostly their features."""
    rng = np.random.default_rng(seed)
    X = sp.lil_matrix((n, n_feat), dtype=np.float32)
    Y = sp.lil_matrix((n, n_lab), dtype=np.float32)
    for i in range(n):
        labs = rng.choice(n_lab, size=rng.integers(1, 3), replace=False)
        for lab in labs:
            Y[i, lab] = 1
            for f in rng.choice(5, size=3, replace=False):
                X[i, lab * 5 + f] = 1
        X[i, rng.integers(0, n_feat)] = 1  # noise
    return X.tocsr(), Y.tocsr()


def test_csr_to_bag_matches_dense_product():
    X, _ = toy_data(20)
    model = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=4, geometry="euclidean"))
    u = model.project_features(*csr_to_bag(X)).detach().numpy()
    ref = X.toarray() @ model.bag.weight.detach().numpy()
    np.testing.assert_allclose(u, ref, rtol=1e-5, atol=1e-7)


def test_initialisation_follows_paper():
    cfg = ModelConfig(n_features=5000, n_labels=3000, dim=50)
    m = HyperbolicXMC(cfg)
    assert abs(m.bag.weight.std().item() - 1e-3) < 1e-4
    assert abs(m.labels.detach().std().item() - 1e-4) < 1e-5
    assert m.bag.sparse


def test_sampled_softmax_loss_matches_manual_and_masks_positives():
    torch.manual_seed(0)
    m = HyperbolicXMC(ModelConfig(n_features=10, n_labels=3, dim=2, init_std_labels=0.3))
    r = M.project(torch.randn(2, 2) * 0.3)
    Yb = sp.csr_matrix(np.array([[1, 1, 0], [0, 0, 1]], dtype=np.float32))
    gen = torch.Generator().manual_seed(0)
    sampler = NegativeSampler(np.ones(3), "uniform", gen)
    state = gen.get_state()
    loss = sampled_softmax_loss(m, r, Yb, sampler, negatives=4, alpha=2.0)
    gen.set_state(state)
    neg = sampler.sample((3, 4))
    pos_sets = [{0, 1}, {0, 1}, {2}]
    ex = [0, 0, 1]
    pos = [0, 1, 2]
    W = m.labels.detach()
    total = 0.0
    for p in range(3):
        logits = [-2.0 * float(M.dist(r[ex[p]], W[pos[p]]))]
        for j in neg[p].tolist():
            if j not in pos_sets[p]:
                logits.append(-2.0 * float(M.dist(r[ex[p]], W[j])))
        logits = np.array(logits)
        total += -(logits[0] - np.log(np.exp(logits).sum()))
    assert abs(float(loss.detach()) - total / 3) < 1e-5


def test_frequency_sampler_follows_power_075():
    freq = np.array([1.0, 16.0, 0.0, 81.0])
    s = NegativeSampler(freq, "frequency", torch.Generator().manual_seed(1)).sample((200000,))
    emp = np.bincount(s.numpy(), minlength=4) / 200000
    expect = freq ** 0.75 / (freq ** 0.75).sum()
    np.testing.assert_allclose(emp, expect, atol=5e-3)


def test_paper_adam_step_matches_formula():
    x0 = torch.tensor([[0.5, 0.0], [0.0, -0.9]])
    p = torch.nn.Parameter(x0.clone())
    opt = PaperAdam([p], lr=0.1)
    g = torch.tensor([[1.0, 2.0], [-1.0, 0.5]])
    p.grad = g.clone()
    opt.step()
    scale = ((1 - (x0 ** 2).sum(-1, keepdim=True)) / 2) ** 2
    gg = g * scale
    m_hat, v_hat = gg, gg * gg  # first Adam step: bias-corrected moments
    expect = M.project(x0 - 0.1 * m_hat / (v_hat.sqrt() + 1e-8))
    np.testing.assert_allclose(p.detach().numpy(), expect.numpy(), rtol=1e-6)


@pytest.mark.parametrize("optimizer,geometry", [("radam", "poincare"), ("paper", "poincare"),
                                                ("radam", "euclidean")])
def test_training_learns_toy_problem(tmp_path, optimizer, geometry):
    X, Y = toy_data()
    res = train(X, Y, {"dim": 8, "geometry": geometry},
                {"epochs": 8, "optimizer": optimizer, "val_fraction": 0.1, "patience": 8, "seed": 3, "alpha": 30.0,
                 "lr_labels": 3e-3},
                out_dir=tmp_path / "m", progress=False)
    losses = [h["loss"] for h in res.history]
    assert losses[-1] < 0.7 * losses[0]
    assert res.best_val_p1 > 0.8  # chance is ~1/12
    if geometry == "poincare":
        assert (res.model.labels.detach().norm(dim=-1) <= M.MAX_NORM + 1e-6).all()
        assert (res.train_emb.norm(dim=-1) < 1).all()
    # the saved directory is self-describing and predicts like the in-memory model
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["model"]["n_labels"] == 12 and cfg["train"]["optimizer"] == optimizer
    pred = Predictor.load(tmp_path / "m")
    for weighting in ("count", "distance"):  # k, weighting and alpha come from the training config
        S1 = pred.predict(X[:50], top_k=3, weighting=weighting)
        S2 = Predictor.from_train_result(res).predict(X[:50], top_k=3, weighting=weighting)
        np.testing.assert_allclose(S1.toarray(), S2.toarray(), rtol=1e-5)


def test_resume_continues_exactly(tmp_path):
    X, Y = toy_data(seed=5)
    cfg = {"epochs": 4, "val_fraction": 0.1, "patience": 10, "seed": 7}
    full = train(X, Y, {"dim": 6}, cfg, out_dir=tmp_path / "full", progress=False)
    part = train(X, Y, {"dim": 6}, dict(cfg, epochs=2), out_dir=tmp_path / "part", progress=False)
    assert len(part.history) == 2
    resumed = train(X, Y, {"dim": 6}, cfg, out_dir=tmp_path / "part", resume=True, progress=False)
    assert [h["loss"] for h in resumed.history] == pytest.approx([h["loss"] for h in full.history], rel=1e-5)
    torch.testing.assert_close(resumed.model.labels.detach(), full.model.labels.detach())


def test_resume_refuses_other_data(tmp_path):
    X, Y = toy_data()
    train(X, Y, {"dim": 4}, {"epochs": 1}, out_dir=tmp_path / "m", progress=False)
    with pytest.raises(ValueError, match="other data"):
        train(X[:100], Y[:100], {"dim": 4}, {"epochs": 2}, out_dir=tmp_path / "m", resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        train(X, Y, {"dim": 4}, {"epochs": 2}, out_dir=tmp_path / "none", resume=True, progress=False)
    with pytest.raises(ValueError, match=r"other settings of \['alpha', 'lr'\]"):
        train(X, Y, {"dim": 4}, {"epochs": 2, "lr": 0.1, "alpha": 7.0}, out_dir=tmp_path / "m", resume=True,
              progress=False)


def test_bad_configs():
    with pytest.raises(ValueError):
        TrainConfig(sampling="zipf")
    with pytest.raises(ValueError, match="weighting"):  # refused before any training
        TrainConfig(weighting="distnce")
    with pytest.raises(ValueError, match="knn"):
        TrainConfig(knn=0)
    with pytest.raises(ValueError):
        ModelConfig(n_features=3, n_labels=2, geometry="spherical")
    X, Y = toy_data(10)
    with pytest.raises(ValueError, match="rows"):
        train(X, Y[:5], {}, {}, progress=False)


def test_predictor_rejects_wrong_feature_count(tmp_path):
    X, Y = toy_data()
    train(X, Y, {"dim": 4}, {"epochs": 1}, out_dir=tmp_path / "m", progress=False)
    with pytest.raises(ValueError, match="features"):
        Predictor.load(tmp_path / "m").predict(sp.csr_matrix((2, 7), dtype=np.float32))
    (tmp_path / "m" / "train_emb.pt").unlink()
    with pytest.raises(FileNotFoundError, match="train_emb.pt"):
        Predictor.load(tmp_path / "m")
