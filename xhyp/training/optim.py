"""Optimisers for parameters that live in the Poincaré ball.

The default is geoopt's :class:`geoopt.optim.RiemannianAdam` (Bécigneul & Ganea, *Riemannian
Adaptive Optimization Methods*, ICLR 2019). :class:`PaperAdam` is the simpler rule of
Gerald & Baskiotis (CAp 2019, section 2.4), after Nickel & Kiela (2017, eq. 5): rescale the
Euclidean gradient by the inverse metric ``((1 - |x|^2) / 2)^2``, take an Adam step in the
ambient space, and project back into the ball.

Row-sparse ("lazy") variants, whose step costs O(rows a batch touched), not O(L):
:class:`SparseRiemannianAdam` (geoopt's Riemannian Adam on the touched rows),
:class:`SparsePaperAdam` (the paper's rule on the touched rows) and :class:`LazyAdam`
(:class:`torch.optim.SparseAdam`'s update for Euclidean embedding tables). The training loop
(:mod:`xhyp.training.loop`, ``label_update="sparse"``) uses them; :class:`PaperAdam` keeps its dense
semantics. :func:`make_optimizers` builds the optimisers of a model from its
:class:`~xhyp.config.TrainConfig`, with the step sizes of :func:`scaled_lr`.
"""
from __future__ import annotations

import functools
import math

import torch

from ..config import LR_SCALINGS, check_choice
from ..embedding import manifold

LR_REFERENCE_BATCH = 64
"""Batch size at which ``lr`` and ``lr_labels`` are used as given (see :func:`scaled_lr`)."""


def scaled_lr(lr: float, batch_size: int, rule: str) -> float:
    """Step size for a batch size: ``lr * sqrt(batch_size / 64)`` (``rule="sqrt"``) or ``lr``.

    The square-root rule keeps the variance of an Adam-type step roughly constant as the batch
    grows (Krizhevsky, *One weird trick for parallelizing convolutional neural networks*, 2014;
    Hoffer et al., *Train longer, generalize better*, NeurIPS 2017); ``lr`` and ``lr_labels``
    are the values at :data:`LR_REFERENCE_BATCH` = 64 examples, the batch size they were tuned
    at, so the defaults are unchanged at 64.

    Raises:
        ValueError: unknown rule.
    """
    check_choice("lr_scaling", rule, LR_SCALINGS)
    return float(lr) * math.sqrt(batch_size / LR_REFERENCE_BATCH) if rule == "sqrt" else float(lr)


def paper_adam_rows(x: torch.Tensor, grad: torch.Tensor, m: torch.Tensor, v: torch.Tensor, t: int,
                    group: dict) -> torch.Tensor:
    """The paper's update of ``(R, n)`` rows of a ball parameter (Gerald & Baskiotis, CAp 2019,
    section 2.4; Nickel & Kiela 2017, eq. 4-5): the rule of :class:`PaperAdam` and
    :class:`SparsePaperAdam`.

    ``g = ((1 - |x|^2) / 2)^2 grad`` (the inverse metric), Adam moments ``m``, ``v`` (updated in
    place) with bias correction at step ``t``, then the step and the max-norm projection.

    Args:
        x: ``(R, n)`` rows. grad: ``(R, n)`` their Euclidean gradient. m, v: ``(R, n)`` moments.
        t: step count (>= 1). group: the optimiser's parameter group (``lr``, ``betas``, ``eps``,
            ``max_norm``).

    Returns:
        ``(R, n)`` new rows, in the ball of radius ``max_norm``.
    """
    b1, b2 = group["betas"]
    sq = (x * x).sum(-1, keepdim=True)
    g = grad * ((1.0 - sq) / 2.0) ** 2
    m.mul_(b1).add_(g, alpha=1 - b1)
    v.mul_(b2).addcmul_(g, g, value=1 - b2)
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return manifold.project(x - group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]), group["max_norm"])


