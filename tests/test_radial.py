"""The loss's radial term (TrainConfig.radial_weight): radial_weight * mean over the batch's
(example, positive) pairs of d(0, w_pos), a pull of each label towards the origin in proportion to
its frequency."""
import json

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from xhyp import config as C
from xhyp.cli import build_parser, config_from_args, config_from_pairs
from xhyp.embedding import manifold as M
from xhyp.embedding.model import HyperbolicXMC, ModelConfig
from xhyp.plot import distance_to_origin, spearman_frequency_distance
from xhyp.training import batches as B
from xhyp.training import loop as T
from xhyp.training import loss as LS

from test_train import toy_data
from test_train_scale import _ball_points

L, DIM = 12, 4


def _ref_dist0(w, geometry):
    """float64 reference: arcosh(1 + 2 |w|^2 / (1 - |w|^2)) (Nickel & Kiela 2017, eq. 1 with u = 0), or |w|."""
    sq = (w * w).sum(-1)
    return torch.acosh(1 + 2 * sq / (1 - sq)) if geometry == "poincare" else sq.sqrt()


def _ref_grad0(w, geometry):
    """d d(0, w) / dw: 2 w / (|w| (1 - |w|^2)) (Poincaré), w / |w| (Euclidean)."""
    n = w.norm(dim=-1, keepdim=True)
    return 2 * w / (n * (1 - n * n)) if geometry == "poincare" else w / n


def _labels(geometry):
    """Half of the labels within 1e-4 of the max-norm guard (|w| close to 1), one at 1 - 1e-9."""
    W = _ball_points(L, DIM, seed=2)
    W[0] *= (1 - 1e-9) / W[0].norm()
    return W if geometry == "poincare" else W * 3.0


def _batch(mode, radial_weight, row_blocks=False):
    X, Y = toy_data(seed=1)
    X, Y = X.astype(np.float32).tocsr(), Y.astype(np.float32).tocsr()
    cfg = C.TrainConfig(negative_mode=mode, negatives=6, shared_negatives=6, input_dropout=0.0,
                        radial_weight=radial_weight)
    g = torch.Generator().manual_seed(1)
    return B.prepare_batch(X, Y, np.arange(24), B.NegativeSampler(np.ones(L), "uniform", g), cfg, g,
                           row_blocks=row_blocks)


def _loss_and_label_grad(model, r, b, path):
    """The loss of batch ``b`` and its gradient in the label matrix, by one of the three paths of
    :func:`xhyp.training.loss.train_step`: dense gather, sparse gather (F.embedding) or the
    ``label_rows`` leaf of the row-block path."""
    model.zero_grad(set_to_none=True)
    if path == "rows":
        Wl = model.labels.detach().as_subclass(torch.Tensor).index_select(0, b.lab_uniq).requires_grad_()
        loss = LS.batch_loss(model, r, b, 5.0, label_rows=Wl)
        loss.backward()
        g = torch.zeros(model.labels.shape, dtype=Wl.dtype).index_add_(0, b.lab_uniq, Wl.grad)
        return loss.detach(), g
    loss = LS.batch_loss(model, r, b, 5.0, sparse=path == "sparse")
    loss.backward()
    g = model.labels.grad
    return loss.detach(), (g.to_dense() if g.is_sparse else g).clone()


@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
@pytest.mark.parametrize("mode", ["batch", "pair"])
@pytest.mark.parametrize("path", ["dense", "sparse", "rows"])
def test_radial_term_and_its_gradient_match_a_float64_reference(geometry, mode, path):
    """loss(w) - loss(0) = w * sum_p d(0, W_pos(p)) / n_pairs and the label gradient changes by
    w * count_l * grad d(0, W_l) / n_pairs, on both loss paths and all three ways of gathering the
    label rows (float64 model, labels near the boundary included)."""
    weight = 0.7
    m = HyperbolicXMC(ModelConfig(n_features=60, n_labels=L, dim=DIM, geometry=geometry)).double()
    with torch.no_grad():
        m.labels.copy_(_labels(geometry))
    r = _ball_points(24, DIM, seed=3) * 0.99
    b0, b1 = _batch(mode, 0.0, path == "rows"), _batch(mode, weight, path == "rows")
    assert b0.radial_weight == 0.0 and b1.radial_weight == weight
    assert torch.equal(b0.pos, b1.pos) and torch.equal(b0.neg, b1.neg)
    l0, g0 = _loss_and_label_grad(m, r, b0, path)
    l1, g1 = _loss_and_label_grad(m, r, b1, path)
    W = m.labels.detach().as_subclass(torch.Tensor)
    count = torch.bincount(b1.pos, minlength=L).double()
    assert count[0] > 0  # the label at 1 - 1e-9 is a positive of the batch
    want = weight * _ref_dist0(W[b1.pos], geometry).sum() / b1.n_pairs
    want_g = weight * count[:, None] * _ref_grad0(W, geometry) / b1.n_pairs
    assert (l1 - l0).item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(g1 - g0, want_g, rtol=1e-7, atol=1e-9 * float(want_g.abs().max()))


