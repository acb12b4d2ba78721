"""Poincaré-ball geometry (curvature -1): every distance, map and geometry name of the library.

All functions take torch tensors whose last dimension is the embedding dimension ``n`` and work
in float32 or float64. Points live in the open unit ball ``{x : |x| < 1}``.

The geometry names (:data:`GEOMETRIES`: ``"poincare"``, ``"euclidean"``) are checked by
:func:`check_geometry`; the functions taking a ``geometry`` (:func:`distance`,
:func:`pairwise_distance`, :func:`pairwise_dist_float64`, :func:`dist64`) give the Euclidean
counterpart of the Poincaré formula for ``"euclidean"``, so the model, the loss, the kNN
kernels, the indexes, the plots and the benchmarks all measure distances here.
:func:`dist64` is the float64 reference every kernel is tested against.

Numerics (measured on this project's development machines, float32 against float64):

* Distances use ``d(x, y) = 2 asinh(sqrt(s))`` with
  ``s = |x - y|^2 / ((1 - |x|^2) (1 - |y|^2))``; the textbook ``arccosh(1 + 2 s)`` loses 2-9 %
  relative accuracy in float32 for nearby pairs.
* :data:`MAX_NORM` keeps float32 points away from the boundary: ``1 - 1e-5`` allows a
  hyperbolic radius of ``ln((1 + r) / (1 - r)) ~= 12.2`` around the origin (geoopt's float32
  default, 0.996, allows only 6.2, which crowds rare labels). ``1 - |x|^2`` is computed as
  ``(1 - |x|) (1 + |x|)`` so it stays accurate near the boundary.

Domain (what happens outside the open ball, the same for every function):

* points with ``|x| >= 1`` (on or outside the boundary, or a float32 point whose computed norm
  rounds to 1) are treated as lying on the boundary layer: ``1 - |x|^2`` is clamped to
  ``eps/2`` of the dtype (float32: ``6e-8``) and ``|x|`` to the largest float below 1, so
  distances, conformal factors, maps and gradients stay finite, positive and large
  (``dist(x, x/2) > 0``, ``conformal_factor > 0``); they never return 0, a negative or NaN for such
  input. Every in-domain value is computed exactly as before (the clamps never bind there);
* tangent / Euclidean vectors of any finite norm are accepted: norms that overflow the dtype
  (``|u| >= 2e19`` squared in float32) are recomputed with scaling, so ``to_ball``,
  ``expmap0`` and ``project`` map huge vectors next to the boundary in their direction, never
  to the origin;
* NaN input gives NaN output (nothing is silently replaced).

Sources: Nickel & Kiela, *Poincaré Embeddings for Learning Hierarchical Representations*,
NIPS 2017 (eq. 1 distance, eq. 4 inverse metric); Gerald & Baskiotis, *Joint Label/Example
Hyperbolic Representation for Extreme Classification*, CAp 2019 (projection p, section 2).
"""
from __future__ import annotations

import geoopt
import torch

from ..config import GEOMETRIES, MAX_NORM, check_choice  # (names defined torch-free, re-exported here)

__all__ = ["GEOMETRIES", "MAX_NORM", "check_geometry", "project", "to_ball", "from_ball", "conformal_factor", "dist",
           "pairwise_dist", "dist0", "expmap0", "logmap0", "lift_hyperboloid", "hyperboloid_query", "distance",
           "pairwise_distance", "pairwise_dist_float64", "dist0_float64", "dist64", "PoincareBall"]

_SQRT_EPS = {torch.float16: 1e-6, torch.bfloat16: 1e-6, torch.float32: 1e-14, torch.float64: 1e-30}


def check_geometry(geometry: str) -> str:
    """The geometry name, checked against :data:`GEOMETRIES`.

    Raises:
        ValueError: an unknown name.
    """
    check_choice("geometry", geometry, GEOMETRIES)
    return geometry


def _half_eps(t: torch.Tensor) -> float:
    return torch.finfo(t.dtype).eps / 2 if t.is_floating_point() else 1e-16


def _one_minus_sq(norm: torch.Tensor) -> torch.Tensor:
    """``1 - |x|^2`` computed as ``(1 - |x|)(1 + |x|)`` (accurate near the boundary), clamped
    at ``eps/2`` for ``|x| >= 1`` (the smallest in-domain value is ``eps``, so in-domain results
    are unchanged)."""
    return ((1.0 - norm) * (1.0 + norm)).clamp_min(_half_eps(norm))


