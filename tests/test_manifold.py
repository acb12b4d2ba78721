"""Poincaré-ball operations against float64 references (random points, near-boundary points)."""
import math

import numpy as np
import pytest
import torch

from xhyp import manifold as M


def ref_dist(x, y):
    """float64 textbook formula arccosh(1 + 2|x-y|^2 / ((1-|x|^2)(1-|y|^2))) (Nickel & Kiela eq. 1)."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    num = ((x - y) ** 2).sum(-1)
    den = (1 - (x * x).sum(-1)) * (1 - (y * y).sum(-1))
    return np.arccosh(1 + 2 * num / den)


def random_ball(n, dim, rng, radius_max=0.999):
    v = rng.normal(size=(n, dim))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    r = rng.uniform(0, radius_max, size=(n, 1))
    return v * r


@pytest.fixture
def rng():
    return np.random.default_rng(0)


def test_dist_matches_float64_reference(rng):
    x = random_ball(500, 10, rng)
    y = random_ball(500, 10, rng)
    d64 = M.dist(torch.from_numpy(x), torch.from_numpy(y)).numpy()
    np.testing.assert_allclose(d64, ref_dist(x, y), rtol=1e-10, atol=1e-12)
    d32 = M.dist(torch.from_numpy(x).float(), torch.from_numpy(y).float()).numpy()
    np.testing.assert_allclose(d32, ref_dist(x, y), rtol=1e-4, atol=1e-5)


def test_dist_near_boundary_float32(rng):
    # points at hyperbolic radius ~10-12 (|x| up to 1 - 1e-5), close pairs and far pairs
    v = rng.normal(size=(200, 5))
    v /= np.linalg.norm(v, axis=1, keepdims=True)
    norms = 1 - 10 ** rng.uniform(-5, -3, size=(200, 1))
    x = v * norms
    y = M.project(torch.from_numpy(x * (1 - 1e-4) + rng.normal(scale=1e-4, size=x.shape)), 1 - 1e-5).numpy()
    x32 = torch.from_numpy(x).float()
    y32 = torch.from_numpy(y).float()
    # reference computed from the float32-rounded inputs, in float64
    ref = ref_dist(x32.double().numpy(), y32.double().numpy())
    d = M.dist(x32, y32).numpy()
    assert np.isfinite(d).all()
    np.testing.assert_allclose(d, ref, rtol=2e-3)


def test_dist_nearby_pairs_asinh_form_beats_arccosh_float32(rng):
    x = random_ball(300, 8, rng, 0.9)
    y = x + rng.normal(scale=1e-4, size=x.shape)
    ref = ref_dist(x.astype(np.float32).astype(np.float64), y.astype(np.float32).astype(np.float64))
    xt, yt = torch.from_numpy(x).float(), torch.from_numpy(y).float()
    ours = np.abs(M.dist(xt, yt).numpy() / ref - 1).max()
    s = ((xt - yt) ** 2).sum(-1) / ((1 - (xt * xt).sum(-1)) * (1 - (yt * yt).sum(-1)))
    naive = np.abs(torch.arccosh(1 + 2 * s).numpy() / ref - 1).max()
    assert ours < 1e-3
    assert naive > ours


def test_dist_gradient_finite_at_equal_points():
    x = torch.tensor([[0.3, -0.2]], dtype=torch.float32, requires_grad=True)
    d = M.dist(x, x.detach().clone())
    d.sum().backward()
    assert torch.isfinite(x.grad).all()


def test_pairwise_matches_dist(rng):
    x = torch.from_numpy(random_ball(40, 6, rng))
    y = torch.from_numpy(random_ball(70, 6, rng))
    P = M.pairwise_dist(x, y)
    ref = ref_dist(x.numpy()[:, None, :], y.numpy()[None, :, :])
    np.testing.assert_allclose(P.numpy(), ref, rtol=1e-8, atol=1e-7)


def test_to_ball_inverse_and_distance_from_origin(rng):
    u = torch.from_numpy(rng.normal(scale=3.0, size=(100, 7)))
    x = M.to_ball(u, max_norm=1 - 1e-12)
    assert (x.norm(dim=-1) < 1).all()
    np.testing.assert_allclose(M.from_ball(x).numpy(), u.numpy(), rtol=1e-8)
    # d(0, p(u)) = asinh(|u|)
    np.testing.assert_allclose(M.dist0(x).numpy(), np.arcsinh(u.norm(dim=-1).numpy()), rtol=1e-8)
    np.testing.assert_allclose(M.dist0(x).numpy(), ref_dist(np.zeros_like(x.numpy()), x.numpy()), rtol=1e-8)


def test_max_norm_guard():
    u = torch.tensor([[1e6, 0.0], [1e30, 1e30]], dtype=torch.float32)
    x = M.to_ball(u)
    assert (x.norm(dim=-1) <= M.MAX_NORM + 1e-7).all()
    assert torch.isfinite(M.dist(x, torch.zeros_like(x))).all()
    p = M.project(torch.tensor([[3.0, 4.0]]), 0.5)
    np.testing.assert_allclose(p.numpy(), [[0.3, 0.4]], rtol=1e-6)
    inside = torch.tensor([[0.1, 0.2]])
    assert torch.equal(M.project(inside), inside)
    with pytest.raises(ValueError):
        M.project(inside, 1.5)


def test_conformal_factor(rng):
    x = random_ball(50, 4, rng)
    lam = M.conformal_factor(torch.from_numpy(x)).numpy()
    np.testing.assert_allclose(lam, 2 / (1 - (x * x).sum(-1)), rtol=1e-10)


def test_expmap0_logmap0_roundtrip(rng):
    v = torch.from_numpy(rng.normal(size=(30, 5)))
    x = M.expmap0(v, max_norm=1 - 1e-12)
    np.testing.assert_allclose(M.logmap0(x).numpy(), v.numpy(), rtol=1e-7, atol=1e-9)
    # geodesic distance from 0 equals 2 * |v| (curvature -1, metric 4/(1-|x|^2)^2)
    np.testing.assert_allclose(M.dist0(x).numpy(), 2 * v.norm(dim=-1).numpy(), rtol=1e-7)


def test_hyperboloid_lift_gives_cosh_distance(rng):
    x = random_ball(60, 5, rng, 0.99)
    y = random_ball(80, 5, rng, 0.99)
    q = M.hyperboloid_query(torch.from_numpy(x))
    h = M.lift_hyperboloid(torch.from_numpy(y))
    # points lie on the hyperboloid: -h0^2 + |h1..n|^2 = -1
    np.testing.assert_allclose((-h[:, 0] ** 2 + (h[:, 1:] ** 2).sum(-1)).numpy(), -1.0, rtol=1e-8)
    ip = (q @ h.T).numpy()
    ref = ref_dist(x[:, None, :], y[None, :, :])
    np.testing.assert_allclose(-ip, np.cosh(ref), rtol=1e-8)
    # nearest neighbour = largest inner product
    assert (np.argmax(ip, 1) == np.argmin(ref, 1)).all()


def test_poincare_ball_manifold_uses_our_guard():
    ball = M.PoincareBall(max_norm=0.99)
    x = torch.tensor([[0.98, 0.0]])
    y = ball.retr(x, torch.tensor([[0.5, 0.0]]))
    assert math.isclose(float(y.norm()), 0.99, rel_tol=1e-6)
    assert math.isclose(float(ball.projx(torch.tensor([[2.0, 0.0]])).norm()), 0.99, rel_tol=1e-6)
    with pytest.raises(ValueError):
        M.PoincareBall(max_norm=1.0)