class PaperAdam(torch.optim.Optimizer):
    """Adam on the inverse-metric-rescaled gradient, followed by the max-norm projection.

    Update for a row ``x`` of a ball parameter with Euclidean gradient ``g``::

        g' = ((1 - |x|^2) / 2)^2 g                 (Nickel & Kiela 2017, eq. 4)
        m = b1 m + (1 - b1) g';  v = b2 v + (1 - b2) g'^2
        x = project(x - lr * m_hat / (sqrt(v_hat) + eps))

    Args:
        params: iterable of ``(L, n)`` tensors whose rows are points of the ball.
        lr: step size. betas, eps: as in Adam.
        max_norm: max-norm guard used by the projection.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, max_norm=manifold.MAX_NORM):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, max_norm=max_norm))

    @torch.no_grad()
    def step(self, closure=None):
        """One update of every parameter that has a gradient (see the class docstring).

        Raises:
            RuntimeError: a sparse gradient (use :class:`SparsePaperAdam`).
        """
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if p.grad.is_sparse:
                    raise RuntimeError("PaperAdam does not support sparse gradients")
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["m"] = torch.zeros_like(p)
                    state["v"] = torch.zeros_like(p)
                state["step"] += 1
                t = state["step"]
                p.copy_(paper_adam_rows(p, p.grad, state["m"], state["v"], t, group))
        return loss


class _Eager(torch.optim.Optimizer):
    """Base of the optimisers below: torch wraps ``add_param_group``, ``zero_grad``,
    ``state_dict`` and ``load_state_dict`` in ``torch._disable_dynamo``, whose first call imports
    ``torch._dynamo`` (about 2 s on 2 cores before training can start); these optimisers are
    never compiled, so they use the undecorated functions."""

    add_param_group = getattr(torch.optim.Optimizer.add_param_group, "__wrapped__",
                              torch.optim.Optimizer.add_param_group)
    zero_grad = getattr(torch.optim.Optimizer.zero_grad, "__wrapped__", torch.optim.Optimizer.zero_grad)
    state_dict = getattr(torch.optim.Optimizer.state_dict, "__wrapped__", torch.optim.Optimizer.state_dict)
    load_state_dict = getattr(torch.optim.Optimizer.load_state_dict, "__wrapped__",
                              torch.optim.Optimizer.load_state_dict)


class _LazyRows(_Eager):
    """Lazy (row-sparse) Adam-type step: for each parameter, read the rows present in the
    gradient and their moments ``exp_avg`` / ``exp_avg_sq``, let :meth:`_rows` compute their new
    values, write them back; rows absent from the gradient are not touched. One step count per
    parameter (as SparseAdam)."""

    def _rows(self, p, group, x, grad, m, v, t):  # pragma: no cover - abstract
        """``(new x, new m, new v)`` of the rows; ``m`` and ``v`` may be updated in place."""
        raise NotImplementedError

    def _fused(self, p, group, state, rows, grad) -> bool:
        """Apply the step of ``rows`` in place with a compiled kernel if there is one for these
        tensors; ``False``: use :meth:`_rows`."""
        return False

    @torch.no_grad()
    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                state = self.state[p]
                if not state:
                    state["step"] = 0
                    state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                    state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["step"] += 1
                rows, grad = _rows_and_values(p.grad)
                if self._fused(p, group, state, rows, grad):
                    continue
                data = p.data.as_subclass(torch.Tensor)
                x, m, v = self._rows(p, group, data.index_select(0, rows), grad,
                                     state["exp_avg"].index_select(0, rows),
                                     state["exp_avg_sq"].index_select(0, rows), state["step"])
                data.index_copy_(0, rows, x)
                state["exp_avg"].index_copy_(0, rows, m)
                state["exp_avg_sq"].index_copy_(0, rows, v)
        return loss


@functools.cache
def _has_row_step_ops() -> bool:
    """Whether the loaded extension registers the fused row steps for the CPU (asked once: called
    only after :func:`xhyp.knn.extension.ext_available` has loaded it, whose registrations then
    stay as they are)."""
    try:
        return all(torch._C._dispatch_has_kernel_for_dispatch_key(f"xhyp_ext::{op}", "CPU")
                   for op in ("lazy_adam_", "riemannian_adam_ball_"))
    except RuntimeError:  # operator not defined: an extension built from older sources
        return False


def _fusable(opt, p, state, grad) -> bool:
    """Whether the compiled row-step kernels (``cpp_ext/cpu/optim_cpu.cpp``) apply: the optimiser
    allows them, the extension is loaded and has them (an extension built from older sources
    lacks them: the tensor code runs), and the parameter, its moments and the gradient are
    contiguous 2-D float32 CPU tensors."""
    from ..knn.extension import ext_available

    tables = (p.data, state["exp_avg"], state["exp_avg_sq"])
    return (opt.fused and grad.dtype == torch.float32 and ext_available("cpu")
            and _has_row_step_ops()
            and all(t.device.type == "cpu" and t.dtype == torch.float32 and t.dim() == 2 and t.is_contiguous()
                    for t in tables))


def _rows_and_values(grad: torch.Tensor):
    """``(rows int64 (R,), values (R, n))`` of a gradient: the coalesced rows of a sparse COO
    gradient (as produced by ``F.embedding(..., sparse=True)``), or every row of a dense one."""
    if grad.is_sparse:
        g = grad.coalesce()
        return g.indices()[0], g.values()
    return torch.arange(grad.shape[0], device=grad.device), grad


class SparseRiemannianAdam(_LazyRows):
    """Row-sparse ("lazy") Riemannian Adam for ``(L, n)`` parameters whose rows are manifold points.

    The step of each touched row is geoopt's :class:`geoopt.optim.RiemannianAdam` (Bécigneul &
    Ganea, *Riemannian Adaptive Optimization Methods*, ICLR 2019, Algorithm 1 with the
    retraction and parallel transport of the parameter's manifold)::

        g  = egrad2rgrad(x, grad)                      # ((1 - |x|^2) / 2)^2 grad on the ball
        m  = b1 m + (1 - b1) g;   v = b2 v + (1 - b2) lambda_x^2 |g|^2   # component_inner: one
                                                                     # Riemannian |g|^2 per row
        x', m = retr_transp(x, -lr (m / (1 - b1^t)) / (sqrt(v / (1 - b2^t)) + eps), m)

    How it differs from the dense optimiser: only the rows present in the gradient (the
    coalesced rows of a sparse COO gradient, e.g. from ``F.embedding(..., sparse=True)``) are
    read, moved and have their moments updated; rows a batch did not touch keep their
    position and their (undecayed) moments, exactly as :class:`torch.optim.SparseAdam` treats
    the rows of an embedding. The bias-correction step count ``t`` is one per parameter and
    counts every ``step()`` (as SparseAdam). Dense Riemannian Adam instead decays every row's
    moments and keeps moving untouched rows along their momentum at every step, at a cost
    proportional to ``L`` (370 ms a step at ``L = 205,443``, ``n = 50`` on 2 cores). When
    every row is touched at every step the two are identical (tested in float64). A dense
    gradient is accepted and treated as touching every row. No weight decay or amsgrad.

    On the CPU, float32 parameters on :class:`xhyp.embedding.manifold.PoincareBall` are stepped by the
    compiled kernel ``torch.ops.xhyp_ext.riemannian_adam_ball_`` (``cpp_ext/cpu/optim_cpu.cpp``):
    the same formulas (conformal factor ``lambda_x = 2 / (1 - |x|^2)``, ``egrad2rgrad``,
    retraction with the max-norm guard, parallel transport by the gyration) evaluated per row in
    float64 in one pass, instead of some sixty tensor operations a step; it agrees with geoopt's
    float64 step to rounding (tested).

    Args:
        params: iterable of ``(L, n)`` tensors; a :class:`geoopt.ManifoldParameter` brings its
            manifold, any other tensor is treated as Euclidean.
        lr: step size. betas, eps: as in Adam.
        fused: use the compiled kernel where it applies (``False``: always geoopt's operations).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused: bool = True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.fused = fused

    def _fused(self, p, group, state, rows, grad) -> bool:  # noqa: D102
        if not (isinstance(getattr(p, "manifold", None), manifold.PoincareBall) and _fusable(self, p, state, grad)):
            return False
        b1, b2 = group["betas"]
        torch.ops.xhyp_ext.riemannian_adam_ball_(p.data, state["exp_avg"], state["exp_avg_sq"], rows.contiguous(),
                                                 grad.contiguous(), group["lr"], b1, b2, group["eps"],
                                                 state["step"], p.manifold.max_norm)
        return True

    def _rows(self, p, group, x, grad, m, v, t):  # noqa: D102
        import geoopt

        manifold = p.manifold if isinstance(p, geoopt.ManifoldParameter) else geoopt.Euclidean(ndim=1)
        b1, b2 = group["betas"]
        rg = manifold.egrad2rgrad(x, grad)
        m.mul_(b1).add_(rg, alpha=1 - b1)
        v.mul_(b2).add_(manifold.component_inner(x, rg), alpha=1 - b2)
        direction = (m / (1 - b1 ** t)) / (v / (1 - b2 ** t)).sqrt_().add_(group["eps"])
        new_x, new_m = manifold.retr_transp(x, -group["lr"] * direction, m)
        return new_x, new_m, v


class SparsePaperAdam(_LazyRows):
    """Row-sparse ("lazy") variant of :class:`PaperAdam` (Gerald & Baskiotis, CAp 2019, section
    2.4; Nickel & Kiela 2017, eq. 4-5).

    Each row present in the gradient gets exactly the :class:`PaperAdam` update (inverse-metric
    rescaling, Adam moments, step, max-norm projection); rows absent from a sparse gradient
    are not read, moved or decayed (as :class:`torch.optim.SparseAdam`). The bias-correction
    step count is one per parameter. With every row touched at every step it equals
    :class:`PaperAdam` (tested). A dense gradient counts as touching every row.

    Args:
        params: iterable of ``(L, n)`` tensors whose rows are points of the ball.
        lr: step size. betas, eps: as in Adam. max_norm: the projection's max-norm guard.
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, max_norm=manifold.MAX_NORM):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps, max_norm=max_norm))

    def _rows(self, p, group, x, grad, m, v, t):  # noqa: D102
        return paper_adam_rows(x, grad, m, v, t, group), m, v


class LazyAdam(_LazyRows):
    """:class:`torch.optim.SparseAdam`'s update, computed on the coalesced rows only.

    Same arithmetic as SparseAdam (Kingma & Ba 2015 moments, updated only for the rows present
    in the sparse gradient; step ``lr * sqrt(1 - b2^t) / (1 - b1^t) * m / (sqrt(v) + eps)`` with
    one step count per parameter), but the moments and the parameter are read and written with
    ``index_select`` / ``index_copy_`` on those rows instead of SparseAdam's ``sparse_mask`` of
    whole sparse tensors, so a step costs O(rows touched x n) with few passes. Used for the
    projector's EmbeddingBag (``F`` rows, of which a batch touches a few thousand). A dense
    gradient counts as touching every row.

    On the CPU, float32 tables are stepped by the compiled kernel ``torch.ops.xhyp_ext.lazy_adam_``
    (``cpp_ext/cpu/optim_cpu.cpp``): the same update in one pass over the touched rows of the
    parameter and its moments (float32 arithmetic in the same order; the vectorised tensor code
    may fuse multiply-adds, so the two agree to float32 rounding, not bit for bit).

    Args:
        params: iterable of 2-D tensors. lr, betas, eps: as SparseAdam.
        fused: use the compiled kernel where it applies (``False``: always the tensor code).
    """

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, fused: bool = True):
        super().__init__(params, dict(lr=lr, betas=betas, eps=eps))
        self.fused = fused

    def _rows(self, p, group, x, grad, m, v, t):  # noqa: D102
        b1, b2 = group["betas"]
        m.mul_(b1).add_(grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(grad, grad, value=1 - b2)
        return x.add(m / (v.sqrt() + group["eps"]), alpha=-self._step_size(group, t)), m, v

    @staticmethod
    def _step_size(group, t: int) -> float:
        b1, b2 = group["betas"]
        return group["lr"] * math.sqrt(1 - b2 ** t) / (1 - b1 ** t)

    def _fused(self, p, group, state, rows, grad) -> bool:  # noqa: D102
        if not _fusable(self, p, state, grad):
            return False
        b1, b2 = group["betas"]
        torch.ops.xhyp_ext.lazy_adam_(p.data, state["exp_avg"], state["exp_avg_sq"], rows.contiguous(),
                                      grad.contiguous(), self._step_size(group, state["step"]), b1, b2, group["eps"])
        return True


def make_optimizers(model, cfg, scale=None) -> list:
    """The optimisers of a :class:`~xhyp.embedding.model.HyperbolicXMC` for a
    :class:`~xhyp.config.TrainConfig` (step sizes from :func:`scaled_lr`), and of a learned
    softmax scale (``scale``: a :class:`~xhyp.embedding.model.LearnedScale`, Adam with step
    ``lr_alpha``; ``None``: a fixed ``alpha``, no optimiser).

    The projector's first layer: :class:`LazyAdam` (``label_update="sparse"``) or torch's
    SparseAdam; the MLP layer: Adam; the label embeddings: :class:`SparseRiemannianAdam` /
    geoopt's RiemannianAdam (``optimizer="radam"``, Bécigneul & Ganea 2019),
    :class:`SparsePaperAdam` / :class:`PaperAdam` (``"paper"``, Gerald & Baskiotis 2019,
    section 2.4), or :class:`LazyAdam` / Adam for a Euclidean model.

    Returns:
        the list of optimisers, stepped together by :func:`xhyp.training.loss.train_step`.
    """
    import geoopt

    lr = scaled_lr(cfg.lr, cfg.batch_size, cfg.lr_scaling)
    lr_labels = scaled_lr(cfg.lr_labels, cfg.batch_size, cfg.lr_scaling)
    sparse = cfg.label_update == "sparse"
    # the projector: torch's SparseAdam in the previous trainer's path, the same update on the
    # touched rows only (LazyAdam) otherwise
    opts = [(LazyAdam if sparse else torch.optim.SparseAdam)([model.bag.weight], lr=lr)]
    if model.mlp is not None:
        opts.append(torch.optim.Adam(model.mlp.parameters(), lr=lr))
    if model.config.geometry == "poincare":
        if cfg.optimizer == "radam":
            opts.append(SparseRiemannianAdam([model.labels], lr=lr_labels) if sparse
                        else geoopt.optim.RiemannianAdam([model.labels], lr=lr_labels))
        else:
            cls = SparsePaperAdam if sparse else PaperAdam
            opts.append(cls([model.labels], lr=lr_labels, max_norm=model.config.max_norm))
    else:
        opts.append(LazyAdam([model.labels], lr=lr_labels) if sparse
                    else torch.optim.Adam([model.labels], lr=lr_labels))
    if scale is not None:
        opts.append(torch.optim.Adam(scale.parameters(), lr=scaled_lr(cfg.lr_alpha, cfg.batch_size, cfg.lr_scaling)))
    return opts
