"""Training: sampled softmax over hyperbolic distances, Riemannian Adam, early stopping.

Gerald & Baskiotis, CAp 2019, section 2.3: for an example ``x`` with embedding ``r`` and one of
its labels ``l``, with ``k`` negative labels ``l'_1..l'_k`` sampled among labels ``x`` does not
have,

    loss(x, l) = -log  exp(-alpha d(r, W_l)) / (exp(-alpha d(r, W_l)) + sum_j exp(-alpha d(r, W_l'_j)))

averaged over the (example, positive label) pairs of a batch. ``alpha`` (the softmax scale) is
the most important hyper-parameter (see ``../shared/DESIGN.md``): tune it on the validation split.

A model directory written by :func:`train` holds:

* ``config.json``: model, training and data configuration (self-describing),
* ``model.pt``: the best weights (by validation P@1), ``features.npz``: the feature pipeline,
* ``train_emb.pt`` / ``train_labels.npz``: the kNN database (all training examples embedded
  by the best model, and their labels), used by :mod:`xhyp.predict`,
* ``history.json``: per-epoch loss, validation P@1 and time,
* ``checkpoint.pt``: the last epoch's full state (weights, optimisers, RNGs, early-stopping
  counters) for ``--resume``.
"""
from __future__ import annotations

import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F
from tqdm.auto import tqdm

from .features import FeaturePipeline
from .index import make_index
from .model import HyperbolicXMC, ModelConfig, csr_to_bag
from .optim import PaperAdam
from .modeldir import model_dir_writer
from .utils import (atomic_save_json, atomic_save_sparse, atomic_torch_save, check_finite_fields, resolve_device,
                    seed_everything)
from .vote import WEIGHTINGS, vote

SAMPLINGS = ("uniform", "frequency")
# training options that change how fast a run goes, not what it learns
RUNTIME_KEYS = ("threads", "device")
# training options a resumed run may change (how long and where it runs, not what it optimises)
_RESUMABLE_CHANGES = ("epochs", "patience", *RUNTIME_KEYS)
OPTIMIZERS = ("radam", "paper")


@dataclass
class TrainConfig:
    """Training hyper-parameters (saved as ``config.json["train"]``).

    Attributes:
        epochs: maximum number of passes over the training examples.
        batch_size: examples per step (each contributes all its positive labels).
        negatives: sampled negative labels per (example, positive) pair.
        sampling: ``"uniform"`` or ``"frequency"`` (label frequency^0.75, as word2vec).
        alpha: softmax scale on distances.
        lr: Adam step size of the projector.
        lr_labels: step size of the label embeddings (Riemannian Adam or the paper's rule).
        optimizer: ``"radam"`` (geoopt RiemannianAdam) or ``"paper"`` (:class:`xhyp.optim.PaperAdam`).
        val_fraction: share of training examples held out for early stopping (0 disables it).
        patience: epochs without a better validation P@1 before stopping.
        knn: neighbours used for validation (and the default for prediction).
        weighting: vote weighting for validation (and the default for prediction).
        features: feature preprocessing, ``"l2"``, ``"tfidf"`` or ``"none"``.
        input_dropout: probability of dropping each non-zero input feature during training
            (inverted dropout: kept values are scaled by ``1 / (1 - p)``); a regulariser.
        seed: seeds the split, initialisation, shuffling and negative sampling.
        device: ``"auto"``, ``"cpu"``, ``"cuda"``...
        threads: torch intra-op threads (0 keeps torch's default).
    """

    epochs: int = 30
    batch_size: int = 64
    negatives: int = 50
    sampling: str = "uniform"
    alpha: float = 30.0
    lr: float = 3e-3
    lr_labels: float = 3e-3
    optimizer: str = "radam"
    val_fraction: float = 0.05
    patience: int = 5
    knn: int = 20
    weighting: str = "count"
    features: str = "l2"
    input_dropout: float = 0.5
    seed: int = 0
    device: str = "auto"
    threads: int = 0

    def __post_init__(self):
        if self.sampling not in SAMPLINGS:
            raise ValueError(f"sampling must be one of {SAMPLINGS}, got {self.sampling!r}")
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")
        if not 0.0 <= self.input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {self.input_dropout}")
        if not 0.0 <= self.val_fraction < 1.0:
            raise ValueError(f"val_fraction must be in [0, 1), got {self.val_fraction}")
        if self.weighting not in WEIGHTINGS:
            raise ValueError(f"weighting must be one of {WEIGHTINGS}, got {self.weighting!r}")
        if self.knn < 1:
            raise ValueError(f"knn must be >= 1, got {self.knn}")
        if self.negatives < 1 or self.batch_size < 1 or self.epochs < 0 or self.alpha <= 0:
            raise ValueError(f"negatives, batch_size, alpha must be positive and epochs >= 0: {self}")
        check_finite_fields(self)
        if self.alpha > 1e6 or not 0 < self.lr <= 1e3 or not 0 < self.lr_labels <= 1e3:
            raise ValueError(f"alpha must be <= 1e6 and lr, lr_labels in (0, 1e3] (got alpha={self.alpha}, "
                             f"lr={self.lr}, lr_labels={self.lr_labels}): larger values overflow float32")

    @classmethod
    def from_dict(cls, d: dict) -> "TrainConfig":
        """Build from a dict, ignoring unknown keys."""
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


