"""The joint example/label embedding model: a projector ``f_theta`` and label embeddings ``W``.

Gerald & Baskiotis, *Joint Label/Example Hyperbolic Representation for Extreme
Classification*, CAp 2019, section 2: an example ``x`` (sparse features) is embedded as
``r = p(f_theta(x))`` in the Poincaré ball, every label ``l`` is a point ``W[l]`` of the same
ball, and the two are trained so that an example lies close to its labels.

``geometry="euclidean"`` gives the Euclidean counterpart (same projector and loss, ``r =
f_theta(x)``, Euclidean distance), used for the paper's Poincaré-vs-Euclidean comparison.
"""
from __future__ import annotations

import math
from pathlib import Path

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from . import manifold
from ..config import GEOMETRIES, PROJECTORS, ModelConfig  # noqa: F401 (re-exported)

__all__ = ["GEOMETRIES", "PROJECTORS", "ModelConfig", "HyperbolicXMC", "LearnedScale", "csr_to_bag"]


def csr_to_bag(X: sp.csr_matrix, device: torch.device | str = "cpu"):
    """Turn CSR rows into ``nn.EmbeddingBag`` inputs.

    Args:
        X: ``(B, F)`` scipy CSR matrix, any float dtype.
        device: target device.

    Returns:
        ``(indices int64 (nnz,), offsets int64 (B,), weights float32 (nnz,))``.
    """
    X = X.tocsr()
    idx = torch.from_numpy(X.indices.astype(np.int64, copy=False))
    off = torch.from_numpy(X.indptr[:-1].astype(np.int64, copy=False))
    w = torch.from_numpy(X.data.astype(np.float32, copy=False))
    return idx.to(device), off.to(device), w.to(device)


class CsrBag:
    """A batch's features as a CSR matrix over its own sorted unique features, and its transpose.

    The CPU trainer's first layer: ``h = A @ rows`` for ``rows = bag.weight[u]`` (the gathered
    block of the batch's unique features ``u``), with gradient ``A^T @ dh``, both by scipy's
    CSR x dense product (single-threaded, no sort; on 2 cores several times faster than
    ``embedding_bag``'s backward, which sorts the indices). Built by the batch-preparation
    thread, so the transpose is off the critical path.

    Attributes:
        A: ``(B, U)`` float32 scipy CSR. At: ``(U, B)`` float32 scipy CSR, ``A.T``.
    """

    __slots__ = ("A", "At")

    def __init__(self, A: sp.csr_matrix):
        self.A = A
        self.At = A.T.tocsr()


class _CsrMatmul(torch.autograd.Function):
    """``(U, m)`` float CPU tensor ``W`` -> ``A @ W`` ``(B, m)``; backward ``A^T @ grad``."""

    @staticmethod
    def forward(ctx, W, bag):  # noqa: D102
        ctx.bag = bag
        return torch.from_numpy(np.ascontiguousarray(bag.A @ W.detach().numpy())).to(W.dtype)

    @staticmethod
    def backward(ctx, grad):  # noqa: D102
        g = ctx.bag.At @ grad.detach().contiguous().numpy()
        return torch.from_numpy(np.ascontiguousarray(g)).to(grad.dtype), None