def _below_one(norm: torch.Tensor) -> torch.Tensor:
    """``|x|`` clamped to the largest float below 1 (no-op in the open ball)."""
    return norm.clamp_max(1.0 - _half_eps(norm))


def _norm(x: torch.Tensor, keepdim: bool = True) -> torch.Tensor:
    """Euclidean norm of the last dimension without overflow: rows whose plain norm overflows
    (float32: ``|x| >= ~1.8e19``) are recomputed as ``max|x_i| * |x / max|x_i||``; other rows
    are the plain ``x.norm()``, bit for bit."""
    n = x.norm(dim=-1, keepdim=True)
    m = x.abs().amax(dim=-1, keepdim=True).clamp_min(torch.finfo(x.dtype).tiny)
    scaled = m * (x / m).norm(dim=-1, keepdim=True)
    n = torch.where(torch.isinf(n), scaled, n)
    return n if keepdim else n.squeeze(-1)


def project(x: torch.Tensor, max_norm: float = MAX_NORM) -> torch.Tensor:
    """Clip points to the ball of radius ``max_norm`` (the max-norm guard).

    Args:
        x: ``(..., n)`` float tensor.
        max_norm: radius in (0, 1); rows with a larger Euclidean norm are rescaled onto it.

    Returns:
        ``(..., n)`` tensor of the same dtype, every row with norm ``<= max_norm``.

    Raises:
        ValueError: if ``max_norm`` is not in (0, 1).
    """
    if not 0.0 < max_norm < 1.0:
        raise ValueError(f"max_norm must be in (0, 1), got {max_norm}")
    norm = _norm(x)
    scale = torch.where(norm > max_norm, max_norm / norm.clamp_min(1e-30), torch.ones_like(norm))
    return x * scale


def to_ball(u: torch.Tensor, max_norm: float = MAX_NORM) -> torch.Tensor:
    """The projection ``p(u) = u / (1 + sqrt(1 + |u|^2))`` from R^n onto the open unit ball.

    This is Gerald & Baskiotis (CAp 2019)'s map from the projector's Euclidean output to the
    Poincaré ball: the Poincaré image of the hyperboloid point whose spatial part is ``u``, so
    it is smooth, bijective onto the open ball and ``d(0, p(u)) = asinh(|u|)``.
    The max-norm guard is applied afterwards.

    Args:
        u: ``(..., n)`` float tensor (any finite norm; where ``|u|^2`` overflows, ``p(u)`` is
            computed as ``u / |u|`` with an overflow-free norm, then guarded).
        max_norm: max-norm guard, see :func:`project`.

    Returns:
        ``(..., n)`` tensor in the ball.
    """
    sq = (u * u).sum(dim=-1, keepdim=True)
    p = u / (1.0 + torch.sqrt(1.0 + sq))
    p = torch.where(torch.isinf(sq), u / _norm(u).clamp_min(torch.finfo(u.dtype).tiny), p)
    return project(p, max_norm)


def from_ball(x: torch.Tensor) -> torch.Tensor:
    """Inverse of :func:`to_ball` (without the guard): ``u = 2 x / (1 - |x|^2)``.

    Args:
        x: ``(..., n)`` points in the ball.

    Returns:
        ``(..., n)`` Euclidean vectors ``u`` with ``to_ball(u) == x``.
    """
    return 2.0 * x / _one_minus_sq(x.norm(dim=-1, keepdim=True))


def conformal_factor(x: torch.Tensor, keepdim: bool = False) -> torch.Tensor:
    """Conformal factor ``lambda_x = 2 / (1 - |x|^2)`` of the Poincaré metric at ``x``.

    The Riemannian metric is ``g_x = lambda_x^2 g_E``, so the Riemannian gradient is the
    Euclidean one times ``(1 / lambda_x)^2 = ((1 - |x|^2) / 2)^2`` (Nickel & Kiela 2017, eq. 4).

    Args:
        x: ``(..., n)`` points in the ball.
        keepdim: keep the reduced last dimension.

    Returns:
        ``(...)`` (or ``(..., 1)``) tensor, ``>= 2``.
    """
    return 2.0 / _one_minus_sq(x.norm(dim=-1, keepdim=keepdim))


