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

import numpy as np
import scipy.sparse as sp
import torch

from xhyp.config import ConfigBase, check_choice
from xhyp.utils import atomic_save_json, atomic_torch_save, seed_everything

from .losses import CONTRASTIVE_KINDS, LabelPairSampler, himulcon_loss, max_constraint_loss, poincare_label_loss
from .models import HMCModel, HMCModelConfig, to_tensor

__all__ = ["HMCTrainConfig", "HMCResult", "train_hmc", "pretrain_label_embeddings", "HMCPredictor", "HMC_KIND",
           "is_hmc_dir", "JOINT_INITS"]

HMC_KIND = "xhyp-hmc"
JOINT_INITS = ("pretrained", "random")


@dataclass
class HMCTrainConfig(ConfigBase):
    """Training settings of the HMC methods (saved as ``config.json["train"]``).

    Attributes:
        epochs: maximum classifier epochs (early stopping usually ends training before).
        batch_size: examples per step.
        lr: Adam learning rate of the classifier (encoder, biases, label vectors).
        weight_decay: L2 penalty of Adam (all classifier parameters, as C-HMCNN).
        label_weight: weight ``w`` of the Poincaré label loss in ``joint`` (HiddeN: 0.1).
        negatives: sampled negative labels per co-occurring pair (HiddeN: 5).
        label_negatives: ``"graded"`` (labels co-occurring less often with the anchor than the
            positive, HiddeN's code) or ``"disjoint"`` (labels never co-occurring with the anchor);
            see :class:`xhyp.hmc.losses.LabelPairSampler`.
        pair_batch: co-occurring pairs in the label loss of one ``joint`` step, drawn
            independently of the examples of the batch; 0: enough for one pass over the
            (ordered) pairs per epoch, at least 256.
        pretrain_epochs: passes over the co-occurring pairs of the label-embedding pre-training
            (the label loss alone): ``cascaded``'s first stage, and ``joint``'s burn-in when
            ``joint_init="pretrained"``.
        pretrain_batch: pairs per pre-training step.
        lr_labels: Adam learning rate of the pre-training.
        label_lr: Adam learning rate of the label vectors while the classifier trains (0: ``lr``),
            so that ``joint``'s label loss can move them as far as the pre-training does.
        joint_init: ``"random"`` (HiddeN: ``joint`` starts from a random initialisation) or
            ``"pretrained"`` (from the pre-trained label embeddings, a burn-in as Nickel & Kiela's,
            then learns them with the classifier).
        contrastive: ``"none"``, ``"hmc"`` or ``"hmce"``: HiMulCon term between the batch's examples.
        contrastive_weight: its weight.
        temperature: its softmax temperature.
        patience: epochs without a better validation AU(PRC) before stopping.
        refit: after early stopping, train a new model on the training and validation examples
            together for the best number of epochs (C-HMCNN's final training; see :func:`train_hmc`).
        seed: seed of initialisation, shuffling and sampling.
        threads: torch CPU threads (0: leave torch's default).
    """

    epochs: int = 100
    batch_size: int = 32
    lr: float = 1e-3
    weight_decay: float = 1e-5
    label_weight: float = 0.1
    negatives: int = 5
    label_negatives: str = "graded"
    pair_batch: int = 512
    pretrain_epochs: int = 20
    pretrain_batch: int = 4096
    lr_labels: float = 1e-2
    label_lr: float = 0.0
    joint_init: str = "random"
    contrastive: str = "none"
    contrastive_weight: float = 0.1
    temperature: float = 0.1
    patience: int = 10
    refit: bool = False
    seed: int = 0
    threads: int = 0

    def __post_init__(self):
        check_choice("contrastive", self.contrastive, CONTRASTIVE_KINDS)
        check_choice("label_negatives", self.label_negatives, LabelPairSampler.KINDS)
        check_choice("joint_init", self.joint_init, JOINT_INITS)
        if min(self.epochs, self.batch_size, self.negatives, self.pretrain_batch, self.patience) < 1 \
                or self.pair_batch < 0 or self.pretrain_epochs < 0:
            raise ValueError(f"epochs, batch_size, negatives, pretrain_batch and patience must be positive, "
                             f"pair_batch and pretrain_epochs >= 0: {self}")
        if not (self.lr > 0 and self.lr_labels > 0 and self.label_lr >= 0 and self.weight_decay >= 0
                and self.label_weight >= 0 and self.contrastive_weight >= 0 and self.temperature > 0):
            raise ValueError(f"lr, lr_labels and temperature must be positive, label_lr and the weights >= 0: "
                             f"{self}")


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


