"""Losses of the HMC methods: Poincaré label-embedding loss (HiddeN) and HiMulCon's
hierarchical multi-label supervised contrastive losses.

* :class:`LabelPairSampler` / :func:`poincare_label_loss`: Nickel & Kiela (2017, eq. 6) on label
  co-occurrence, as in the public code of Chatterjee et al. (EACL 2021, "HiddeN"): for a
  co-occurring pair ``(u, v)`` and ``K`` (=5) sampled labels ``v'_k`` that co-occur less often
  with ``u`` than ``v`` does (or never: :func:`sample_negatives`),
  ``-log( e^{-d(u,v)} / (e^{-d(u,v)} + sum_k e^{-d(u,v'_k)}) )``, ``d`` the Poincaré distance
  (:func:`xhyp.embedding.manifold.dist`, or :func:`hyperboloid_dist` for HiddeN's parametrisation).
* :func:`max_constraint` / :func:`max_constraint_loss`: C-HMCNN's max-constraint module (MCM) and
  max-constraint loss (MCLoss) (Giunchiglia & Lukasiewicz, NeurIPS 2020, eqs. 2 and 5), which make
  the output coherent with a known hierarchy;
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

from xhyp.config import CONTRASTIVE_KINDS, check_choice
from xhyp.embedding import manifold

__all__ = ["cooccurrence_pairs", "sample_negatives", "LabelPairSampler", "poincare_label_loss", "hyperboloid_dist", "MaxConstraintPlan", "max_constraint",
           "max_constraint_loss", "supcon_log_prob", "weighted_supcon_loss", "overlap_weights", "himulcon_loss",
           "CONTRASTIVE_KINDS"]



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


class LabelPairSampler:
    """Training tuples of the Poincaré label loss, drawn from label co-occurrence in ``Y``.

    Positives are the ordered pairs ``(u, v)`` of distinct labels that occur together in at
    least one example (both directions: every label is an anchor), drawn uniformly. Negatives
    for ``(u, v)``, drawn uniformly with replacement:

    * ``kind="graded"`` (HiddeN's public code, ``LabelDataset``: the labels less similar to
      ``u`` than ``v`` is): labels ``w`` whose co-occurrence count with ``u`` is strictly below
      that of ``v``, ``C[u, w] < C[u, v]`` (``C = Y^T Y``), so labels that co-occur more often
      (an ancestor: always) must be closer; pairs with no such ``w`` are left out;
    * ``kind="disjoint"`` (Nickel & Kiela's ``N(u)`` on the co-occurrence graph): labels never
      co-occurring with ``u`` (:func:`sample_negatives`).

    Args:
        Y: ``(N, L)`` binary labels (scipy sparse or dense).
        negatives: ``K``, negatives per pair.
        kind: ``"graded"`` or ``"disjoint"``.

    Raises:
        ValueError: unknown ``kind``.
    """

    KINDS = ("graded", "disjoint")

    def __init__(self, Y, negatives: int, kind: str = "graded"):
        if kind not in self.KINDS:
            raise ValueError(f"label negatives must be one of {self.KINDS}, got {kind!r}")
        self.kind, self.negatives = kind, negatives
        pairs, C = cooccurrence_pairs(Y)
        pairs = np.concatenate([pairs, pairs[:, ::-1]])
        if kind == "disjoint":
            self.C = C.toarray()
        else:
            Yb = sp.csr_matrix(Y, dtype=np.float32)
            Yb.data[:] = 1
            counts = (Yb.T @ Yb).toarray()
            L = counts.shape[0]
            self.order = np.argsort(counts, axis=1, kind="stable").astype(np.int32 if L >= 2 ** 15 else np.int16)
            u, v = pairs[:, 0], pairs[:, 1]
            ranked = np.take_along_axis(counts, self.order.astype(np.int64), 1)  # each row ascending
            less = np.empty(len(pairs), np.int64)  # |{w : C[u, w] < C[u, v]}|
            by_u = np.argsort(u, kind="stable")
            starts = np.searchsorted(u[by_u], np.arange(L + 1))
            for a in np.flatnonzero(np.diff(starts)):
                idx = by_u[starts[a]:starts[a + 1]]
                less[idx] = np.searchsorted(ranked[a], counts[a, v[idx]], side="left")
            keep = less > 0
            pairs, self.less = pairs[keep], less[keep]
        self.pairs = pairs

    def __len__(self) -> int:
        return len(self.pairs)

    def draw(self, n: int, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """``(n, 2)`` int64 pairs drawn uniformly with replacement and their ``(n, K)`` int64 negatives."""
        i = rng.integers(0, len(self.pairs), size=n)
        p = self.pairs[i]
        if self.kind == "disjoint":
            neg = sample_negatives(p[:, 0], self.C, self.negatives, rng)
        else:
            pick = (rng.random((n, self.negatives)) * self.less[i][:, None]).astype(np.int64)
            neg = self.order[p[:, :1], pick].astype(np.int64)
        return torch.from_numpy(p), torch.from_numpy(neg)


def hyperboloid_dist(u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Poincaré distance between the ball points of hyperboloid coordinates ``u``, ``v``
    (:func:`xhyp.hmc.models.to_poincare`: ``x = u / (1 + a_u)``, ``a_u = sqrt(1 + |u|^2)``).

    Computed as ``2 asinh(sqrt(s))`` with ``s = |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))`` (Nickel &
    Kiela 2017, eq. 1) where ``1 - |x|^2 = 2 / (1 + a_u)`` exactly, so no ``1 - |x|^2``
    cancellation occurs however far from the origin the points are (equal to the hyperboloid
    distance ``arccosh(a_u a_v - <u, v>)``).

    Args:
        u, v: ``(..., n)`` broadcastable real tensors (float32/64).

    Returns:
        ``(...)`` distances, dtype of the inputs.
    """
    au = torch.sqrt(1.0 + (u * u).sum(-1, keepdim=True))
    av = torch.sqrt(1.0 + (v * v).sum(-1, keepdim=True))
    sq = ((u / (1.0 + au) - v / (1.0 + av)) ** 2).sum(-1)
    s = sq * ((1.0 + au) * (1.0 + av)).squeeze(-1) / 4.0
    return 2.0 * torch.asinh(torch.sqrt(s.clamp_min(1e-30 if s.dtype == torch.float64 else 1e-14)))


def poincare_label_loss(E: torch.Tensor, pairs: torch.Tensor, negatives: torch.Tensor,
                        coords: str = "ball") -> torch.Tensor:
    """Nickel & Kiela (2017, eq. 6) softmax loss over minus Poincaré distances.

    Args:
        E: ``(L, d)`` label embeddings: points inside the unit ball (``coords="ball"``), or
            hyperboloid coordinates in ``R^d`` (``"hyperboloid"``, HiddeN's parametrisation,
            distances by :func:`hyperboloid_dist`).
        pairs: ``(P, 2)`` int64 co-occurring pairs ``(u, v)``.
        negatives: ``(P, K)`` int64 labels not co-occurring with ``u``.
        coords: ``"ball"`` or ``"hyperboloid"``.

    Returns:
        scalar, mean over the ``P`` pairs of ``-log softmax([-d(u,v), -d(u,v'_1..K)])[0]``.

    Raises:
        ValueError: unknown ``coords``.
    """
    if coords not in ("ball", "hyperboloid"):
        raise ValueError(f"coords must be 'ball' or 'hyperboloid', got {coords!r}")
    if coords == "ball":
        pts = E[torch.cat([pairs, negatives], 1)]  # (P, 2 + K): anchor, positive, negatives
        logits = -manifold.dist(pts[:, :1], pts[:, 1:])
    else:  # hyperboloid_dist with the per-label terms computed once for the L labels
        a1 = 1.0 + torch.sqrt(1.0 + (E * E).sum(-1))
        X, c = E / a1[:, None], a1 / 2.0  # ball points; c = 1 / (1 - |x|^2)
        u, w = pairs[:, 0], torch.cat([pairs[:, 1:], negatives], 1).reshape(-1)  # anchors; positive + negatives
        # anchors and the others gathered apart (no slicing of one (P, 2 + K, d) gather: its backward
        # would zero-fill and copy that whole block twice), index_select (backward: index_add)
        diff = X.index_select(0, w).view(len(u), -1, X.shape[1]) - X.index_select(0, u)[:, None]
        s = (diff * diff).sum(-1) * c.index_select(0, u)[:, None] * c.index_select(0, w).view(len(u), -1)
        logits = -2.0 * torch.asinh(torch.sqrt(s.clamp_min(1e-30 if s.dtype == torch.float64 else 1e-14)))
    return F.cross_entropy(logits, torch.zeros(len(pairs), dtype=torch.long, device=E.device))


class MaxConstraintPlan:
    """The hierarchy as C-HMCNN's max-constraint module (MCM) walks it here: the transitive
    reduction of the closure (the direct edges), grouped by the height of their ancestor end
    (longest path down to a leaf), so that a node's maximum over its descendants is the maximum
    of itself and its children's maxima, computed once the children's are final. Built once per
    model (:class:`xhyp.hmc.models.HMCModel` keeps one); :func:`max_constraint` then costs
    ``O(B (L + E))`` for ``E`` direct edges instead of ``O(B (L + P))`` for the ``P`` closure
    pairs (derisi_GO: 4,119 labels, 34,414 closure pairs, far fewer direct edges).

    Args:
        closure: ``(2, P)`` int64 ``(ancestor, descendant)`` pairs of a transitively closed
            relation (:func:`xhyp.hmc.models.descendant_pairs`); ``(2, 0)``: no hierarchy.
        n_labels: ``L``.

    Raises:
        ValueError: a label id outside ``[0, L)``, a pair ``(a, a)`` or a cycle.
    """

    def __init__(self, closure: torch.Tensor, n_labels: int):
        c = torch.as_tensor(closure).detach().cpu().numpy().astype(np.int64).reshape(2, -1)
        L = int(n_labels)
        self.n_labels, self.levels = L, []
        if c.shape[1] == 0:
            return
        if c.min() < 0 or c.max() >= L or (c[0] == c[1]).any():
            raise ValueError(f"closure pairs must be (ancestor, descendant) label ids in [0, {L}) with "
                             f"ancestor != descendant")
        A = sp.csr_matrix((np.ones(c.shape[1], np.int64), (c[0], c[1])), shape=(L, L))
        A.sum_duplicates()
        A.data[:] = 1
        via = (A @ A).tocsr()  # (a, d) reached through an intermediate node: not a direct edge
        via.data[:] = 1
        direct = (A - A.multiply(via)).tocoo()
        direct.eliminate_zeros()
        par, child = direct.row.astype(np.int64), direct.col.astype(np.int64)
        height = np.zeros(L, np.int64)
        for _ in range(L + 1):
            new = height.copy()
            np.maximum.at(new, par, height[child] + 1)
            if np.array_equal(new, height):
                break
            height = new
        else:
            raise ValueError("the closure pairs contain a cycle")
        for k in range(1, int(height.max()) + 1):
            on = height[par] == k
            parents, local = np.unique(par[on], return_inverse=True)
            self.levels.append(tuple(torch.from_numpy(np.ascontiguousarray(a, np.int64))
                                     for a in (parents, local.ravel(), child[on])))

    def __len__(self) -> int:
        """Number of direct edges ``E``."""
        return sum(len(lv[2]) for lv in self.levels)

    def to(self, device) -> "MaxConstraintPlan":
        """This plan with its index tensors on ``device`` (in place; returns self)."""
        self.levels = [tuple(t.to(device) for t in lv) for lv in self.levels]
        return self

    def apply(self, scores: torch.Tensor, want_arg: bool) -> tuple[torch.Tensor, torch.Tensor | None]:
        """``(B, L)`` scores -> ``(best, arg)``: each label's largest score among itself and its
        descendants, ``(B, L)`` same dtype (no autograd), and with ``want_arg`` the ``(B, L)``
        int64 label attaining it, else None. Ties as the all-pairs definition breaks them: the
        label itself first, else the largest id among its descendants attaining the maximum
        (tracked per node over the label and its descendants, ``top_id``, so that the result
        does not depend on the path through the DAG)."""
        s = scores.detach()
        B, L = s.shape
        best = s.T.contiguous()  # (L, B): gathering and writing whole label rows is contiguous
        ids = torch.arange(L, device=s.device)[:, None].expand(L, B)
        top_id = ids.contiguous() if want_arg else None
        for parents, local, child in self.levels:
            src = best.index_select(0, child)
            loc = local[:, None].expand(-1, B)
            top = torch.full((len(parents), B), -torch.inf, dtype=s.dtype, device=s.device)
            top.scatter_reduce_(0, loc, src, reduce="amax", include_self=True)
            own = best.index_select(0, parents)  # parents are not final yet: still their own scores
            if want_arg:
                cand = torch.where(src == top.index_select(0, local), top_id.index_select(0, child), -1)
                pick = torch.full((len(parents), B), -1, dtype=torch.long, device=s.device)
                pick.scatter_reduce_(0, loc, cand, reduce="amax", include_self=True)
                top_id.index_copy_(0, parents, torch.maximum(torch.where(own >= top, parents[:, None].expand(-1, B), -1),
                                                             torch.where(top >= own, pick, -1)))
            best.index_copy_(0, parents, torch.maximum(own, top))
        if not want_arg:
            return best.T, None
        return best.T, torch.where(s.T >= best, ids, top_id).T.contiguous()


def _plan(closure, n_labels: int) -> MaxConstraintPlan:
    return closure if isinstance(closure, MaxConstraintPlan) else MaxConstraintPlan(closure, n_labels)


def _has_edges(closure) -> bool:
    return len(closure.levels) > 0 if isinstance(closure, MaxConstraintPlan) else closure.shape[1] > 0


def max_constraint(scores: torch.Tensor, closure) -> torch.Tensor:
    """C-HMCNN's max-constraint module (MCM, Giunchiglia & Lukasiewicz 2020, eq. 2): each
    label's output is the largest score among the label itself and its descendants, so a node
    never scores below a descendant (hierarchy-coherent predictions). Scores may be logits or
    probabilities (the sigmoid is monotone, so both give the same probabilities).

    The maximising label of every output is found without autograd, level by level up the
    hierarchy's direct edges (:class:`MaxConstraintPlan`, ``O(B (L + E))``; the C-HMCNN code
    builds a ``(B, L, L)`` tensor), then the output is ``scores.gather`` of those labels, so the
    gradient of an output flows to its maximising label only (the label itself on ties).

    Args:
        scores: ``(B, L)`` float scores.
        closure: a :class:`MaxConstraintPlan` (build it once and reuse it), or the ``(2, P)``
            int64 ``(ancestor, descendant)`` pairs of the transitive closure
            (:func:`xhyp.hmc.models.descendant_pairs`; a plan is built on every call).

    Returns:
        ``(B, L)`` coherent scores.

    Raises:
        ValueError: invalid closure pairs (see :class:`MaxConstraintPlan`).
    """
    if not _has_edges(closure):
        return scores
    want_grad = scores.requires_grad and torch.is_grad_enabled()
    best, arg = _plan(closure, scores.shape[1]).apply(scores, want_grad)
    return scores.gather(1, arg) if want_grad else best


def max_constraint_loss(logits: torch.Tensor, Y: torch.Tensor, closure, cols=None) -> torch.Tensor:
    """C-HMCNN's max-constraint loss (MCLoss, Giunchiglia & Lukasiewicz 2020, eq. 5) on logits:
    binary cross-entropy of ``z`` where, for a negative label, ``z = MCM(logits)`` (its largest
    descendant score, so a wrongly high descendant is pushed down) and, for a positive label,
    ``z`` = the largest logit among its *positive* descendants and itself (so the positive
    descendants' scores, which MCM will pass up, are pushed up). Without closure pairs it is the
    plain mean binary cross-entropy.

    Args:
        logits: ``(B, L)`` raw scores. Y: ``(B, L)`` binary labels (float).
        closure: a :class:`MaxConstraintPlan` or ``(2, P)`` int64 closure pairs (``(2, 0)``: no
            hierarchy); see :func:`max_constraint`.
        cols: optional label ids the loss is averaged over (C-HMCNN leaves the roots out).

    Returns:
        scalar, mean over the ``B x |cols|`` entries.
    """
    if _has_edges(closure):
        pos = Y > 0
        floor = torch.finfo(logits.dtype).min  # never selected for a positive label (itself is positive)
        both = max_constraint(torch.cat([logits.masked_fill(~pos, floor), logits]), _plan(closure, logits.shape[1]))
        z = torch.where(pos, both[:len(logits)], both[len(logits):])
    else:
        z = logits
    if cols is not None:
        z, Y = z[:, cols], Y[:, cols]
    return F.binary_cross_entropy_with_logits(z, Y)


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


def overlap_weights(Y) -> np.ndarray:
    """Jaccard overlaps ``|Y_i & Y_j| / |Y_i | Y_j|`` of a batch's label sets (0 where both are empty).

    Args:
        Y: ``(B, L)`` binary labels, scipy sparse (CSR) or dense ndarray.

    Returns:
        ``(B, B)`` float64 ndarray.
    """
    Y = sp.csr_matrix(Y, dtype=np.float64)
    Y.data[:] = 1.0
    inter = (Y @ Y.T).toarray()
    n = np.asarray(Y.sum(1)).ravel()
    union = n[:, None] + n[None, :] - inter
    return np.divide(inter, union, out=np.zeros_like(inter), where=union > 0)


def weighted_supcon_loss(z: torch.Tensor, weights: torch.Tensor, temperature: float = 0.1) -> torch.Tensor:
    """Supervised contrastive loss with weighted positives (Khosla et al. 2020, eq. 2, the
    positive set replaced by weights ``w_ij``): mean over anchors ``i`` with ``sum_j w_ij > 0``
    of ``-sum_{j != i} w_ij log p_ij / sum_{j != i} w_ij``, ``p`` from :func:`supcon_log_prob`.
    With label-overlap weights (:func:`overlap_weights`) it is :func:`himulcon_loss` without a
    hierarchy; the XMC trainer adds it this way (:func:`xhyp.training.loss.batch_loss`).

    Args:
        z: ``(B, n)`` embeddings (L2-normalised here; for ball points that keeps their direction).
        weights: ``(B, B)`` non-negative weights (the diagonal is ignored).
        temperature: ``tau`` > 0.

    Returns:
        scalar (0 when no anchor has a positive, or ``B < 2``).
    """
    if len(z) < 2:
        return z.sum() * 0.0
    return _supcon(supcon_log_prob(z, temperature), weights.to(z.dtype))


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
    check_choice("contrastive kind", kind, CONTRASTIVE_KINDS)
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