def _dist_from_s(s: torch.Tensor) -> torch.Tensor:
    eps = _SQRT_EPS.get(s.dtype, 1e-14)
    return 2.0 * torch.asinh(torch.sqrt(s.clamp_min(eps)))


def dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Poincaré distance between broadcastable point sets (Nickel & Kiela 2017, eq. 1).

    ``d(x, y) = arccosh(1 + 2 s) = 2 asinh(sqrt(s))``,
    ``s = |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))``; the asinh form is used (accurate in float32).
    The gradient is finite everywhere; at ``x == y`` it is 0 (``s`` is clamped at 1e-14 in
    float32, so identical points are reported at distance ~2e-7 rather than 0).

    Args:
        x: ``(..., n)`` points in the ball.
        y: ``(..., n)`` points in the ball, broadcastable with ``x``.

    Returns:
        ``(...)`` distances (hyperbolic units), same dtype as the inputs.
    """
    diff = ((x - y) ** 2).sum(dim=-1)
    denom = _one_minus_sq(x.norm(dim=-1)) * _one_minus_sq(y.norm(dim=-1))
    return _dist_from_s(diff / denom)


def pairwise_dist(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """All-pairs Poincaré distance, ``(Q, n) x (M, n) -> (Q, M)``, via one matrix product.

    ``|x - y|^2`` is expanded as ``|x|^2 + |y|^2 - 2 <x, y>`` (a GEMM), which cancels for very
    close pairs; use it to shortlist, then :func:`dist` to score the shortlist exactly.

    Args:
        x: ``(Q, n)`` points in the ball.
        y: ``(M, n)`` points in the ball.

    Returns:
        ``(Q, M)`` distances, dtype of the inputs.
    """
    xn = (x * x).sum(-1)
    yn = (y * y).sum(-1)
    sq = (xn[:, None] + yn[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)
    tiny = torch.finfo(xn.dtype).tiny  # sqrt'(0) is inf: the origin's gradient would be NaN
    denom = _one_minus_sq(xn.clamp_min(tiny).sqrt())[:, None] * _one_minus_sq(yn.clamp_min(tiny).sqrt())[None, :]
    return _dist_from_s(sq / denom)


def dist0(x: torch.Tensor) -> torch.Tensor:
    """Distance from the origin, ``d(0, x) = 2 artanh(|x|)``.

    Args:
        x: ``(..., n)`` points in the ball.

    Returns:
        ``(...)`` distances.
    """
    return 2.0 * torch.atanh(_below_one(x.norm(dim=-1)))


def expmap0(v: torch.Tensor, max_norm: float = MAX_NORM) -> torch.Tensor:
    """Exponential map at the origin, ``exp_0(v) = tanh(|v|) v / |v|`` (curvature -1).

    Args:
        v: ``(..., n)`` tangent vectors at 0.
        max_norm: max-norm guard applied to the result.

    Returns:
        ``(..., n)`` points in the ball.
    """
    norm = _norm(v).clamp_min(1e-30)
    return project(torch.tanh(norm) * v / norm, max_norm)


def logmap0(x: torch.Tensor) -> torch.Tensor:
    """Logarithmic map at the origin, ``log_0(x) = artanh(|x|) x / |x|`` (inverse of expmap0).

    Args:
        x: ``(..., n)`` points in the ball.

    Returns:
        ``(..., n)`` tangent vectors at 0.
    """
    norm = x.norm(dim=-1, keepdim=True).clamp_min(1e-30)
    return torch.atanh(_below_one(norm)) * x / norm


def lift_hyperboloid(x: torch.Tensor) -> torch.Tensor:
    """Map ball points to the hyperboloid model, ``h(x) = ((1+|x|^2), 2x) / (1-|x|^2)``.

    For two points, ``h0(x) h0(y) - <h1..n(x), h1..n(y)> = cosh d(x, y)``, so a query
    ``(-h0(x), h1..n(x))`` ranks database points ``h(y)`` by inner product exactly as by
    Poincaré distance (largest inner product = nearest). ``|h(x)|`` grows like
    ``2 / (1 - |x|)``, so float32 inner products lose the small distances near the boundary.

    Args:
        x: ``(..., n)`` points in the ball.

    Returns:
        ``(..., n + 1)`` points on the hyperboloid, time coordinate first.
    """
    sq = (x * x).sum(-1, keepdim=True)
    denom = _one_minus_sq(sq.sqrt())
    return torch.cat([(1.0 + sq) / denom, 2.0 * x / denom], dim=-1)


def hyperboloid_query(x: torch.Tensor) -> torch.Tensor:
    """Query vector ``(-h0(x), h1..n(x))`` whose inner product with ``h(y)`` is ``-cosh d(x,y)``.

    Args:
        x: ``(..., n)`` points in the ball.

    Returns:
        ``(..., n + 1)`` query vectors.
    """
    h = lift_hyperboloid(x)
    return torch.cat([-h[..., :1], h[..., 1:]], dim=-1)


def distance(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """Distance between broadcastable point sets in a geometry (differentiable).

    ``"poincare"``: :func:`dist`; ``"euclidean"``: ``sqrt(max(|x - y|^2, 1e-12))`` (the clamp
    keeps the gradient finite at ``x == y``).

    Args:
        x, y: ``(..., n)`` broadcastable float tensors (in the ball for ``"poincare"``).
        geometry: one of :data:`GEOMETRIES`.

    Returns:
        ``(...)`` distances, dtype of the inputs.

    Raises:
        ValueError: an unknown geometry.
    """
    if check_geometry(geometry) == "poincare":
        return dist(x, y)
    return (x - y).pow(2).sum(-1).clamp_min(1e-12).sqrt()


def pairwise_distance(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """All-pairs distances ``(Q, n) x (M, n) -> (Q, M)`` through one matrix product.

    ``"poincare"``: :func:`pairwise_dist` (cancels for very close pairs: shortlist with it, then
    score with :func:`distance`); ``"euclidean"``: :func:`torch.cdist`.

    Raises:
        ValueError: an unknown geometry.
    """
    if check_geometry(geometry) == "poincare":
        return pairwise_dist(x, y)
    return torch.cdist(x, y)


def pairwise_dist_float64(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """``(B, n) x (k, n) -> (B, k)`` distances through one matrix product evaluated in float64.

    ``|x - y|^2 = |x|^2 + |y|^2 - 2 <x, y>`` in float64 (the cancellation of the expansion stays
    far below float32 resolution, also for points near the boundary), then
    ``d = 2 asinh(sqrt(s))``, ``s = |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))`` (Nickel & Kiela 2017,
    eq. 1), or the Euclidean ``sqrt(|x - y|^2)``. ``1 - |x|^2`` needs no ``(1 - |x|)(1 + |x|)``
    form in float64, and the square root that form takes has no finite gradient at ``x = 0`` (an
    example whose features all dropped out). ``s`` and ``|x - y|^2`` are clamped at ``1e-30``.
    The training loss scores its shared negatives with it (:mod:`xhyp.training.loss`).

    Args:
        x: ``(B, n)`` float points. y: ``(k, n)`` float points. geometry: one of :data:`GEOMETRIES`.

    Returns:
        ``(B, k)`` tensor, dtype of ``x``; gradients flow to both inputs (zero where clamped).

    Raises:
        ValueError: an unknown geometry.
    """
    x64, y64 = x.double(), y.double()
    xn, yn = (x64 * x64).sum(-1), (y64 * y64).sum(-1)
    sq = (xn[:, None] + yn[None, :] - 2.0 * (x64 @ y64.T)).clamp_min(0.0)
    if check_geometry(geometry) == "poincare":
        denom = (1.0 - xn)[:, None] * (1.0 - yn)[None, :]  # float64: 1 - |x|^2 is accurate to ~1e-16
        d = 2.0 * torch.asinh(torch.sqrt((sq / denom).clamp_min(1e-30)))
    else:
        d = torch.sqrt(sq.clamp_min(1e-30))
    return d.to(x.dtype)


def dist0_float64(x: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """Differentiable distance from the origin evaluated in float64: ``d(0, x) = 2 artanh(|x|)``
    (Poincaré ball; Nickel & Kiela 2017, eq. 1 with ``u = 0``) or ``|x|`` (Euclidean).

    In float64 ``artanh`` and its derivative ``1 / (1 - |x|^2)`` keep ~1e-11 relative precision
    at the max-norm guard (``|x| = 1 - 1e-5``), where float32 loses ~1e-3. ``|x|^2`` is clamped
    at ``1e-30`` (a zero, finite gradient at the origin) and ``|x|`` below 1 (``|x| >= 1`` gives
    the finite distance of ``1 - 2^-52``). The loss's radial term (``TrainConfig.radial_weight``,
    :mod:`xhyp.training.loss`) uses it.

    Args:
        x: ``(..., n)`` float points. geometry: one of :data:`GEOMETRIES`.

    Returns:
        ``(...)`` float64 distances; gradients flow to ``x``.

    Raises:
        ValueError: an unknown geometry.
    """
    x64 = x.double()
    r = (x64 * x64).sum(-1).clamp_min(1e-30).sqrt()
    if check_geometry(geometry) == "euclidean":
        return r
    return 2.0 * torch.atanh(r.clamp_max(1.0 - 2.0 ** -52))


def _inv_one_minus_sq64(x: torch.Tensor) -> torch.Tensor:
    """``c(x) = 1 / ((1 - |x|)(1 + |x|))`` in float64, the denominator clamped at ``1e-30`` as in
    the compiled kernels (``cpp_ext/include/xhyp_common.h``)."""
    r = x.double().norm(dim=-1)
    return 1.0 / ((1.0 - r) * (1.0 + r)).clamp_min(1e-30)


def dist64(x: torch.Tensor, y: torch.Tensor, geometry: str = "poincare") -> torch.Tensor:
    """Float64 reference distance of broadcastable point sets, from their coordinate differences.

    ``s = |x - y|^2 c(x) c(y)`` with ``c(x) = 1 / ((1 - |x|)(1 + |x|))`` and ``d = 2 asinh(sqrt(s))``
    (Nickel & Kiela 2017, eq. 1, in the form that keeps the precision of close pairs near the
    boundary), all in float64 from the given (e.g. float32) coordinates; ``"euclidean"``:
    ``sqrt(|x - y|^2)``. No matrix product: every pair is computed from its own differences, so
    the result is the exact distance of the inputs up to float64 rounding. The kNN kernels'
    references (:mod:`xhyp.knn.reference`), the faiss re-ranking (:mod:`xhyp.knn.index`), the
    hierarchy metrics and the kNN benchmark use it.

    Args:
        x: ``(..., n)`` float points. y: ``(..., n)`` float points, broadcastable with ``x``
            (e.g. ``x[:, None, :]`` against ``(Q, k, n)`` candidates).
        geometry: one of :data:`GEOMETRIES`.

    Returns:
        ``(...)`` float64 distances.

    Raises:
        ValueError: an unknown geometry.
    """
    x64, y64 = x.double(), y.double()
    sq = ((x64 - y64) ** 2).sum(-1)
    if check_geometry(geometry) == "euclidean":
        return sq.sqrt()
    s = sq * _inv_one_minus_sq64(x64) * _inv_one_minus_sq64(y64)
    return 2.0 * torch.asinh(s.clamp_min(0.0).sqrt())


class PoincareBall(geoopt.PoincareBall):
    """geoopt's Poincaré ball (curvature -1) with our max-norm guard instead of eps=4e-3.

    Used as the manifold of the label-embedding :class:`geoopt.ManifoldParameter` so that
    :class:`geoopt.optim.RiemannianAdam` (Bécigneul & Ganea, ICLR 2019) retracts onto
    ``|x| <= max_norm``.
    """

    def __init__(self, max_norm: float = MAX_NORM):
        super().__init__(c=1.0)
        if not 0.0 < max_norm < 1.0:
            raise ValueError(f"max_norm must be in (0, 1), got {max_norm}")
        self.max_norm = float(max_norm)

    def projx(self, x: torch.Tensor, *, dim: int = -1) -> torch.Tensor:  # noqa: D102
        assert dim == -1
        return project(x, self.max_norm)

    def retr(self, x: torch.Tensor, u: torch.Tensor, *, dim: int = -1) -> torch.Tensor:  # noqa: D102
        assert dim == -1
        return project(x + u, self.max_norm)
