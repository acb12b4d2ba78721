"""The learned softmax scale (TrainConfig.learn_alpha, xhyp.embedding.model.LearnedScale)."""
import copy
import json
import math

import numpy as np
import pytest
import torch

from xhyp import config as C
from xhyp.cli import config_from_pairs
from xhyp.embedding.model import HyperbolicXMC, LearnedScale, ModelConfig
from xhyp.prediction import Predictor
from xhyp.training import batches as B
from xhyp.training import loop as T
from xhyp.training import loss as LS
from xhyp.training import optim as O

from test_train import toy_data
from test_train_scale import _ball_points


def _poincare_dist64(x, y):
    """float64 reference: arcosh(1 + 2 |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))) (Nickel & Kiela 2017, eq. 1)."""
    sq = ((x - y) ** 2).sum(-1)
    den = (1 - (x * x).sum(-1)) * (1 - (y * y).sum(-1))
    return torch.acosh(1 + 2 * sq / den)


def _batch(seed, L=12, mode="batch"):
    X, Y = toy_data(seed=seed)
    X, Y = X.astype(np.float32).tocsr(), Y.astype(np.float32).tocsr()
    cfg = C.TrainConfig(negative_mode=mode, negatives=6, shared_negatives=6, input_dropout=0.0,
                        radial_weight=0.0)  # the softmax alone (the radial term: tests/test_radial.py)
    g = torch.Generator().manual_seed(seed)
    return B.prepare_batch(X, Y, np.arange(24), B.NegativeSampler(np.ones(L), "uniform", g), cfg, g)


@pytest.mark.parametrize("mode", ["batch", "pair"])
@pytest.mark.parametrize("alpha", [0.7, 5.0, 30.0])
def test_learned_scale_loss_and_gradient_match_float64_reference(mode, alpha):
    """The loss with alpha = exp(log_alpha) and its gradient in log_alpha equal a float64
    reference computed pair by pair: loss = mean_p [lse_j(-a d_j) + a d_pos], and
    dloss/dlog(a) = a * mean_p [d_pos - sum_j softmax(-a d)_j d_j] (the positive among the j),
    with labels and examples spread in the ball and half of the labels near its boundary."""
    b = _batch(1, mode=mode)
    m = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=4)).double()
    with torch.no_grad():
        m.labels.copy_(_ball_points(12, 4, seed=2))
    r = _ball_points(24, 4, seed=3) * 0.99  # examples inside the guard
    scale = LearnedScale(alpha).double()
    loss = LS.batch_loss(m, r, b, scale(), sparse=False)
    loss.backward()
    W = m.labels.detach()
    want, want_g = 0.0, 0.0
    a = float(scale)
    for p in range(b.n_pairs):
        e, pos = int(b.ex[p]), int(b.pos[p])
        neg = b.neg if b.neg.dim() == 1 else b.neg[p]
        mask = b.is_pos[e] if b.neg.dim() == 1 else b.is_pos[p]
        ids = [pos] + [int(j) for j, bad in zip(neg, mask) if not bad]
        d = _poincare_dist64(r[e][None], W[ids])
        logits = -a * d
        want += float(torch.logsumexp(logits, 0) - logits[0])
        want_g += a * float(d[0] - (torch.softmax(logits, 0) * d).sum())
    assert loss.item() == pytest.approx(want / b.n_pairs, rel=1e-9, abs=1e-12)
    assert scale.log_alpha.grad.item() == pytest.approx(want_g / b.n_pairs, rel=1e-7, abs=1e-10)
    # the scale as a tensor gives the fixed-alpha loss of the same value
    assert LS.batch_loss(m, r, b, a, sparse=False).item() == pytest.approx(loss.item(), rel=1e-12)


def test_learned_scale_rejects_bad_values_and_config_checks():
    for bad in (0.0, -1.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="softmax scale"):
            LearnedScale(bad)
    with pytest.raises(ValueError, match="lr_alpha"):
        C.TrainConfig(learn_alpha=True, lr_alpha=0.0)
    with pytest.raises(ValueError, match="learn_alpha"):
        C.TrainConfig(learn_alpha="yes")
    assert config_from_pairs(["learn_alpha=true", "lr_alpha=0.03"], C.TrainConfig) == {"learn_alpha": True,
                                                                                         "lr_alpha": 0.03}
    assert config_from_pairs(["learn_alpha=False"], C.TrainConfig) == {"learn_alpha": False}
    with pytest.raises(ValueError, match="learn-alpha: invalid parse_bool value: 'maybe'"):
        config_from_pairs(["learn_alpha=maybe"], C.TrainConfig)
    with pytest.raises(ValueError, match="true or false"):
        C.parse_bool("maybe")


def test_train_step_moves_log_alpha_and_keeps_other_updates_of_the_fixed_scale():
    """One step with a LearnedScale: log_alpha gets a non-zero gradient and its Adam step moves
    it by about lr_alpha; the model's parameters get the same step as with the fixed alpha."""
    b = _batch(2)
    cfg = C.TrainConfig(lr_alpha=0.05, lr_scaling="none")
    m1 = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=5, init_std_labels=0.1))
    m2 = copy.deepcopy(m1)
    scale = LearnedScale(5.0)
    o1, o2 = O.make_optimizers(m1, cfg, scale), O.make_optimizers(m2, cfg)
    assert len(o1) == len(o2) + 1 and o1[-1].param_groups[0]["params"][0] is scale.log_alpha
    l1 = LS.train_step(m1, o1, b, scale, sparse=False)
    l2 = LS.train_step(m2, o2, b, 5.0, sparse=False)
    torch.testing.assert_close(l1, l2)
    assert scale.log_alpha.grad is not None and abs(scale.log_alpha.grad.item()) > 1e-6
    assert abs(scale.log_alpha.item() - math.log(5.0)) == pytest.approx(0.05, rel=1e-3)  # Adam's first step
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-7, msg=k)


