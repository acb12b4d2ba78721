"""Optimisers for parameters that live in the Poincaré ball.

The default is geoopt's :class:`geoopt.optim.RiemannianAdam` (Bécigneul & Ganea, *Riemannian
Adaptive Optimization Methods*, ICLR 2019). :class:`PaperAdam` is the simpler rule of
Gerald & Baskiotis (CAp 2019, section 2.4), after Nickel & Kiela (2017, eq. 5): rescale the
Euclidean gradient by the inverse metric ``((1 - |x|^2) / 2)^2``, take an Adam step in the
ambient space, and project back into the ball.
"""
from __future__ import annotations

import torch

from . import manifold


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
    def step(self, closure=None):  # noqa: D102
        loss = closure() if closure is not None else None
        for group in self.param_groups:
            b1, b2 = group["betas"]
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
                sq = (p * p).sum(-1, keepdim=True)
                g = p.grad * ((1.0 - sq) / 2.0) ** 2
                state["m"].mul_(b1).add_(g, alpha=1 - b1)
                state["v"].mul_(b2).addcmul_(g, g, value=1 - b2)
                m_hat = state["m"] / (1 - b1 ** t)
                v_hat = state["v"] / (1 - b2 ** t)
                p.sub_(group["lr"] * m_hat / (v_hat.sqrt() + group["eps"]))
                p.copy_(manifold.project(p, group["max_norm"]))
        return loss
