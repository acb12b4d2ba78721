"""The HiMulCon contrastive term on the XMC model (Bibtex, Delicious), under the held-out protocol.

Bibtex and Delicious have no label hierarchy, so the term is HiMulCon's label-overlap weighted
supervised contrastive loss between the examples of a batch (``TrainConfig.contrastive``,
:func:`xhyp.hmc.losses.weighted_supcon_loss`), added to the sampled-softmax loss with weight
``w``. Selection: ``--holdout`` of the *training* split (seeded, :func:`xhyp.eval.common.holdout_split`)
is held out, one learner per weight in ``--weights`` (0 = no term) is trained on the rest, and the
weight with the best held-out P@1 is chosen. Final check: learners with and without the chosen
term (``--seeds``) are trained on the whole training split and scored once on test (P@1/3/5,
default kNN vote). The test split is never used to choose.

Example::

    python -m xhyp.eval.xmc_contrastive --datasets bibtex delicious --data-dir ../shared/data \\
        --out docs/results/hmc

Writes ``OUT/xmc_contrastive.md`` and ``OUT/xmc_contrastive.json``.
"""
from __future__ import annotations

import argparse
import sys
import time

import numpy as np

from xhyp.datasets import load_split
from xhyp.eval.common import add_common_args, command_line, holdout_split, loadavg, pct, write_outputs
from xhyp.metrics import evaluate


def fit_score(X, Y, Xq, Yq, weight: float, seed: int, train_cfg: dict) -> dict:
    """Train one learner (contrastive weight ``weight``; 0 = none) on ``(X, Y)`` and score
    ``(Xq, Yq)``: ``{"P@1", "P@3", "P@5", "train_seconds", "best_epoch", "load_average"}``."""
    from xhyp.prediction import Predictor
    from xhyp.training import train

    cfg = {**train_cfg, "seed": seed, "contrastive": "hmce" if weight > 0 else "none",
           "contrastive_weight": weight if weight > 0 else 0.1}
    load0 = loadavg()[0]
    t0 = time.time()
    res = train(X, Y, {}, cfg, progress=False)
    secs = time.time() - t0
    S = Predictor.from_train_result(res).predict(Xq, top_k=5)
    m = {k: float(v) for k, v in evaluate(Yq, S, ks=(1, 3, 5)).items() if k.startswith("P@")}
    return {**m, "weight": weight, "seed": seed, "train_seconds": round(secs, 1), "best_epoch": res.best_epoch,
            "load_average": [load0, loadavg()[0]]}


def run_dataset(dataset: str, data_dir, weights, seeds, holdout: float, train_cfg: dict, log=print) -> dict:
    """Selection on the held-out part of train, then the test check (see the module docstring)."""
    X, Y = load_split(dataset, "train", data_dir=data_dir)
    fit, out = holdout_split(X.shape[0], holdout, 0)
    selection = []
    for w in weights:
        selection.append(fit_score(X[fit], Y[fit], X[out], Y[out], w, 0, train_cfg))
        log(f"[xmc_contrastive] {dataset} held-out w={w}: P@1 {100 * selection[-1]['P@1']:.2f} "
            f"({selection[-1]['train_seconds']:.0f} s)")
    best = max((r for r in selection if r["weight"] > 0), key=lambda r: (r["P@1"], r["P@3"]))
    Xt, Yt = load_split(dataset, "test", data_dir=data_dir)
    test = []
    for w in (0.0, best["weight"]):
        for s in seeds:
            test.append(fit_score(X, Y, Xt, Yt, w, s, train_cfg))
            log(f"[xmc_contrastive] {dataset} test w={w} seed {s}: P@1 {100 * test[-1]['P@1']:.2f} "
                f"({test[-1]['train_seconds']:.0f} s)")
    return {"holdout_rows": int(len(out)), "fit_rows": int(len(fit)), "selection": selection,
            "chosen_weight": best["weight"], "term_helps_on_holdout": best["P@1"] > selection[0]["P@1"],
            "test": test}


def markdown(results: dict, meta: dict) -> str:
    """Held-out selection table and test table (mean ± std over seeds) per data set."""
    lines = [f"Command: `{meta['command']}`", "", f"Training settings: {meta['train']}; wall time "
             f"{meta['wall_seconds'] / 60:.1f} min.", ""]
    for ds, r in results.items():
        lines += [f"**{ds}: selection on a held-out {r['holdout_rows']} of the {r['fit_rows'] + r['holdout_rows']} "
                  "training points (one learner, seed 0, %)**", "",
                  "| contrastive weight | P@1 | P@3 | P@5 | train s | load |", "|---:|---:|---:|---:|---:|---:|"]
        for s in r["selection"]:
            mark = " **(chosen)**" if s["weight"] == r["chosen_weight"] else ""
            lines.append(f"| {s['weight']:g}{mark} | {pct(s['P@1'])} | {pct(s['P@3'])} | {pct(s['P@5'])} | "
                         f"{s['train_seconds']:.0f} | {s['load_average'][0]:.1f} |")
        lines += ["", f"**{ds}: test, whole training split (mean ± std over seeds {meta['seeds']}, %)**", "",
                  "| contrastive weight | P@1 | P@3 | P@5 | train s |", "|---:|---:|---:|---:|---:|"]
        for w in (0.0, r["chosen_weight"]):
            rows = [t for t in r["test"] if t["weight"] == w]
            lines.append(f"| {w:g} | {_mean_std(rows, 'P@1')} | {_mean_std(rows, 'P@3')} | {_mean_std(rows, 'P@5')} | "
                         f"{np.mean([t['train_seconds'] for t in rows]):.0f} |")
        lines.append("")
    return "\n".join(lines)


def _mean_std(rows, key):
    v = np.array([r[key] for r in rows])
    return f"{pct(v.mean())} ± {100 * v.std():.2f}"


def build_parser() -> argparse.ArgumentParser:
    """The script's command-line parser."""
    p = argparse.ArgumentParser(prog="python -m xhyp.eval.xmc_contrastive", description=__doc__.split("\n\n")[0])
    add_common_args(p)
    p.add_argument("--weights", type=float, nargs="+", default=[0.0, 0.01, 0.1, 1.0],
                   help="contrastive weights tried on the held-out part (0 = no term; default 0 0.01 0.1 1)")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="seeds of the test check")
    p.add_argument("--holdout", type=float, default=0.2, help="share of the training split held out")
    p.add_argument("--threads", type=int, default=1, help="torch threads per learner")
    return p


def main(argv=None) -> int:
    """Run the selection and the test check; writes Markdown and JSON; exit status."""
    args = build_parser().parse_args(argv)
    if 0.0 not in args.weights or len(args.weights) < 2:
        raise SystemExit("--weights must contain 0 (no term) and at least one positive weight")
    train_cfg = {"threads": args.threads, "device": "cpu"}
    t0 = time.time()
    results = {ds: run_dataset(ds, args.data_dir, args.weights, args.seeds, args.holdout, train_cfg,
                               log=lambda m: print(m, file=sys.stderr, flush=True)) for ds in args.datasets}
    meta = {"command": command_line("xmc_contrastive", argv), "train": train_cfg, "seeds": args.seeds,
            "wall_seconds": round(time.time() - t0, 1)}
    md, _ = write_outputs(args.out, "xmc_contrastive", markdown(results, meta), {**meta, "results": results})
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
