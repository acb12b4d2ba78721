"""The joint example/label embedding model: a projector ``f_theta`` and label embeddings ``W``.

Gerald & Baskiotis, *Joint Label/Example Hyperbolic Representation for Extreme
Classification*, CAp 2019, section 2: an example ``x`` (sparse features) is embedded as
``r = p(f_theta(x))`` in the Poincaré ball, every label ``l`` is a point ``W[l]`` of the same
ball, and the two are trained so that an example lies close to its labels.

``geometry="euclidean"`` gives the Euclidean counterpart (same projector and loss, ``r =
f_theta(x)``, Euclidean distance), used for the paper's Poincaré-vs-Euclidean comparison.
"""
from __future__ import annotations

import json
import math
from dataclasses import asdict
from pathlib import Path

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from . import manifold
from .config import GEOMETRIES, PROJECTORS, ModelConfig  # noqa: F401 (re-exported)
from .utils import atomic_save_json, atomic_torch_save

__all__ = ["GEOMETRIES", "PROJECTORS", "ModelConfig", "HyperbolicXMC", "csr_to_bag"]


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


class HyperbolicXMC(nn.Module):
    """Projector ``f_theta`` plus label embeddings ``W``.

    Args:
        config: a :class:`ModelConfig`.

    Attributes:
        bag: ``nn.EmbeddingBag(F, n or hidden, mode="sum", sparse=True)``: the sparse first
            layer, whose gradient is a sparse tensor (only rows of features present in the batch).
        mlp: ``None`` for the linear projector, else ReLU + ``nn.Linear(hidden, n)``.
        labels: ``(L, n)`` float32 label embeddings, a :class:`geoopt.ManifoldParameter` on
            :class:`xhyp.manifold.PoincareBall` (Poincaré geometry) or a plain parameter.
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
        one row per feature (no sparse gradient to coalesce).

        Returns:
            ``(B, n)`` float32, equal to ``forward(u[local_idx], off, w)``.
        """
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
        """Distance in the model's geometry between broadcastable ``(..., n)`` point sets."""
        if self.config.geometry == "poincare":
            return manifold.dist(r, lab)
        return (r - lab).pow(2).sum(-1).clamp_min(1e-12).sqrt()

    def pairwise_distance(self, q: torch.Tensor, db: torch.Tensor) -> torch.Tensor:
        """``(Q, n) x (M, n) -> (Q, M)`` distances in the model's geometry (GEMM-based)."""
        if self.config.geometry == "poincare":
            return manifold.pairwise_dist(q, db)
        return torch.cdist(q, db)

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

    # -- persistence -----------------------------------------------------------------------
    def save(self, directory: str | Path, extra_config: dict | None = None) -> None:
        """Write ``model.pt`` (weights) and ``config.json`` (model + extra config) atomically."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(self.state_dict(), directory / "model.pt")
        cfg = {"model": asdict(self.config)}
        if extra_config:
            cfg.update(extra_config)
        from . import __version__

        cfg["xhyp_version"] = __version__
        atomic_save_json(cfg, directory / "config.json")

    @classmethod
    def load(cls, directory: str | Path, map_location="cpu") -> "HyperbolicXMC":
        """Load a model written by :meth:`save`.

        Raises:
            FileNotFoundError: if ``config.json`` or ``model.pt`` is missing.
        """
        directory = Path(directory)
        cfg_path = directory / "config.json"
        if not cfg_path.exists():
            raise FileNotFoundError(f"{cfg_path}: no config.json; is {directory} a saved xhyp model?")
        cfg = json.loads(cfg_path.read_text())
        model = cls(ModelConfig.from_dict(cfg["model"]))
        state = torch.load(directory / "model.pt", map_location=map_location, weights_only=True)
        model.load_state_dict(state)
        return model
