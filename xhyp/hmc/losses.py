"""Losses of the HMC methods: Poincaré label-embedding loss (HiddeN) and HiMulCon's
hierarchical multi-label supervised contrastive losses.

* :func:`cooccurrence_pairs` / :func:`sample_negatives` / :func:`poincare_label_loss`: Nickel &
  Kiela (2017, eq. 6) on the label co-occurrence graph, as in the public code of Chatterjee et
  al. (EACL 2021, "HiddeN"): for a co-occurring pair ``(u, v)`` and ``K`` (=5) sampled labels
  ``v'_k`` that never co-occur with ``u``, ``-log( e^{-d(u,v)} / (e^{-d(u,v)} + sum_k e^{-d(u,v'_k)}) )``,
  ``d`` the Poincaré distance (:func:`xhyp.embedding.manifold.dist`).
* :func:`himulcon_loss`: Zhang, Xu, Xiong, Ramaiah (CVPR 2022, "Use all the labels"), the
  supervised contrastive loss of Khosla et al. (2020, eq. 2) applied per level of the hierarchy,
  with HiMulCon's level penalty ``lambda = 2^(1/l)`` (``l = 1`` for the deepest level: pairs that
  share deeper labels pull harder) and HiConE's constraint (the loss of a level is never below
  the loss of a deeper level: ``L_l <- max(L_l, max_{l' deeper} L_{l'})``); when no hierarchy is
  known, one supervised contrastive loss whose positives are weighted by label overlap (Jaccard).
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xhyp.embedding import manifold

__all__ = ["cooccurrence_pairs", "sample_negatives", "poincare_label_loss", "supcon_log_prob", "himulcon_loss",
           "CONTRASTIVE_KINDS"]

CONTRASTIVE_KINDS = ("none", "hmc", "hmce")


def cooccurrence_pairs(Y: sp.spmatrix) -> tuple[np.ndarray, sp.csr_matrix]:
    """Unordered pairs of distinct labels that occur together in at least one example.

    Args:
        Y: ``(N, L)`` binary labels.

    Returns:
        ``(pairs, C)``: ``(P, 2)`` int64 pairs ``u < v``, and the ``(L, L)`` boolean CSR
        co-occurrence matrix (symmetric, diagonal included for labels that occur).
    """
    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y.data[:] = 1
    C = (Y.T @ Y).tocsr()
    C.data[:] = 1
    U = sp.triu(C, k=1).tocoo()
    pairs = np.stack([U.row, U.col], 1).astype(np.int64)
    return pairs, C.astype(bool)


def sample_negatives(u: np.ndarray, C: sp.csr_matrix, n_neg: int, rng: np.random.Generator,
                     max_tries: int = 10) -> np.ndarray:
    """``n_neg`` labels for each anchor ``u`` drawn uniformly among those never co-occurring
    with it (Nickel & Kiela's negatives ``N(u)``); after ``max_tries`` redraws a remaining
    collision is kept (labels co-occurring with almost everything).

    Args:
        u: ``(P,)`` int64 anchor label ids. C: ``(L, L)`` boolean co-occurrence (sparse from
            :func:`cooccurrence_pairs`, or a dense ndarray: faster when called repeatedly).
        n_neg: negatives per anchor. rng: NumPy generator.

    Returns:
        ``(P, n_neg)`` int64 label ids.
    """
    L = C.shape[0]
    dense = C.toarray() if sp.issparse(C) else np.asarray(C)
    neg = rng.integers(0, L, size=(len(u), n_neg))
    for _ in range(max_tries):
        bad = dense[u[:, None], neg] | (neg == u[:, None])
        if not bad.any():
            break
        neg[bad] = rng.integers(0, L, size=int(bad.sum()))
    return neg


def poincare_label_loss(E: torch.Tensor, pairs: torch.Tensor, negatives: torch.Tensor) -> torch.Tensor:
    """Nickel & Kiela (2017, eq. 6) softmax loss over minus Poincaré distances.

    Args:
        E: ``(L, d)`` label embeddings inside the unit ball (float32/64).
        pairs: ``(P, 2)`` int64 co-occurring pairs ``(u, v)``.
        negatives: ``(P, K)`` int64 labels not co-occurring with ``u``.

    Returns:
        scalar, mean over the ``P`` pairs of ``-log softmax([-d(u,v), -d(u,v'_1..K)])[0]``.
    """
    u = E[pairs[:, 0]].unsqueeze(1)  # (P, 1, d)
    cand = torch.cat([E[pairs[:, 1]].unsqueeze(1), E[negatives]], 1)  # (P, 1+K, d)
    logits = -manifold.dist(u, cand)
    return F.cross_entropy(logits, torch.zeros(len(pairs), dtype=torch.long, device=E.device))


def supcon_log_prob(z: torch.Tensor, temperature: float) -> torch.Tensor:
    """``log p_ij = z_i.z_j/tau - log sum_{a != i} exp(z_i.z_a/tau)`` for L2-normalised ``z``
    (Khosla et al. 2020, eq. 2); the diagonal is set to 0 (never a positive).

    Args:
        z: ``(B, n)`` embeddings (normalised here). temperature: ``tau`` > 0.

    Returns:
        ``(B, B)`` log-probabilities.
    """
    z = F.normalize(z, dim=-1)
    logits = z @ z.T / temperature
    eye = torch.eye(len(z), dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    return (logits - torch.logsumexp(logits, dim=1, keepdim=True)).masked_fill(eye, 0.0)


def _supcon(log_prob: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Mean over anchors with a positive of ``-sum_j w_ij log p_ij / sum_j w_ij``; 0 if none."""
    w = weights.clone()
    w.fill_diagonal_(0)
    tot = w.sum(1)
    has = tot > 0
    if not has.any():
        return log_prob.sum() * 0.0
    return (-(w * log_prob).sum(1)[has] / tot[has]).mean()


def himulcon_loss(z: torch.Tensor, Y: torch.Tensor, levels: list | None = None, kind: str = "hmce",
                  temperature: float = 0.1) -> torch.Tensor:
    """Hierarchical multi-label contrastive loss between the examples of a batch.

    Plugs into any trainer that has per-example embeddings: ``loss = task_loss + w *
    himulcon_loss(z, Y_batch, levels)`` with ``z`` the ``(B, n)`` embeddings of the batch (for
    the XMC model, the ball points or their ``logmap0``; any real vectors: they are
    L2-normalised here) and ``Y_batch`` its ``(B, L)`` dense binary labels.

    With a hierarchy (``levels[k]`` = label ids of depth ``k+1``, labels closed under
    ancestors), examples ``i, j`` are positives at depth ``k`` when they share a label of that
    depth. Level ``l`` counted from the deepest (``l = 1``) gets the penalty ``2^(1/l)``
    (HiMulCon, Zhang et al. 2022, eq. 4, as their code's ``pow_2(1/l)``); ``kind="hmce"`` adds the
    hierarchy constraint (eq. 5, HiConE): going from the deepest level up, a level's loss is
    raised to the largest loss of the deeper levels. The result is the sum over levels divided
    by the number of levels. Without a hierarchy (``levels=None``) the loss is one supervised
    contrastive loss whose positive weights are the label-set Jaccard overlaps ``|Y_i & Y_j| /
    |Y_i | Y_j|``. (HiMulCon's code also drops duplicate label paths between levels; with label
    *sets* there is no such single path, so every example stays at every level.)

    Args:
        z: ``(B, n)`` float embeddings (gradients flow into them).
        Y: ``(B, L)`` binary labels (float or bool tensor).
        levels: per-depth label id arrays (see :meth:`xhyp.datasets.hmc.Hierarchy.levels`), or None.
        kind: ``"hmc"`` (level penalty) or ``"hmce"`` (penalty and constraint); ``"none"`` returns 0.
        temperature: ``tau`` of the softmax (Khosla et al. use 0.1, HiMulCon 0.07).

    Returns:
        scalar loss (0 when no anchor has a positive).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in CONTRASTIVE_KINDS:
        raise ValueError(f"contrastive kind must be one of {CONTRASTIVE_KINDS}, got {kind!r}")
    if kind == "none" or len(z) < 2:
        return z.sum() * 0.0
    Y = Y.to(z.dtype)
    log_prob = supcon_log_prob(z, temperature)
    if levels is None:
        inter = Y @ Y.T
        n = Y.sum(1)
        union = n[:, None] + n[None, :] - inter
        return _supcon(log_prob, torch.where(union > 0, inter / union.clamp_min(1e-12), torch.zeros_like(inter)))
    levels = [torch.as_tensor(np.asarray(lv), dtype=torch.long, device=z.device) for lv in levels if len(lv)]
    total = z.sum() * 0.0
    worst = None
    D = len(levels)
    for l, cols in enumerate(reversed(levels), start=1):  # l = 1 is the deepest level
        Yl = Y[:, cols]
        loss_l = _supcon(log_prob, ((Yl @ Yl.T) > 0).to(z.dtype))
        if kind == "hmce" and worst is not None:
            loss_l = torch.maximum(loss_l, worst)
        worst = loss_l if worst is None else torch.maximum(worst, loss_l)
        total = total + (2.0 ** (1.0 / l)) * loss_l
    return total / max(D, 1)
