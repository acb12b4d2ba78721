"""Accuracy sweep: training and prediction variants on a held-out part of the training split.

Protocol (the project's held-out rule: choose on part of train, never on test):

* ``--split holdout`` (the default): a seeded ``--holdout`` share of the **training** split
  (:func:`xhyp.eval.vote_sweep.holdout_split`, seed ``--holdout-seed``) is set aside; every
  learner trains on the rest. Inside that, the trainer keeps its own validation split
  (``val_fraction``, 5 %) for early stopping and for the after-training choices it stores with
  the model (vote ``k``, re-ranker weight: :func:`xhyp.rerank.fit_prediction`); the held-out part
  is never seen by training and is only scored here.
* ``--split test``: the same variants trained on the whole training split and scored on the test
  split: run only for the settings chosen on the held-out part.

Every variant (:data:`VARIANTS`: model and training settings, spelled out in full where they
differ from the library defaults so a variant keeps its meaning when the defaults change) is
trained with seeds ``--seed .. --seed + M - 1`` (``M = max(--learners)``); each learner's top-100
scores are cached in ``OUT/cache/SPLIT/DATASET/VARIANT/seedS/`` with its timings and
label-space statistics, so later runs (more variants, larger ensembles) reuse them. An ensemble
of ``m`` learners sums the first ``m`` learners' scores (Gerald & Baskiotis 2019, section 2.6).
``--peers parabel bonsai`` also trains omikuji's Parabel and Bonsai (``bench/peers.py``'s
settings) on the same split, so every figure has its peers beside it.

Reported per (data set, variant, ensemble size): P@1/3/5 and PSP@1/3/5 (Jain et al. 2016
propensities from the training labels, ``A, B`` from the registry), training seconds (sum over
learners), and for learner 0 the Spearman correlation of label frequency with the label
embedding's distance to the origin (``rho``; negative: frequent labels nearer the centre) and the
median label norm.

Example::

    python -m xhyp.eval.accuracy_sweep --datasets bibtex delicious --data-dir ../shared/data \\
        --out runs/accuracy --variants paper rerank --learners 1 --peers parabel bonsai

Writes ``OUT/accuracy_sweep.md`` and ``OUT/accuracy_sweep.json`` (all results so far: each run
merges into them).
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from xhyp.eval.common import add_common_args, command_line, load_xy, propensity_ab, write_outputs
from xhyp.eval.vote_sweep import holdout_split
from xhyp.utils import atomic_save_json, atomic_save_sparse

METRICS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5")
TOP_K = 100

# the defaults before this sweep: kNN vote with k = 20, no re-ranker (pinned so the variants below
# keep their meaning whatever the library defaults are)
_PAPER = {"knn": 20, "knn_grid": "", "rerank": "none"}
_RERANK = {"knn": 20, "knn_grid": "5,10,20,30,50", "rerank": "linear", "rerank_knn": 50, "rerank_c": 1.0,
           "rerank_weights": "0,0.5,1,2,4,8"}

VARIANTS: dict[str, dict] = {
    "paper": {"model": {}, "train": dict(_PAPER),
              "note": "the previous defaults: alpha 30, 500 shared negatives, kNN vote k = 20"},
    "auto-k": {"model": {}, "train": dict(_PAPER, knn_grid="5,10,20,30,50"),
               "note": "vote k chosen on the validation split after training"},
    "rerank": {"model": {}, "train": dict(_RERANK),
               "note": "shortlist of 50 neighbours re-ranked by per-label linear SVMs on mined hard negatives"},
}


def _variant(name: str, note: str, base: str = "rerank", model: dict | None = None, **train) -> None:
    """Register ``name``: the variant ``base`` with these model / training changes."""
    b = VARIANTS[base]
    VARIANTS[name] = {"model": dict(b["model"], **(model or {})), "train": dict(b["train"], **train), "note": note}


# where the optimum sits in the ball: label step size, softmax scale, initialisation
for _lrl in (0.01, 0.03, 0.1):
    _variant(f"rerank-lrl{_lrl}", f"label learning rate {_lrl}", lr_labels=_lrl)
for _a, _lrl in ((10, 0.03), (10, 0.1), (5, 0.03), (5, 0.1), (5, 0.3), (4, 0.1), (3, 0.03), (3, 0.1), (3, 0.3), (2, 0.1),
                 (1, 0.1)):
    _variant(f"rerank-a{_a}-lrl{_lrl}", f"alpha {_a}, label learning rate {_lrl}", alpha=float(_a), lr_labels=_lrl)
_variant("rerank-init0.01-lrl0.03", "labels initialised with std 1e-2, label learning rate 0.03",
         model={"init_std_labels": 0.01}, lr_labels=0.03)
for _std in (0.05, 0.1):
    _variant(f"rerank-a5-lrl0.1-init{_std}", f"alpha 5, label learning rate 0.1, labels initialised with std {_std}",
             "rerank-a5-lrl0.1", model={"init_std_labels": _std})
# negatives: without replacement (Bibtex: all 159 labels, the full softmax), all labels on Delicious too
_variant("rerank-unique", "500 shared negatives drawn without replacement", negative_draw="unique")
_variant("rerank-full", "full softmax: every label a negative", negative_draw="unique", shared_negatives=100000)
_variant("rerank-a5-lrl0.1-full", "alpha 5, label learning rate 0.1, full softmax", "rerank-a5-lrl0.1",
         negative_draw="unique", shared_negatives=100000)
# capacity and features
for _d in (100, 200):
    _variant(f"rerank-dim{_d}", f"embedding dimension {_d}", model={"dim": _d})
_variant("rerank-a5-lrl0.1-dim100", "alpha 5, label learning rate 0.1, dimension 100", "rerank-a5-lrl0.1",
         model={"dim": 100})
_variant("rerank-mlp", "MLP projector (hidden 256)", model={"projector": "mlp"})
_variant("rerank-tfidf", "tf-idf features", features="tfidf")
# the re-ranker's own settings
for _c in (0.3, 3.0):
    _variant(f"rerank-c{_c}", f"SVM C = {_c}", rerank_c=_c)
_variant("rerank-sl100", "shortlists of 100 neighbours", rerank_knn=100)
_variant("rerank-euclid", "Euclidean geometry", model={"geometry": "euclidean"})
_variant("rerank-a5-lrl0.1-untrained", "ablation: the re-ranker on an untrained (random) embedding",
         "rerank-a5-lrl0.1", epochs=0)
for _a in (3, 5):
    _variant(f"rerank-a{_a}-lrl0.1-euclid", f"Euclidean geometry, alpha {_a}, label learning rate 0.1",
             f"rerank-a{_a}-lrl0.1", model={"geometry": "euclidean"})


def variant_config(name: str) -> dict:
    """``{"model": ..., "train": ...}`` of a registered variant.

    Raises:
        KeyError: unknown name (the message lists the known ones).
    """
    if name not in VARIANTS:
        raise KeyError(f"unknown variant {name!r}; known: {', '.join(VARIANTS)}")
    v = VARIANTS[name]
    return {"model": dict(v.get("model", {})), "train": dict(v.get("train", {}))}


def split_data(dataset: str, split: str, data_dir, holdout: float, holdout_seed: int):
    """``(X_fit, Y_fit, X_eval, Y_eval)`` of a data set: train/held-out part, or train/test."""
    X, Y = load_xy(dataset, "train", data_dir)
    if split == "test":
        Xt, Yt = load_xy(dataset, "test", data_dir)
        return X, Y, Xt, Yt
    fit, out = holdout_split(X.shape[0], holdout, holdout_seed)
    return X[fit], Y[fit], X[out], Y[out]


def label_space_stats(model, Y_fit: sp.csr_matrix) -> dict:
    """Spearman rho of label frequency against ``d(0, w_l)``, the label-norm quartiles, the
    median norm of the training examples, and ``rho_centred``: rho about the training examples'
    midpoint instead of the origin (Poincaré: the Einstein midpoint moved to the origin by a
    Möbius translation, an isometry; Euclidean: the mean), i.e. "frequent labels near the centre of
    the data" whatever point of the ball the data sits around."""
    import torch

    from xhyp.plot import distance_to_origin, spearman_frequency_distance

    W = model.labels.detach().double().cpu()
    E = model.train_emb.double()
    freq = np.asarray(Y_fit.sum(0)).ravel()
    rho, _ = spearman_frequency_distance(freq, distance_to_origin(W.numpy(), model.config.geometry))
    if model.config.geometry == "poincare":
        import geoopt

        ball = geoopt.PoincareBall()
        Wc = ball.mobius_add(-ball.weighted_midpoint(E, reducedim=[0])[None, :], W)
    else:
        Wc = W - E.mean(0, keepdim=True)
    rho_c, _ = spearman_frequency_distance(freq, distance_to_origin(Wc.numpy(), model.config.geometry))
    q = np.quantile(torch.linalg.norm(W, dim=1).numpy(), [0.1, 0.5, 0.9])
    return {"rho": rho, "rho_centred": rho_c, "label_norm_q10_50_90": [float(v) for v in q],
            "example_norm_median": float(torch.linalg.norm(E, dim=1).median())}


