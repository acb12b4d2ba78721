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
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from . import manifold
from .utils import atomic_save_json, atomic_torch_save, check_finite_fields

GEOMETRIES = ("poincare", "euclidean")
PROJECTORS = ("linear", "mlp")


@dataclass
class ModelConfig:
    """Hyper-parameters that define the model's shape (saved as ``config.json["model"]``).

    Attributes:
        n_features: input dimension ``F``.
        n_labels: number of labels ``L``.
        dim: embedding dimension ``n``.
        projector: ``"linear"`` (one sparse ``F x n`` matrix) or ``"mlp"`` (sparse ``F x hidden``,
            ReLU, dense ``hidden x n``).
        hidden: hidden width of the MLP projector.
        geometry: ``"poincare"`` or ``"euclidean"``.
        max_norm: max-norm guard of the ball (see :mod:`xhyp.manifold`).
        init_std_projector: std of the normal initialisation of the projector (paper: 1e-3).
        init_std_labels: std of the normal initialisation of the label embeddings (paper: 1e-4).
    """

    n_features: int
    n_labels: int
    dim: int = 50
    projector: str = "linear"
    hidden: int = 256
    geometry: str = "poincare"
    max_norm: float = manifold.MAX_NORM
    init_std_projector: float = 1e-3
    init_std_labels: float = 1e-4

    def __post_init__(self):
        if self.geometry not in GEOMETRIES:
            raise ValueError(f"geometry must be one of {GEOMETRIES}, got {self.geometry!r}")
        if self.projector not in PROJECTORS:
            raise ValueError(f"projector must be one of {PROJECTORS}, got {self.projector!r}")
        if self.dim < 1 or self.n_features < 1 or self.n_labels < 1:
            raise ValueError(f"dim, n_features and n_labels must be positive: {self}")
        check_finite_fields(self)
        if not 0.0 < self.max_norm < 1.0 or self.init_std_projector < 0 or self.init_std_labels < 0:
            raise ValueError(f"max_norm must be in (0, 1) and the init stds >= 0: {self}")

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        """Build from a dict, ignoring unknown keys (forward compatibility of saved models)."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


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
