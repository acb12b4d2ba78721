"""The three HMC classifiers of HiddeN (Chatterjee et al., EACL 2021): flat, cascaded, joint.

All three share the document encoder (the "projector": linear, or an MLP with one hidden ReLU
layer and dropout) mapping ``(B, F)`` features to a ``(B, n)`` representation ``h``. Label
scores are logits, trained with binary cross-entropy:

* ``flat``: ``s = h W^T + b``, one free Euclidean vector per label (an output layer);
* ``cascaded``: ``s = h E^T + b`` with ``E`` the ``(L, n)`` Poincaré label embeddings learned
  beforehand from label co-occurrence alone (Nickel & Kiela 2017) and then *fixed*;
* ``joint``: the same score, ``E`` learned together with the classifier (BCE plus ``w`` times
  the Poincaré label loss, :func:`xhyp.hmc.losses.poincare_label_loss`).

As in HiddeN's public code the score is the Euclidean dot product of the document
representation with the label's embedding (the ball only shapes the label loss).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from xhyp.embedding import manifold
from xhyp.config import PROJECTORS, ConfigBase, check_choice

__all__ = ["HMC_METHODS", "HMCModelConfig", "HMCModel", "to_tensor"]

HMC_METHODS = ("flat", "cascaded", "joint")


@dataclass
class HMCModelConfig(ConfigBase):
    """Shape of an HMC model (saved as ``config.json["model"]``).

    Attributes:
        n_features: input dimension ``F``.
        n_labels: number of labels ``L``.
        method: ``"flat"``, ``"cascaded"`` or ``"joint"``.
        dim: representation / label-embedding dimension ``n``.
        projector: ``"linear"`` or ``"mlp"`` (``F -> hidden -> n`` with ReLU).
        hidden: hidden width of the MLP projector.
        dropout: dropout on the input and hidden layer of the projector.
        init_label_scale: Poincaré label embeddings start uniform in ``[-s, s]^n``; 0 = by method:
            ``cascaded`` 1e-3 (Nickel & Kiela's initialisation, before pre-training), ``joint``
            0.05 (a norm of about 0.2: with near-zero label vectors the scores ``h.E`` and the
            encoder's gradients vanish and the classifier starts very slowly).
    """

    n_features: int
    n_labels: int
    method: str = "joint"
    dim: int = 50
    projector: str = "mlp"
    hidden: int = 500
    dropout: float = 0.3
    init_label_scale: float = 0.0

    def __post_init__(self):
        check_choice("method", self.method, HMC_METHODS)
        check_choice("projector", self.projector, PROJECTORS)
        if min(self.n_features, self.n_labels, self.dim, self.hidden) < 1:
            raise ValueError(f"n_features, n_labels, dim and hidden must be positive: {self}")



def to_tensor(X, rows=None) -> torch.Tensor:
    """Rows of a dense ndarray or CSR matrix as a dense float32 tensor ``(B, F)``."""
    if rows is not None:
        X = X[rows]
    if sp.issparse(X):
        X = X.toarray()
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


class HMCModel(nn.Module):
    """Encoder plus label vectors (see the module docstring).

    Args:
        config: an :class:`HMCModelConfig`.
    """

    def __init__(self, config: HMCModelConfig):
        super().__init__()
        self.config = c = config
        if c.projector == "linear":
            self.encoder = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.n_features, c.dim))
        else:
            self.encoder = nn.Sequential(nn.Dropout(c.dropout), nn.Linear(c.n_features, c.hidden), nn.ReLU(),
                                         nn.Dropout(c.dropout), nn.Linear(c.hidden, c.dim))
        self.bias = nn.Parameter(torch.zeros(c.n_labels))
        if c.method == "flat":
            self.label_vectors = nn.Parameter(torch.randn(c.n_labels, c.dim) / np.sqrt(c.dim))
        else:
            scale = c.init_label_scale or (1e-3 if c.method == "cascaded" else 0.05)
            init = torch.empty(c.n_labels, c.dim).uniform_(-scale, scale)
            ball = manifold.PoincareBall()
            self.label_vectors = geoopt.ManifoldParameter(ball.projx(init), manifold=ball,
                                                          requires_grad=c.method == "joint")

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features -> ``(B, n)`` document representations ``h``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, F)`` features -> ``(logits (B, L), representations (B, n))``."""
        h = self.represent(x)
        return h @ self.label_vectors.T + self.bias, h

    @torch.no_grad()
    def predict_proba(self, X, batch_size: int = 4096) -> np.ndarray:
        """``(Q, F)`` dense ndarray or CSR features -> ``(Q, L)`` float32 sigmoid probabilities."""
        if X.shape[1] != self.config.n_features:
            raise ValueError(f"queries have {X.shape[1]} features, the model was trained on {self.config.n_features}")
        was = self.training
        self.eval()
        out = [torch.sigmoid(self(to_tensor(X[s:s + batch_size]))[0]).numpy()
               for s in range(0, X.shape[0], batch_size)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.config.n_labels), np.float32)

    def config_dict(self) -> dict:
        """The config as a plain dict."""
        return asdict(self.config)
