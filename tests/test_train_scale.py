"""Training at scale: row-sparse optimisers, shared negatives, batching, guards, lazy imports."""
import json
import subprocess
import sys

import geoopt
import numpy as np
import pytest
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xhyp import config as C
from xhyp.embedding import manifold as M
from xhyp.training import batches as B
from xhyp.training import loop as T
from xhyp.training import loss as LS
from xhyp.training import optim as O
from xhyp.embedding.model import HyperbolicXMC, ModelConfig
from xhyp.training.optim import LazyAdam, PaperAdam, SparsePaperAdam, SparseRiemannianAdam

from test_train import toy_data


def _ball_points(L, n, seed):
    """float64 points: half spread in the ball, half within 1e-4 of the max-norm boundary."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(L, n, generator=g, dtype=torch.float64)
    x = x / x.norm(dim=-1, keepdim=True)
    radius = torch.rand(L, 1, generator=g, dtype=torch.float64) * 0.9
    radius[: L // 2] = M.MAX_NORM - torch.rand(L // 2, 1, generator=g, dtype=torch.float64) * 1e-4
    return x * radius


def _param(x):
    return geoopt.ManifoldParameter(x.clone(), manifold=M.PoincareBall())


@pytest.mark.parametrize("sparse_grad", [False, True])
def test_sparse_riemannian_adam_equals_geoopt_when_every_row_is_touched(sparse_grad):
    x0 = _ball_points(8, 5, 0)
    p_ref, p_new = _param(x0), _param(x0)
    ref = geoopt.optim.RiemannianAdam([p_ref], lr=0.05)
    new = SparseRiemannianAdam([p_new], lr=0.05)
    g = torch.Generator().manual_seed(1)
    for _ in range(6):
        grad = torch.randn(8, 5, generator=g, dtype=torch.float64)
        p_ref.grad = grad.clone()
        if sparse_grad:  # every row, split over two duplicated entries (as F.embedding gives)
            rows = torch.cat([torch.arange(8), torch.arange(8)])
            p_new.grad = torch.sparse_coo_tensor(rows[None], torch.cat([grad * 0.25, grad * 0.75]), (8, 5))
        else:
            p_new.grad = grad.clone()
        ref.step()
        new.step()
        torch.testing.assert_close(p_new.data, p_ref.data, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(new.state[p_new]["exp_avg"], ref.state[p_ref]["exp_avg"], rtol=1e-10, atol=1e-14)
    assert (p_new.data.norm(dim=-1) <= M.MAX_NORM + 1e-12).all()


def test_sparse_riemannian_adam_kernel_against_float64_geoopt_step():
    """The compiled float32 step (fused) against geoopt's float64 step from the same state,
    one lazy step at a time (half the points within 1e-4 of the max-norm boundary)."""
    import xhyp.knn.extension as K

    if not K.ext_available("cpu"):
        pytest.skip("extension not built")
    L, n = 40, 7
    p32 = _param(_ball_points(L, n, 9).float())
    opt32 = SparseRiemannianAdam([p32], lr=0.05)
    calls = []
    real = opt32._fused
    opt32._fused = lambda *a: calls.append(real(*a)) or calls[-1]
    g = torch.Generator().manual_seed(10)
    for t in range(1, 9):
        rows = torch.randint(0, L, (25,), generator=g)  # duplicates: summed by coalesce
        vals = torch.randn(25, n, generator=g) * [1e-3, 1.0, 300.0][t % 3]
        p64 = _param(p32.data.double())
        opt64 = SparseRiemannianAdam([p64], lr=0.05, fused=False)
        if t > 1:
            opt64.state[p64] = {"step": t - 1, **{k: opt32.state[p32][k].double().clone()
                                                   for k in ("exp_avg", "exp_avg_sq")}}
        p64.grad = torch.sparse_coo_tensor(rows[None], vals.double(), (L, n))
        p32.grad = torch.sparse_coo_tensor(rows[None], vals, (L, n))
        opt64.step()
        opt32.step()
        torch.testing.assert_close(p32.data.double(), p64.data, rtol=1e-6, atol=1e-7)
        for k in ("exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(opt32.state[p32][k].double(), opt64.state[p64][k], rtol=1e-5, atol=1e-12)
    assert calls == [True] * 8
    assert (p32.data.double().norm(dim=-1) <= M.MAX_NORM + 1e-7).all()


def test_sparse_riemannian_adam_steps_only_touched_rows_lazily():
    """Touched rows follow Riemannian Adam with moments updated only when touched and the
    global step count in the bias correction (as SparseAdam); untouched rows stay put."""
    ball = M.PoincareBall()
    x0 = _ball_points(6, 4, 2)
    p = _param(x0)
    opt = SparseRiemannianAdam([p], lr=0.1, betas=(0.8, 0.9), eps=1e-8)
    x, m, v = x0.clone(), torch.zeros_like(x0), torch.zeros_like(x0)
    g = torch.Generator().manual_seed(3)
    touched_sets = [[0, 1], [1, 4], [0, 1, 5], [4], [1]]
    for t, touched in enumerate(touched_sets, start=1):
        idx = torch.tensor(touched)
        grad = torch.randn(len(touched), 4, generator=g, dtype=torch.float64)
        p.grad = torch.sparse_coo_tensor(idx[None], grad, (6, 4))
        before = p.data.clone()
        opt.step()
        for j, row in enumerate(touched):  # reference: the formulas, row by row
            xr = x[row]
            lam = 2.0 / (1.0 - (xr * xr).sum())
            rg = grad[j] / lam ** 2
            m[row] = 0.8 * m[row] + 0.2 * rg
            v[row] = 0.9 * v[row] + 0.1 * lam ** 2 * (rg * rg).sum()  # one Riemannian |g|^2 per row
            u = -0.1 * (m[row] / (1 - 0.8 ** t)) / ((v[row] / (1 - 0.9 ** t)).sqrt() + 1e-8)
            y = M.project(xr + u)
            m[row] = ball.transp(xr, y, m[row])
            x[row] = y
        untouched = [i for i in range(6) if i not in touched]
        assert torch.equal(p.data[untouched], before[untouched])
        torch.testing.assert_close(p.data, x, rtol=1e-10, atol=1e-13)
    assert torch.equal(p.data[[2, 3]], x0[[2, 3]])  # never touched: never moved


def test_sparse_paper_adam_equals_paper_adam_and_is_lazy():
    x0 = _ball_points(7, 3, 4)
    a, b = torch.nn.Parameter(x0.clone()), torch.nn.Parameter(x0.clone())
    oa, ob = PaperAdam([a], lr=0.05), SparsePaperAdam([b], lr=0.05)
    g = torch.Generator().manual_seed(5)
    for _ in range(5):
        grad = torch.randn(7, 3, generator=g, dtype=torch.float64)
        a.grad = grad.clone()
        b.grad = torch.sparse_coo_tensor(torch.arange(7)[None], grad.clone(), (7, 3))
        oa.step()
        ob.step()
        torch.testing.assert_close(b.data, a.data, rtol=1e-12, atol=1e-14)
    before = b.data.clone()
    b.grad = torch.sparse_coo_tensor(torch.tensor([[2]]), torch.ones(1, 3, dtype=torch.float64), (7, 3))
    ob.step()
    changed = (b.data != before).any(-1)
    assert changed.tolist() == [False, False, True, False, False, False, False]


def test_lazy_adam_equals_torch_sparse_adam():
    w0 = torch.randn(9, 4, dtype=torch.float64)
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa, ob = torch.optim.SparseAdam([a], lr=0.03), LazyAdam([b], lr=0.03)
    g = torch.Generator().manual_seed(8)
    for rows in ([0, 3, 3, 8], [1, 3], [0, 1, 2, 3, 4, 5, 6, 7, 8], [8]):
        idx = torch.tensor(rows)
        vals = torch.randn(len(rows), 4, generator=g, dtype=torch.float64)
        a.grad = torch.sparse_coo_tensor(idx[None], vals, (9, 4))
        b.grad = torch.sparse_coo_tensor(idx[None], vals.clone(), (9, 4))
        oa.step()
        ob.step()
        torch.testing.assert_close(b.data, a.data, rtol=1e-12, atol=1e-14)
    assert torch.equal(b.data[[]], w0[[]])


def _adam_rows_reference(w, grads, lr, b1=0.9, b2=0.999, eps=1e-8):
    """float64 NumPy lazy Adam (Kingma & Ba 2015, Algorithm 1; SparseAdam's step size): each
    gradient is a (rows, values) pair whose duplicate rows are summed first."""
    w = w.astype(np.float64).copy()
    m, v = np.zeros_like(w), np.zeros_like(w)
    for t, (rows, vals) in enumerate(grads, start=1):
        g = np.zeros_like(w)
        np.add.at(g, rows, vals.astype(np.float64))
        u = np.unique(rows)
        m[u] = b1 * m[u] + (1 - b1) * g[u]
        v[u] = b2 * v[u] + (1 - b2) * g[u] ** 2
        w[u] -= lr * np.sqrt(1 - b2 ** t) / (1 - b1 ** t) * m[u] / (np.sqrt(v[u]) + eps)
    return w


@pytest.mark.parametrize("fused", [True, False])
def test_lazy_adam_float32_against_float64_reference(fused):
    """The compiled kernel (fused) and the tensor code agree with a float64 reference."""
    import xhyp.knn.extension as K

    if fused and not K.ext_available("cpu"):
        pytest.skip("extension not built")
    rng = np.random.default_rng(4)
    N, n = 500, 37
    w0 = rng.normal(size=(N, n)).astype(np.float32)
    grads = []
    for _ in range(12):
        rows = rng.integers(0, N, rng.integers(1, 400))  # duplicates: summed by coalesce
        grads.append((rows, (rng.normal(size=(len(rows), n)) * rng.choice([1e-4, 1.0, 30.0])).astype(np.float32)))
    p = torch.nn.Parameter(torch.from_numpy(w0.copy()))
    opt = LazyAdam([p], lr=0.05, fused=fused)
    calls = []
    real = opt._fused
    opt._fused = lambda *a: calls.append(real(*a)) or calls[-1]  # did the kernel take the step?
    for rows, vals in grads:
        p.grad = torch.sparse_coo_tensor(torch.from_numpy(rows)[None], torch.from_numpy(vals), (N, n))
        opt.step()
    assert calls == [fused] * len(grads)
    ref = _adam_rows_reference(w0, grads, 0.05)
    np.testing.assert_allclose(p.data.numpy(), ref, rtol=2e-5, atol=2e-5)
    untouched = np.setdiff1d(np.arange(N), np.concatenate([r for r, _ in grads]))
    assert np.array_equal(p.data.numpy()[untouched], w0[untouched])


def test_row_step_kernels_refuse_bad_rows():
    import xhyp.knn.extension as K

    if not K.ext_available("cpu"):
        pytest.skip("extension not built")
    w, m, v = torch.zeros(5, 3), torch.zeros(5, 3), torch.zeros(5, 3)
    g = torch.ones(2, 3)
    steps = (lambda r, gr: torch.ops.xhyp_ext.lazy_adam_(w, m, v, r, gr, 0.1, 0.9, 0.999, 1e-8),
             lambda r, gr: torch.ops.xhyp_ext.riemannian_adam_ball_(w, m, v, r, gr, 0.1, 0.9, 0.999, 1e-8, 1, 0.99))
    for step in steps:
        for rows, msg in (([3, 1], "strictly increasing"), ([1, 1], "strictly increasing"),
                          ([0, 5], "out of range"), ([-1, 2], "out of range")):
            with pytest.raises(RuntimeError, match=msg):
                step(torch.tensor(rows), g)
        with pytest.raises(RuntimeError, match="grad must be"):
            step(torch.tensor([0, 1]), torch.ones(2, 4))
    assert not w.any() and not m.any() and not v.any()


def test_embedding_gives_row_sparse_gradient_to_the_labels():
    m = HyperbolicXMC(ModelConfig(n_features=5, n_labels=1000, dim=4))
    F.embedding(torch.tensor([3, 7, 3]), m.labels, sparse=True).sum().backward()
    assert m.labels.grad.is_sparse
    assert sorted(m.labels.grad.coalesce().indices()[0].tolist()) == [3, 7]


@pytest.mark.parametrize("geometry", ["poincare", "euclidean"])
def test_shared_distances_match_float64_reference(geometry):
    x64 = _ball_points(40, 6, 6)
    y64 = torch.cat([_ball_points(30, 6, 7), x64[:5] + 1e-3])  # some near-coincident pairs
    y64 = M.project(y64)
    ref = M.dist(x64[:, None], y64[None]) if geometry == "poincare" else (x64[:, None] - y64[None]).norm(dim=-1)
    got = M.pairwise_dist_float64(x64.float(), y64.float(), geometry).double()
    # float32 inputs carry ~6e-8 relative error in the coordinates, amplified near the boundary
    xr = M.dist(x64.float().double()[:, None], y64.float().double()[None]) if geometry == "poincare" else \
        (x64.float().double()[:, None] - y64.float().double()[None]).norm(dim=-1)
    torch.testing.assert_close(got, xr, rtol=1e-6, atol=1e-6)
    assert (got - ref).abs().max() < 1e-2 * ref.abs().max()
    # finite gradients, also for an example at the origin (all its features dropped out)
    r = torch.cat([torch.zeros(1, 6), x64[:3].float()]).requires_grad_()
    w = y64[:4].float().clone().requires_grad_()
    M.pairwise_dist_float64(r, w, geometry).sum().backward()
    assert torch.isfinite(r.grad).all() and torch.isfinite(w.grad).all()


def test_shared_negative_loss_matches_manual_and_masks_positives():
    torch.manual_seed(0)
    m = HyperbolicXMC(ModelConfig(n_features=10, n_labels=6, dim=3, init_std_labels=0.3))
    r = M.project(torch.randn(3, 3) * 0.3)
    Yb = sp.csr_matrix(np.array([[1, 1, 0, 0, 0, 0], [0, 0, 1, 0, 0, 0], [0, 1, 0, 0, 0, 1]], dtype=np.float32))
    gen = torch.Generator().manual_seed(2)
    sampler = B.NegativeSampler(np.ones(6), "uniform", gen)
    state = gen.get_state()
    loss = LS.sampled_softmax_loss(m, r, Yb, sampler, negatives=5, alpha=2.0, mode="batch")
    gen.set_state(state)
    neg = sampler.sample((5,)).tolist()
    W = m.labels.detach().double()
    rd = r.double()
    total, n = 0.0, 0
    for i in range(3):
        labels = set(Yb[i].indices.tolist())
        for lab in sorted(labels):
            logits = [-2.0 * float(M.dist(rd[i], W[lab]))]
            logits += [-2.0 * float(M.dist(rd[i], W[j])) for j in neg if j not in labels]
            logits = np.array(logits)
            total += -(logits[0] - np.log(np.exp(logits).sum()))
            n += 1
    assert abs(float(loss.detach()) - total / n) < 1e-5


def test_shared_negative_loss_is_finite_when_every_negative_is_masked():
    m = HyperbolicXMC(ModelConfig(n_features=4, n_labels=2, dim=3, init_std_labels=0.3))
    Yb = sp.csr_matrix(np.array([[1, 1], [1, 0]], dtype=np.float32))
    r = M.project(torch.randn(2, 3) * 0.3).requires_grad_()
    gen = torch.Generator().manual_seed(0)
    sampler = B.NegativeSampler(np.ones(2), "uniform", gen)
    state = gen.get_state()
    loss = LS.sampled_softmax_loss(m, r, Yb, sampler, negatives=20, alpha=3.0, mode="batch")
    gen.set_state(state)
    c = int((sampler.sample((20,)) == 1).sum())  # draws with replacement: copies count, as per pair
    loss.backward()
    assert torch.isfinite(loss) and torch.isfinite(r.grad).all() and torch.isfinite(m.labels.grad).all()
    # example 0 has no true negative: its pairs cost 0; example 1 has label 1 as negative
    d = float(M.dist(r[1].detach(), m.labels.detach()[0])), float(M.dist(r[1].detach(), m.labels.detach()[1]))
    expect = np.log1p(c * np.exp(-3.0 * d[1] + 3.0 * d[0])) / 3
    assert float(loss) == pytest.approx(expect, rel=1e-5)


def test_scaled_lr_rule_and_optimizer_step_sizes():
    assert O.scaled_lr(3e-3, 64, "sqrt") == pytest.approx(3e-3)
    assert O.scaled_lr(3e-3, 256, "sqrt") == pytest.approx(6e-3)
    assert O.scaled_lr(3e-3, 256, "none") == pytest.approx(3e-3)
    with pytest.raises(ValueError):
        O.scaled_lr(1e-3, 64, "linear")
    m = HyperbolicXMC(ModelConfig(n_features=5, n_labels=3, dim=2))
    opts = O.make_optimizers(m, C.TrainConfig(batch_size=1024, lr=1e-3, lr_labels=2e-3))
    assert [o.param_groups[0]["lr"] for o in opts] == pytest.approx([4e-3, 8e-3])
    assert isinstance(opts[-1], SparseRiemannianAdam) and isinstance(opts[0], LazyAdam)


def test_large_batches_with_sqrt_rule_learn_toy_problem():
    X, Y = toy_data()
    res = T.train(X, Y, {"dim": 8}, {"epochs": 10, "batch_size": 256, "val_fraction": 0.1, "patience": 10,
                                     "seed": 3}, progress=False)
    assert res.best_val_p1 > 0.8


def test_prefetch_and_inline_batches_give_identical_training():
    X, Y = toy_data(seed=2)
    cfg = {"epochs": 2, "val_fraction": 0.1, "seed": 1, "input_dropout": 0.3}
    a = T.train(X, Y, {"dim": 5}, dict(cfg, prefetch=0), progress=False)
    b = T.train(X, Y, {"dim": 5}, dict(cfg, prefetch=3), progress=False)
    assert [h["loss"] for h in a.history] == [h["loss"] for h in b.history]
    assert torch.equal(a.model.labels.detach(), b.model.labels.detach())


def test_old_trainer_path_matches_legacy_loss_stream():
    """negative_mode="pair" + label_update="dense" draws the same numbers in the same order as
    the previous trainer: the per-pair loss of the first batch equals sampled_softmax_loss."""
    X, Y = toy_data(seed=4)
    cfg = C.TrainConfig(negative_mode="pair", label_update="dense", input_dropout=0.0, negatives=7,
                        radial_weight=0.0)  # the legacy loss had no radial term
    gen = torch.Generator().manual_seed(0)
    sampler = B.NegativeSampler(np.ones(12), "uniform", gen)
    rows = np.arange(16)
    state = gen.get_state()
    b = B.prepare_batch(X.astype(np.float32), Y.astype(np.float32).tocsr(), rows, sampler, cfg, gen)
    m = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=4, init_std_labels=0.2))
    r = m(b.idx, b.off, b.w)
    gen.set_state(state)
    ref = LS.sampled_softmax_loss(m, r, Y[rows].tocsr(), sampler, 7, 30.0)
    torch.testing.assert_close(LS.batch_loss(m, r, b, 30.0, sparse=False), ref)


def test_non_finite_loss_stops_with_epoch_and_step_and_keeps_last_good_model(tmp_path, monkeypatch):
    X, Y = toy_data()
    calls = {"n": 0}
    real = LS.batch_loss

    def poisoned(*a, **k):
        calls["n"] += 1
        loss = real(*a, **k)
        return loss * float("nan") if calls["n"] == steps_per_epoch + 3 else loss

    steps_per_epoch = int(np.ceil(round(400 * 0.9) / 64))
    monkeypatch.setattr(LS, "batch_loss", poisoned)
    with pytest.raises(T.NonFiniteLossError, match=r"epoch 2, step 3") as info:
        T.train(X, Y, {"dim": 4}, {"epochs": 3, "val_fraction": 0.1, "seed": 0, "prefetch": 0},
                out_dir=tmp_path / "m", progress=False)
    assert isinstance(info.value, ValueError)
    ck = torch.load(tmp_path / "m" / "checkpoint.pt", weights_only=False)
    assert ck["epoch"] == 0  # the last good epoch
    state = torch.load(tmp_path / "m" / "model.pt", weights_only=True)
    assert all(torch.isfinite(v).all() for v in state.values())
    assert len(json.loads((tmp_path / "m" / "history.json").read_text())) == 1


def test_validation_subsets_are_capped_and_fixed():
    rows = np.arange(1000)
    a, b = T._subset(rows, 100, 5), T._subset(rows, 100, 5)
    assert len(a) == 100 and np.array_equal(a, b) and np.all(np.diff(a) > 0)
    assert T._subset(rows, 0, 5) is rows and T._subset(rows, 5000, 5) is rows
    X, Y = toy_data()
    res = T.train(X, Y, {"dim": 4}, {"epochs": 1, "val_fraction": 0.2, "val_max_queries": 10,
                                     "val_max_database": 50}, progress=False)
    assert 0.0 <= res.history[0]["val_p1"] <= 1.0 and "val_seconds" in res.history[0]


def test_new_train_config_fields_are_checked():
    for bad in ({"negative_mode": "block"}, {"label_update": "lazy"}, {"lr_scaling": "linear"},
                {"distributed": "yes"}, {"shared_negatives": 0}, {"prefetch": -1}, {"max_steps": -2}):
        with pytest.raises(ValueError):
            C.TrainConfig(**bad)


def test_torch_free_config_is_the_one_definition():
    from xhyp.embedding import features
    from xhyp.knn import index, vote

    # the modules re-export xhyp.config's objects (no second copy that could drift)
    assert M.MAX_NORM is C.MAX_NORM and M.GEOMETRIES is C.GEOMETRIES
    assert vote.WEIGHTINGS is C.WEIGHTINGS
    assert index.INDEX_KINDS is C.INDEX_KINDS
    assert features.FEATURE_KINDS is C.FEATURE_KINDS


def test_cli_parser_does_not_import_torch():
    code = ("import sys, xhyp.cli; xhyp.cli.build_parser(); "
            "print(sorted(m for m in ('torch', 'geoopt', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_training_does_not_import_torch_dynamo():
    code = ("import sys; sys.path.insert(0, 'tests'); from test_train import toy_data; from xhyp.training import train; "
            "X, Y = toy_data(100); train(X, Y, {'dim': 3}, {'epochs': 1}, progress=False); "
            "print('torch._dynamo' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("mode", ["batch", "pair"])
def test_row_block_step_equals_sparse_embedding_step(mode):
    """train_step from gathered unique rows == the same step through F.embedding(sparse=True)."""
    import copy

    X, Y = toy_data(seed=3)
    X, Y = X.astype(np.float32).tocsr(), Y.astype(np.float32).tocsr()
    cfg = C.TrainConfig(negative_mode=mode, negatives=6, shared_negatives=6, input_dropout=0.2)
    m1 = HyperbolicXMC(ModelConfig(n_features=60, n_labels=12, dim=5, init_std_labels=0.1))
    m2 = copy.deepcopy(m1)
    o1, o2 = O.make_optimizers(m1, cfg), O.make_optimizers(m2, cfg)
    for step in range(3):
        rows = np.arange(20 * step, 20 * step + 20)
        g1, g2 = torch.Generator().manual_seed(step), torch.Generator().manual_seed(step)
        b1 = B.prepare_batch(X, Y, rows, B.NegativeSampler(np.ones(12), "uniform", g1), cfg, g1, row_blocks=True)
        b2 = B.prepare_batch(X, Y, rows, B.NegativeSampler(np.ones(12), "uniform", g2), cfg, g2)
        assert b2.feat_uniq is None
        l1 = LS.train_step(m1, o1, b1, 5.0, sparse=True)
        l2 = LS.train_step(m2, o2, b2, 5.0, sparse=True)
        torch.testing.assert_close(l1, l2)
    for (k, v1), v2 in zip(m1.state_dict().items(), m2.state_dict().values()):
        torch.testing.assert_close(v1, v2, rtol=1e-5, atol=1e-7, msg=k)


@pytest.mark.parametrize("projector", ["linear", "mlp"])
def test_csr_first_layer_equals_embedding_bag(projector):
    """The CPU trainer's first layer (CsrBag, scipy products) gives the embedding_bag path's
    embeddings and gradients (float64, dropped-out zero weights and empty rows included)."""
    from xhyp.embedding.model import CsrBag

    rng = np.random.default_rng(3)
    X = sp.random(9, 40, density=0.15, format="csr", random_state=4, dtype=np.float64)
    X.data[::5] = 0.0  # explicit zeros, as input dropout leaves them
    X[4] = 0  # an example without features
    X = sp.csr_matrix(X)
    idx = torch.from_numpy(X.indices.astype(np.int64))
    uniq, inv = torch.unique(idx, sorted=True, return_inverse=True)
    off = torch.from_numpy(X.indptr[:-1].astype(np.int64))
    w = torch.from_numpy(X.data)
    model = HyperbolicXMC(ModelConfig(n_features=40, n_labels=3, dim=5, projector=projector, hidden=6)).double()
    rows = torch.from_numpy(rng.normal(size=(len(uniq), model.bag.weight.shape[1])) * 0.3).requires_grad_()
    bag = CsrBag(sp.csr_matrix((X.data, inv.numpy().astype(np.int32), X.indptr), shape=(9, len(uniq))))
    out = []
    for feats in (inv, bag):
        r = model.forward_rows(rows, feats, off, w)
        (g,) = torch.autograd.grad((r * torch.arange(r.numel(), dtype=r.dtype).view_as(r)).sum(), rows)
        out.append((r, g))
    torch.testing.assert_close(out[1][0], out[0][0], rtol=1e-12, atol=1e-14)
    torch.testing.assert_close(out[1][1], out[0][1], rtol=1e-12, atol=1e-14)
    assert out[0][1].abs().sum() > 0