def run_learner(cell: Path, data, cfg: dict, seed: int, log=print) -> tuple[sp.csr_matrix, sp.csr_matrix, dict]:
    """Train one learner (or read it from ``cell/seedS``) and score the evaluation rows: ``(scores,
    vote-only scores (the same without a re-ranker), info)``."""
    from xhyp.predict import Predictor
    from xhyp.train import train

    d = cell / f"seed{seed}"
    info_path, scores_path, vote_path = d / "info.json", d / "scores.npz", d / "scores_vote.npz"
    if info_path.is_file() and scores_path.is_file():
        info = json.loads(info_path.read_text())
        if info.get("config") == cfg:  # (learners cached before vote-only scores were kept: None)
            return (sp.load_npz(scores_path).tocsr(),
                    sp.load_npz(vote_path).tocsr() if vote_path.is_file() else None, info)
    X_fit, Y_fit, X_eval, _ = data
    t0 = time.time()
    res = train(X_fit, Y_fit, cfg["model"], dict(cfg["train"], seed=seed), out_dir=None, progress=False)
    t_train = time.time() - t0
    pred = Predictor.from_train_result(res)
    t0 = time.time()
    S = pred.predict(X_eval, top_k=TOP_K)
    t_pred = time.time() - t0
    S_vote = pred.predict(X_eval, top_k=TOP_K, rerank_weight=0.0) if pred.scorer is not None else S
    pc = {k: v for k, v in res.config.get("predict", {}).items() if k != "selection"}
    info = {"config": cfg, "seed": seed, "train_seconds": round(t_train, 2), "predict_seconds": round(t_pred, 3),
            "best_epoch": res.best_epoch, "epochs_run": len(res.history), "predict_settings": pc,
            "load_avg": list(os.getloadavg()), **label_space_stats(res.model, Y_fit)}
    d.mkdir(parents=True, exist_ok=True)
    atomic_save_sparse(scores_path, S)
    atomic_save_sparse(vote_path, S_vote)
    atomic_save_json(info, info_path)
    log(f"[accuracy_sweep] {cell.name} seed {seed}: {t_train:.1f}s train, best epoch {res.best_epoch}, "
        f"k {pc.get('k')}, w {pc.get('rerank_weight')}, rho {info['rho']:.3f}")
    return S, S_vote, info