class HyperbolicXMC(nn.Module):
    """Projector ``f_theta`` plus label embeddings ``W``.

    Args:
        config: a :class:`ModelConfig`.

    Attributes:
        bag: ``nn.EmbeddingBag(F, n or hidden, mode="sum", sparse=True)``: the sparse first
            layer, whose gradient is a sparse tensor (only rows of features present in the batch).
        mlp: ``None`` for the linear projector, else ReLU + ``nn.Linear(hidden, n)``.
        labels: ``(L, n)`` float32 label embeddings, a :class:`geoopt.ManifoldParameter` on
            :class:`xhyp.embedding.manifold.PoincareBall` (Poincaré geometry) or a plain parameter.
    """

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        c = config
        first = c.hidden if c.projector == "mlp" else c.dim
        self.bag = nn.EmbeddingBag(c.n_features, first, mode="sum", sparse=True)
        nn.init.normal_(self.bag.weight, std=c.init_std_projector)
        if c.projector == "mlp":
            self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(c.hidden, c.dim))
            nn.init.normal_(self.mlp[1].weight, std=1.0 / math.sqrt(c.hidden))
            nn.init.zeros_(self.mlp[1].bias)
        else:
            self.mlp = None
        w = torch.randn(c.n_labels, c.dim) * c.init_std_labels
        if c.geometry == "poincare":
            self.ball = manifold.PoincareBall(c.max_norm)
            self.labels = geoopt.ManifoldParameter(self.ball.projx(w), manifold=self.ball)
        else:
            self.ball = None
            self.labels = nn.Parameter(w)

    # -- embedding -------------------------------------------------------------------------
    def project_features(self, idx, off, w) -> torch.Tensor:
        """Euclidean projector output ``f_theta(x)``: ``(B, n)`` float32."""
        h = self.bag(idx, off, per_sample_weights=w)
        return self.mlp(h) if self.mlp is not None else h

    def forward_rows(self, rows: torch.Tensor, local_idx, off, w) -> torch.Tensor:
        """:meth:`forward` from a gathered block of the projector's first layer.

        ``rows`` is ``bag.weight[u]`` for the sorted unique features ``u`` of the batch (a leaf
        the trainer owns) and ``local_idx`` the positions of the batch's features in ``u``, so
        the gradient of the first layer comes back as a dense ``(len(u), width)`` block, already
        one row per feature (no sparse gradient to coalesce). ``local_idx`` may instead be a
        :class:`CsrBag` of the batch (CPU only; ``off`` and ``w`` are then unused): the same
        product through scipy's CSR kernels.

        Returns:
            ``(B, n)`` float32, equal to ``forward(u[local_idx], off, w)``.
        """
        if isinstance(local_idx, CsrBag):
            h = _CsrMatmul.apply(rows, local_idx)
        else:
            h = nn.functional.embedding_bag(local_idx, rows, off, mode="sum", per_sample_weights=w)
        u = self.mlp(h) if self.mlp is not None else h
        if self.config.geometry == "poincare":
            return manifold.to_ball(u, self.config.max_norm)
        return u

    def forward(self, idx, off, w) -> torch.Tensor:
        """Embed a batch of examples.

        Args:
            idx, off, w: EmbeddingBag inputs from :func:`csr_to_bag` for ``B`` examples.

        Returns:
            ``(B, n)`` float32: ``p(f_theta(x))`` in the ball (Poincaré) or ``f_theta(x)``.
        """
        u = self.project_features(idx, off, w)
        if self.config.geometry == "poincare":
            return manifold.to_ball(u, self.config.max_norm)
        return u

    def distance(self, r: torch.Tensor, lab: torch.Tensor) -> torch.Tensor:
        """Distance in the model's geometry between broadcastable ``(..., n)`` point sets
        (:func:`xhyp.embedding.manifold.distance`): ``(...)`` tensor, dtype of the inputs."""
        return manifold.distance(r, lab, self.config.geometry)

    def pairwise_distance(self, q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        """``(Q, n) x (M, n) -> (Q, M)`` distances in the model's geometry, GEMM-based
        (:func:`xhyp.embedding.manifold.pairwise_distance`)."""
        return manifold.pairwise_distance(q, db, self.config.geometry)

    @torch.no_grad()
    def embed(self, X: sp.csr_matrix, batch_size: int = 4096, device="cpu") -> torch.Tensor:
        """Embed all rows of a (preprocessed) CSR matrix.

        Args:
            X: ``(N, F)`` CSR float32 features.
            batch_size: rows per forward pass (bounds memory).
            device: where to run.

        Returns:
            ``(N, n)`` float32 CPU tensor.
        """
        self.eval()
        out = []
        for start in range(0, X.shape[0], batch_size):
            out.append(self(*csr_to_bag(X[start:start + batch_size], device)).cpu())
        if not out:
            return torch.zeros(0, self.config.dim)
        return torch.cat(out)

    # -- persistence (written by xhyp.training.loop.train only) ----------------------------
    @classmethod
    def load(cls, directory: str | Path, config: dict | None = None, map_location="cpu") -> "HyperbolicXMC":
        """The model of a model directory: ``config.json["model"]`` and the weights ``model.pt``.

        Nothing is verified against the manifest here (:meth:`xhyp.prediction.predictor.Predictor.load`
        does that first).

        Args:
            directory: a model directory written by :func:`xhyp.training.train`.
            config: its ``config.json`` contents when already read (read here otherwise).
            map_location: device of the loaded weights.

        Raises:
            xhyp.modeldir.ModelFileMissingError: ``config.json`` or ``model.pt`` is missing (also a
                ``FileNotFoundError``).
            xhyp.modeldir.ModelDirError: an unreadable file, a configuration without a valid
                ``"model"`` section, or weights that do not fit it (one line naming the file).
        """
        from .. import modeldir as md

        d = Path(directory)
        cfg = config if config is not None else md.read_json(d / "config.json", "model configuration")
        if not isinstance(cfg, dict) or not isinstance(cfg.get("model"), dict):
            raise md.ModelDirError(d / "config.json", "has no \"model\" section: not the configuration of an "
                                   "xhyp model directory")
        try:
            model = cls(ModelConfig.from_dict(cfg["model"]))
        except (TypeError, ValueError) as exc:
            raise md.ModelDirError(d / "config.json", f"invalid \"model\" section: {exc}") from None
        state = md.load_file(d / "model.pt", lambda p: torch.load(p, map_location=map_location, weights_only=True),
                             "PyTorch weights file")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise md.ModelDirError(d / "model.pt", "does not fit config.json's model: "
                                   + str(exc).replace("\n", " ")[:200]) from None
        return model


class LearnedScale(nn.Module):
    """The softmax scale ``alpha`` of the loss as a trainable scalar (``TrainConfig.learn_alpha``).

    Log-parametrised, ``alpha = exp(log_alpha)``, so it stays positive and its optimiser's steps
    are relative: an Adam step of ``lr_alpha`` changes ``alpha`` by a factor of about
    ``exp(lr_alpha)`` whatever its size. The scale multiplies every logit ``-alpha d(r, W_l)`` of
    the sampled softmax (:func:`xhyp.training.loss.batch_loss`; Gerald & Baskiotis 2019, section
    2.3, with ``alpha`` a parameter instead of a constant, as the learned temperature of
    contrastive losses, e.g. CLIP's ``logit_scale``, Radford et al. 2021).

    Args:
        alpha: initial scale (> 0), ``TrainConfig.alpha``.

    Attributes:
        log_alpha: ``()`` float32 parameter, ``log(alpha)``.

    Raises:
        ValueError: ``alpha`` is not a finite positive number.
    """

    def __init__(self, alpha: float):
        super().__init__()
        if not 0.0 < float(alpha) < float("inf"):
            raise ValueError(f"the softmax scale must be finite and > 0, got {alpha}")
        self.log_alpha = nn.Parameter(torch.tensor(math.log(float(alpha)), dtype=torch.float32))

    def forward(self) -> torch.Tensor:
        """``alpha = exp(log_alpha)``: a ``()`` float32 tensor on the parameter's device (with a
        gradient path to ``log_alpha``)."""
        return self.log_alpha.exp()

    def __float__(self) -> float:
        return float(self.log_alpha.detach().exp())
