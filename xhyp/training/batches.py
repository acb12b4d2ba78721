"""Training batches: (example, positive label) pairs, sampled negatives, input dropout, prefetching.

Gerald & Baskiotis, CAp 2019, section 2.3: every positive label of an example is one pair of the
sampled softmax, against ``k`` negative labels drawn among the labels (uniformly, or by
``frequency^0.75`` as word2vec). Negatives are either the paper's, drawn per pair
(``negative_mode="pair"``: ``P x k`` label ids), or one set of ``k`` drawn per batch and shared by
all its pairs (``"batch"``, the default); either way a negative that is one of the pair's
example's own labels is flagged (``is_pos``) so that the loss masks it out.

A batch is prepared without Python work per example (CSR slicing, EmbeddingBag inputs, dropout
mask, negatives and their masks), by a background thread ``prefetch`` batches ahead
(:func:`prefetched`), in pinned memory on CUDA. Shapes: ``B`` examples, ``P`` pairs, ``k``
negatives; ids are int64, feature values float32.
"""
from __future__ import annotations

import queue
import threading
import dataclasses
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp

from ..config import SAMPLINGS, TrainConfig, check_choice


class NegativeSampler:
    """Draws negative labels uniformly or proportionally to ``frequency^0.75``.

    Sampling uses inverse-CDF lookup (``searchsorted`` on uniform draws), O(log L) per sample.

    Args:
        label_freq: ``(L,)`` training frequency of each label.
        kind: ``"uniform"`` or ``"frequency"``.
        generator: a seeded ``torch.Generator``.
        unique: :meth:`sample_shared` draws without replacement (``negative_draw="unique"``).
    """

    def __init__(self, label_freq: np.ndarray, kind: str, generator, unique: bool = False):
        import torch

        self.L = int(label_freq.shape[0])
        self.kind = kind
        self.gen = generator
        self.unique = unique
        if kind == "frequency":
            w = np.power(label_freq.astype(np.float64), 0.75)
            if w.sum() <= 0:
                w = np.ones_like(w)
            self.weights = torch.from_numpy(w / w.sum())
            self.cdf = torch.from_numpy(np.cumsum(w) / w.sum())
        else:
            check_choice("sampling", kind, SAMPLINGS)

    def sample(self, shape):
        """int64 label ids of the given shape (a CPU tensor)."""
        import torch

        if self.kind == "uniform":
            return torch.randint(0, self.L, shape, generator=self.gen)
        u = torch.rand(shape, generator=self.gen, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_max(self.L - 1)

    def sample_shared(self, k: int):
        """The ``(k,)`` int64 negatives shared by a batch: :meth:`sample` or, with ``unique``, ``min(k, L)``
        distinct labels (uniformly: a random permutation's prefix; by frequency: successive draws
        without replacement, ``torch.multinomial``); all labels, in order, when ``k >= L``."""
        import torch

        if not self.unique:
            return self.sample((k,))
        if k >= self.L:
            return torch.arange(self.L, dtype=torch.int64)
        if self.kind == "uniform":
            return torch.randperm(self.L, generator=self.gen)[:k]
        return torch.multinomial(self.weights, k, replacement=False, generator=self.gen)


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
        csr: the shard's features over ``feat_uniq`` as a :class:`xhyp.embedding.model.CsrBag`
            (CPU row-block training only, else ``None``).
        pair_w: ``(B, B)`` float32 label-overlap (Jaccard) weights of the batch's examples when the
            contrastive term is on (``TrainConfig.contrastive``), else ``None``.
        contrastive_weight, temperature: that term's weight and temperature.
        radial_weight: weight of the loss's radial term (``TrainConfig.radial_weight``; 0: none).
        radial_pair_w: ``(P,)`` float64 share of each pair in that term (``TrainConfig.radial_power``,
            :func:`radial_pair_scale` of the pair's label), or ``None`` (every pair 1).
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
    csr: object = None
    pair_w: object = None
    contrastive_weight: float = 0.0
    temperature: float = 0.1
    radial_weight: float = 0.0
    radial_pair_w: object = None

    _TENSORS = ("idx", "off", "w", "ex", "pos", "neg", "is_pos", "feat_uniq", "feat_inv", "lab_uniq", "lab_inv",
                "pair_w", "radial_pair_w")

    def to(self, device) -> "Batch":
        """Copy to ``device`` (non-blocking from pinned memory)."""
        if str(device) == "cpu":
            return self
        mv = {k: (getattr(self, k).to(device, non_blocking=True) if getattr(self, k) is not None else None)
              for k in self._TENSORS}
        # the numbers (n_pairs, the terms' weights) as they are; the CPU-only CsrBag is dropped
        return dataclasses.replace(self, **mv, csr=None)


def radial_pair_scale(label_freq: np.ndarray, power: float):
    """Per-label share ``u_l`` of a pair in the loss's radial term (``TrainConfig.radial_power``):
    ``u_l = c_l^power / (sum_l c_l^(power + 1) / sum_l c_l)``, so that the mean of ``u`` over the
    training pairs (label ``l`` counted ``c_l`` times) is 1 and a label's total pull is
    ``c_l u_l``, proportional to ``c_l^(1 + power)``. Labels with ``c_l = 0`` get 0.

    Args:
        label_freq: ``(L,)`` training counts ``c_l`` (>= 0). power: the exponent.

    Returns:
        ``(L,)`` float64 CPU tensor (all ones for ``power = 0`` on labels that occur).

    Raises:
        ValueError: a negative count, or no label with a positive count.
    """
    import torch

    c = np.asarray(label_freq, dtype=np.float64)
    if (c < 0).any() or not (c > 0).any():
        raise ValueError("radial_pair_scale: label counts must be >= 0 with at least one positive")
    u = np.zeros_like(c)
    u[c > 0] = np.power(c[c > 0], power)
    return torch.from_numpy(u / ((u * c).sum() / c.sum()))


def pairs_and_negatives(Yb: sp.csr_matrix, sampler: NegativeSampler, mode: str, k: int):
    """The pairs of a CSR label batch and their negatives (see :class:`Batch`); vectorised.

    Args:
        Yb: ``(B, L)`` CSR labels of the batch, sorted indices.
        sampler: draws the negatives. mode: ``"pair"`` (``k`` per pair) or ``"batch"`` (``k``
            shared by the batch). k: negatives drawn.

    Returns:
        ``(ex (P,), pos (P,), neg, is_pos)``: int64 example row and positive label of each pair,
        int64 negatives ``(P, k)`` or ``(k,)``, bool ``(P, k)`` or ``(B, k)`` mask of the
        negatives that are labels of the example.
    """
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
        neg = sampler.sample_shared(k)
        neg_keys = torch.arange(B, dtype=torch.int64)[:, None] * L + neg[None, :]
    if P == 0:
        return ex, pos, neg, torch.zeros(neg_keys.shape, dtype=torch.bool)
    pos_keys = ex * L + pos  # sorted: CSR rows in order, sorted indices
    at = torch.searchsorted(pos_keys, neg_keys).clamp_max(P - 1)
    return ex, pos, neg, pos_keys[at] == neg_keys


def prepare_batch(X: sp.csr_matrix, Y: sp.csr_matrix, rows: np.ndarray, sampler: NegativeSampler,
                  cfg: TrainConfig, gen, rank: int = 0, world: int = 1, pin: bool = False,
                  row_blocks: bool = False, csr: bool = False, radial_scale=None) -> Batch:
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
        csr: with ``row_blocks``, also build ``csr`` (for a CPU model).
        radial_scale: ``(L,)`` float64 :func:`radial_pair_scale` (``TrainConfig.radial_power``), or
            ``None``; gives ``radial_pair_w`` when ``cfg.radial_weight > 0``.

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
    ex, pos, neg, is_pos = pairs_and_negatives(Yb, sampler, cfg.negative_mode, k)
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
    batch = Batch(idx, indptr[:-1].contiguous(), w, ex, pos, neg, is_pos, n_pairs, radial_weight=cfg.radial_weight)
    if radial_scale is not None and cfg.radial_weight > 0:
        batch.radial_pair_w = radial_scale[pos]
    if cfg.contrastive != "none" and cfg.contrastive_weight > 0:  # single process only (see train)
        from ..hmc.losses import overlap_weights

        batch.pair_w = torch.from_numpy(overlap_weights(Yb).astype(np.float32))
        batch.contrastive_weight, batch.temperature = cfg.contrastive_weight, cfg.temperature
    if row_blocks:
        batch.feat_uniq, batch.feat_inv = torch.unique(idx, sorted=True, return_inverse=True)
        if csr:
            from ..embedding.model import CsrBag

            shape = (len(indptr) - 1, len(batch.feat_uniq))
            batch.csr = CsrBag(sp.csr_matrix((w.numpy(), batch.feat_inv.numpy().astype(np.int32),
                                              indptr.numpy().astype(np.int32)), shape=shape))
        ids = torch.cat([pos, neg]) if neg.dim() == 1 else torch.cat([pos[:, None], neg], 1)
        batch.lab_uniq, batch.lab_inv = torch.unique(ids, sorted=True, return_inverse=True)
    if pin:
        for k in Batch._TENSORS:
            if getattr(batch, k) is not None:
                setattr(batch, k, getattr(batch, k).pin_memory())
    return batch


def prefetched(make_batches, depth: int):
    """Iterate ``make_batches()`` with a background thread keeping ``depth`` batches ready.

    Exceptions of the producer are re-raised in the consumer; closing the iterator early stops
    the producer. ``depth`` 0 runs the producer inline.

    Args:
        make_batches: a function returning an iterator of batches (:func:`prepare_batch`).
        depth: batches kept ready (the queue's size).

    Raises:
        any exception of the producer, in the consumer.
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