def score(Y_eval, S, inv_prop) -> dict:
    """P@k and PSP@k (k = 1, 3, 5) of a score matrix, as fractions."""
    from xhyp.eval.metrics import evaluate

    m = evaluate(Y_eval, S, ks=(1, 3, 5), inv_prop=inv_prop)
    return {k: float(m[k]) for k in METRICS}


def _peers_module():
    """``bench/peers.py`` as a module (it is a script, not part of the package)."""
    path = Path(__file__).resolve().parents[1] / "bench" / "peers.py"
    spec = importlib.util.spec_from_file_location("xhyp_bench_peers", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def run_peer(name: str, cell: Path, data, dataset: str, threads: int, log=print) -> tuple[sp.csr_matrix, dict]:
    """Parabel or Bonsai (omikuji, ``bench/peers.py``'s settings) on the same split, cached."""
    scores_path, info_path = cell / "scores.npz", cell / "info.json"
    if scores_path.is_file() and info_path.is_file():
        return sp.load_npz(scores_path).tocsr(), json.loads(info_path.read_text())
    peers = _peers_module()
    X_fit, Y_fit, X_eval, Y_eval = data
    d = peers.make_data(dataset, X_fit, Y_fit, X_eval, Y_eval)
    args = argparse.Namespace(threads=threads, top_k=TOP_K)
    r = dict(getattr(peers, f"run_{name}")(d, cell / "work", args))[name]
    info = {"train_seconds": round(r["train_seconds"], 2), "predict_seconds": round(r["predict_seconds"], 3),
            "settings": r["settings"], "load_avg": list(os.getloadavg())}
    cell.mkdir(parents=True, exist_ok=True)
    atomic_save_sparse(scores_path, r["scores"])
    atomic_save_json(info, info_path)
    log(f"[accuracy_sweep] {name}: {r['train_seconds']:.1f}s train")
    return r["scores"], info


def sweep(datasets, variants, learners, split: str, out: Path, data_dir, holdout: float, holdout_seed: int,
          seed: int, peers=(), threads: int = 1, log=print) -> list[dict]:
    """Train and score every (data set, variant, seed) and the peers; returns one row per
    (data set, method, ensemble size)."""
    from xhyp.eval.metrics import inv_propensity
    from xhyp.vote import aggregate

    rows = []
    for ds in datasets:
        data = split_data(ds, split, data_dir, holdout, holdout_seed)
        inv_prop = inv_propensity(data[1], *propensity_ab(ds))
        base = out / "cache" / (split if split == "test" else f"holdout{holdout}_seed{holdout_seed}") / ds
        for p in peers:
            S, info = run_peer(p, base / f"peer-{p}", data, ds, threads, log)
            rows.append({"dataset": ds, "split": split, "method": p, "learners": 1, **score(data[3], S, inv_prop),
                         "train_seconds": info["train_seconds"]})
        for v in variants:
            cfg = variant_config(v)
            cfg["train"].setdefault("threads", threads)
            res = [run_learner(base / v, data, cfg, seed + i, log) for i in range(max(learners))]
            with_vote = cfg["train"].get("rerank", "none") != "none" and all(r[1] is not None for r in res)
            for m, vote_only in ((m, vo) for m in sorted(set(learners)) for vo in ((False, True) if with_vote
                                                                                  else (False,))):
                S = aggregate((r[1 if vote_only else 0] for r in res[:m]), TOP_K)
                infos = [r[2] for r in res[:m]]
                rows.append({"dataset": ds, "split": split, "method": v + (" (vote only)" if vote_only else ""),
                             "learners": m, **score(data[3], S, inv_prop),
                             "train_seconds": round(sum(i["train_seconds"] for i in infos), 1),
                             "rho": infos[0]["rho"], "rho_centred": infos[0].get("rho_centred"),
                             "label_norm_median": infos[0]["label_norm_q10_50_90"][1],
                             "example_norm_median": infos[0].get("example_norm_median"),
                             "k": [i["predict_settings"].get("k") for i in infos][:3],
                             "rerank_weight": [i["predict_settings"].get("rerank_weight") for i in infos][:3]})
    return rows


def markdown(rows: list[dict]) -> str:
    """One table per (split, data set): every method and ensemble size, metrics in percent."""
    lines = []
    keys = sorted({(r["split"], r["dataset"]) for r in rows})
    for split, ds in keys:
        lines += [f"**{ds}, {split}** (P@k and PSP@k in %)", "",
                  "| method | learners | " + " | ".join(METRICS) + " | train (s) | rho | rho centred | label norm |"
                  " example norm |", "|---|---:|" + "---:|" * (len(METRICS) + 5)]
        for r in rows:
            if (r["split"], r["dataset"]) != (split, ds):
                continue
            extra = [_fmt(r.get(n), f) for n, f in (("rho", "+.2f"), ("rho_centred", "+.2f"),
                                                     ("label_norm_median", ".3f"), ("example_norm_median", ".3f"))]
            lines.append(f"| {r['method']} | {r['learners']} | " + " | ".join(f"{100 * r[m]:.2f}" for m in METRICS)
                         + f" | {r['train_seconds']} | " + " | ".join(extra) + " |")
        lines.append("")
    return "\n".join(lines)


def _fmt(v, spec: str) -> str:
    return "" if v is None or (isinstance(v, float) and np.isnan(v)) else format(v, spec)


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line parser (``--help`` lists its options)."""
    p = argparse.ArgumentParser(prog="python -m xhyp.eval.accuracy_sweep", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--variants", nargs="+", default=["paper"], help=f"from: {', '.join(VARIANTS)}")
    p.add_argument("--learners", type=int, nargs="+", default=[1], help="ensemble sizes reported (default: 1)")
    p.add_argument("--split", choices=("holdout", "test"), default="holdout")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the training split held out")
    p.add_argument("--holdout-seed", type=int, default=0)
    p.add_argument("--seed", type=int, default=0, help="seed of learner 0 (learner i: seed + i)")
    p.add_argument("--peers", nargs="*", default=[], choices=("parabel", "bonsai"))
    p.add_argument("--threads", type=int, default=1, help="torch / peer threads (default 1)")
    return p


def main(argv=None) -> int:
    """Run the sweep; merges its rows into ``OUT/accuracy_sweep.json`` and rewrites the Markdown."""
    args = build_parser().parse_args(argv)
    for v in args.variants:
        variant_config(v)
    if min(args.learners) < 1:
        raise SystemExit("--learners must be >= 1")
    out = Path(args.out)
    t0, load0 = time.time(), list(os.getloadavg())
    rows = sweep(args.datasets, args.variants, args.learners, args.split, out, args.data_dir, args.holdout,
                 args.holdout_seed, args.seed, args.peers, args.threads,
                 log=lambda m: print(m, file=sys.stderr, flush=True))
    old = out / "accuracy_sweep.json"
    merged = json.loads(old.read_text())["rows"] if old.is_file() else []
    key = lambda r: (r["split"], r["dataset"], r["method"], r["learners"])  # noqa: E731
    new_keys = {key(r) for r in rows}
    merged = [r for r in merged if key(r) not in new_keys] + rows
    merged.sort(key=key)
    runs = (json.loads(old.read_text()).get("runs", []) if old.is_file() else []) + [{
        "command": command_line("accuracy_sweep", argv), "seconds": round(time.time() - t0, 1),
        "load_avg_start": load0, "load_avg_end": list(os.getloadavg())}]
    data = {"rows": merged, "runs": runs,
            "variants": {k: dict(v, **variant_config(k)) for k, v in VARIANTS.items()}}
    md, _ = write_outputs(out, "accuracy_sweep", markdown(merged), data)
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
