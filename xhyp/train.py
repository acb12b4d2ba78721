"""Training: sampled softmax over hyperbolic distances, Riemannian Adam, early stopping.

Gerald & Baskiotis, CAp 2019, section 2.3: for an example ``x`` with embedding ``r`` and one of
its labels ``l``, with ``k`` negative labels ``l'_1..l'_k`` sampled among labels ``x`` does not
have,

    loss(x, l) = -log  exp(-alpha d(r, W_l)) / (exp(-alpha d(r, W_l)) + sum_j exp(-alpha d(r, W_l'_j)))

averaged over the (example, positive label) pairs of a batch. ``alpha`` (the softmax scale) is
the most important hyper-parameter: tune it on the validation split.

Throughput (the cost of a step follows the batch, not ``L`` or ``F``):

* negatives are either the paper's, drawn per pair (``negative_mode="pair"``: ``P x k``
  gathered label rows), or one set of ``k`` drawn per batch and shared by all its pairs
  (``"batch"``, the default: the distances become one ``(B, n) x (n, k)`` product, computed in
  float64, see :func:`shared_distances`); either way a negative that is one of the pair's
  example's own labels is masked out of the softmax;
* the label embeddings get a row-sparse gradient (``F.embedding(..., sparse=True)``) and a
  row-sparse ("lazy") optimiser (:class:`xhyp.optim.SparseRiemannianAdam` or
  :class:`xhyp.optim.SparsePaperAdam`, ``label_update="sparse"``), the projector
  :class:`xhyp.optim.LazyAdam` (SparseAdam's update on the touched rows only);
* batches (CSR slicing, EmbeddingBag inputs, dropout masks, negatives and their masks) are
  prepared by a background thread, ``prefetch`` batches ahead, in pinned memory on CUDA;
* the step sizes follow the batch size by the square-root rule (:func:`scaled_lr`).

A model directory written by :func:`train` holds:

* ``config.json``: model, training and data configuration (self-describing),
* ``model.pt``: the best weights (by validation P@1), ``features.npz``: the feature pipeline,
* ``train_emb.pt`` / ``train_labels.npz``: the kNN database (all training examples embedded
  by the best model, and their labels), used by :mod:`xhyp.predict`,
* ``history.json``: per-epoch loss, validation P@1 and time,
* ``checkpoint.pt``: the last epoch's full state (weights, optimisers, RNGs, early-stopping
  counters) for ``--resume``.

torch, geoopt and the index modules are imported inside the functions that use them, so that
``import xhyp.train`` (and ``xhyp --help``) stays cheap.
"""
from __future__ import annotations

import contextlib
import math
import queue
import threading
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .config import WEIGHTINGS, ConfigBase, ModelConfig
from .modeldir import model_dir_writer
from .utils import (atomic_save_json, atomic_save_sparse, atomic_torch_save, check_finite_fields, resolve_device,
                    seed_everything)

SAMPLINGS = ("uniform", "frequency")
NEGATIVE_MODES = ("batch", "pair")
LABEL_UPDATES = ("sparse", "dense")
LR_SCALINGS = ("sqrt", "none")
DISTRIBUTED_MODES = ("auto", "on", "off")
LR_REFERENCE_BATCH = 64
"""Batch size at which ``lr`` and ``lr_labels`` are used as given (see :func:`scaled_lr`)."""
# training options that change how fast a run goes, not what it learns
RUNTIME_KEYS = ("threads", "device", "prefetch", "distributed")
# training options a resumed run may change (how long and where it runs, not what it optimises)
_RESUMABLE_CHANGES = ("epochs", "patience", *RUNTIME_KEYS)
OPTIMIZERS = ("radam", "paper")
CONTRASTIVE_KINDS = ("none", "hmc", "hmce")  # as xhyp.hmc.losses.CONTRASTIVE_KINDS (that module imports torch)


class NonFiniteLossError(ValueError):
    """Training produced a non-finite loss (or parameter). The message names the epoch and the
    step; nothing of the failed epoch is written, so the model directory keeps the last good
    epoch (``model.pt`` and ``checkpoint.pt``; ``--resume`` restarts from it)."""