def test_training_learns_alpha_and_stores_the_best_epochs_value(tmp_path):
    X, Y = toy_data()
    cfg = {"epochs": 4, "val_fraction": 0.1, "patience": 10, "seed": 0, "learn_alpha": True, "lr_alpha": 0.05,
           "rerank": "none"}
    res = T.train(X, Y, {"dim": 6}, cfg, out_dir=tmp_path / "m", progress=False)
    alphas = [h["alpha"] for h in res.history]
    assert len(alphas) == 4 and all(a > 0 for a in alphas)
    assert abs(math.log(alphas[-1] / 5.0)) > 0.1  # it moved (hundreds of steps of ~0.07 in log space)
    stored = json.loads((tmp_path / "m" / "config.json").read_text())
    assert stored["train"]["learn_alpha"] is True
    assert stored["predict"]["alpha"] == pytest.approx(alphas[res.best_epoch - 1])
    p = Predictor.load(tmp_path / "m")
    assert C.PredictConfig().for_model(p.config["train"], p.config["predict"]).alpha == stored["predict"]["alpha"]
    assert C.PredictConfig(alpha=2.0).for_model(p.config["train"], p.config["predict"]).alpha == 2.0


def test_learned_alpha_resumes_exactly(tmp_path):
    X, Y = toy_data(seed=5)
    cfg = {"epochs": 3, "val_fraction": 0.1, "patience": 10, "seed": 1, "learn_alpha": True, "rerank": "none",
           "knn_grid": "", "prefetch": 0}
    full = T.train(X, Y, {"dim": 5}, cfg, progress=False)
    T.train(X, Y, {"dim": 5}, dict(cfg, epochs=2), out_dir=tmp_path / "m", progress=False)
    resumed = T.train(X, Y, {"dim": 5}, cfg, out_dir=tmp_path / "m", resume=True, progress=False)
    assert [h["alpha"] for h in resumed.history] == [h["alpha"] for h in full.history]
    assert torch.equal(resumed.model.labels.detach(), full.model.labels.detach())


def test_default_is_a_fixed_alpha_and_lr_alpha_does_nothing_without_learn_alpha(tmp_path):
    """Defaults unchanged: no learned scale (no optimiser, no history or config entry), and the
    trained model is bit-identical whatever lr_alpha when learn_alpha is off."""
    assert C.TrainConfig().learn_alpha is False and C.TrainConfig().alpha == 5.0
    X, Y = toy_data(seed=6)
    cfg = {"epochs": 2, "val_fraction": 0.1, "seed": 2, "rerank": "none", "prefetch": 0}
    a = T.train(X, Y, {"dim": 5}, cfg, out_dir=tmp_path / "a", progress=False)
    b = T.train(X, Y, {"dim": 5}, dict(cfg, lr_alpha=0.9), progress=False)
    assert all("alpha" not in h for h in a.history)
    assert "alpha" not in (json.loads((tmp_path / "a" / "config.json").read_text()).get("predict") or {})
    assert "scale" not in torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, v1), v2 in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    m = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=5))
    assert len(O.make_optimizers(m, C.TrainConfig())) == 2


@pytest.mark.parametrize("c", [0.25, 1.0, 4.0])
def test_a_ball_of_curvature_c_is_the_unit_ball_rescaled(c):
    """Why a learned curvature adds nothing to a learned scale here (docs/accuracy.md): on the
    ball of curvature -c (radius 1/sqrt c), d_c(x, y) = (2/sqrt c) artanh(sqrt c |(-x) (+)_c y|)
    = d_1(sqrt c x, sqrt c y) / sqrt c, and the projector's map p_c(u) = u / (1 + sqrt(1 + c|u|^2))
    is p_1(sqrt c u) / sqrt c, so alpha d_c(p_c(u), w) = (alpha / sqrt c) d_1(p_1(sqrt c u), sqrt c w):
    a curvature c is a scale alpha / sqrt c with a rescaled projector and labels (float64, against
    geoopt's Möbius addition at curvature c, points near the boundary included)."""
    import geoopt

    from xhyp.embedding import manifold as M

    sc = math.sqrt(c)
    x, y = _ball_points(64, 5, seed=7) / sc, _ball_points(64, 5, seed=8).flip(0) / sc
    ball = geoopt.PoincareBall(c=c)
    mob = ball.mobius_add(-x, y, project=False).norm(dim=-1)
    d_c = 2 / sc * torch.atanh((sc * mob).clamp_max(1 - 1e-16))
    torch.testing.assert_close(d_c, M.dist(sc * x, sc * y) / sc, rtol=1e-6, atol=1e-9)
    u = torch.randn(64, 5, dtype=torch.float64, generator=torch.Generator().manual_seed(9)) * 3
    p_c = u / (1 + torch.sqrt(1 + c * (u * u).sum(-1, keepdim=True)))
    torch.testing.assert_close(sc * p_c, M.to_ball(sc * u, 1 - 1e-12), rtol=1e-12, atol=1e-14)