class NegativeSampler:
    """Draws negative labels uniformly or proportionally to ``frequency^0.75``.

    Sampling uses inverse-CDF lookup (``searchsorted`` on uniform draws), O(log L) per sample.

    Args:
        label_freq: ``(L,)`` training frequency of each label.
        kind: ``"uniform"`` or ``"frequency"``.
        generator: a seeded ``torch.Generator``.
    """

    def __init__(self, label_freq: np.ndarray, kind: str, generator: torch.Generator):
        self.L = int(label_freq.shape[0])
        self.kind = kind
        self.gen = generator
        if kind == "frequency":
            w = np.power(label_freq.astype(np.float64), 0.75)
            if w.sum() <= 0:
                w = np.ones_like(w)
            self.cdf = torch.from_numpy(np.cumsum(w) / w.sum())
        elif kind != "uniform":
            raise ValueError(f"unknown sampling {kind!r}")

    def sample(self, shape) -> torch.Tensor:
        """int64 label ids of the given shape."""
        if self.kind == "uniform":
            return torch.randint(0, self.L, shape, generator=self.gen)
        u = torch.rand(shape, generator=self.gen, dtype=torch.float64)
        return torch.searchsorted(self.cdf, u).clamp_max(self.L - 1)


def sampled_softmax_loss(model: HyperbolicXMC, r: torch.Tensor, Yb: sp.csr_matrix,
                         sampler: NegativeSampler, negatives: int, alpha: float) -> torch.Tensor:
    """Mean sampled-softmax loss of a batch (Gerald & Baskiotis 2019, section 2.3).

    Negatives that happen to be one of the example's own labels are masked out of the softmax
    (so the denominator holds only true negatives).

    Args:
        model: the model (its ``labels`` and ``distance`` are used).
        r: ``(B, n)`` example embeddings.
        Yb: ``(B, L)`` CSR labels of the batch, sorted indices.
        sampler: negative sampler.
        negatives: ``k``, negatives per pair.
        alpha: softmax scale.

    Returns:
        scalar tensor (0 with no gradient path if the batch has no positive pair).
    """
    device = r.device
    L = Yb.shape[1]
    counts = np.diff(Yb.indptr)
    if counts.sum() == 0:
        return r.sum() * 0.0
    ex = torch.from_numpy(np.repeat(np.arange(Yb.shape[0]), counts)).to(device)
    pos = torch.from_numpy(Yb.indices.astype(np.int64)).to(device)
    neg = sampler.sample((pos.shape[0], negatives)).to(device)
    # mask negatives that are positives of the same example: keys ex*L+label, sorted
    pos_keys = ex * L + pos
    neg_keys = ex[:, None] * L + neg
    at = torch.searchsorted(pos_keys, neg_keys).clamp_max(pos_keys.shape[0] - 1)
    is_pos = pos_keys[at] == neg_keys
    cand = torch.cat([pos[:, None], neg], 1)  # (P, k+1)
    d = model.distance(r[ex][:, None, :], model.labels[cand])  # (P, k+1)
    logits = -alpha * d
    logits = torch.cat([logits[:, :1], logits[:, 1:].masked_fill(is_pos, float("-inf"))], 1)
    target = torch.zeros(pos.shape[0], dtype=torch.long, device=device)
    return F.cross_entropy(logits, target)