def pretrain_label_embeddings(model: HMCModel, Y, cfg: HMCTrainConfig, rng) -> list[float]:
    """Label-embedding pre-training: Nickel & Kiela's loss on the label co-occurrence graph of
    ``Y`` alone (Adam, ``cfg.lr_labels``, ``cfg.pretrain_epochs`` passes of ``cfg.pretrain_batch``
    pairs), on the model's label vectors as hyperboloid coordinates (HiddeN's parametrisation).
    ``cascaded``'s first stage (its label vectors stay fixed afterwards) and ``joint``'s burn-in.

    Returns:
        the mean loss of each epoch.
    """
    pairs = LabelPairSampler(Y, cfg.negatives, cfg.label_negatives)
    if len(pairs) == 0 or cfg.pretrain_epochs == 0:
        return []
    E = model.label_vectors
    was = E.requires_grad
    E.requires_grad_(True)
    opt = torch.optim.Adam([E], lr=cfg.lr_labels, foreach=True)
    losses = []
    steps = max(1, -(-len(pairs) // cfg.pretrain_batch))
    for _ in range(cfg.pretrain_epochs):
        tot = 0.0
        for _ in range(steps):
            loss = poincare_label_loss(E, *pairs.draw(cfg.pretrain_batch, rng), coords="hyperboloid")
            opt.zero_grad()
            loss.backward()
            opt.step()
            tot += loss.item()
        losses.append(tot / steps)
    E.requires_grad_(was)
    return losses


def _val_au_prc(model, X_val, Y_val, labels):
    from xhyp.metrics import au_prc_fast

    P = model.predict_proba(X_val)
    T = Y_val.toarray()
    if labels is not None:
        T, S = T[:, labels], P[:, labels]
    else:
        S = P
    return au_prc_fast(T, S.astype(np.float32)), P  # the per-epoch score: float32 sorts faster


def _dense_rows(X):
    """Dense float32 features as one tensor (sliced per batch), or None for sparse ones."""
    return None if sp.issparse(X) else torch.from_numpy(np.ascontiguousarray(X, dtype=np.float32))


class _Fit:
    """One model being trained on ``(X, Y)``: the model (biases at the log-odds of the label
    frequencies, label vectors pre-trained when the method asks for it), its optimiser, and the
    label pairs of ``joint``'s label loss."""

    def __init__(self, mcfg, tcfg, X, Y, hierarchy, eval_labels, rng, pretrain: bool = True):
        self.tcfg, self.X, self.rng = tcfg, X, rng
        self.model = model = HMCModel(mcfg, hierarchy)
        with torch.no_grad():
            freq = np.clip(np.asarray(Y.mean(axis=0)).ravel(), 1e-4, 1 - 1e-4)
            model.bias.copy_(torch.from_numpy(np.log(freq / (1 - freq)).astype(np.float32)))
        params = [p for p in model.parameters() if p.requires_grad]
        if tcfg.label_lr and tcfg.label_lr != tcfg.lr and model.label_vectors.requires_grad:
            params = [{"params": [p for p in params if p is not model.label_vectors]},
                      {"params": [model.label_vectors], "lr": tcfg.label_lr}]
        # foreach: the same steps bit for bit as the per-parameter loop, faster
        self.opt = torch.optim.Adam(params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, foreach=True)
        wants_pre = mcfg.method == "cascaded" or (mcfg.method == "joint" and tcfg.joint_init == "pretrained")
        self.pre_losses = pretrain_label_embeddings(model, Y, tcfg, rng) if (pretrain and wants_pre) else []
        self.pairs = None
        if mcfg.method == "joint" and tcfg.label_weight > 0:
            self.pairs = LabelPairSampler(Y, tcfg.negatives, tcfg.label_negatives)
            self.pairs = self.pairs if len(self.pairs) else None
        n_steps = -(-X.shape[0] // tcfg.batch_size)
        self.pair_batch = (tcfg.pair_batch or max(256, -(-len(self.pairs) // n_steps))) if self.pairs else 0
        self.levels = hierarchy.levels() if hierarchy is not None else None
        self.Xt, self.Yt = _dense_rows(X), torch.from_numpy(Y.toarray())
        self.cols = torch.as_tensor(np.asarray(eval_labels), dtype=torch.long) if eval_labels is not None else None

    def epoch(self) -> dict:
        """One pass over the examples in a random order; returns the mean loss terms."""
        model, tcfg, rng = self.model, self.tcfg, self.rng
        model.train()
        sums = {"loss": 0.0, "label": 0.0, "contrastive": 0.0}
        n = self.Yt.shape[0]
        perm = torch.from_numpy(rng.permutation(n))
        steps = 0
        for s in range(0, n, tcfg.batch_size):
            rows = perm[s:s + tcfg.batch_size]
            xb = self.Xt[rows] if self.Xt is not None else to_tensor(self.X, rows.numpy())
            yb = self.Yt[rows]
            logits, h = model(xb)
            loss = max_constraint_loss(logits, yb, model.mcm_plan(logits.device), self.cols)
            sums["loss"] += loss.item()
            if self.pairs is not None:
                ll = poincare_label_loss(model.label_vectors, *self.pairs.draw(self.pair_batch, rng),
                                         coords="hyperboloid")
                loss = loss + tcfg.label_weight * ll
                sums["label"] += ll.item()
            if tcfg.contrastive != "none":
                cl = himulcon_loss(h, yb, self.levels, tcfg.contrastive, tcfg.temperature)
                loss = loss + tcfg.contrastive_weight * cl
                sums["contrastive"] += cl.item()
            self.opt.zero_grad()
            loss.backward()
            self.opt.step()
            steps += 1
        return {k: v / steps for k, v in sums.items()}


def train_hmc(X, Y, X_val, Y_val, model_config: dict, train_config: dict, hierarchy=None, eval_labels=None,
              out_dir=None, resume: bool = False, progress: bool = False, extra_config: dict | None = None
              ) -> HMCResult:
    """Train one HMC model (see :mod:`xhyp.hmc.models` for the methods).

    Loss per step: C-HMCNN's max-constraint loss on the ``eval_labels`` columns
    (:func:`xhyp.hmc.losses.max_constraint_loss`; plain binary cross-entropy without a hierarchy
    or with ``coherent=False``) ``+ label_weight * poincare_label_loss`` over ``pair_batch``
    sampled co-occurring pairs (``joint``) ``+ contrastive_weight * himulcon_loss(h, Y_batch,
    levels)`` (when ``contrastive != "none"``; ``levels`` from ``hierarchy``, label overlap
    without one). One Adam optimiser (``lr``, ``weight_decay``) for every trained parameter
    (``label_lr`` for the label vectors when set).
    ``cascaded`` (and ``joint`` with ``joint_init="pretrained"``) first pre-train the label
    vectors (:func:`pretrain_label_embeddings`). Each epoch ends with the validation AU(PRC) of
    the (coherent) probabilities; the best epoch is kept, training stops after ``patience``
    epochs without improvement, and the F1 threshold is the one maximising the validation
    micro-F1 of the best epoch. With ``refit`` (C-HMCNN's protocol) a new model (same seed) is
    then trained on the training and validation examples together for that best number of
    epochs, and replaces it (the threshold stays the one chosen on validation).

    Args:
        X, X_val: ``(N, F)`` / ``(N_val, F)`` float32 features (dense ndarray or CSR).
        Y, Y_val: binary ``(N, L)`` / ``(N_val, L)`` labels (CSR or dense).
        model_config: :class:`HMCModelConfig` fields (``n_features``/``n_labels`` are filled in).
        train_config: :class:`HMCTrainConfig` fields.
        hierarchy: :class:`xhyp.datasets.hmc.Hierarchy` or None.
        eval_labels: label ids used by the loss and the validation metrics (default: all).
        out_dir: model directory (None: nothing written).
        resume: continue from ``out_dir/checkpoint.pt`` (the settings must be the same; the
            refit phase, not checkpointed, is rerun from its start).
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
    out = Path(out_dir) if out_dir is not None else None
    ckpt = out / "checkpoint.pt" if out is not None else None
    state = torch.load(ckpt, weights_only=False) if (resume and ckpt is not None and ckpt.is_file()) else None
    if state is not None:
        old = {k: v for k, v in state["config"].items() if k != "train"}
        new = {k: v for k, v in config.items() if k != "train"}
        changed = {k for k in asdict(tcfg) if k not in ("epochs", "patience", "threads")
                   and state["config"]["train"].get(k, getattr(HMCTrainConfig, k, None)) != asdict(tcfg)[k]}
        if old != new or changed:
            raise ValueError(f"{ckpt}: --resume with different settings ({sorted(changed) or 'model/data'}); "
                             "use a new --out or the same settings")
    fit = _Fit(mcfg, tcfg, X, Y, hierarchy, eval_labels, np.random.default_rng(tcfg.seed), pretrain=state is None)
    model, history, start = fit.model, [], 0
    best = {"au_prc": -1.0, "epoch": 0, "state": None}
    if state is not None:
        model.load_state_dict(state["model"])
        fit.opt.load_state_dict(state["opt"])
        history, fit.pre_losses, best, start = state["history"], state["pre"], state["best"], state["epoch"]
        fit.rng = state["rng"]
        torch.set_rng_state(state["torch_rng"])
    for epoch in range(start, tcfg.epochs):
        if epoch - best["epoch"] >= tcfg.patience and best["epoch"] > 0:
            break
        losses = fit.epoch()
        val, _ = _val_au_prc(model, X_val, Y_val, eval_labels)
        rec = {"epoch": epoch + 1, **losses, "val_au_prc": val, "seconds": round(time.time() - t0, 2)}
        history.append(rec)
        if progress:
            print(json.dumps(rec), flush=True)
        if val > best["au_prc"]:
            best = {"au_prc": val, "epoch": epoch + 1,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()}}
        if ckpt is not None:
            atomic_torch_save({"config": config, "model": model.state_dict(), "opt": fit.opt.state_dict(),
                               "history": history, "pre": fit.pre_losses, "best": best, "epoch": epoch + 1,
                               "rng": fit.rng, "torch_rng": torch.get_rng_state()}, ckpt)
    if best["state"] is not None:
        model.load_state_dict(best["state"])
    model.eval()
    _, P_val = _val_au_prc(model, X_val, Y_val, None)
    threshold, val_f1 = choose_threshold(Y_val, P_val, labels=eval_labels)
    config.update(threshold=threshold, val_micro_f1=val_f1, best_epoch=best["epoch"], val_au_prc=best["au_prc"])
    pre_losses, refit_history = fit.pre_losses, []
    if tcfg.refit and best["epoch"] > 0:
        seed_everything(tcfg.seed)
        X_all = sp.vstack([X, X_val]).tocsr() if sp.issparse(X) else np.concatenate([X, X_val])
        refit = _Fit(mcfg, tcfg, X_all, sp.vstack([Y, Y_val]).tocsr(), hierarchy, eval_labels,
                     np.random.default_rng(tcfg.seed))
        for epoch in range(best["epoch"]):
            refit_history.append({"epoch": epoch + 1, **refit.epoch(), "seconds": round(time.time() - t0, 2)})
        model, pre_losses = refit.model.eval(), refit.pre_losses
    secs = time.time() - t0
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
        atomic_torch_save(model.state_dict(), out / "model.pt")
        if hierarchy is not None:
            hierarchy.save(out / "hierarchy.json")
        atomic_save_json({"epochs": history, "refit_epochs": refit_history, "pretrain_losses": pre_losses},
                         out / "history.json")
        atomic_save_json(config, out / "config.json")
        atomic_save_json({"method": mcfg.method, "best_epoch": best["epoch"], "val_au_prc": best["au_prc"],
                          "threshold": threshold, "val_micro_f1": val_f1, "epochs_run": len(history),
                          "refit": tcfg.refit, "train_seconds": round(secs, 2), **(extra_config or {})},
                         out / "train_summary.json")
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
        from xhyp.datasets.hmc import Hierarchy

        hier = Hierarchy.load(d / "hierarchy.json") if (d / "hierarchy.json").is_file() else None
        model = HMCModel(HMCModelConfig.from_dict(config["model"]), hier)
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
