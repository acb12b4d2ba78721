"""Training of the HMC methods (flat, cascaded, joint) and their model directory.

:func:`train_hmc` trains one model with early stopping on the validation AU(PRC), chooses the
F1 threshold on validation (never on test) and writes a model directory:

* ``config.json``: ``{"kind": "xhyp-hmc", "model": HMCModelConfig, "train": HMCTrainConfig,
  "threshold": t, "dataset": ...}``;
* ``model.pt``: the best epoch's state dict; ``hierarchy.json`` when a hierarchy is known;
* ``history.json`` (per-epoch losses and validation AU(PRC)), ``train_summary.json``;
* ``checkpoint.pt`` while training (``resume=True`` continues from it; removed at the end).

:class:`HMCPredictor` loads such a directory (``xhyp predict`` dispatches to it through
:meth:`xhyp.prediction.predictor.Predictor.load`).
"""
from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import geoopt
import numpy as np
import scipy.sparse as sp
import torch
import torch.nn.functional as F

from xhyp.config import ConfigBase, check_choice
from xhyp.utils import atomic_save_json, atomic_torch_save, seed_everything

from .losses import CONTRASTIVE_KINDS, cooccurrence_pairs, himulcon_loss, poincare_label_loss, sample_negatives
from .models import HMCModel, HMCModelConfig, to_tensor

__all__ = ["HMCTrainConfig", "HMCResult", "train_hmc", "pretrain_label_embeddings", "HMCPredictor", "HMC_KIND",
           "is_hmc_dir"]

HMC_KIND = "xhyp-hmc"


@dataclass
class HMCTrainConfig(ConfigBase):
    """Training settings of the HMC methods (saved as ``config.json["train"]``).

    Attributes:
        epochs: maximum classifier epochs.
        batch_size: examples per step.
        lr: Adam learning rate of the encoder and biases (flat: also of the label vectors).
        lr_labels: Riemannian Adam learning rate of the Poincaré label embeddings.
        weight_decay: L2 penalty of the encoder (Adam's ``weight_decay``).
        label_weight: weight ``w`` of the Poincaré label loss in ``joint`` (HiddeN: 0.1).
        negatives: sampled negative labels per co-occurring pair (HiddeN: 5).
        pair_batch: co-occurring pairs per label-loss step.
        pretrain_epochs: epochs over all co-occurring pairs before the classifier (``cascaded``).
        label_steps: ``joint``: label-loss steps per classifier step; the first is taken on the
            joint objective (BCE + ``label_weight`` x label loss), the others on the label loss
            alone. 0: enough for one pass over the (ordered) co-occurring pairs per epoch, the
            label-embedding budget of one ``cascaded`` pre-training epoch. Default 1 (the joint
            objective only; chosen on cellcycle_FUN's validation AU(PRC): 0.207 vs 0.201 for 0).
        contrastive: ``"none"``, ``"hmc"`` or ``"hmce"``: HiMulCon term between the batch's examples.
        contrastive_weight: its weight.
        temperature: its softmax temperature.
        patience: epochs without a better validation AU(PRC) before stopping.
        seed: seed of initialisation, shuffling and sampling.
        threads: torch CPU threads (0: leave torch's default).
    """

    epochs: int = 30
    batch_size: int = 128
    lr: float = 1e-3
    lr_labels: float = 1e-2
    weight_decay: float = 1e-5
    label_weight: float = 0.1
    negatives: int = 5
    pair_batch: int = 1024
    pretrain_epochs: int = 20
    label_steps: int = 1
    contrastive: str = "none"
    contrastive_weight: float = 0.1
    temperature: float = 0.1
    patience: int = 5
    seed: int = 0
    threads: int = 0

    def __post_init__(self):
        check_choice("contrastive", self.contrastive, CONTRASTIVE_KINDS)
        if self.epochs < 1 or self.batch_size < 1 or self.negatives < 1 or self.pair_batch < 1:
            raise ValueError(f"epochs, batch_size, negatives and pair_batch must be positive: {self}")



@dataclass
class HMCResult:
    """What :func:`train_hmc` returns.

    Attributes:
        model: the best-epoch model. threshold: F1 threshold chosen on validation.
        best_epoch: 1-based. best_val_au_prc: validation AU(PRC) there.
        history: per-epoch dicts. config: the saved ``config.json`` contents.
        seconds: wall time (pre-training included).
    """

    model: HMCModel
    threshold: float
    best_epoch: int
    best_val_au_prc: float
    history: list
    config: dict
    seconds: float