def precision_at_1(scores: sp.csr_matrix, Y: sp.csr_matrix) -> float:
    """P@1 of CSR scores against CSR labels (fraction, rows without scores count as misses)."""
    from xhyp.eval.metrics import precision_at_k

    return float(precision_at_k(Y, scores, k=1)[0])


def _split(n: int, val_fraction: float, seed: int):
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _make_optimizers(model: HyperbolicXMC, cfg: TrainConfig):
    opts = [torch.optim.SparseAdam([model.bag.weight], lr=cfg.lr)]
    if model.mlp is not None:
        opts.append(torch.optim.Adam(model.mlp.parameters(), lr=cfg.lr))
    if model.config.geometry == "poincare":
        if cfg.optimizer == "radam":
            opts.append(geoopt.optim.RiemannianAdam([model.labels], lr=cfg.lr_labels))
        else:
            opts.append(PaperAdam([model.labels], lr=cfg.lr_labels, max_norm=model.config.max_norm))
    else:
        opts.append(torch.optim.Adam([model.labels], lr=cfg.lr_labels))
    return opts


def normalise_configs(n_features: int, n_labels: int, model_config, train_config):
    """``(ModelConfig, TrainConfig)`` from dataclasses or dicts (``None``: defaults), with the
    data's ``n_features`` and ``n_labels`` filled into the model configuration.

    Raises:
        ValueError: an invalid field value (see the dataclasses).
    """
    tcfg = train_config if isinstance(train_config, TrainConfig) else TrainConfig.from_dict(train_config or {})
    mdict = asdict(model_config) if isinstance(model_config, ModelConfig) else dict(model_config or {})
    mdict.update(n_features=int(n_features), n_labels=int(n_labels))
    return ModelConfig.from_dict(mdict), tcfg