@dataclass
class TrainConfig(ConfigBase):
    """Training hyper-parameters (saved as ``config.json["train"]``).

    Attributes:
        epochs: maximum number of passes over the training examples.
        batch_size: examples per step (each contributes all its positive labels).
        negatives: sampled negative labels per (example, positive) pair.
        sampling: ``"uniform"`` or ``"frequency"`` (label frequency^0.75, as word2vec).
        alpha: softmax scale on distances.
        lr: Adam step size of the projector.
        lr_labels: step size of the label embeddings (Riemannian Adam or the paper's rule).
        optimizer: ``"radam"`` (geoopt RiemannianAdam) or ``"paper"`` (:class:`xhyp.optim.PaperAdam`).
        val_fraction: share of training examples held out for early stopping (0 disables it).
        patience: epochs without a better validation P@1 before stopping.
        knn: neighbours used for validation (and the default for prediction).
        weighting: vote weighting for validation (and the default for prediction).
        features: feature preprocessing, ``"l2"``, ``"tfidf"`` or ``"none"``.
        input_dropout: probability of dropping each non-zero input feature during training
            (inverted dropout: kept values are scaled by ``1 / (1 - p)``); a regulariser.
        seed: seeds the split, initialisation, shuffling and negative sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threads: torch intra-op threads (0 keeps torch's default).
        negative_mode: ``"batch"`` (one set of ``shared_negatives`` labels per batch, shared by
            its pairs) or ``"pair"`` (the paper's: ``negatives`` labels per pair).
        shared_negatives: negatives drawn per batch with ``negative_mode="batch"``.
        label_update: ``"sparse"`` (row-sparse gradient, only the rows a batch touches are
            stepped: :class:`xhyp.optim.SparseRiemannianAdam` / :class:`xhyp.optim.SparsePaperAdam`)
            or ``"dense"`` (geoopt's RiemannianAdam / :class:`xhyp.optim.PaperAdam` on all rows);
            the projector gets :class:`xhyp.optim.LazyAdam` or torch's SparseAdam likewise.
        lr_scaling: ``"sqrt"`` (``lr`` and ``lr_labels`` times ``sqrt(batch_size / 64)``) or ``"none"``.
        prefetch: batches prepared ahead by a background thread (0: prepared inline).
        val_max_queries: validation queries scored per epoch (a fixed random subset when the
            validation split is larger; 0: all).
        val_max_database: training examples in the validation kNN database (a fixed random
            subset when there are more; 0: all).
        max_steps: steps per epoch at most (0: the whole epoch); for benchmarks.
        distributed: ``"auto"`` (data-parallel when launched by torchrun with more than one
            process), ``"on"`` (require a torch.distributed environment) or ``"off"``.
        contrastive: ``"none"``, or ``"hmc"``/``"hmce"``: add HiMulCon's contrastive term between the
            examples of a batch (Zhang et al. 2022; without a label hierarchy both are the supervised
            contrastive loss with label-overlap (Jaccard) weighted positives,
            :func:`xhyp.hmc.losses.weighted_supcon_loss`) on the example embeddings.
        contrastive_weight: weight of that term.
        temperature: its softmax temperature.
    """

    epochs: int = 30
    batch_size: int = 64
    negatives: int = 50
    sampling: str = "uniform"
    alpha: float = 30.0
    lr: float = 3e-3
    lr_labels: float = 3e-3
    optimizer: str = "radam"
    val_fraction: float = 0.05
    patience: int = 5
    knn: int = 20
    weighting: str = "count"
    features: str = "l2"
    input_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int = 0
    negative_mode: str = "batch"
    shared_negatives: int = 500
    label_update: str = "sparse"
    lr_scaling: str = "sqrt"
    prefetch: int = 2
    val_max_queries: int = 2000
    val_max_database: int = 100_000
    max_steps: int = 0
    distributed: str = "auto"
    contrastive: str = "none"
    contrastive_weight: float = 0.1
    temperature: float = 0.1

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.knn < 1:
            raise ValueError(f"knn must be >= 1, got {self.knn}")
        if self.negatives < 1 or self.batch_size < 1 or self.epochs < 0 or self.alpha <= 0:
            raise ValueError(f"negatives, batch_size, alpha must be positive and epochs >= 0: {self}")
        for name, allowed in (("negative_mode", NEGATIVE_MODES), ("label_update", LABEL_UPDATES),
                              ("lr_scaling", LR_SCALINGS), ("distributed", DISTRIBUTED_MODES),
                              ("contrastive", CONTRASTIVE_KINDS)):
            if getattr(self, name) not in allowed:
                raise ValueError(f"{name} must be one of {allowed}, got {getattr(self, name)!r}")
        if self.contrastive_weight < 0 or not self.temperature > 0:
            raise ValueError(f"contrastive_weight must be >= 0 and temperature > 0: {self}")
        if self.shared_negatives < 1:
            raise ValueError(f"shared_negatives must be >= 1, got {self.shared_negatives}")
        if min(self.prefetch, self.val_max_queries, self.val_max_database, self.max_steps) < 0:
            raise ValueError(f"prefetch, val_max_queries, val_max_database and max_steps must be >= 0: {self}")
        check_finite_fields(self)
        if self.alpha > 1e6 or not 0 < self.lr <= 1e3 or not 0 < self.lr_labels <= 1e3:
            raise ValueError(f"alpha must be <= 1e6 and lr, lr_labels in (0, 1e3] (got alpha={self.alpha}, "
                             f"lr={self.lr}, lr_labels={self.lr_labels}): larger values overflow float32")



