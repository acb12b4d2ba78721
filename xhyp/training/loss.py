"""The sampled-softmax loss over hyperbolic distances, and one optimiser step.

Gerald & Baskiotis, CAp 2019, section 2.3: for an example ``x`` with embedding ``r`` and one of
its labels ``l``, with ``k`` negative labels ``l'_1..l'_k`` sampled among labels ``x`` does not
have,

    loss(x, l) = -log  exp(-alpha d(r, W_l)) / (exp(-alpha d(r, W_l)) + sum_j exp(-alpha d(r, W_l'_j)))

averaged over the (example, positive label) pairs of a batch (:mod:`xhyp.training.batches`).
``alpha`` (the softmax scale) is the most important hyper-parameter. Distances come from
:mod:`xhyp.embedding.manifold`: shared negatives through one float64 matrix product
(``(B, n) x (n, k)``), positives and per-pair negatives from their coordinate differences. The
label embeddings get a row-sparse gradient; :func:`train_step` applies the optimisers of
:mod:`xhyp.training.optim`.

torch is imported inside the functions, so that ``import xhyp.training`` stays cheap.
"""
from __future__ import annotations

import scipy.sparse as sp

from .batches import Batch, NegativeSampler, pairs_and_negatives


def _gather_labels(model, ids, sparse: bool):
    import torch.nn.functional as F

    if sparse:
        return F.embedding(ids, model.labels, sparse=True)
    return model.labels[ids]


def batch_loss(model, r, batch: Batch, alpha: float, sparse: bool = True, label_rows=None):
    """Sampled-softmax loss of a (shard of a) batch: the sum over its pairs of
    ``logsumexp(logits) - logits[0]`` divided by ``batch.n_pairs`` (Gerald & Baskiotis 2019, 2.3).

    Logits are ``-alpha d``: the positive first, then the negatives, those that are positives of
    the pair's example set to ``-inf``. Shared negatives use
    :func:`xhyp.embedding.manifold.pairwise_dist_float64` (one
    ``(B, k)`` table; as negatives and mask depend on the example only, the softmax denominator
    is ``logaddexp(pos, logsumexp_j neg_j)`` with one logsumexp per example, so the cost is
    ``O(B k + P)``, not ``O(P k)``), per-pair ones :meth:`HyperbolicXMC.distance`; positives
    always use :meth:`HyperbolicXMC.distance` (exact for close pairs).

    With ``batch.radial_weight`` ``> 0`` (``TrainConfig.radial_weight``), the radial term
    ``radial_weight * sum_p d(0, W_pos(p)) / batch.n_pairs`` is added: each pair pulls its
    positive label towards the origin, so a label is pulled in proportion to its frequency
    ("frequent labels near the centre": Nickel & Kiela 2017, section 4; Gerald & Baskiotis 2019).
    ``d(0, w)`` is :func:`xhyp.embedding.manifold.dist0_float64` (``2 artanh |w|``; Euclidean
    ``|w|``) in float64, taken from the same gathered label rows as the softmax (so it also
    reaches ``label_rows``). In the Poincaré ball its Riemannian gradient has unit norm whatever
    ``|w|``: a constant pull of ``radial_weight / batch.n_pairs`` hyperbolic units per pair. With
    ``batch.radial_pair_w`` (``TrainConfig.radial_power``) pair ``p``'s distance is multiplied by
    ``radial_pair_w[p]``.

    With ``batch.pair_w`` set (``TrainConfig.contrastive``), ``batch.contrastive_weight`` times
    the label-overlap weighted supervised contrastive loss of ``r``
    (:func:`xhyp.hmc.losses.weighted_supcon_loss`, HiMulCon without a hierarchy, Zhang et al.
    2022) is added.

    Args:
        model: the model. r: ``(B, n)`` embeddings of the batch's examples. batch: see :class:`Batch`.
        alpha: softmax scale, a number or a ``()`` tensor (a learned scale).
        sparse: gather label rows with a row-sparse gradient.
        label_rows: ``labels[batch.lab_uniq]`` as a leaf: the label rows are gathered from it
            with ``batch.lab_inv`` (see :func:`train_step`).

    Returns:
        scalar tensor (0 with no gradient path if the shard has no pair and no contrastive term).
    """
    loss = _softmax_loss(model, r, batch, alpha, sparse, label_rows)
    if batch.pair_w is not None:
        from ..hmc.losses import weighted_supcon_loss

        loss = loss + batch.contrastive_weight * weighted_supcon_loss(r, batch.pair_w, batch.temperature)
    return loss


