"""Prediction: embed queries, find their nearest training examples in the ball, vote labels.

Gerald & Baskiotis, CAp 2019, section 2.5 (kNN voting) and 2.6 (ensembles of learners).
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from .features import FeaturePipeline
from .index import make_index
from .model import HyperbolicXMC
from .vote import vote


# the files of a model directory that prediction needs
PREDICTOR_FILES = ("config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz")

class Predictor:
    """A trained learner ready to answer queries: model, feature pipeline and kNN database.

    Args:
        model: trained :class:`xhyp.model.HyperbolicXMC`.
        pipeline: the :class:`xhyp.features.FeaturePipeline` fitted at training time.
        train_emb: ``(N, n)`` float32 embeddings of the training examples (the kNN database).
        train_labels: ``(N, L)`` CSR labels of those examples.
        config: the model directory's ``config.json`` contents (defaults for ``k``, weighting).
    """

    def __init__(self, model: HyperbolicXMC, pipeline: FeaturePipeline, train_emb: torch.Tensor,
                 train_labels: sp.csr_matrix, config: dict | None = None, scorer=None):
        self.model = model.eval()
        self.pipeline = pipeline
        self.train_emb = train_emb
        self.train_labels = sp.csr_matrix(train_labels)
        self.config = config or {}
        self.scorer = scorer  # xhyp.rerank.LabelScorer: the shortlist re-ranker, or None
        self._index = None
        self._index_key = None

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> "Predictor":
        """Load a model directory written by :func:`xhyp.train.train`.

        The directory is first checked against its ``manifest.json`` (every file present, with
        the size and SHA-256 recorded when training finished: see :mod:`xhyp.modeldir`), then
        each file is read; the pieces must agree (embedding and label rows, dimensions).

        Args:
            directory: the model directory.
            verify: check the manifest (``False`` only skips the checksums' cost; sizes and the
                consistency checks still run).

        Raises:
            xhyp.modeldir.ModelFileMissingError: a required file (or the manifest) is missing (also
                a ``FileNotFoundError``; the message names it).
            xhyp.modeldir.ModelDirError: a damaged file, a file that differs from the manifest (a
                directory mixing two runs), or files that disagree; one line naming the file.
        """
        from . import modeldir as md
        from .model import ModelConfig

        d = Path(directory)
        from .hmc.train import HMCPredictor, is_hmc_dir

        if is_hmc_dir(d):  # an HMC model directory (xhyp.hmc): same load/predict interface
            return HMCPredictor.load(d)
        config = md.read_json(d / "config.json", "model configuration")
        reranker = (config.get("predict") or {}).get("reranker") if isinstance(config, dict) else None
        md.verify(d, names=(*md.MODEL_FILES, *([reranker] if reranker in md.OPTIONAL_MODEL_FILES else [])),
                  checksums=verify)
        if not isinstance(config, dict) or not isinstance(config.get("model"), dict):
            raise md.ModelDirError(d / "config.json", "has no \"model\" section: not the configuration of an "
                                   "xhyp model directory")
        try:
            mcfg = ModelConfig.from_dict(config["model"])
        except (TypeError, ValueError) as exc:
            raise md.ModelDirError(d / "config.json", f"invalid \"model\" section: {exc}") from None
        model = HyperbolicXMC(mcfg)
        state = md.load_file(d / "model.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True),
                             "PyTorch weights file")
        try:
            model.load_state_dict(state)
        except (RuntimeError, TypeError, AttributeError) as exc:
            raise md.ModelDirError(d / "model.pt", "does not fit config.json's model: "
                                   + str(exc).replace("\n", " ")[:200]) from None
        pipeline = md.load_file(d / "features.npz", FeaturePipeline.load, "feature pipeline (.npz)")
        emb = md.load_file(d / "train_emb.pt", lambda p: torch.load(p, map_location="cpu", weights_only=True),
                           "PyTorch tensor file")
        labels = md.load_file(d / "train_labels.npz", lambda p: sp.load_npz(p).tocsr(), "scipy sparse .npz")
        if not isinstance(emb, torch.Tensor) or emb.dim() != 2 or emb.shape[1] != mcfg.dim:
            raise md.ModelDirError(d / "train_emb.pt", f"is not an (N, {mcfg.dim}) embedding matrix")
        if not bool(torch.isfinite(emb).all()):
            raise md.ModelDirError(d / "train_emb.pt", "holds NaN or infinite embeddings")
        if labels.shape != (emb.shape[0], mcfg.n_labels):
            raise md.ModelDirError(d / "train_labels.npz", f"is {labels.shape[0]} x {labels.shape[1]} but "
                                   f"train_emb.pt has {emb.shape[0]} rows and the model {mcfg.n_labels} labels")
        if pipeline.idf is not None and pipeline.idf.shape != (mcfg.n_features,):
            raise md.ModelDirError(d / "features.npz", f"has {pipeline.idf.shape[0]} idf weights, the model "
                                   f"{mcfg.n_features} features")
        scorer = None
        if reranker in md.OPTIONAL_MODEL_FILES:
            from .rerank import LabelScorer

            scorer = md.load_file(d / reranker, LabelScorer.load, "shortlist scorers (.npz)")
            if scorer.coef.shape != (mcfg.n_features, mcfg.n_labels):
                raise md.ModelDirError(d / reranker, f"holds {scorer.coef.shape[0]} x {scorer.coef.shape[1]} "
                                       f"scorers, the model has {mcfg.n_features} features and {mcfg.n_labels} labels")
        return cls(model, pipeline, emb, labels, config, scorer)

    @classmethod
    def from_train_result(cls, result) -> "Predictor":
        """Wrap the in-memory result of :func:`xhyp.train.train`."""
        m = result.model
        return cls(m, m.pipeline, m.train_emb, m.train_labels, result.config, getattr(m, "scorer", None))

    def embed(self, X: sp.csr_matrix, batch_size: int = 4096) -> torch.Tensor:
        """``(Q, F)`` raw CSR features -> ``(Q, n)`` float32 embeddings."""
        return self.model.embed(self.features(X), batch_size=batch_size)

    def features(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """``(Q, F)`` raw CSR features -> the training preprocessing of them (float32 CSR).

        Raises:
            ValueError: ``F`` differs from the model's feature count.
        """
        if X.shape[1] != self.model.config.n_features:
            raise ValueError(f"queries have {X.shape[1]} features, the model was trained on "
                             f"{self.model.config.n_features}")
        return self.pipeline.transform(X)

    def index(self, kind: str = "exact", **params):
        """The kNN index over the training embeddings (built once per kind/params, then cached)."""
        key = (kind, tuple(sorted(params.items())))
        if self._index_key != key:
            self._index = make_index(kind, geometry=self.model.config.geometry, **params).add(self.train_emb)
            self._index_key = key
        return self._index

    def predict(self, X: sp.csr_matrix, k: int | None = None, top_k: int = 100, index: str = "exact",
                weighting: str | None = None, batch_size: int = 16384, index_params: dict | None = None,
                rerank_weight: float | None = None) -> sp.csr_matrix:
        """Top-``top_k`` label scores for each query.

        Args:
            X: ``(Q, F)`` CSR raw features (the training preprocessing is applied here).
            k: neighbours (default: the ``k`` chosen at training time, ``config.json["predict"]``,
                else the training config's ``knn``, else 10).
            top_k: labels kept per query.
            index: index kind (see :func:`xhyp.index.make_index`).
            weighting: ``"count"`` or ``"distance"`` (default: the training config's); the
                distance weighting uses the training ``alpha``.
            batch_size: queries per chunk (bounds memory).
            index_params: extra index constructor arguments (e.g. ``nprobe``).
            rerank_weight: weight of the shortlist scorers (:func:`xhyp.rerank.fuse`; default: the
                one chosen at training time; 0: the plain vote). Needs a model trained with
                ``rerank="linear"``.

        Returns:
            ``(Q, L)`` float32 CSR score matrix, at most ``top_k`` entries a row: the vote
            (:func:`xhyp.vote.vote`), or with a re-ranker ``vote / k + w * sigmoid(margin)``.

        Raises:
            ValueError: ``rerank_weight > 0`` for a model without shortlist scorers.
        """
        tc = self.config.get("train", {})
        pc = self.config.get("predict") or {}
        k = k or pc.get("k") or tc.get("knn", 10)
        weighting = weighting or tc.get("weighting", "count")
        w = pc.get("rerank_weight", 0.0) if rerank_weight is None else float(rerank_weight)
        if w > 0 and self.scorer is None:
            raise ValueError(f"rerank_weight {w} > 0 but this model has no shortlist scorers (trained with "
                             "rerank='none')")
        idx = self.index(index, **(index_params or {}))
        parts = []
        for s in range(0, X.shape[0], batch_size):
            if w > 0:
                parts.append(self._reranked(X[s:s + batch_size], idx, k, w, top_k, weighting, pc, tc))
                continue
            q = self.embed(X[s:s + batch_size])
            D, I = idx.search(q, k)
            parts.append(vote(I, D, self.train_labels, top_k=top_k, weighting=weighting,
                              alpha=tc.get("alpha", 1.0)))
        if not parts:
            return sp.csr_matrix((0, self.train_labels.shape[1]), dtype=np.float32)
        return sp.vstack(parts).tocsr()

    def _reranked(self, X, idx, k: int, w: float, top_k: int, weighting: str, pc: dict, tc: dict) -> sp.csr_matrix:
        """One chunk of :meth:`predict` with the shortlist scorers (:mod:`xhyp.rerank`)."""
        from .rerank import fuse, neighbour_labels
        from .vote import top_k_rows

        Xp = self.features(X)
        K = max(k, int(pc.get("rerank_knn", k)))
        D, I = idx.search(self.model.embed(Xp), K)
        V = vote(I[:, :k], D[:, :k], self.train_labels, top_k=self.train_labels.shape[1], weighting=weighting,
                 alpha=tc.get("alpha", 1.0))
        S = fuse(V, neighbour_labels(I, self.train_labels), lambda pat: self.scorer.margins(Xp, pat), w, k)
        return top_k_rows(S, top_k)