def test_dist0_float64_is_exact_for_float32_points_at_the_boundary():
    """Float32 labels at the max-norm guard: the distance and its gradient equal the float64
    reference of the same float32 coordinates (a float32 artanh loses ~1e-3 there); the origin has a
    zero, finite gradient; |x| >= 1 stays finite."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True) * torch.cat([torch.full((32, 1), M.MAX_NORM),
                                                       torch.rand(32, 1, generator=g, dtype=torch.float64)])
    x32 = M.project(x.float()).requires_grad_()
    for geometry in ("poincare", "euclidean"):
        d = M.dist0_float64(x32, geometry)
        assert d.dtype == torch.float64
        (gx,) = torch.autograd.grad(d.sum(), x32)
        x64 = x32.detach().double()
        torch.testing.assert_close(d.detach(), _ref_dist0(x64, geometry), rtol=1e-9, atol=0)
        torch.testing.assert_close(gx.double(), _ref_grad0(x64, geometry), rtol=2e-7, atol=0)
    z = torch.zeros(3, 5, requires_grad=True)
    d0 = M.dist0_float64(z)
    d0.sum().backward()
    assert (d0 <= 1e-14).all() and torch.equal(z.grad, torch.zeros(3, 5))  # |x|^2 clamped at 1e-30
    out = M.dist0_float64(torch.tensor([[1.0, 0.0], [3.0, 4.0]]))
    assert torch.isfinite(out).all() and out[0] == out[1] > 30


def _train(X, Y, **cfg):
    base = {"epochs": 2, "val_fraction": 0.1, "seed": 3, "rerank": "none", "knn_grid": "", "prefetch": 0}
    return T.train(X, Y, {"dim": 5}, dict(base, **cfg), progress=False)


def test_radial_weight_zero_builds_no_term_and_the_default_is_the_weighted_term(tmp_path, monkeypatch):
    """radial_weight 0 builds no term (the distance to the origin is never computed) and trains the
    same model bit for bit whatever radial_power; the default (0.3, power 0.5: chosen on held-out
    data, docs/accuracy.md) trains another model; the weights are saved with the model."""
    assert (C.TrainConfig().radial_weight, C.TrainConfig().radial_power) == (0.3, 0.5)
    X, Y = toy_data(seed=4)
    d = T.train(X, Y, {"dim": 5}, {"epochs": 2, "val_fraction": 0.1, "seed": 3, "rerank": "none", "knn_grid": "",
                                   "prefetch": 0}, out_dir=tmp_path / "d", progress=False)

    def no_call(*a, **k):
        raise AssertionError("radial term built with radial_weight 0")

    monkeypatch.setattr(M, "dist0_float64", no_call)
    a = _train(X, Y, radial_weight=0.0, radial_power=0.0)
    b = _train(X, Y, radial_weight=0.0, radial_power=1.0)
    monkeypatch.undo()
    c = _train(X, Y, radial_weight=0.01, radial_power=0.0)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    for (k, v1), v2 in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert not torch.equal(a.model.labels.detach(), c.model.labels.detach())
    assert not torch.equal(a.model.labels.detach(), d.model.labels.detach())
    saved = json.loads((tmp_path / "d" / "config.json").read_text())["train"]
    assert (saved["radial_weight"], saved["radial_power"]) == (0.3, 0.5)


def test_batch_keeps_the_radial_weight_when_moved():
    b = _batch("batch", 0.25, row_blocks=True)
    m = b.to("meta")
    assert m.radial_weight == 0.25 and m.n_pairs == b.n_pairs and m.pos.device.type == "meta" and m.csr is None


def _zipf_data(n=500, n_feat=100, n_lab=20, seed=0):
    """Labels drawn with frequency ~ 1 / rank (1-3 per example), each owning 5 features."""
    rng = np.random.default_rng(seed)
    p = 1.0 / np.arange(1, n_lab + 1)
    X = sp.lil_matrix((n, n_feat), dtype=np.float32)
    Y = sp.lil_matrix((n, n_lab), dtype=np.float32)
    for i in range(n):
        for lab in rng.choice(n_lab, size=rng.integers(1, 4), replace=False, p=p / p.sum()):
            Y[i, lab] = 1
            for f in rng.choice(5, size=3, replace=False):
                X[i, lab * 5 + f] = 1
        X[i, rng.integers(0, n_feat)] = 1
    return X.tocsr(), Y.tocsr()


def test_radial_term_makes_frequent_labels_nearer_the_centre():
    """On labels of Zipf frequencies the term lowers the Spearman rho of frequency against
    d(0, w) (the issue-13 measure) below the run without it, same seed and data. Euclidean: in
    the ball the softmax alone already orders this toy problem's labels (rho about -0.92 at
    alpha 5), leaving the term no room to show; without the term the two runs are identical."""
    X, Y = _zipf_data()
    freq = np.asarray(Y.sum(0)).ravel()
    rho, norm = {}, {}
    for w in (0.0, 3.0):
        res = T.train(X, Y, {"dim": 5, "geometry": "euclidean"},
                      {"epochs": 30, "val_fraction": 0.0, "seed": 0, "rerank": "none", "knn_grid": "", "prefetch": 0,
                       "radial_weight": w, "threads": 1}, progress=False)
        W = res.model.labels.detach().double().numpy()
        rho[w] = spearman_frequency_distance(freq, distance_to_origin(W, "euclidean"))[0]
        norm[w] = np.median(np.linalg.norm(W, axis=1))
    assert rho[3.0] < rho[0.0] - 0.05 and norm[3.0] < 0.5 * norm[0.0], (rho, norm)


def test_radial_weight_flag_and_checks():
    args = build_parser().parse_args(["train", "--out", "m", "--radial-weight", "0.03"])
    assert config_from_args(args, C.TrainConfig)["radial_weight"] == 0.03
    assert config_from_pairs(["radial_weight=0.1"], C.TrainConfig) == {"radial_weight": 0.1}
    for bad in (-0.1, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="radial_weight"):
            C.TrainConfig(radial_weight=bad)


def test_radial_pair_scale_normalises_over_the_training_pairs():
    c = np.array([10.0, 5.0, 1.0, 0.0, 4.0])
    for power in (-1.0, 0.0, 1.0, 2.0):
        u = B.radial_pair_scale(c, power).numpy()
        assert (u * c).sum() == pytest.approx(c.sum(), rel=1e-12)  # mean 1 over the pairs
        assert u[3] == 0.0
        np.testing.assert_allclose(u[[0, 1, 2, 4]] / u[2], c[[0, 1, 2, 4]] ** power, rtol=1e-12)
    for bad in (np.zeros(3), np.array([1.0, -1.0])):
        with pytest.raises(ValueError, match="label counts"):
            B.radial_pair_scale(bad, 1.0)


@pytest.mark.parametrize("mode", ["batch", "pair"])
@pytest.mark.parametrize("path", ["dense", "rows"])
def test_radial_pair_weights_match_a_float64_reference(mode, path):
    """With radial_power the term is w * sum_p u(l_p) d(0, W_pos(p)) / n_pairs (float64 reference,
    labels near the boundary included); prepare_batch gathers u at the pairs' labels."""
    weight, geometry = 0.4, "poincare"
    m = HyperbolicXMC(ModelConfig(n_features=60, n_labels=L, dim=DIM)).double()
    with torch.no_grad():
        m.labels.copy_(_labels(geometry))
    r = _ball_points(24, DIM, seed=3) * 0.99
    X, Y = toy_data(seed=1)
    u = B.radial_pair_scale(np.asarray(Y.sum(0)).ravel(), 1.0)
    cfg = C.TrainConfig(negative_mode=mode, negatives=6, shared_negatives=6, input_dropout=0.0, radial_weight=weight,
                        radial_power=1.0)
    g = torch.Generator().manual_seed(1)
    b1 = B.prepare_batch(X.astype(np.float32).tocsr(), Y.astype(np.float32).tocsr(), np.arange(24),
                         B.NegativeSampler(np.ones(L), "uniform", g), cfg, g, row_blocks=path == "rows", radial_scale=u)
    torch.testing.assert_close(b1.radial_pair_w, u[b1.pos], rtol=0, atol=0)
    b0 = _batch(mode, 0.0, path == "rows")
    assert torch.equal(b0.pos, b1.pos) and b0.radial_pair_w is None
    l0, g0 = _loss_and_label_grad(m, r, b0, path)
    l1, g1 = _loss_and_label_grad(m, r, b1, path)
    W = m.labels.detach().as_subclass(torch.Tensor)
    want = weight * (u[b1.pos] * _ref_dist0(W[b1.pos], geometry)).sum() / b1.n_pairs
    count = torch.bincount(b1.pos, minlength=L).double()
    want_g = weight * (count * u)[:, None] * _ref_grad0(W, geometry) / b1.n_pairs
    assert (l1 - l0).item() == pytest.approx(want.item(), rel=1e-9)
    torch.testing.assert_close(g1 - g0, want_g, rtol=1e-7, atol=1e-9 * float(want_g.abs().max()))