def _softmax_loss(model, r, batch: Batch, alpha: float, sparse: bool, label_rows):
    import torch

    from ..embedding import manifold

    P = int(batch.pos.shape[0])
    if P == 0:
        return r.sum() * 0.0
    if batch.neg.dim() == 1:  # shared by the batch
        Wc = label_rows[batch.lab_inv] if label_rows is not None else \
            _gather_labels(model, torch.cat([batch.pos, batch.neg]), sparse)
        W_pos = Wc[:P]
        d_pos = model.distance(r[batch.ex], W_pos)
        # masked: a huge finite value, not -inf, so that an example with every negative masked
        # (all its labels drawn) gets lse ~ -1e30 and a zero, finite gradient
        neg_logits = (-alpha * manifold.pairwise_dist_float64(r, Wc[P:], model.config.geometry)).masked_fill(batch.is_pos, -1e30)
        # the negatives and their mask depend on the example only: one logsumexp per example,
        # log(e^pos + sum_j e^neg_j) = logaddexp(pos, lse_j neg_j), never a (P, k) table
        pos_logits = -alpha * d_pos
        lse_neg = torch.logsumexp(neg_logits, 1)[batch.ex]
        loss = (torch.logaddexp(pos_logits, lse_neg) - pos_logits).sum() / batch.n_pairs
    else:
        Wc = label_rows[batch.lab_inv] if label_rows is not None else \
            _gather_labels(model, torch.cat([batch.pos[:, None], batch.neg], 1), sparse)
        W_pos = Wc[:, 0]
        d = model.distance(r[batch.ex][:, None, :], Wc)
        neg_logits = (-alpha * d[:, 1:]).masked_fill(batch.is_pos, float("-inf"))
        logits = torch.cat([(-alpha * d[:, 0])[:, None], neg_logits], 1)
        loss = (torch.logsumexp(logits, 1) - logits[:, 0]).sum() / batch.n_pairs
    if batch.radial_weight > 0:  # from the same gathered rows: the gradient reaches label_rows too
        d0 = manifold.dist0_float64(W_pos, model.config.geometry)
        if batch.radial_pair_w is not None:  # TrainConfig.radial_power
            d0 = d0 * batch.radial_pair_w
        loss = loss + (batch.radial_weight * d0.sum() / batch.n_pairs).to(loss.dtype)
    return loss


def train_step(model, opts, b: Batch, alpha, sparse: bool, world: int = 1):
    """One optimiser step on a prepared batch (on the model's device); returns the detached loss.

    ``alpha`` is the softmax scale: a number, or a :class:`xhyp.embedding.model.LearnedScale`
    (``TrainConfig.learn_alpha``), whose ``exp(log_alpha)`` enters the loss and whose optimiser
    is one of ``opts`` (:func:`xhyp.training.optim.make_optimizers`).

    With ``sparse`` and a batch prepared with ``row_blocks``, the projector rows of the batch's
    unique features and the label rows of its unique labels are gathered once into two small
    leaf tensors; the loss is computed from them, and their dense gradients become the
    parameters' row-sparse gradients directly (sorted unique rows: already coalesced), so no
    sparse gradient is built and coalesced from per-occurrence entries. Otherwise the model's
    own forward and (for ``sparse``) ``F.embedding(..., sparse=True)`` are used. With
    ``world > 1`` the gradients are summed across processes before the step.
    """
    import torch

    scale = alpha if isinstance(alpha, torch.nn.Module) else None
    if scale is not None:
        alpha = scale()
    if sparse and b.feat_uniq is not None:
        bag_w, labels = model.bag.weight, model.labels
        Wf = bag_w.detach().index_select(0, b.feat_uniq).requires_grad_()
        Wl = labels.detach().as_subclass(torch.Tensor).index_select(0, b.lab_uniq).requires_grad_()
        feats = b.csr if b.csr is not None else b.feat_inv
        loss = batch_loss(model, model.forward_rows(Wf, feats, b.off, b.w), b, alpha, label_rows=Wl)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        gf = Wf.grad if Wf.grad is not None else torch.zeros_like(Wf)
        gl = Wl.grad if Wl.grad is not None else torch.zeros_like(Wl)
        bag_w.grad = torch.sparse_coo_tensor(b.feat_uniq[None], gf, bag_w.shape, is_coalesced=True,
                                              check_invariants=False)
        labels.grad = torch.sparse_coo_tensor(b.lab_uniq[None], gl, labels.shape, is_coalesced=True,
                                              check_invariants=False)
    else:
        loss = batch_loss(model, model(b.idx, b.off, b.w), b, alpha, sparse)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
    if world > 1:
        from . import distributed as dist_utils

        dist_utils.all_reduce_gradients(model)
        if scale is not None:
            dist_utils.all_reduce_gradients(scale)
    for o in opts:
        o.step()
    return loss.detach()


def sampled_softmax_loss(model, r, Yb: sp.csr_matrix, sampler: NegativeSampler, negatives: int,
                         alpha: float, mode: str = "pair"):
    """Mean sampled-softmax loss of a batch (Gerald & Baskiotis 2019, section 2.3).

    Negatives that happen to be one of the example's own labels are masked out of the softmax
    (so the denominator holds only true negatives).

    Args:
        model: the model (its ``labels`` and ``distance`` are used).
        r: ``(B, n)`` example embeddings.
        Yb: ``(B, L)`` CSR labels of the batch, sorted indices.
        sampler: negative sampler.
        negatives: ``k``, negatives per pair (``mode="pair"``) or per batch (``"batch"``).
        alpha: softmax scale.

    Returns:
        scalar tensor (0 with no gradient path if the batch has no positive pair).
    """
    ex, pos, neg, is_pos = pairs_and_negatives(Yb, sampler, mode, negatives)
    dev = r.device
    b = Batch(None, None, None, ex.to(dev), pos.to(dev), neg.to(dev), is_pos.to(dev), int(pos.shape[0]))
    return batch_loss(model, r, b, alpha, sparse=False)
