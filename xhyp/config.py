"""Configuration dataclasses and option names that must load without torch.

``xhyp --help`` and ``xhyp data list`` build their parsers from these, so this module imports
only the standard library. :class:`ModelConfig` is re-exported by :mod:`xhyp.model` (its home
for users); the option tuples mirror the modules that implement them (checked by tests).
"""
from __future__ import annotations

from dataclasses import dataclass, fields
from .utils import check_finite_fields

MAX_NORM = 1.0 - 1e-5
"""Default max-norm guard: every point the library stores is clipped to ``|x| <= MAX_NORM``
(also :data:`xhyp.manifold.MAX_NORM`; see :mod:`xhyp.manifold` for why this value)."""
GEOMETRIES = ("poincare", "euclidean")
PROJECTORS = ("linear", "mlp")
WEIGHTINGS = ("count", "distance")  # vote weightings (xhyp.vote)
INDEX_KINDS = ("exact", "torch", "clustered", "ann", "faiss-flat", "faiss-ivf", "faiss-hnsw")  # xhyp.index backends


class ConfigBase:
    """Base of xhyp's configuration dataclasses (:class:`ModelConfig`,
    :class:`xhyp.train.TrainConfig`, the HMC configurations): construction from a saved dict."""

    @classmethod
    def from_dict(cls, d: dict):
        """An instance from a dict of its fields, ignoring unknown keys (forward compatibility of
        saved models and configurations).

        Raises:
            ValueError: an invalid field value (see the dataclass's checks).
        """
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class ModelConfig(ConfigBase):
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
    max_norm: float = MAX_NORM
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