def test_radial_power_reaches_training_and_does_nothing_without_a_weight():
    X, Y = toy_data(seed=4)
    a = _train(X, Y, radial_weight=0.0, radial_power=0.0)
    b = _train(X, Y, radial_weight=0.0, radial_power=1.0)  # no radial_weight: no term
    c = _train(X, Y, radial_weight=0.05, radial_power=0.0)
    d = _train(X, Y, radial_weight=0.05, radial_power=1.0)
    for (k, v1), v2 in zip(a.model.state_dict().items(), b.model.state_dict().values()):
        assert torch.equal(v1, v2), k
    assert not torch.equal(c.model.labels.detach(), d.model.labels.detach())
    with pytest.raises(ValueError, match="radial_power"):
        C.TrainConfig(radial_power=5.0)


def test_a_configuration_saved_before_the_radial_options_is_the_same_run():
    """config_changes: a file without radial_weight / radial_power (or learn_alpha / lr_alpha)
    compares as the behaviour from before those options (no radial term, fixed alpha), not as
    their current defaults: resumed with radial_weight 0 it is the same run, with today's
    defaults (0.3, power 0.5) another one."""
    assert set(C.ABSENT_MEANS) <= {f.name for f in C.fields(C.TrainConfig)}
    before = C.TrainConfig(radial_weight=0.0, radial_power=0.0).to_dict()
    new = {"model": {"dim": 5}, "train": before}
    old = {"model": {"dim": 5}, "train": {k: v for k, v in new["train"].items()
                                          if k not in ("radial_weight", "radial_power", "learn_alpha", "lr_alpha")}}
    assert C.config_changes(old, new) == []
    assert C.config_changes(old, {**new, "train": dict(new["train"], radial_weight=0.1)}) == ["radial_weight"]
    assert C.config_changes(old, {**new, "train": C.TrainConfig().to_dict()}) == ["radial_power", "radial_weight"]
    assert C.config_changes({**old, "train": dict(old["train"], alpha=4.0)}, new) == ["alpha"]
    del old["train"]["rerank"]  # any other key missing from an old file still counts as a change
    assert C.config_changes(old, new) == ["rerank"]


