"""Feature preprocessing saved with a model, so prediction applies exactly what training did.

XMC practice (e.g. Parabel, AnnexML): L2-normalise each row; optionally tf-idf first
(idf fitted on the training set, scikit-learn's smooth idf).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
from sklearn.feature_extraction.text import TfidfTransformer
from sklearn.preprocessing import normalize

from ..config import FEATURE_KINDS, check_choice  # (FEATURE_KINDS re-exported)
from ..utils import atomic_save_npz


class FeaturePipeline:
    """``"l2"`` (row L2 normalisation), ``"tfidf"`` (tf-idf, then L2) or ``"none"``.

    Args:
        kind: one of :data:`FEATURE_KINDS`.

    Raises:
        ValueError: unknown kind.
    """

    def __init__(self, kind: str = "l2"):
        check_choice("features", kind, FEATURE_KINDS)
        self.kind = kind
        self.idf = None

    def fit(self, X: sp.csr_matrix) -> "FeaturePipeline":
        """Fit on the ``(N, F)`` training features (only tf-idf has state: the idf vector)."""
        if self.kind == "tfidf":
            self.idf = TfidfTransformer(norm=None, smooth_idf=True).fit(X).idf_.astype(np.float32)
        return self

    def transform(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """Apply to ``(N, F)`` CSR features; returns float32 CSR of the same shape.

        Raises:
            ValueError: if the feature count differs from the fitted idf.
        """
        X = sp.csr_matrix(X, dtype=np.float32)
        if self.kind == "none":
            return X
        if self.kind == "tfidf":
            if self.idf is None:
                raise RuntimeError("FeaturePipeline('tfidf') must be fitted first")
            if X.shape[1] != self.idf.shape[0]:
                raise ValueError(f"features have {X.shape[1]} columns, the model expects {self.idf.shape[0]}")
            X = X @ sp.diags(self.idf)
        return normalize(X, norm="l2", axis=1, copy=True).astype(np.float32, copy=False).tocsr()

    def save(self, path: str | Path) -> None:
        """Write the pipeline (kind and idf) to an ``.npz`` file atomically."""
        atomic_save_npz(path, kind=np.array(self.kind), idf=self.idf if self.idf is not None else np.zeros(0))

    @classmethod
    def load(cls, path: str | Path) -> "FeaturePipeline":
        """Read a pipeline written by :meth:`save`."""
        with np.load(path) as z:
            pipe = cls(str(z["kind"]))
            if pipe.kind == "tfidf":
                pipe.idf = z["idf"].astype(np.float32)
        return pipe