class NegativeSampler:
    """Draws negative labels uniformly or proportionally to ``frequency^0.75``.

    Sampling uses inverse-CDF lookup (``searchsorted`` on uniform draws), O(log L) per sample.

    Args:
        label_freq: ``(L,)`` training frequency of each label.
        kind: ``"uniform"`` or ``"frequency"``.
        generator: a seeded ``torch.Generator``.
    """

    def __init__(self, label_freq: np.ndarray, kind: str, generator):
        import torch

        self.L = int(label_freq.shape[0])
        self.kind = kind
        self.gen = generator
        if kind == "frequency":
            w = np.power(label_freq.astype(np.float64), 0.75)
            if w.sum() <= 0:
                w = np.ones_like(w)
            self.cdf = torch.from_numpy(np.cumsum(w) / w.sum())
        elif kind != "uniform":
            raise ValueError(f"unknown sampling {kind!r}")

    def sample(self, shape):
        """int64 label ids of the given shape (a CPU tensor)."""
        import torch

        if self.kind == "uniform":
            return torch.randint(0, self.L, shape, generator=self.gen)
        u = torch.rand(shape, generator=self.gen, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_max(self.L - 1)


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
    if rule == "sqrt":
        return float(lr) * math.sqrt(batch_size / LR_REFERENCE_BATCH)
    if rule == "none":
        return float(lr)
    raise ValueError(f"lr_scaling must be one of {LR_SCALINGS}, got {rule!r}")


@dataclass
class Batch:
    """One prepared training batch (CPU tensors, pinned for CUDA).

    Attributes:
        idx, off, w: EmbeddingBag inputs (int64 (nnz,), int64 (B,), float32 (nnz,)), dropout applied.
        ex: ``(P,)`` int64 example (row of the batch) of each (example, positive label) pair.
        pos: ``(P,)`` int64 positive label of each pair.
        neg: ``(k,)`` (shared) or ``(P, k)`` (per pair) int64 negative labels.
        is_pos: bool mask of negatives that are positives of the example: ``(B, k)`` or ``(P, k)``.
        n_pairs: pairs of the whole (global) batch: the loss is a sum over this shard's pairs
            divided by it, so that shards of one batch add up to the batch's mean.
        feat_uniq, feat_inv: sorted unique features of the shard and the position of each of
            ``idx`` in it (``None`` unless prepared for row-block training, see :func:`train_step`).
        lab_uniq, lab_inv: the same for the label ids ``cat(pos, neg)`` (shared) or
            ``cat(pos[:, None], neg)`` (per pair), ``lab_inv`` shaped like those ids.
        pair_w: ``(B, B)`` float32 label-overlap weights of the batch's examples when the
            contrastive term is on (``TrainConfig.contrastive``), else None.
        contrastive_weight, temperature: that term's weight and temperature.
    """

    idx: object
    off: object
    w: object
    ex: object
    pos: object
    neg: object
    is_pos: object
    n_pairs: int
    feat_uniq: object = None
    feat_inv: object = None
    lab_uniq: object = None
    lab_inv: object = None
    pair_w: object = None
    contrastive_weight: float = 0.0
    temperature: float = 0.1

    _TENSORS = ("idx", "off", "w", "ex", "pos", "neg", "is_pos", "feat_uniq", "feat_inv", "lab_uniq", "lab_inv",
                "pair_w")

    def to(self, device) -> "Batch":
        """Copy to ``device`` (non-blocking from pinned memory)."""
        if str(device) == "cpu":
            return self
        mv = {k: (getattr(self, k).to(device, non_blocking=True) if getattr(self, k) is not None else None)
              for k in self._TENSORS}
        return Batch(**mv, n_pairs=self.n_pairs, contrastive_weight=self.contrastive_weight,
                     temperature=self.temperature)


def _pairs_and_negatives(Yb: sp.csr_matrix, sampler: NegativeSampler, mode: str, k: int):
    """``(ex, pos, neg, is_pos)`` of a CSR label batch (see :class:`Batch`); vectorised."""
    import torch

    B, L = Yb.shape
    counts = np.diff(Yb.indptr)
    ex = torch.from_numpy(np.repeat(np.arange(B, dtype=np.int64), counts))
    pos = torch.from_numpy(Yb.indices.astype(np.int64))
    P = int(pos.shape[0])
    if mode == "pair":
        neg = sampler.sample((P, k))
        neg_keys = ex[:, None] * L + neg
    else:
        neg = sampler.sample((k,))
        neg_keys = torch.arange(B, dtype=torch.int64)[:, None] * L + neg[None, :]
    if P == 0:
        return ex, pos, neg, torch.zeros(neg_keys.shape, dtype=torch.bool)
    pos_keys = ex * L + pos  # sorted: CSR rows in order, sorted indices
    at = torch.searchsorted(pos_keys, neg_keys).clamp_max(P - 1)
    return ex, pos, neg, pos_keys[at] == neg_keys


def prepare_batch(X: sp.csr_matrix, Y: sp.csr_matrix, rows: np.ndarray, sampler: NegativeSampler,
                  cfg: "TrainConfig", gen, rank: int = 0, world: int = 1, pin: bool = False,
                  row_blocks: bool = False) -> Batch:
    """Slice, drop out and sample one batch (no Python work per example).

    Random draws (the dropout mask, then the negatives, from ``gen`` and ``sampler``) are made
    for the whole batch on every rank, so that ``world`` shards of a batch see exactly the
    numbers one process would; rank ``r`` then keeps the contiguous block of examples
    ``[B r / world, B (r + 1) / world)``.

    Args:
        X, Y: ``(N, F)`` preprocessed features and ``(N, L)`` labels (CSR, sorted indices).
        rows: sorted row ids of the batch.
        cfg: uses ``input_dropout``, ``negative_mode``, ``negatives``, ``shared_negatives``.
        gen: the ``torch.Generator`` of the dropout mask (the sampler's own generator draws negatives).
        rank, world: this process's shard. pin: pin the tensors (for CUDA transfers).
        row_blocks: also compute the unique features and labels (``feat_*``, ``lab_*``).

    Returns:
        a :class:`Batch` on the CPU.
    """
    import torch

    Xb, Yb = X[rows], Y[rows]
    idx = torch.from_numpy(Xb.indices.astype(np.int64))
    indptr = torch.from_numpy(Xb.indptr.astype(np.int64))
    w = torch.from_numpy(Xb.data.astype(np.float32, copy=False))
    if cfg.input_dropout > 0:
        keep = torch.rand(w.shape, generator=gen) >= cfg.input_dropout
        w = w * keep / (1.0 - cfg.input_dropout)
    k = cfg.shared_negatives if cfg.negative_mode == "batch" else cfg.negatives
    ex, pos, neg, is_pos = _pairs_and_negatives(Yb, sampler, cfg.negative_mode, k)
    n_pairs = int(pos.shape[0])
    if world > 1:
        B = len(rows)
        lo, hi = B * rank // world, B * (rank + 1) // world
        a, b = int(indptr[lo]), int(indptr[hi])
        idx, w, indptr = idx[a:b], w[a:b], indptr[lo:hi + 1] - a
        pa, pb = int(Yb.indptr[lo]), int(Yb.indptr[hi])
        ex, pos = ex[pa:pb] - lo, pos[pa:pb]
        if cfg.negative_mode == "pair":
            neg, is_pos = neg[pa:pb], is_pos[pa:pb]
        else:
            is_pos = is_pos[lo:hi]
    batch = Batch(idx, indptr[:-1].contiguous(), w, ex, pos, neg, is_pos, n_pairs)
    if cfg.contrastive != "none" and cfg.contrastive_weight > 0:  # single process only (see train)
        from .hmc.losses import overlap_weights

        batch.pair_w = torch.from_numpy(overlap_weights(Yb).astype(np.float32))
        batch.contrastive_weight, batch.temperature = cfg.contrastive_weight, cfg.temperature
    if row_blocks:
        batch.feat_uniq, batch.feat_inv = torch.unique(idx, sorted=True, return_inverse=True)
        ids = torch.cat([pos, neg]) if neg.dim() == 1 else torch.cat([pos[:, None], neg], 1)
        batch.lab_uniq, batch.lab_inv = torch.unique(ids, sorted=True, return_inverse=True)
    if pin:
        for k in Batch._TENSORS:
            if getattr(batch, k) is not None:
                setattr(batch, k, getattr(batch, k).pin_memory())
    return batch


def shared_distances(model, r, W):
    """``(B, n) x (k, n) -> (B, k)`` distances in the model's geometry through one matrix product.

    ``|x - y|^2 = |x|^2 + |y|^2 - 2 <x, y>`` is evaluated in float64 (so the cancellation of
    the expansion stays far below float32 resolution, also for points near the boundary),
    then ``d = 2 asinh(sqrt(s))``, ``s = |x - y|^2 / ((1 - |x|^2)(1 - |y|^2))`` (Nickel &
    Kiela 2017, eq. 1), or the Euclidean distance. (``1 - |x|^2`` needs no ``(1 - |x|)(1 + |x|)``
    form in float64, and the square root it takes has no finite gradient at ``x = 0``, an example
    whose features all dropped out.)
    The result has ``r``'s dtype; gradients flow to both inputs (zero where ``s`` is clamped).

    Args:
        model: gives the geometry. r: ``(B, n)`` example embeddings. W: ``(k, n)`` label embeddings.

    Returns:
        ``(B, k)`` tensor, dtype of ``r``.
    """
    import torch

    x, y = r.double(), W.double()
    xn, yn = (x * x).sum(-1), (y * y).sum(-1)
    sq = (xn[:, None] + yn[None, :] - 2.0 * (x @ y.T)).clamp_min(0.0)
    if model.config.geometry == "poincare":
        denom = (1.0 - xn)[:, None] * (1.0 - yn)[None, :]  # float64: 1 - |x|^2 is accurate to ~1e-16
        d = 2.0 * torch.asinh(torch.sqrt((sq / denom).clamp_min(1e-30)))
    else:
        d = torch.sqrt(sq.clamp_min(1e-30))
    return d.to(r.dtype)


def _gather_labels(model, ids, sparse: bool):
    import torch.nn.functional as F

    if sparse:
        return F.embedding(ids, model.labels, sparse=True)
    return model.labels[ids]


def batch_loss(model, r, batch: Batch, alpha: float, sparse: bool = True, label_rows=None):
    """Sampled-softmax loss of a (shard of a) batch: the sum over its pairs of
    ``logsumexp(logits) - logits[0]`` divided by ``batch.n_pairs`` (Gerald & Baskiotis 2019, 2.3).

    Logits are ``-alpha d``: the positive first, then the negatives, those that are positives of
    the pair's example set to ``-inf``. Shared negatives use :func:`shared_distances` (one
    ``(B, k)`` table; as negatives and mask depend on the example only, the softmax denominator
    is ``logaddexp(pos, logsumexp_j neg_j)`` with one logsumexp per example, so the cost is
    ``O(B k + P)``, not ``O(P k)``), per-pair ones :meth:`HyperbolicXMC.distance`; positives
    always use :meth:`HyperbolicXMC.distance` (exact for close pairs).

    With ``batch.pair_w`` set (``TrainConfig.contrastive``), ``batch.contrastive_weight`` times
    the label-overlap weighted supervised contrastive loss of ``r``
    (:func:`xhyp.hmc.losses.weighted_supcon_loss`, HiMulCon without a hierarchy) is added.

    Args:
        model: the model. r: ``(B, n)`` embeddings of the batch's examples. batch: see :class:`Batch`.
        alpha: softmax scale. sparse: gather label rows with a row-sparse gradient.
        label_rows: ``labels[batch.lab_uniq]`` as a leaf: the label rows are gathered from it
            with ``batch.lab_inv`` (see :func:`train_step`).

    Returns:
        scalar tensor (0 with no gradient path if the shard has no pair).
    """
    loss = _softmax_loss(model, r, batch, alpha, sparse, label_rows)
    if batch.pair_w is not None:
        from .hmc.losses import weighted_supcon_loss

        loss = loss + batch.contrastive_weight * weighted_supcon_loss(r, batch.pair_w, batch.temperature)
    return loss


def _softmax_loss(model, r, batch: Batch, alpha: float, sparse: bool, label_rows):
    import torch

    P = int(batch.pos.shape[0])
    if P == 0:
        return r.sum() * 0.0
    if batch.neg.dim() == 1:  # shared by the batch
        Wc = label_rows[batch.lab_inv] if label_rows is not None else \
            _gather_labels(model, torch.cat([batch.pos, batch.neg]), sparse)
        d_pos = model.distance(r[batch.ex], Wc[:P])
        # masked: a huge finite value, not -inf, so that an example with every negative masked
        # (all its labels drawn) gets lse ~ -1e30 and a zero, finite gradient
        neg_logits = (-alpha * shared_distances(model, r, Wc[P:])).masked_fill(batch.is_pos, -1e30)
        # the negatives and their mask depend on the example only: one logsumexp per example,
        # log(e^pos + sum_j e^neg_j) = logaddexp(pos, lse_j neg_j), never a (P, k) table
        pos_logits = -alpha * d_pos
        lse_neg = torch.logsumexp(neg_logits, 1)[batch.ex]
        return (torch.logaddexp(pos_logits, lse_neg) - pos_logits).sum() / batch.n_pairs
    else:
        Wc = label_rows[batch.lab_inv] if label_rows is not None else \
            _gather_labels(model, torch.cat([batch.pos[:, None], batch.neg], 1), sparse)
        d = model.distance(r[batch.ex][:, None, :], Wc)
        d_pos = d[:, 0]
        neg_logits = (-alpha * d[:, 1:]).masked_fill(batch.is_pos, float("-inf"))
    logits = torch.cat([(-alpha * d_pos)[:, None], neg_logits], 1)
    return (torch.logsumexp(logits, 1) - logits[:, 0]).sum() / batch.n_pairs


def train_step(model, opts, b: Batch, alpha: float, sparse: bool, world: int = 1):
    """One optimiser step on a prepared batch (on the model's device); returns the detached loss.

    With ``sparse`` and a batch prepared with ``row_blocks``, the projector rows of the batch's
    unique features and the label rows of its unique labels are gathered once into two small
    leaf tensors; the loss is computed from them, and their dense gradients become the
    parameters' row-sparse gradients directly (sorted unique rows: already coalesced), so no
    sparse gradient is built and coalesced from per-occurrence entries. Otherwise the model's
    own forward and (for ``sparse``) ``F.embedding(..., sparse=True)`` are used. With
    ``world > 1`` the gradients are summed across processes before the step.
    """
    import torch

    if sparse and b.feat_uniq is not None:
        bag_w, labels = model.bag.weight, model.labels
        Wf = bag_w.detach().index_select(0, b.feat_uniq).requires_grad_()
        Wl = labels.detach().as_subclass(torch.Tensor).index_select(0, b.lab_uniq).requires_grad_()
        loss = batch_loss(model, model.forward_rows(Wf, b.feat_inv, b.off, b.w), b, alpha, label_rows=Wl)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
        gf = Wf.grad if Wf.grad is not None else torch.zeros_like(Wf)
        gl = Wl.grad if Wl.grad is not None else torch.zeros_like(Wl)
        bag_w.grad = torch.sparse_coo_tensor(b.feat_uniq[None], gf, bag_w.shape, is_coalesced=True)
        labels.grad = torch.sparse_coo_tensor(b.lab_uniq[None], gl, labels.shape, is_coalesced=True)
    else:
        loss = batch_loss(model, model(b.idx, b.off, b.w), b, alpha, sparse)
        for o in opts:
            o.zero_grad(set_to_none=True)
        loss.backward()
    if world > 1:
        from . import distributed as dist_utils

        dist_utils.all_reduce_gradients(model)
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
    ex, pos, neg, is_pos = _pairs_and_negatives(Yb, sampler, mode, negatives)
    dev = r.device
    b = Batch(None, None, None, ex.to(dev), pos.to(dev), neg.to(dev), is_pos.to(dev), int(pos.shape[0]))
    return batch_loss(model, r, b, alpha, sparse=False)


def precision_at_1(scores: sp.csr_matrix, Y: sp.csr_matrix) -> float:
    """P@1 of CSR scores against CSR labels (fraction, rows without scores count as misses)."""
    from xhyp.eval.metrics import precision_at_k

    return float(precision_at_k(Y, scores, k=1)[0])


def _split(n: int, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _make_optimizers(model, cfg: TrainConfig):
    import geoopt
    import torch

    from .optim import LazyAdam, PaperAdam, SparsePaperAdam, SparseRiemannianAdam

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
    return opts


def normalise_configs(n_features: int, n_labels: int, model_config, train_config):
    """``(ModelConfig, TrainConfig)`` from dataclasses or dicts (``None``: defaults), with the
    data's ``n_features`` and ``n_labels`` filled into the model configuration.

    Raises:
        ValueError: an invalid field value (see the dataclasses).
    """
    tcfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config or {})
    mdict = asdict(model_config) if isinstance(model_config, ModelConfig) else dict(model_config or {})
    mdict.update(n_features=int(n_features), n_labels=int(n_labels))
    return ModelConfig.from_dict(mdict), tcfg


def data_fingerprint(X: sp.csr_matrix, Y: sp.csr_matrix) -> dict:
    """Shape and non-zero counts of ``(X, Y)``: ``config.json["data"]``, checked on resume."""
    return {"n": int(X.shape[0]), "n_features": int(X.shape[1]), "n_labels": int(Y.shape[1]),
            "nnz_x": int(X.nnz), "nnz_y": int(Y.nnz)}


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model (in memory), its directory and the history."""

    model: object  # HyperbolicXMC
    out_dir: Path
    history: list
    best_epoch: int
    best_val_p1: float
    config: dict  # the model directory's config.json: {"model", "train", "data", ...}


def evaluate_knn(model, X_db: sp.csr_matrix, Y_db: sp.csr_matrix, X_q: sp.csr_matrix,
                 k: int, weighting: str, device, top_k: int = 5, alpha: float = 1.0) -> sp.csr_matrix:
    """Embed a database and queries with ``model`` and return the kNN-vote scores of the queries.

    Args:
        X_db, Y_db: ``(N, F)`` preprocessed features and ``(N, L)`` labels of the database.
        X_q: ``(Q, F)`` preprocessed query features.
        k: neighbours. weighting, alpha: see :func:`xhyp.vote.vote`. top_k: labels kept per query.

    Returns:
        ``(Q, L)`` float32 CSR scores.
    """
    from .index import make_index
    from .vote import vote

    db = model.embed(X_db, device=device)
    q = model.embed(X_q, device=device)
    D, I = make_index("exact", geometry=model.config.geometry).add(db).search(q, k)
    return vote(I, D, Y_db, top_k=top_k, weighting=weighting, alpha=alpha)


def _subset(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """``rows``, or a fixed sorted random subset of ``cap`` of them (``cap`` 0: all)."""
    if cap <= 0 or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def _prefetched(make_batches, depth: int):
    """Iterate ``make_batches()`` with a background thread keeping ``depth`` batches ready.

    Exceptions of the producer are re-raised in the consumer; closing the iterator early stops
    the producer. ``depth`` 0 runs the producer inline.
    """
    if depth <= 0:
        yield from make_batches()
        return
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()
    end = object()

    def put(item):
        while not stop.is_set():
            try:
                q.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def work():
        try:
            for b in make_batches():
                if not put(b):
                    return
            put(end)
        except BaseException as exc:  # handed to the consumer
            put(("__error__", exc))

    th = threading.Thread(target=work, name="xhyp-batch-prefetch", daemon=True)
    th.start()
    try:
        while True:
            item = q.get()
            if item is end:
                break
            if isinstance(item, tuple) and len(item) == 2 and item[0] == "__error__":
                raise item[1]
            yield item
    finally:
        stop.set()
        th.join()


def _check_finite(losses: list, epoch: int, first_step: int, last_good: int):
    """Sum of the buffered per-step losses; :class:`NonFiniteLossError` if any is not finite."""
    import torch

    t = torch.stack(losses).double()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"non-finite training loss ({float(t[i])}) at epoch {epoch + 1}, step {first_step + i + 1}: "
            f"training stopped; the model directory keeps the last good epoch ({last_good}). Lower "
            f"lr / lr_labels / alpha, or check the input for huge or non-finite feature values")
    return float(t.sum())


def _all_finite(state: dict) -> bool:
    import torch

    return all(bool(torch.isfinite(v).all()) for v in state.values()
               if torch.is_tensor(v) and v.is_floating_point())


def _embed_rows(model, Xp: sp.csr_matrix, rows: np.ndarray, device, chunk: int = 8192):
    """Embed ``Xp[rows]`` chunk by chunk (no copy of the selected rows as a whole)."""
    import torch

    if len(rows) == Xp.shape[0]:  # rows are sorted and unique: all of them
        return model.embed(Xp, device=device)
    parts = [model.embed(Xp[rows[s:s + chunk]], device=device) for s in range(0, len(rows), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.dim)



@model_dir_writer  # lock, refuse a used directory (unless resume/overwrite), manifest last: xhyp.modeldir
def train(X: sp.csr_matrix, Y: sp.csr_matrix, model_config: ModelConfig | dict | None = None,
          train_config: TrainConfig | dict | None = None, out_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, extra_config: dict | None = None) -> TrainResult:
    """Train a joint example/label embedding (Gerald & Baskiotis, CAp 2019).

    Each epoch ends with a validation kNN (vote of the ``knn`` nearest training examples, P@1)
    for early stopping. To keep it a small share of the epoch it uses at most
    ``val_max_queries`` validation examples and a database of at most ``val_max_database``
    training examples, fixed random subsets drawn once from the seed (so epochs are compared on
    the same sample; a sampled database gives lower P@1 than the full one, uniformly across
    epochs). With the defaults, Bibtex and Delicious use every example.

    Data-parallel training (torch.distributed, see ``docs/distributed.md``): under torchrun
    (``WORLD_SIZE`` > 1, ``distributed="auto"``) every process draws the same batches and
    negatives, computes the loss of its block of each batch, and the gradients (row-sparse
    ones included) are summed across processes before every optimiser step
    (:mod:`xhyp.distributed`), so all processes hold identical parameters, equal to one process
    on the same global batch. Only rank 0 writes ``out_dir``.

    Args:
        X: ``(N, F)`` CSR float32 raw training features (preprocessing is part of the model).
        Y: ``(N, L)`` CSR binary training labels.
        model_config: :class:`ModelConfig` (``n_features``/``n_labels`` are taken from X, Y) or a
            dict of its fields.
        train_config: :class:`TrainConfig` or dict.
        out_dir: model directory (created); ``None`` keeps everything in memory.
        resume: continue from ``out_dir/checkpoint.pt`` (same data and configuration required).
        progress: show tqdm progress bars.
        extra_config: more keys for ``config.json`` (e.g. the dataset name).
        overwrite: (keyword, added by :func:`xhyp.modeldir.model_dir_writer`) replace the model
            an ``out_dir`` already holds; without it (or ``resume``) such a directory is refused.

    Returns:
        :class:`TrainResult` with the best model loaded.

    Raises:
        ValueError: shape mismatch between X and Y, or a resume with different data/config.
        NonFiniteLossError: (a ValueError) a non-finite loss; names epoch and step, and nothing
            non-finite is written (the directory keeps the last good epoch).
        FileNotFoundError: ``resume`` without a checkpoint.
        xhyp.modeldir.ModelDirError: ``out_dir`` holds a model (no ``resume``/``overwrite``) or is
            being written by another process.
    """
    import torch
    from tqdm.auto import tqdm

    from . import distributed as dist_utils
    from .features import FeaturePipeline
    from .model import HyperbolicXMC

    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    mcfg, tcfg = normalise_configs(X.shape[1], Y.shape[1], model_config, train_config)
    device = resolve_device(tcfg.device)
    rank, world, device = dist_utils.setup(tcfg.distributed, device)
    if world > 1 and tcfg.contrastive != "none":
        raise ValueError("contrastive: the term couples all the examples of a batch; it is not available with "
                         "data-parallel training (run one process, or contrastive='none')")
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    seed_everything(tcfg.seed)

    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y.sort_indices()
    pipe = FeaturePipeline(tcfg.features).fit(X)
    Xp = pipe.transform(X)
    Xp.sort_indices()
    tr_idx, va_idx = _split(X.shape[0], tcfg.val_fraction, tcfg.seed)
    q_rows = _subset(va_idx, tcfg.val_max_queries, tcfg.seed + 2)
    db_rows = _subset(tr_idx, tcfg.val_max_database, tcfg.seed + 3)

    model = HyperbolicXMC(mcfg).to(device)
    if world > 1:
        dist_utils.broadcast_parameters(model)
    opts = _make_optimizers(model, tcfg)
    gen = torch.Generator().manual_seed(tcfg.seed)
    sampler = NegativeSampler(np.asarray(Y[tr_idx].sum(0)).ravel(), tcfg.sampling, gen)
    config = {"model": asdict(mcfg), "train": asdict(tcfg), "data": data_fingerprint(X, Y)}
    if extra_config:
        config.update(extra_config)

    out = Path(out_dir) if out_dir is not None else None
    write = out is not None and rank == 0
    history, best, best_epoch, bad, start_epoch = [], -1.0, -1, 0, 0
    best_state = None
    if resume:
        if out is None or not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out}/checkpoint.pt")
        ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        if ck["config"]["data"] != config["data"] or ck["config"]["model"] != config["model"]:
            raise ValueError(f"{out}/checkpoint.pt was written for other data or another model "
                             f"configuration: {ck['config']['data']} / {ck['config']['model']}")
        changed = sorted(k for k, v in config["train"].items()
                         if k not in _RESUMABLE_CHANGES and ck["config"]["train"].get(k) != v)
        if changed:
            raise ValueError(f"{out}/checkpoint.pt was trained with other settings of {changed} "
                             f"({[ck['config']['train'].get(k) for k in changed]}); a resumed run may only "
                             f"change {sorted(_RESUMABLE_CHANGES)}")
        model.load_state_dict(ck["model"])
        for o, s in zip(opts, ck["optimizers"]):
            o.load_state_dict(s)
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history, best, best_epoch, bad = ck["history"], ck["best"], ck["best_epoch"], ck["bad"]
        best_state = ck["best_state"]
        start_epoch = ck["epoch"] + 1
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_json(config, out / "config.json")
        pipe.save(out / "features.npz")

    sparse_labels = tcfg.label_update == "sparse"
    pin = device.type == "cuda"
    check_every = 1 if device.type == "cpu" else 64  # loss checks sync the device
    n_tr = len(tr_idx)
    shuffle_rng = np.random.default_rng(tcfg.seed + 1)
    for _ in range(start_epoch):  # keep the shuffling stream aligned after a resume
        shuffle_rng.permutation(n_tr)
    Y_db, Y_q = Y[db_rows], Y[q_rows]
    for epoch in range(start_epoch, tcfg.epochs):
        if bad >= tcfg.patience and len(va_idx) > 0:
            break
        t0 = time.time()
        model.train()
        perm = shuffle_rng.permutation(n_tr)
        starts = list(range(0, n_tr, tcfg.batch_size))
        if tcfg.max_steps > 0:
            starts = starts[:tcfg.max_steps]

        def make_batches(perm=perm, starts=starts):
            for s in starts:
                rows = tr_idx[np.sort(perm[s:s + tcfg.batch_size])]
                yield prepare_batch(Xp, Y, rows, sampler, tcfg, gen, rank, world, pin, row_blocks=sparse_labels)

        total, steps, n_pairs, buf = 0.0, 0, 0, []
        bar = tqdm(total=len(starts), desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress or rank != 0,
                   leave=False, unit="batch")
        with contextlib.closing(_prefetched(make_batches, tcfg.prefetch)) as batches:
            for b in batches:
                buf.append(train_step(model, opts, b.to(device), tcfg.alpha, sparse_labels, world))
                steps += 1
                n_pairs += b.n_pairs
                if len(buf) >= check_every:
                    total += _check_finite(buf, epoch, steps - len(buf), best_epoch)
                    buf = []
                bar.update(1)
                if steps % 20 == 0 and progress:
                    bar.set_postfix(loss=f"{total / max(steps - len(buf), 1):.4f}")
        if buf:
            total += _check_finite(buf, epoch, steps - len(buf), best_epoch)
        bar.close()
        if world > 1:
            total = dist_utils.all_reduce_sum(total)
        train_time = time.time() - t0
        state = model.state_dict()
        if not _all_finite(state):
            raise NonFiniteLossError(f"non-finite parameters after epoch {epoch + 1}, step {steps}: training "
                                     f"stopped; the model directory keeps the last good epoch ({best_epoch})")
        rec = {"epoch": epoch + 1, "loss": total / max(steps, 1), "train_seconds": round(train_time, 3),
               "pairs": n_pairs, "pairs_per_second": round(n_pairs / max(train_time, 1e-9), 1)}
        if len(va_idx) > 0:
            from .index import make_index
            from .vote import vote

            db = _embed_rows(model, Xp, db_rows, device)
            q = _embed_rows(model, Xp, q_rows, device)
            D, I = make_index("exact", geometry=mcfg.geometry).add(db).search(q, tcfg.knn)
            scores = vote(I, D, Y_db, top_k=1, weighting=tcfg.weighting, alpha=tcfg.alpha)
            p1 = precision_at_1(scores, Y_q)
            rec["val_p1"] = p1
            rec["val_seconds"] = round(time.time() - t0 - train_time, 3)
            if p1 > best:
                best, best_epoch, bad = p1, epoch + 1, 0
                best_state = {k: v.detach().clone().cpu() for k, v in state.items()}
            else:
                bad += 1
        else:
            best_epoch = epoch + 1
            best_state = {k: v.detach().clone().cpu() for k, v in state.items()}
        rec["seconds"] = round(time.time() - t0, 3)
        history.append(rec)
        if progress and rank == 0:
            msg = f"epoch {epoch + 1}: loss {rec['loss']:.4f}"
            if "val_p1" in rec:
                msg += f"  val P@1 {100 * rec['val_p1']:.2f}  (best {100 * best:.2f} @ {best_epoch})"
            tqdm.write(msg + f"  [{rec['seconds']:.1f}s, {rec['pairs_per_second']:.0f} pairs/s]")
        if write:
            atomic_torch_save({
                "epoch": epoch, "model": state, "optimizers": [o.state_dict() for o in opts],
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best": best, "best_epoch": best_epoch, "bad": bad, "best_state": best_state,
                "config": config,
            }, out / "checkpoint.pt")
            atomic_save_json(history, out / "history.json")
            if best_epoch == epoch + 1:
                atomic_torch_save(best_state, out / "model.pt")

    if best_state is not None:
        model.load_state_dict(best_state)
    # the kNN database: every training example (validation ones included), best model
    emb = model.embed(Xp, device=device)
    if write:
        model.save(out, {k: v for k, v in config.items() if k != "model"})
        atomic_torch_save(emb, out / "train_emb.pt")
        atomic_save_sparse(out / "train_labels.npz", Y)
        atomic_save_json(history, out / "history.json")
    model.train_emb = emb
    model.train_labels = Y
    model.pipeline = pipe
    return TrainResult(model=model, out_dir=out, history=history, best_epoch=best_epoch,
                       best_val_p1=best if len(va_idx) > 0 else float("nan"), config=config)
