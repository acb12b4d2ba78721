"""The CLI verbs for the HMC methods (``xhyp train|ensemble|run --method flat|cascaded|joint``)
and the hooks through which ``xhyp predict`` / ``xhyp evaluate`` handle HMC models and datasets.

The XMC flags that mean the same thing are reused (``--dim --projector --hidden --epochs
--batch-size --lr --lr-labels --negatives --patience --seed --threads``); the HMC-only flags are
added by :func:`add_hmc_args`. An HMC ensemble directory is an ordinary ensemble directory
(``ensemble.json`` + ``learner_XX``) whose members are HMC model directories; its prediction is
the mean of the members' probabilities.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config import parse_bool

__all__ = ["add_hmc_args", "hmc_settings", "run_hmc_verb", "train_hmc_model", "hmc_member_dirs", "hmc_predict",
           "hmc_metrics", "THRESHOLD_SUFFIX"]

THRESHOLD_SUFFIX = ".threshold.json"  # written beside an HMC prediction .npz: the validation threshold
_SHARED_MODEL = ("dim", "projector", "hidden")
_TRAIN_TO_MODEL = ("input_dropout",)  # XMC training flags that set an HMC model field (HMC default 0)
_SHARED_TRAIN = ("epochs", "batch_size", "lr", "lr_labels", "negatives", "patience", "seed", "threads", "contrastive",
                 "contrastive_weight", "temperature")


_HMC_FLAGS = {  # flag dest -> (type, HMC config section, help)
    "label_weight": (float, "train", "joint: weight of the Poincaré label loss (HiddeN: 0.1; default 0.1)"),
    "pretrain_epochs": (int, "train", "cascaded, and joint with --joint-init pretrained: passes over the "
                                      "co-occurring label pairs before the classifier (default 20)"),
    "pretrain_batch": (int, "train", "co-occurring pairs per pre-training step (default 4096)"),
    "joint_init": (str, "train", "joint: start from a random initialisation (random; HiddeN) or from the "
                                 "pre-trained label embeddings (pretrained) (default random)"),
    "pair_batch": (int, "train", "joint: co-occurring label pairs in the label loss of one step, independent of "
                                 "--batch-size (default 512; 0 = one pass over the pairs per epoch)"),
    "label_negatives": (str, "train", "negatives of the label loss: graded (labels co-occurring less often with "
                                      "the anchor, HiddeN's code) or disjoint (never co-occurring) (default graded)"),
    "refit": (parse_bool, "train", "after early stopping, retrain on train + validation for the best number of "
                              "epochs (C-HMCNN's final training): true or false"),
    "weight_decay": (float, "train", "Adam weight decay of the classifier (default 1e-5)"),
    "label_lr": (float, "train", "Adam learning rate of the label vectors while the classifier trains "
                                 "(default 0 = --lr)"),
    "label_score": (str, "model", "how a label vector scores a document: dot (h . e_l, HiddeN's code) or unit "
                                  "(g_l h . e_l / |e_l|, a learned per-label gain; the label's norm out of the "
                                  "score) (default: the dataset's setting, else dot)"),
    "dropout": (float, "model", "dropout after every hidden layer (C-HMCNN: 0.7; default 0.7)"),
    "layers": (int, "model", "hidden layers of the MLP projector (default 2)"),
    "coherent": (parse_bool, "model", "hierarchy-coherent output (C-HMCNN's MCM) and max-constraint loss: true or "
                                 "false (default true; no effect without a hierarchy)"),
}


def add_hmc_args(parser) -> None:
    """``--method`` and the HMC-only flags on a ``train``/``ensemble``/``run`` sub-parser."""
    parser.add_argument("--method", default="xmc", choices=("xmc", "flat", "cascaded", "joint"),
                        help="xmc: the hyperbolic kNN model (default); flat / cascaded / joint: the HMC "
                             "classifiers of HiddeN (Chatterjee et al. 2021) on an HMC --dataset")
    g = parser.add_argument_group("hierarchical multi-label (--method flat|cascaded|joint)")
    for dest, (typ, _, text) in _HMC_FLAGS.items():
        g.add_argument("--" + dest.replace("_", "-"), dest=f"hmc.{dest}", type=typ, default=None, help=text)


def hmc_settings(args, model: dict, train_cfg: dict) -> tuple[dict, dict]:
    """``(HMCModelConfig fields, HMCTrainConfig fields)`` from the parsed flags and the XMC-named
    settings (``model``/``train_cfg``, flags and ``--config`` merged).

    Raises:
        ValueError: an XMC-only setting was given (it would be silently ignored).
    """
    bad = sorted(set(model) - set(_SHARED_MODEL)) + \
        sorted(set(train_cfg) - set(_SHARED_TRAIN) - set(_TRAIN_TO_MODEL))
    if bad:
        raise ValueError(f"--method {args.method}: option(s) {', '.join('--' + b.replace('_', '-') for b in bad)} "
                         "apply only to --method xmc")
    m = {k: model[k] for k in _SHARED_MODEL if k in model}
    m.update({k: train_cfg[k] for k in _TRAIN_TO_MODEL if k in train_cfg})
    t = {k: train_cfg[k] for k in _SHARED_TRAIN if k in train_cfg}
    for dest, (_, section, _) in _HMC_FLAGS.items():
        v = getattr(args, f"hmc.{dest}", None)
        if v is not None:
            (m if section == "model" else t)[dest] = v
    return {**m, "method": args.method}, t


def train_hmc_model(out_dir, dataset: str, data_dir=None, model: dict | None = None, train_cfg: dict | None = None,
                    resume: bool = False, progress: bool = True) -> dict:
    """``xhyp train --method ...``: train one HMC model on a registry HMC dataset into ``out_dir``,
    starting from the dataset's settings (:func:`xhyp.hmc.settings.settings_for`; ``model`` and
    ``train_cfg`` override them).

    Returns:
        the ``train_summary.json`` contents.

    Raises:
        ValueError: no dataset, or not an HMC dataset.
    """
    from xhyp.datasets.hmc import load_hmc
    from .settings import settings_for
    from .train import train_hmc

    if not dataset:
        raise ValueError("the HMC methods need --dataset (a registry HMC dataset: cellcycle_FUN, derisi_GO, "
                         "Enron_corr, ImCLEF07D, rcv1); --file is for the XMC model")
    d = load_hmc(dataset, data_dir)
    m0, t0 = settings_for(dataset, (model or {}).get("method"))
    train_hmc(d.X_train, d.Y_train, d.X_val, d.Y_val, {**m0, **(model or {})}, {**t0, **(train_cfg or {})},
              hierarchy=d.hierarchy, eval_labels=d.eval_labels, out_dir=out_dir, resume=resume, progress=progress,
              extra_config={"dataset": dataset})
    return json.loads((Path(out_dir) / "train_summary.json").read_text())


def run_hmc_verb(args, model: dict, train_cfg: dict) -> dict:
    """``train`` / ``ensemble`` / ``run`` with ``--method flat|cascaded|joint`` (see :mod:`xhyp.cli`).

    Returns:
        the training summary (``train``), ``{"members", "learners"}`` (``ensemble``) or the test
        metrics record (``run``).

    Raises:
        ValueError: an XMC-only option, ``--file`` instead of a registry ``--dataset``, no dataset
            or not an HMC dataset, or bad settings (:class:`xhyp.hmc.train.HMCTrainConfig`).
    """
    from xhyp.utils import atomic_save_json

    m, t = hmc_settings(args, model, train_cfg)
    if getattr(args, "path", None):
        raise ValueError("the HMC methods read a registry --dataset, not --file")
    progress = not getattr(args, "no_progress", False)
    if args.verb == "train":
        return train_hmc_model(args.out, args.dataset, args.data_dir, m, t, resume=args.resume, progress=progress)
    if args.verb == "ensemble":
        out = Path(args.out)
        seed = int(t.get("seed", 0))
        members, summaries = [], []
        for i in range(args.learners):
            name = f"learner_{i:02d}"
            d = out / name
            if (d / "train_summary.json").is_file() and (d / "model.pt").is_file():
                summaries.append(json.loads((d / "train_summary.json").read_text()))
            else:
                summaries.append(train_hmc_model(d, args.dataset, args.data_dir, m, {**t, "seed": seed + i},
                                                 resume=True, progress=progress))
            members.append(name)
        meta = {"kind": "xhyp-ensemble", "members": members, "seed": seed, "model": m, "train": t,
                "dataset": args.dataset, "method": args.method}
        atomic_save_json(meta, out / "ensemble.json")
        res = {"members": members, "learners": summaries}
        atomic_save_json(res, out / "ensemble_summary.json")
        return res
    # run: train, predict the test split, evaluate
    from xhyp.datasets.hmc import load_hmc_split

    out = Path(args.out)
    s = train_hmc_model(out / "model", args.dataset, args.data_dir, m, t, progress=progress)
    X, Y = load_hmc_split(args.dataset, "test", args.data_dir)
    t0 = time.time()
    S, thr = hmc_predict([out / "model"], X)
    secs = time.time() - t0
    metrics = hmc_metrics(args.dataset, Y, S, thr, args.data_dir)
    res = {"dataset": args.dataset, "method": args.method, "metrics": metrics, "train_seconds": s["train_seconds"],
           "predict_seconds": round(secs, 3), "best_epoch": s["best_epoch"], "val_au_prc": s["val_au_prc"]}
    atomic_save_json(res, out / "metrics.json")
    return res


def hmc_member_dirs(dirs) -> list[Path] | None:
    """The HMC model directories that ``dirs`` (model or ensemble directories) stand for, or None
    when they are not HMC models.

    Raises:
        ValueError: ``dirs`` mix HMC and XMC models.
    """
    from .train import is_hmc_dir

    out = []
    for d in map(Path, dirs):
        if (d / "ensemble.json").is_file():
            meta = json.loads((d / "ensemble.json").read_text())
            out.extend(d / m for m in meta.get("members", []))
        else:
            out.append(d)
    if out and all(is_hmc_dir(d) for d in out):
        return out
    if any(is_hmc_dir(d) for d in out):
        raise ValueError("cannot mix HMC and XMC models in one prediction")
    return None


def hmc_predict(member_dirs, X) -> tuple[sp.csr_matrix, float]:
    """Mean of the members' ``(Q, L)`` probabilities (every label kept) and their mean threshold."""
    from .train import HMCPredictor

    total, thr = None, []
    for d in member_dirs:
        p = HMCPredictor.load(d)
        P = p.model.predict_proba(X)
        total = P if total is None else total + P
        thr.append(p.threshold)
    return sp.csr_matrix(total / len(thr), dtype=np.float32), float(np.mean(thr))


def hmc_metrics(dataset: str | None, Y, S, threshold: float | None = None, data_dir=None) -> dict | None:
    """HMC metrics (:func:`xhyp.metrics.hmc_evaluate`) of a score matrix when ``dataset`` is
    an HMC dataset (GO roots left out), else None."""
    if dataset is None:
        return None
    from xhyp.datasets.registry import get_spec
    from xhyp.metrics import hmc_evaluate

    from xhyp.datasets.hmc import GO_ROOTS

    try:
        spec = get_spec(dataset)
    except KeyError:
        return None
    if spec.fmt == "xc":
        return None
    labels = None
    if spec.fmt == "hmc-arff":
        from xhyp.datasets.formats import read_hmc_arff  # names only: cheap enough for these sizes
        from xhyp.datasets.registry import resolve_data_dir

        names = read_hmc_arff(resolve_data_dir(data_dir) / spec.files[1])[2]
        labels = np.array([i for i, n in enumerate(names) if n not in GO_ROOTS])
    return hmc_evaluate(Y, S, 0.5 if threshold is None else threshold, labels=labels)
