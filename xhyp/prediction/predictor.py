"""Prediction: embed queries, find their nearest training examples in the ball, vote labels, and
re-rank the neighbours' labels with the model's shortlist scorers when it has them.

Gerald & Baskiotis, CAp 2019, section 2.5 (kNN voting) and 2.6 (ensembles of learners); the
shortlist re-ranking is :mod:`xhyp.knn.rerank`.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch

from ..config import PredictConfig
from ..embedding.features import FeaturePipeline
from ..embedding.model import HyperbolicXMC
from ..knn.index import DEVICE_INDEXES, make_index
from ..knn.rerank import LabelScorer, fuse, shortlist, top_votes
from ..knn.vote import top_k_rows, vote
from ..utils import resolve_device


# the files of a model directory that prediction needs
PREDICTOR_FILES = ("config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz")

class Predictor:
    """A trained learner ready to answer queries: model, feature pipeline and kNN database.

    Args:
        model: trained :class:`xhyp.embedding.model.HyperbolicXMC`.
        pipeline: the :class:`xhyp.embedding.features.FeaturePipeline` fitted at training time.
        train_emb: ``(N, n)`` float32 embeddings of the training examples (the kNN database).
        train_labels: ``(N, L)`` CSR labels of those examples.
        config: the model directory's ``config.json`` contents (its ``"predict"`` section, the
            settings chosen after training, and its ``"train"`` section give the defaults of
            ``k``, ``weighting``, ``alpha`` and the re-ranking: :meth:`xhyp.config.PredictConfig.for_model`).
        scorer: the shortlist scorers (:class:`xhyp.knn.rerank.LabelScorer`) of a model trained
            with ``rerank="linear"``, else ``None``.
    """

    def __init__(self, model: HyperbolicXMC, pipeline: FeaturePipeline, train_emb: torch.Tensor,
                 train_labels: sp.csr_matrix, config: dict | None = None, scorer=None):
        self.model = model.eval()
        self.pipeline = pipeline
        self.train_emb = train_emb
        self.train_labels = sp.csr_matrix(train_labels)
        self.config = config or {}
        self.scorer = scorer
        self._index = None
        self._index_key = None

    @classmethod
    def load(cls, directory: str | Path, verify: bool = True) -> "Predictor":
        """Load a model directory written by :func:`xhyp.training.loop.train`.

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
        from .. import modeldir as md
        from ..hmc.train import HMCPredictor, is_hmc_dir

        d = Path(directory)
        if is_hmc_dir(d):  # an HMC model directory (xhyp.hmc): same load/predict interface
            return HMCPredictor.load(d)
        md.verify(d, checksums=verify)
        config = md.read_json(d / "config.json", "model configuration")
        model = HyperbolicXMC.load(d, config)
        mcfg = model.config
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
        reranker = (config.get("predict") or {}).get("reranker")
        if reranker is not None:
            if reranker not in md.OPTIONAL_MODEL_FILES:
                raise md.ModelDirError(d / "config.json", f"names the shortlist scorers {reranker!r}; expected "
                                       f"one of {md.OPTIONAL_MODEL_FILES}")
            md.verify(d, names=(reranker,), checksums=verify)
            scorer = md.load_file(d / reranker, LabelScorer.load, "shortlist scorers (.npz)")
            if scorer.coef.shape != (mcfg.n_features, mcfg.n_labels):
                raise md.ModelDirError(d / reranker, f"holds {scorer.coef.shape[0]} x {scorer.coef.shape[1]} "
                                       f"scorers, the model has {mcfg.n_features} features and {mcfg.n_labels} labels")
        return cls(model, pipeline, emb, labels, config, scorer)

    @classmethod
    def from_train_result(cls, result) -> "Predictor":
        """Wrap the in-memory result of :func:`xhyp.training.train` (a
        :class:`~xhyp.training.loop.TrainResult`: model, kNN database, feature pipeline, scorers)."""
        return cls(result.model, result.pipeline, result.train_emb, result.train_labels, result.config,
                   result.scorer)

    def features(self, X: sp.csr_matrix) -> sp.csr_matrix:
        """``(Q, F)`` raw CSR features -> the training preprocessing of them (float32 CSR).

        Raises:
            ValueError: ``X`` has another number of features than the training data.
        """
        if X.shape[1] != self.model.config.n_features:
            raise ValueError(f"queries have {X.shape[1]} features, the model was trained on "
                             f"{self.model.config.n_features}")
        return self.pipeline.transform(X)

    def embed(self, X: sp.csr_matrix, batch_size: int = 4096, device: str = "cpu") -> torch.Tensor:
        """``(Q, F)`` raw CSR features -> ``(Q, n)`` float32 embeddings (a CPU tensor).

        Args:
            X: the queries. batch_size: rows per forward pass.
            device: where the projector runs (the model is moved there).

        Raises:
            ValueError: ``X`` has another number of features than the training data, or
                ``device`` names an unavailable GPU.
        """
        return self._embed_features(self.features(X), batch_size, resolve_device(device))

    def _embed_features(self, Xp: sp.csr_matrix, batch_size: int, dev) -> torch.Tensor:
        self.model.to(dev)
        return self.model.embed(Xp, batch_size=batch_size, device=dev)

    def index(self, kind: str = "exact", **params):
        """The kNN index over the training embeddings (built once per kind/params, then cached).

        Raises:
            ValueError: an unknown kind or parameter (:func:`xhyp.knn.index.make_index`).
        """
        key = (kind, tuple(sorted(params.items())))
        if self._index_key != key:
            self._index = make_index(kind, geometry=self.model.config.geometry, **params).add(self.train_emb)
            self._index_key = key
        return self._index

    def predict(self, X: sp.csr_matrix, k: int | None = None, top_k: int = 100, index: str = "exact",
                weighting: str | None = None, batch_size: int = 16384, index_params: dict | None = None,
                alpha: float | None = None, device: str = "auto", rerank_weight: float | None = None,
                rerank_knn: int | None = None, rerank_shortlist: int | None = None) -> sp.csr_matrix:
        """Top-``top_k`` label scores for each query (Gerald & Baskiotis 2019, section 2.5).

        The arguments are the fields of :class:`xhyp.config.PredictConfig`; ``None`` ones take the
        settings chosen after training (``config.json["predict"]``) and the model's training
        configuration (:meth:`~xhyp.config.PredictConfig.for_model`).

        Args:
            X: ``(Q, F)`` CSR raw features (the training preprocessing is applied here).
            k: neighbours (default: the ``k`` chosen at training time, else the training ``knn``).
            top_k: labels kept per query.
            index: index kind (see :func:`xhyp.knn.index.make_index`).
            weighting: ``"count"`` or ``"distance"`` (default: the training config's).
            batch_size: queries per chunk (bounds memory).
            index_params: extra index constructor arguments (e.g. ``nprobe``).
            alpha: softmax scale of the distance weighting (default: the training ``alpha``).
            device: where queries are embedded and searched (see :class:`xhyp.config.PredictConfig`).
            rerank_weight: weight ``w`` of the shortlist scorers (:func:`xhyp.knn.rerank.fuse`;
                default: the one chosen at training time; 0: the plain vote). ``w > 0`` needs a
                model trained with ``rerank="linear"``.
            rerank_knn: neighbours whose labels form the shortlist (default: the model's).
            rerank_shortlist: labels of the shortlist and of the vote scored at most (default: the
                model's; 0: all).

        Returns:
            ``(Q, L)`` float32 CSR score matrix, at most ``top_k`` entries a row: the vote
            (:func:`xhyp.knn.vote.vote`), or with the scorers ``vote / k + w * sigmoid(margin)``
            on the shortlist (:mod:`xhyp.knn.rerank`).

        Raises:
            ValueError: an invalid setting, ``rerank_weight > 0`` for a model without shortlist
                scorers, or ``X`` with another number of features.
        """
        cfg = PredictConfig(k=k, weighting=weighting, alpha=alpha, top_k=top_k, index=index,
                            index_params=index_params or {}, batch_size=batch_size, device=device,
                            rerank_weight=rerank_weight, rerank_knn=rerank_knn, rerank_shortlist=rerank_shortlist)
        return self.predict_with(X, cfg)

    def predict_with(self, X: sp.csr_matrix, config: PredictConfig) -> sp.csr_matrix:
        """:meth:`predict` with a :class:`xhyp.config.PredictConfig`: ``(Q, F)`` CSR raw features ->
        ``(Q, L)`` float32 CSR scores, at most ``config.top_k`` entries a row.

        Raises:
            ValueError: ``X`` with another number of features than the training data, or
                ``rerank_weight > 0`` for a model without shortlist scorers.
        """
        cfg = config.for_model(self.config.get("train"), self.config.get("predict"))
        if cfg.rerank_weight > 0 and self.scorer is None:
            raise ValueError(f"rerank_weight {cfg.rerank_weight} > 0 but this model has no shortlist scorers "
                             "(trained with rerank='none')")
        dev = resolve_device(cfg.device)
        params = dict(cfg.index_params)
        if dev.type != "cpu" and cfg.index in DEVICE_INDEXES:
            params.setdefault("device", dev)
        idx = self.index(cfg.index, **params)
        parts = []
        for s in range(0, X.shape[0], cfg.batch_size):
            Xp = self.features(X[s:s + cfg.batch_size])
            q = self._embed_features(Xp, 4096, dev)
            if cfg.rerank_weight > 0:
                parts.append(self._reranked(Xp, q, idx, cfg))
                continue
            D, I = idx.search(q, cfg.k)
            parts.append(vote(I, D, self.train_labels, top_k=cfg.top_k, weighting=cfg.weighting, alpha=cfg.alpha))
        if not parts:
            return sp.csr_matrix((0, self.train_labels.shape[1]), dtype=np.float32)
        return sp.vstack(parts).tocsr()

    def _reranked(self, Xp: sp.csr_matrix, q: torch.Tensor, idx, cfg: PredictConfig) -> sp.csr_matrix:
        """One chunk of :meth:`predict_with` with the shortlist scorers (:mod:`xhyp.knn.rerank`)."""
        D, I = idx.search(q, max(cfg.k, cfg.rerank_knn))
        cap, K = cfg.rerank_shortlist, cfg.rerank_knn
        V = top_votes(I[:, :cfg.k], D[:, :cfg.k], self.train_labels, cap, cfg.weighting, cfg.alpha)
        S = fuse(V, shortlist(I[:, :K], D[:, :K], self.train_labels, cap),
                 lambda pat: self.scorer.margins(Xp, pat), cfg.rerank_weight, cfg.k)
        return top_k_rows(S, cfg.top_k)
