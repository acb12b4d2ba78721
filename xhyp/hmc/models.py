"""The three HMC classifiers of HiddeN (Chatterjee et al., EACL 2021): flat, cascaded, joint.

All three share the document encoder (the "projector": linear, or an MLP with ``layers`` hidden
ReLU layers of width ``hidden``, each followed by dropout, as C-HMCNN's feed-forward network,
Giunchiglia & Lukasiewicz 2020) mapping ``(B, F)`` features to a ``(B, n)`` representation
``h``. Label scores are logits ``s_l = h . e_l + b_l``, one ``(n,)`` vector ``e_l`` per label
(or, with ``label_score="unit"``, ``s_l = g_l h . e_l / |e_l| + b_l``: the direction of ``e_l``
and a learned per-label gain ``g_l``, see :class:`HMCModelConfig`):

* ``flat``: the ``e_l`` are free (an output layer), trained by the classification loss only;
* ``cascaded``: the ``e_l`` are first learned from label co-occurrence alone with the Poincaré
  label loss (Nickel & Kiela 2017, :func:`xhyp.hmc.losses.poincare_label_loss`), then *fixed*;
* ``joint``: the ``e_l`` are learned with the classifier, the loss being the classification
  loss plus ``w`` times the Poincaré label loss.

As in HiddeN's public code the label parameters ``e_l`` live in ``R^n`` and the score is their
Euclidean dot product with ``h``; their hyperbolic embedding, on which the label loss and the
hierarchy-faithfulness metrics act, is the point ``x_l = e_l / (1 + sqrt(1 + |e_l|^2))`` of the
Poincaré ball (:func:`to_poincare`: ``(sqrt(1 + |e|^2), e)`` is a point of the hyperboloid and
this map its isometry onto the ball), so cascaded and joint differ from flat only by that loss.

Hierarchy-coherent output (C-HMCNN's max-constraint module, MCM): with ``coherent=True`` and a
known hierarchy, the score of a label is the largest raw score among the label and its
descendants (:func:`xhyp.hmc.losses.max_constraint`), so a node's probability is never below a
descendant's; training then uses C-HMCNN's max-constraint loss
(:func:`xhyp.hmc.losses.max_constraint_loss`).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from xhyp.config import PROJECTORS, ConfigBase, check_choice

from .losses import MaxConstraintPlan, max_constraint

__all__ = ["HMC_METHODS", "LABEL_SCORES", "HMCModelConfig", "HMCModel", "to_tensor", "to_poincare", "descendant_pairs"]

HMC_METHODS = ("flat", "cascaded", "joint")
LABEL_SCORES = ("dot", "unit")


@dataclass
class HMCModelConfig(ConfigBase):
    """Shape of an HMC model (saved as ``config.json["model"]``).

    Attributes:
        n_features: input dimension ``F``.
        n_labels: number of labels ``L``.
        method: ``"flat"``, ``"cascaded"`` or ``"joint"``.
        dim: representation / label-vector dimension ``n``.
        projector: ``"linear"`` (``F -> n``) or ``"mlp"`` (``F -> hidden (-> hidden ...) -> n``, ReLU).
        hidden: hidden width of the MLP projector.
        layers: hidden layers of the MLP projector (C-HMCNN's ``num_layers`` minus one).
        dropout: dropout after every hidden layer (C-HMCNN: 0.7).
        input_dropout: dropout on the input features.
        coherent: hierarchy-coherent output (MCM) and the max-constraint loss when the hierarchy
            is known (ignored without one).
        init_label_scale: label vectors start uniform in ``[-s, s]^n``; 0 = by method: ``flat``
            and ``joint`` ``sqrt(3 / n)`` (unit-variance scores for a unit-variance ``h``, as an
            output layer), ``cascaded`` 1e-3 (Nickel & Kiela's start near the origin, before the
            label-embedding pre-training).
        label_score: how a label vector scores a representation: ``"dot"`` ``s_l = h . e_l + b_l``
            (HiddeN's code); ``"unit"`` ``s_l = g_l (h . e_l / |e_l|) + b_l`` with a learned
            per-label gain ``g_l`` (parameter ``label_gain``, starts at 1): the score uses only the
            label vector's direction, so the norm that the Poincaré label loss gives a label (large
            for rare labels, whose points lie near the boundary) does not set its score's scale
            (the weight normalisation of Salimans & Kingma 2016, eq. 2, ``w = g v / |v|``, with
            the direction ``v`` the label's embedding).
    """

    n_features: int
    n_labels: int
    method: str = "joint"
    dim: int = 128
    projector: str = "mlp"
    hidden: int = 500
    layers: int = 2
    dropout: float = 0.7
    input_dropout: float = 0.0
    coherent: bool = True
    init_label_scale: float = 0.0
    label_score: str = "dot"

    def __post_init__(self):
        check_choice("method", self.method, HMC_METHODS)
        check_choice("label_score", self.label_score, LABEL_SCORES)
        check_choice("projector", self.projector, PROJECTORS)
        if min(self.n_features, self.n_labels, self.dim, self.hidden, self.layers) < 1:
            raise ValueError(f"n_features, n_labels, dim, hidden and layers must be positive: {self}")
        if not (0.0 <= self.dropout < 1.0 and 0.0 <= self.input_dropout < 1.0):
            raise ValueError(f"dropout and input_dropout must be in [0, 1): {self}")


def to_tensor(X, rows=None) -> torch.Tensor:
    """Rows of a dense ndarray or CSR matrix as a dense float32 tensor ``(B, F)``."""
    if rows is not None:
        X = X[rows]
    if sp.issparse(X):
        X = X.toarray()
    return torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


def to_poincare(e: torch.Tensor) -> torch.Tensor:
    """``(..., n)`` hyperboloid coordinates ``e`` -> Poincaré-ball points ``e / (1 + sqrt(1 + |e|^2))``
    (HiddeN's label parametrisation; the map from the hyperboloid ``(sqrt(1 + |e|^2), e)`` onto
    the ball is an isometry, Nickel & Kiela 2018, eq. 11). Same dtype as ``e``; ``|x| < 1``."""
    return e / (1.0 + torch.sqrt(1.0 + (e * e).sum(-1, keepdim=True)))


def descendant_pairs(hierarchy) -> np.ndarray:
    """``(2, P)`` int64 ``(ancestor, descendant)`` pairs of the transitive closure of a
    :class:`xhyp.datasets.hmc.Hierarchy` (strict: a node is not paired with itself)."""
    anc = hierarchy.ancestors()
    pairs = [(a, d) for d, ancs in enumerate(anc) for a in sorted(ancs)]
    return np.array(pairs, np.int64).reshape(-1, 2).T.copy()


class HMCModel(nn.Module):
    """Encoder plus label vectors (see the module docstring).

    Args:
        config: an :class:`HMCModelConfig`.
        hierarchy: the label :class:`xhyp.datasets.hmc.Hierarchy` (needed for the coherent output;
            its closure is kept as the buffer ``closure`` and saved with the weights).
    """

    def __init__(self, config: HMCModelConfig, hierarchy=None):
        super().__init__()
        self.config = c = config
        drop_in = [nn.Dropout(c.input_dropout)] if c.input_dropout > 0 else []
        if c.projector == "linear":
            self.encoder = nn.Sequential(*drop_in, nn.Linear(c.n_features, c.dim))
        else:
            mods, width = list(drop_in), c.n_features
            for _ in range(c.layers):
                mods += [nn.Linear(width, c.hidden), nn.ReLU(), nn.Dropout(c.dropout)]
                width = c.hidden
            self.encoder = nn.Sequential(*mods, nn.Linear(width, c.dim))
        self.bias = nn.Parameter(torch.zeros(c.n_labels))
        scale = c.init_label_scale or (1e-3 if c.method == "cascaded" else float(np.sqrt(3.0 / c.dim)))
        self.label_vectors = nn.Parameter(torch.empty(c.n_labels, c.dim).uniform_(-scale, scale),
                                          requires_grad=c.method != "cascaded")
        if c.label_score == "unit":
            self.label_gain = nn.Parameter(torch.ones(c.n_labels))
        closure = descendant_pairs(hierarchy) if (hierarchy is not None and c.coherent) else np.zeros((2, 0), np.int64)
        if hierarchy is not None and len(hierarchy) != c.n_labels:
            raise ValueError(f"hierarchy has {len(hierarchy)} nodes but the model {c.n_labels} labels")
        self.register_buffer("closure", torch.from_numpy(closure))
        self._plan = MaxConstraintPlan(self.closure, c.n_labels)

    @property
    def coherent(self) -> bool:
        """Whether the output is hierarchy-coherent (MCM on, with a hierarchy that has edges)."""
        return self.closure.shape[1] > 0

    def poincare_embeddings(self) -> torch.Tensor:
        """``(L, n)`` the labels' points in the Poincaré ball (:func:`to_poincare` of the label vectors)."""
        return to_poincare(self.label_vectors)

    def represent(self, x: torch.Tensor) -> torch.Tensor:
        """``(B, F)`` features -> ``(B, n)`` document representations ``h``."""
        return self.encoder(x)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(B, F)`` features -> ``(raw logits (B, L), representations (B, n))`` (before MCM)."""
        h = self.represent(x)
        return h @ self.score_vectors().T + self.bias, h

    def score_vectors(self) -> torch.Tensor:
        """``(L, n)`` the vectors whose dot product with ``h`` gives the logits (before the
        biases): the label vectors (``label_score="dot"``), or their directions times the learned
        gains (``"unit"``: ``g_l e_l / |e_l|``, a zero vector left at zero)."""
        e = self.label_vectors
        if self.config.label_score == "dot":
            return e
        return e * (self.label_gain / e.norm(dim=1).clamp_min(1e-12)).unsqueeze(1)

    def mcm_plan(self, device=None) -> MaxConstraintPlan:
        """The :class:`xhyp.hmc.losses.MaxConstraintPlan` of the closure (built once), with its
        index tensors on ``device`` (default: the closure buffer's)."""
        device = torch.device(device) if device is not None else self.closure.device
        if self._plan.levels and self._plan.levels[0][0].device != device:
            self._plan.to(device)
        return self._plan

    def coherent_logits(self, logits: torch.Tensor) -> torch.Tensor:
        """MCM of raw ``(B, L)`` logits (identity when the model is not coherent)."""
        return max_constraint(logits, self.mcm_plan(logits.device)) if self.coherent else logits

    @torch.no_grad()
    def predict_proba(self, X, batch_size: int = 512) -> np.ndarray:
        """``(Q, F)`` dense ndarray or CSR features -> ``(Q, L)`` float64 sigmoid probabilities
        (hierarchy-coherent when the model is; float64 so that confident scores do not tie at 1).

        Raises:
            ValueError: ``X`` has another number of features than the model was trained on.
        """
        if X.shape[1] != self.config.n_features:
            raise ValueError(f"queries have {X.shape[1]} features, the model was trained on {self.config.n_features}")
        was = self.training
        self.eval()
        out = [torch.sigmoid(self.coherent_logits(self(to_tensor(X[s:s + batch_size]))[0]).double()).numpy()
               for s in range(0, X.shape[0], batch_size)]
        self.train(was)
        return np.concatenate(out) if out else np.zeros((0, self.config.n_labels), np.float64)

    def config_dict(self) -> dict:
        """The config as a plain dict."""
        return asdict(self.config)