def test_resuming_a_checkpoint_from_before_the_radial_options(tmp_path):
    """A checkpoint written before radial_weight / radial_power existed was trained without the
    term: resuming it with today's defaults is refused with the flags that resume it as it was
    trained, and with them it resumes."""
    X, Y = toy_data(seed=4)
    old = {"epochs": 1, "val_fraction": 0.1, "seed": 3, "rerank": "none", "knn_grid": "", "prefetch": 0,
           "radial_weight": 0.0, "radial_power": 0.0}
    m = tmp_path / "m"
    T.train(X, Y, {"dim": 5}, old, out_dir=m, progress=False)
    ck = torch.load(m / "checkpoint.pt", weights_only=False)
    for k in ("radial_weight", "radial_power"):
        del ck["config"]["train"][k]  # as an older version wrote it
    torch.save(ck, m / "checkpoint.pt")
    now = {k: v for k, v in old.items() if not k.startswith("radial")}
    with pytest.raises(ValueError, match=r"other settings of \['radial_power', 'radial_weight'\].*"
                                         r"pass --radial-power 0.0 --radial-weight 0.0"):
        T.train(X, Y, {"dim": 5}, dict(now, epochs=2), out_dir=m, resume=True, progress=False)
    res = T.train(X, Y, {"dim": 5}, dict(old, epochs=2), out_dir=m, resume=True, progress=False)
    assert len(res.history) == 2