def _label_sampler(Y, negatives: int, rng):
    pairs, C = cooccurrence_pairs(Y)
    C = C.toarray()
    if len(pairs) == 0:
        return None
    sym = np.concatenate([pairs, pairs[:, ::-1]])  # both directions: every label is an anchor

    def draw(n: int):
        p = sym[rng.integers(0, len(sym), size=n)]
        neg = sample_negatives(p[:, 0], C, negatives, rng)
        return torch.from_numpy(p), torch.from_numpy(neg)

    return draw, len(sym)


def pretrain_label_embeddings(model: HMCModel, Y, cfg: HMCTrainConfig, rng) -> list[float]:
    """``cascaded``'s first stage: Nickel & Kiela embeddings of the label co-occurrence graph of
    ``Y`` (Riemannian Adam, ``cfg.pretrain_epochs`` passes over the pairs); returns the mean
    loss of each epoch. The embeddings stay fixed afterwards."""
    sampler = _label_sampler(Y, cfg.negatives, rng)
    if sampler is None:
        return []
    draw, n_pairs = sampler
    E = model.label_vectors
    E.requires_grad_(True)
    opt = geoopt.optim.RiemannianAdam([E], lr=cfg.lr_labels)
    losses = []
    steps = max(1, n_pairs // cfg.pair_batch)
    for _ in range(cfg.pretrain_epochs):
        tot = 0.0
        for _ in range(steps):
            p, neg = draw(cfg.pair_batch)
            loss = poincare_label_loss(E, p, neg)
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
        losses.append(tot / steps)
    E.requires_grad_(False)
    return losses


def _val_au_prc(model, X_val, Y_val, labels):
    from xhyp.metrics import au_prc_fast

    P = model.predict_proba(X_val)
    T = Y_val.toarray()
    if labels is not None:
        return au_prc_fast(T[:, labels], P[:, labels]), P
    return au_prc_fast(T, P), P


def train_hmc(X, Y, X_val, Y_val, model_config: dict, train_config: dict, hierarchy=None, eval_labels=None,
              out_dir=None, resume: bool = False, progress: bool = False, extra_config: dict | None = None
              ) -> HMCResult:
    """Train one HMC model (see :mod:`xhyp.hmc.models` for the methods).

    Loss per step: ``BCE(logits, Y)`` (mean over the ``B x L`` entries) ``+ label_weight *
    poincare_label_loss`` (``joint``) ``+ contrastive_weight * himulcon_loss(h, Y_batch, levels)``
    (when ``contrastive != "none"``; ``levels`` from ``hierarchy``, label overlap without one).

    Args:
        X, X_val: ``(N, F)`` / ``(N_val, F)`` float32 features (dense ndarray or CSR).
        Y, Y_val: binary ``(N, L)`` / ``(N_val, L)`` labels (CSR or dense).
        model_config: :class:`HMCModelConfig` fields (``n_features``/``n_labels`` are filled in).
        train_config: :class:`HMCTrainConfig` fields.
        hierarchy: :class:`xhyp.datasets.hmc.Hierarchy` or None.
        eval_labels: label ids used by the validation metrics (default: all).
        out_dir: model directory (None: nothing written).
        resume: continue from ``out_dir/checkpoint.pt`` (the settings must be the same).
        progress: print one line per epoch.
        extra_config: extra keys for ``config.json`` (e.g. the dataset name).

    Returns:
        an :class:`HMCResult`.

    Raises:
        ValueError: bad settings, shape mismatches, or ``resume`` with different settings.
    """
    from xhyp.metrics import choose_threshold

    t0 = time.time()
    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y_val = sp.csr_matrix(Y_val, dtype=np.float32)
    if X.shape[0] != Y.shape[0] or X_val.shape[0] != Y_val.shape[0] or X.shape[1] != X_val.shape[1] \
            or Y.shape[1] != Y_val.shape[1]:
        raise ValueError(f"shape mismatch: X {X.shape}, Y {Y.shape}, X_val {X_val.shape}, Y_val {Y_val.shape}")
    if X.shape[0] == 0 or X_val.shape[0] == 0:
        raise ValueError("empty training or validation set")
    mcfg = HMCModelConfig.from_dict({**model_config, "n_features": X.shape[1], "n_labels": Y.shape[1]})
    tcfg = HMCTrainConfig.from_dict(train_config)
    if hierarchy is not None and len(hierarchy) != Y.shape[1]:
        raise ValueError(f"hierarchy has {len(hierarchy)} nodes but Y has {Y.shape[1]} labels")
    config = {"kind": HMC_KIND, "model": asdict(mcfg), "train": asdict(tcfg), **(extra_config or {})}
    if tcfg.threads:
        torch.set_num_threads(tcfg.threads)
    seed_everything(tcfg.seed)
    rng = np.random.default_rng(tcfg.seed)
    model = HMCModel(mcfg)
    with torch.no_grad():  # biases start at the log-odds of the training label frequencies
        freq = np.clip(np.asarray(Y.mean(axis=0)).ravel(), 1e-4, 1 - 1e-4)
        model.bias.copy_(torch.from_numpy(np.log(freq / (1 - freq)).astype(np.float32)))
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint.pt" if out is not None else None

    history, pre_losses, start = [], [], 0
    best = {"au_prc": -1.0, "epoch": 0, "state": None}
    enc_params = [p for n, p in model.named_parameters() if n != "label_vectors"]
    opt = torch.optim.Adam(enc_params + ([model.label_vectors] if mcfg.method == "flat" else []),
                           lr=tcfg.lr, weight_decay=tcfg.weight_decay)
    ropt = geoopt.optim.RiemannianAdam([model.label_vectors], lr=tcfg.lr_labels) if mcfg.method == "joint" else None
    if resume and ckpt is not None and ckpt.is_file():
        state = torch.load(ckpt, weights_only=False)
        old = {k: v for k, v in state["config"].items() if k != "train"}
        new = {k: v for k, v in config.items() if k != "train"}
        changed = {k for k in asdict(tcfg) if k not in ("epochs", "patience", "threads")
                   and state["config"]["train"].get(k) != asdict(tcfg)[k]}
        if old != new or changed:
            raise ValueError(f"{ckpt}: --resume with different settings ({sorted(changed) or 'model/data'}); "
                             "use a new --out or the same settings")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        if ropt is not None:
            ropt.load_state_dict(state["ropt"])
        history, pre_losses, best, start = state["history"], state["pre"], state["best"], state["epoch"]
        rng = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    elif mcfg.method == "cascaded":
        pre_losses = pretrain_label_embeddings(model, Y, tcfg, rng)

    sampler = _label_sampler(Y, tcfg.negatives, rng) if mcfg.method == "joint" else None
    levels = hierarchy.levels() if hierarchy is not None else None
    n = X.shape[0]
    n_steps = -(-n // tcfg.batch_size)
    label_steps = 1
    if sampler is not None:
        label_steps = tcfg.label_steps or max(1, -(-sampler[1] // (tcfg.pair_batch * n_steps)))
    for epoch in range(start, tcfg.epochs):
        if epoch - best["epoch"] >= tcfg.patience and best["epoch"] > 0:
            break
        model.train()
        sums = {"bce": 0.0, "label": 0.0, "contrastive": 0.0}
        perm = rng.permutation(n)
        steps = 0
        for s in range(0, n, tcfg.batch_size):
            rows = np.sort(perm[s:s + tcfg.batch_size])
            xb = to_tensor(X, rows)
            yb = torch.from_numpy(Y[rows].toarray())
            logits, h = model(xb)
            loss = F.binary_cross_entropy_with_logits(logits, yb)
            sums["bce"] += loss.item()
            if sampler is not None:
                p, neg = sampler[0](tcfg.pair_batch)
                ll = poincare_label_loss(model.label_vectors, p, neg)
                loss = loss + tcfg.label_weight * ll
                sums["label"] += ll.item()
            if tcfg.contrastive != "none":
                cl = himulcon_loss(h, yb, levels, tcfg.contrastive, tcfg.temperature)
                loss = loss + tcfg.contrastive_weight * cl
                sums["contrastive"] += cl.item()
            opt.zero_grad()
            if ropt is not None:
                ropt.zero_grad()
            loss.backward()
            opt.step()
            if ropt is not None:
                ropt.step()
                for _ in range(label_steps - 1):  # label-loss-only steps: one pass over the pairs per epoch
                    p, neg = sampler[0](tcfg.pair_batch)
                    ll = tcfg.label_weight * poincare_label_loss(model.label_vectors, p, neg)
                    ropt.zero_grad()
                    ll.backward()
                    ropt.step()
            steps += 1
        val, _ = _val_au_prc(model, X_val, Y_val, eval_labels)
        rec = {"epoch": epoch + 1, **{k: v / steps for k, v in sums.items()}, "val_au_prc": val,
               "seconds": round(time.time() - t0, 2)}
        history.append(rec)
        if progress:
            print(json.dumps(rec), flush=True)
        if val > best["au_prc"]:
            best = {"au_prc": val, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if ckpt is not None:
            atomic_torch_save({"config": config, "model": model.state_dict(), "opt": opt.state_dict(),
                               "ropt": ropt.state_dict() if ropt is not None else None, "history": history,
                               "pre": pre_losses, "best": best, "epoch": epoch + 1, "rng": rng,
                               "torch_rng": torch.get_rng_state()}, ckpt)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    _, P_val = _val_au_prc(model, X_val, Y_val, None)
    threshold, val_f1 = choose_threshold(Y_val, P_val, labels=eval_labels)
    config.update(threshold=threshold, val_micro_f1=val_f1, best_epoch=best["epoch"], val_au_prc=best["au_prc"])
    secs = time.time() - t0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(model.state_dict(), out / "model.pt")
        if hierarchy is not None:
            hierarchy.save(out / "hierarchy.json")
        atomic_save_json({"epochs": history, "pretrain_losses": pre_losses}, out / "history.json")
        atomic_save_json(config, out / "config.json")
        atomic_save_json({"method": mcfg.method, "best_epoch": best["epoch"], "val_au_prc": best["au_prc"],
                          "threshold": threshold, "val_micro_f1": val_f1, "epochs_run": len(history),
                          "train_seconds": round(secs, 2), **(extra_config or {})}, out / "train_summary.json")
        if ckpt is not None:
            ckpt.unlink(missing_ok=True)
    return HMCResult(model, threshold, best["epoch"], best["au_prc"], history, config, secs)


def is_hmc_dir(directory) -> bool:
    """Whether ``directory`` is an HMC model directory (its ``config.json`` says ``"xhyp-hmc"``)."""
    p = Path(directory) / "config.json"
    try:
        return p.is_file() and json.loads(p.read_text()).get("kind") == HMC_KIND
    except (OSError, ValueError):
        return False


class HMCPredictor:
    """A trained HMC model ready to score queries.

    Args:
        model: the :class:`HMCModel`. config: its ``config.json`` contents.
    """

    def __init__(self, model: HMCModel, config: dict):
        self.model = model.eval()
        self.config = config
        self.threshold = float(config.get("threshold", 0.5))

    @classmethod
    def load(cls, directory) -> "HMCPredictor":
        """Load a directory written by :func:`train_hmc`.

        Raises:
            FileNotFoundError: ``config.json`` or ``model.pt`` missing (the message names it).
        """
        d = Path(directory)
        for name in ("config.json", "model.pt"):
            if not (d / name).is_file():
                raise FileNotFoundError(f"{d / name} is missing: {d} is not a complete xhyp HMC model directory "
                                        "(was training interrupted? rerun `xhyp train ... --resume`)")
        config = json.loads((d / "config.json").read_text())
        model = HMCModel(HMCModelConfig.from_dict(config["model"]))
        model.load_state_dict(torch.load(d / "model.pt", weights_only=True))
        return cls(model, config)

    def predict(self, X, top_k: int | None = None, **_ignored) -> sp.csr_matrix:
        """``(Q, L)`` CSR sigmoid probabilities of every label (AU(PRC) and thresholded F1 need
        them all; ``top_k`` keeps only the ``top_k`` best per row when given and smaller than
        ``L``, and kNN options of the XMC predictor are ignored).

        Args:
            X: ``(Q, F)`` features (dense ndarray or CSR), preprocessed as at training time.
        """
        P = self.model.predict_proba(X)
        if top_k is not None and top_k < P.shape[1]:
            cut = np.argpartition(-P, top_k - 1, axis=1)[:, :top_k]
            keep = np.zeros_like(P, dtype=bool)
            np.put_along_axis(keep, cut, True, axis=1)
            P = np.where(keep, P, 0.0)
        return sp.csr_matrix(P, dtype=np.float32)
