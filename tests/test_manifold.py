"""Poincaré-ball operations against float64 references (random points, near-boundary points)."""
import math

import numpy as np
import pytest
import torch

from xhyp.embedding import manifold as M


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


# -- domain: |x| in {0.999999, 1, 1.5} and huge tangent vectors (issue 10, item 8) -----------------

RADII = (0.999999, 1.0, 1.5)


def _point(radius, dtype, dim=5, seed=1):  # noqa: D103
    v = torch.from_numpy(np.random.default_rng(seed).normal(size=dim))
    return (v / v.norm() * radius).to(dtype).requires_grad_(True)


def _finite_grad(out, x):
    (g,) = torch.autograd.grad(out.sum(), x)
    assert torch.isfinite(g).all(), g
    return g


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_dist_domain(radius, dtype):
    x = _point(radius, dtype)
    d = M.dist(x, x / 2)
    assert torch.isfinite(d) and d > 1.0  # never 0 (the old result for |x| > 1) or NaN
    _finite_grad(d, x)
    if radius < 1:  # in the domain: the float64 reference (float32 loses digits of 1 - |x|^2)
        ref = ref_dist(x.detach().double().numpy(), (x / 2).detach().double().numpy())
        assert float(d) == pytest.approx(float(ref), rel=1e-2 if dtype == torch.float32 else 1e-9)  # float32: 1 - |x| has ~6 % error at 1e-6
    else:  # outside: as a point on the boundary layer, at least as far as the last in-domain float
        inner = _point(1 - torch.finfo(dtype).eps, dtype)
        assert float(d) >= float(M.dist(inner, inner / 2)) - 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_pairwise_dist_domain(radius, dtype):
    x = _point(radius, dtype)
    D = M.pairwise_dist(x[None], torch.stack([x / 2, x * 0]))
    assert torch.isfinite(D).all() and (D > 1.0).all()
    _finite_grad(D, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_conformal_factor_domain(radius, dtype):
    x = _point(radius, dtype)
    lam = M.conformal_factor(x)
    assert torch.isfinite(lam) and lam >= 2.0  # never negative (the old result for |x| > 1)
    _finite_grad(lam, x)
    if radius < 1:
        # float32: the norm of a point at 1 - 1e-6 is off by ~6e-8, 6 % of 1 - |x|
        rel = 0.1 if dtype == torch.float32 else 1e-9
        assert float(lam) == pytest.approx(2 / (1 - float(x.double().norm()) ** 2), rel=rel)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_dist0_and_logmap0_domain(radius, dtype):
    x = _point(radius, dtype)
    d0 = M.dist0(x)
    assert torch.isfinite(d0) and d0 > 5.0  # never NaN (atanh of |x| > 1)
    _finite_grad(d0, x)
    v = M.logmap0(x)
    assert torch.isfinite(v).all() and float(v.norm()) == pytest.approx(float(d0) / 2, rel=1e-5)
    _finite_grad(v, x)
    if radius < 1:
        assert float(d0) == pytest.approx(2 * math.atanh(float(x.double().norm())), rel=1e-2 if dtype == torch.float32 else 1e-9)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_from_ball_and_hyperboloid_domain(radius, dtype):
    x = _point(radius, dtype)
    u = M.from_ball(x)
    assert torch.isfinite(u).all() and float(u.norm()) > 1e3
    _finite_grad(u, x)
    h = M.lift_hyperboloid(x)
    assert torch.isfinite(h).all() and h[0] > 1e3
    _finite_grad(M.hyperboloid_query(x), x)
    # back into the ball along the same direction, clipped by the guard
    b = M.to_ball(u)
    assert float(b.norm()) <= M.MAX_NORM + 1e-6 and torch.cosine_similarity(b, x, dim=0) > 0.999


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("radius", RADII)
def test_project_domain(radius, dtype):
    x = _point(radius, dtype)
    p = M.project(x)
    assert float(p.norm()) <= M.MAX_NORM + 1e-6 and torch.cosine_similarity(p, x, dim=0) > 0.999
    _finite_grad(p, x)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("norm", [2e19, 1e30, 1e38])
def test_huge_tangent_vectors_land_next_to_the_boundary(norm, dtype):
    """to_ball(u) for |u| >= 2e19 and expmap0(v) for |v| = 1e30 used to return the origin."""
    direction = torch.tensor([3.0, -4.0, 0.0, 12.0], dtype=dtype) / 13.0
    v = (direction * norm).requires_grad_(True)
    for f in (M.to_ball, M.expmap0, M.project):
        y = f(v)
        assert torch.isfinite(y).all()
        assert float(y.norm()) == pytest.approx(M.MAX_NORM, rel=1e-6), f.__name__  # not the origin
        torch.testing.assert_close(y / y.norm(), direction)
        _finite_grad(y, v)
    assert M.dist0(M.to_ball(v)) > 10  # far from the origin, as |u| demands


def test_zero_vector_has_finite_gradients():
    u = torch.zeros(2, 4, requires_grad=True)
    for f in (M.to_ball, M.expmap0, M.project):
        assert (f(u) == 0).all()
        _finite_grad(f(u), u)


def test_in_domain_results_unchanged_bit_for_bit(rng):
    """The domain clamps never bind inside the ball: same bits as the unclamped formulas."""
    x = torch.from_numpy(random_ball(500, 8, rng, radius_max=0.9999999)).float()
    y = torch.from_numpy(random_ball(500, 8, rng, radius_max=0.9999999)).float()
    oms = lambda n: (1.0 - n) * (1.0 + n)  # noqa: E731
    s = ((x - y) ** 2).sum(-1) / (oms(x.norm(dim=-1)) * oms(y.norm(dim=-1)))
    assert torch.equal(M.dist(x, y), 2.0 * torch.asinh(torch.sqrt(s.clamp_min(1e-14))))
    assert torch.equal(M.dist0(x), 2.0 * torch.atanh(x.norm(dim=-1)))
    assert torch.equal(M.conformal_factor(x), 2.0 / oms(x.norm(dim=-1)))
    u = torch.from_numpy(rng.normal(size=(500, 8)) * 100).float()
    assert torch.equal(M.to_ball(u), M.project(u / (1.0 + torch.sqrt(1.0 + (u * u).sum(-1, keepdim=True)))))