def data_fingerprint(X: sp.csr_matrix, Y: sp.csr_matrix) -> dict:
    """Shape and non-zero counts of ``(X, Y)``: ``config.json["data"]``, checked on resume."""
    return {"n": int(X.shape[0]), "n_features": int(X.shape[1]), "n_labels": int(Y.shape[1]),
            "nnz_x": int(X.nnz), "nnz_y": int(Y.nnz)}


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model (in memory), its directory and the history."""

    model: HyperbolicXMC
    out_dir: Path
    history: list
    best_epoch: int
    best_val_p1: float
    config: dict  # the model directory's config.json: {"model", "train", "data", ...}


def evaluate_knn(model: HyperbolicXMC, X_db: sp.csr_matrix, Y_db: sp.csr_matrix, X_q: sp.csr_matrix,
                 k: int, weighting: str, device, top_k: int = 5, alpha: float = 1.0) -> sp.csr_matrix:
    """Embed a database and queries with ``model`` and return the kNN-vote scores of the queries.

    Args:
        X_db, Y_db: ``(N, F)`` preprocessed features and ``(N, L)`` labels of the database.
        X_q: ``(Q, F)`` preprocessed query features.
        k: neighbours. weighting, alpha: see :func:`xhyp.vote.vote`. top_k: labels kept per query.

    Returns:
        ``(Q, L)`` float32 CSR scores.
    """
    db = model.embed(X_db, device=device)
    q = model.embed(X_q, device=device)
    D, I = make_index("exact", geometry=model.config.geometry).add(db).search(q, k)
    return vote(I, D, Y_db, top_k=top_k, weighting=weighting, alpha=alpha)


@model_dir_writer  # lock, refuse a used directory (unless resume/overwrite), manifest last: xhyp.modeldir
def train(X: sp.csr_matrix, Y: sp.csr_matrix, model_config: ModelConfig | dict | None = None,
          train_config: TrainConfig | dict | None = None, out_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, extra_config: dict | None = None) -> TrainResult:
    """Train a joint example/label embedding (Gerald & Baskiotis, CAp 2019).

    Args:
        X: ``(N, F)`` CSR float32 raw training features (preprocessing is part of the model).
        Y: ``(N, L)`` CSR binary training labels.
        model_config: :class:`ModelConfig` (``n_features``/``n_labels`` are taken from X, Y) or a
            dict of its fields.
        train_config: :class:`TrainConfig` or dict.
        out_dir: model directory (created); ``None`` keeps everything in memory.
        resume: continue from ``out_dir/checkpoint.pt`` (same data and configuration required).
        progress: show tqdm progress bars.
        extra_config: more keys for ``config.json`` (e.g. the dataset name).
        overwrite: (keyword, added by :func:`xhyp.modeldir.model_dir_writer`) replace the model
            an ``out_dir`` already holds; without it (or ``resume``) such a directory is refused.

    Returns:
        :class:`TrainResult` with the best model loaded.

    Raises:
        ValueError: shape mismatch between X and Y, or a resume with different data/config.
        FileNotFoundError: ``resume`` without a checkpoint.
        xhyp.modeldir.ModelDirError: ``out_dir`` holds a model (no ``resume``/``overwrite``) or is
            being written by another process.
    """
    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    mcfg, tcfg = normalise_configs(X.shape[1], Y.shape[1], model_config, train_config)
    device = resolve_device(tcfg.device)
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    seed_everything(tcfg.seed)

    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y.sort_indices()
    pipe = FeaturePipeline(tcfg.features).fit(X)
    Xp = pipe.transform(X)
    tr_idx, va_idx = _split(X.shape[0], tcfg.val_fraction, tcfg.seed)
    X_tr, Y_tr = Xp[tr_idx], Y[tr_idx]
    X_va, Y_va = Xp[va_idx], Y[va_idx]

    model = HyperbolicXMC(mcfg).to(device)
    opts = _make_optimizers(model, tcfg)
    gen = torch.Generator().manual_seed(tcfg.seed)
    sampler = NegativeSampler(np.asarray(Y_tr.sum(0)).ravel(), tcfg.sampling, gen)
    config = {"model": asdict(mcfg), "train": asdict(tcfg), "data": data_fingerprint(X, Y)}
    if extra_config:
        config.update(extra_config)

    out = Path(out_dir) if out_dir is not None else None
    history, best, best_epoch, bad, start_epoch = [], -1.0, -1, 0, 0
    best_state = None
    if resume:
        if out is None or not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out}/checkpoint.pt")
        ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        if ck["config"]["data"] != config["data"] or ck["config"]["model"] != config["model"]:
            raise ValueError(f"{out}/checkpoint.pt was written for other data or another model "
                             f"configuration: {ck['config']['data']} / {ck['config']['model']}")
        changed = sorted(k for k, v in config["train"].items()
                         if k not in _RESUMABLE_CHANGES and ck["config"]["train"].get(k) != v)
        if changed:
            raise ValueError(f"{out}/checkpoint.pt was trained with other settings of {changed} "
                             f"({[ck['config']['train'].get(k) for k in changed]}); a resumed run may only "
                             f"change {sorted(_RESUMABLE_CHANGES)}")
        model.load_state_dict(ck["model"])
        for o, s in zip(opts, ck["optimizers"]):
            o.load_state_dict(s)
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history, best, best_epoch, bad = ck["history"], ck["best"], ck["best_epoch"], ck["bad"]
        best_state = ck["best_state"]
        start_epoch = ck["epoch"] + 1
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_json(config, out / "config.json")
        pipe.save(out / "features.npz")

    n_tr = X_tr.shape[0]
    shuffle_rng = np.random.default_rng(tcfg.seed + 1)
    for _ in range(start_epoch):  # keep the shuffling stream aligned after a resume
        shuffle_rng.permutation(n_tr)
    for epoch in range(start_epoch, tcfg.epochs):
        if bad >= tcfg.patience and len(va_idx) > 0:
            break
        t0 = time.time()
        model.train()
        perm = shuffle_rng.permutation(n_tr)
        total, steps = 0.0, 0
        bar = tqdm(range(0, n_tr, tcfg.batch_size), desc=f"epoch {epoch + 1}/{tcfg.epochs}",
                   disable=not progress, leave=False, unit="batch")
        for start in bar:
            rows = np.sort(perm[start:start + tcfg.batch_size])
            Xb, Yb = X_tr[rows], Y_tr[rows]
            idx, off, w = csr_to_bag(Xb, device)
            if tcfg.input_dropout > 0:
                keep = torch.rand(w.shape, generator=gen) >= tcfg.input_dropout
                w = w * keep.to(device) / (1.0 - tcfg.input_dropout)
            r = model(idx, off, w)
            loss = sampled_softmax_loss(model, r, Yb, sampler, tcfg.negatives, tcfg.alpha)
            for o in opts:
                o.zero_grad(set_to_none=True)
            loss.backward()
            for o in opts:
                o.step()
            total += float(loss.detach())
            steps += 1
            if steps % 20 == 0:
                bar.set_postfix(loss=f"{total / steps:.4f}")
        bar.close()
        train_time = time.time() - t0
        rec = {"epoch": epoch + 1, "loss": total / max(steps, 1), "train_seconds": round(train_time, 3)}
        if len(va_idx) > 0:
            scores = evaluate_knn(model, X_tr, Y_tr, X_va, tcfg.knn, tcfg.weighting, device, top_k=1,
                                  alpha=tcfg.alpha)
            p1 = precision_at_1(scores, Y_va)
            rec["val_p1"] = p1
            if p1 > best:
                best, best_epoch, bad = p1, epoch + 1, 0
                best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
            else:
                bad += 1
        else:
            best_epoch = epoch + 1
            best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        rec["seconds"] = round(time.time() - t0, 3)
        history.append(rec)
        if progress:
            msg = f"epoch {epoch + 1}: loss {rec['loss']:.4f}"
            if "val_p1" in rec:
                msg += f"  val P@1 {100 * rec['val_p1']:.2f}  (best {100 * best:.2f} @ {best_epoch})"
            tqdm.write(msg + f"  [{rec['seconds']:.1f}s]")
        if out is not None:
            atomic_torch_save({
                "epoch": epoch, "model": model.state_dict(), "optimizers": [o.state_dict() for o in opts],
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best": best, "best_epoch": best_epoch, "bad": bad, "best_state": best_state,
                "config": config,
            }, out / "checkpoint.pt")
            atomic_save_json(history, out / "history.json")
            if best_epoch == epoch + 1:
                atomic_torch_save(best_state, out / "model.pt")

    if best_state is not None:
        model.load_state_dict(best_state)
    # the kNN database: every training example (validation ones included), best model
    emb = model.embed(Xp, device=device)
    if out is not None:
        model.save(out, {k: v for k, v in config.items() if k != "model"})
        atomic_torch_save(emb, out / "train_emb.pt")
        atomic_save_sparse(out / "train_labels.npz", Y)
        atomic_save_json(history, out / "history.json")
    model.train_emb = emb
    model.train_labels = Y
    model.pipeline = pipe
    return TrainResult(model=model, out_dir=out, history=history, best_epoch=best_epoch,
                       best_val_p1=best if len(va_idx) > 0 else float("nan"), config=config)
