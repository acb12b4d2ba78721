"""HMC results: flat, cascaded and joint (HiddeN), each without and with the HiMulCon-E term,
on the Clus-HMC sets, mean and spread over seeds, plus the hierarchy-faithfulness table.

For every (dataset, method, contrastive, seed) one model is trained by
:func:`xhyp.hmc.train.train_hmc` (early stopping on validation AU(PRC), F1 threshold chosen on
validation; Enron and ImCLEF07D hold 20% of their training file out for validation, the yeast
sets use their validation file), then scored once on test: AU(PRC) (C-HMCNN's micro-averaged
area, GO roots left out), micro/macro-F1 at the validation threshold, P@1. Faithfulness of the
label vectors against the known hierarchy: MAP and mean rank of reconstructing every node's
ancestors by distance (Nickel & Kiela 2017), Spearman's rho of norm vs depth (Poincaré distances
for cascaded/joint, Euclidean for flat's output-layer vectors, as a reference).

Example::

    nice -n 5 python -m xhyp.eval.hmc_table --data-dir ../shared/data --out docs/results/hmc --jobs 2

Each run is cached as ``OUT/runs/DATASET_METHOD_CONTRASTIVE_sSEED.json`` (a rerun skips it);
writes ``OUT/hmc_table.md`` and ``OUT/hmc_table.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from xhyp.eval.common import command_line, write_outputs

DATASETS = ("cellcycle_FUN", "derisi_GO", "Enron_corr", "ImCLEF07D")
METHODS = ("flat", "cascaded", "joint")
CHMCNN_AU_PRC = {"cellcycle_FUN": 0.255, "derisi_GO": 0.370, "Enron_corr": 0.756, "ImCLEF07D": 0.927}
RESULT_KEYS = ("au_prc", "micro_f1", "macro_f1", "micro_f1@0.5", "P@1")
FAITH_KEYS = ("map", "mean_rank", "spearman_norm_depth")


def run_one(dataset: str, method: str, contrastive: str, seed: int, data_dir, model_cfg: dict, train_cfg: dict,
            cache: Path) -> dict:
    """Train and evaluate one model (cached as JSON under ``cache``)."""
    path = cache / f"{dataset}_{method}_{contrastive}_s{seed}.json"
    if path.is_file():
        return json.loads(path.read_text())
    import torch

    from xhyp.metrics import hierarchy_reconstruction, hmc_evaluate, norm_depth_spearman
    from xhyp.datasets.hmc import load_hmc
    from xhyp.hmc.train import train_hmc
    from xhyp.utils import atomic_save_json

    torch.set_num_threads(1)
    d = load_hmc(dataset, data_dir)
    t0 = time.time()
    r = train_hmc(d.X_train, d.Y_train, d.X_val, d.Y_val, {**model_cfg, "method": method},
                  {**train_cfg, "contrastive": contrastive, "seed": seed, "threads": 1}, hierarchy=d.hierarchy,
                  eval_labels=d.eval_labels)
    secs = time.time() - t0
    test = hmc_evaluate(d.Y_test, r.model.predict_proba(d.X_test), r.threshold, labels=d.eval_labels)
    rec = {"dataset": dataset, "method": method, "contrastive": contrastive, "seed": seed, "test": test,
           "threshold": r.threshold, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
           "val_au_prc": r.best_val_au_prc, "train_seconds": round(secs, 2)}
    if d.hierarchy is not None:
        E = r.model.label_vectors.detach().double().numpy()
        geo = "euclidean" if method == "flat" else "poincare"
        rec["faithfulness"] = {**hierarchy_reconstruction(E, d.hierarchy.ancestors(), geo), "geometry": geo,
                               "spearman_norm_depth": norm_depth_spearman(E, d.hierarchy.depth())}
    atomic_save_json(rec, path)
    return rec


def _job(args):
    return run_one(*args)


def summarise(records: list[dict]) -> dict:
    """``{dataset: {method: {contrastive: {metric: [mean, std, n]}}}}`` over seeds (std: ddof=0)."""
    groups: dict = {}
    for r in records:
        vals = {**r["test"], **{k: v for k, v in r.get("faithfulness", {}).items() if k in FAITH_KEYS},
                "train_seconds": r["train_seconds"], "best_epoch": r["best_epoch"]}
        g = groups.setdefault(r["dataset"], {}).setdefault(r["method"], {}).setdefault(r["contrastive"], {})
        for k, v in vals.items():
            g.setdefault(k, []).append(float(v))
    return {ds: {m: {c: {k: [float(np.mean(v)), float(np.std(v)), len(v)] for k, v in g.items()}
                     for c, g in cs.items()} for m, cs in ms.items()} for ds, ms in groups.items()}


def _cell(s, k, scale=100.0, digits=2):
    if k not in s:
        return "-"
    m, sd, _ = s[k]
    return f"{m * scale:.{digits}f} ± {sd * scale:.{digits}f}"


def targets(summary: dict, contrastive: str = "none") -> dict:
    """The issue's targets, evaluated on the ``contrastive`` variant."""
    beats, reaches, faithful = {}, {}, {}
    for ds, ms in summary.items():
        j, f, c = (ms.get(m, {}).get(contrastive, {}) for m in ("joint", "flat", "cascaded"))
        if "au_prc" in j and "au_prc" in f:
            beats[ds] = j["au_prc"][0] > f["au_prc"][0]
        if "au_prc" in j and ds in CHMCNN_AU_PRC:
            reaches[ds] = j["au_prc"][0] >= CHMCNN_AU_PRC[ds]
        if "map" in j and "map" in c:
            faithful[ds] = j["map"][0] > c["map"][0]
    return {"joint_beats_flat_au_prc": beats, "joint_reaches_chmcnn": reaches, "joint_map_above_cascaded": faithful,
            "met": {"beats_on_3_of_4": sum(beats.values()) >= 3, "reaches_on_2": sum(reaches.values()) >= 2,
                    "map_on_every_set": bool(faithful) and all(faithful.values())}}


def markdown(summary: dict, tg: dict, meta: dict) -> str:
    """The Markdown report: the AU(PRC)/F1 results table, the hierarchy-faithfulness table and the
    target status, from :func:`summarise`-style ``summary``, targets ``tg`` and run ``meta``."""
    lines = [f"Command: `{meta['command']}`", "",
             f"Seeds {meta['seeds']}; {meta['runs_done']} of {meta['runs_asked']} runs; sum of training times "
             f"{meta['sum_train_seconds'] / 60:.1f} min; model {json.dumps(meta['model'])}; training {json.dumps(meta['train'])}.", "",
             "### Test results (mean ± std over seeds, %)", "",
             "| dataset | method | contrastive | seeds | AU(PRC) | micro-F1 | macro-F1 | micro-F1@0.5 | P@1 | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for ds, ms in summary.items():
        for m in METHODS:
            for c, s in sorted(ms.get(m, {}).items(), key=lambda kv: kv[0] != "none"):
                cells = [_cell(s, k) for k in RESULT_KEYS] + [_cell(s, "train_seconds", 1.0, 1)]
                lines.append(f"| {ds} | {m} | {c} | {s['au_prc'][2]} | " + " | ".join(cells) + " |")
        if ds in CHMCNN_AU_PRC:
            lines.append(f"| {ds} | C-HMCNN (published) | - | 10 | {100 * CHMCNN_AU_PRC[ds]:.1f} | | | | | |")
    lines += ["", "### Hierarchy faithfulness of the label vectors (mean ± std over seeds)", "",
              "| dataset | method | contrastive | MAP (%) | mean rank | Spearman(norm, depth) |", "|---|---|---|---|---|---|"]
    for ds, ms in summary.items():
        for m in METHODS:
            for c, s in sorted(ms.get(m, {}).items(), key=lambda kv: kv[0] != "none"):
                if "map" in s:
                    lines.append(f"| {ds} | {m} | {c} | {_cell(s, 'map')} | {_cell(s, 'mean_rank', 1.0, 1)} | "
                                 f"{_cell(s, 'spearman_norm_depth', 1.0, 3)} |")
    lines += ["", "flat's vectors are compared with Euclidean distances (a reference: flat has no hyperbolic "
              "embedding); cascaded and joint with Poincaré distances.", "",
              "### Targets (variant without the contrastive term)", ""]
    for k, v in tg.items():
        lines.append(f"- {k}: {json.dumps(v)}")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser of ``python -m xhyp.eval.hmc_table``."""
    p = argparse.ArgumentParser(prog="python -m xhyp.eval.hmc_table", description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", nargs="+", default=list(DATASETS))
    p.add_argument("--methods", nargs="+", default=list(METHODS), choices=METHODS)
    p.add_argument("--contrastive", nargs="+", default=["none", "hmce"], choices=("none", "hmc", "hmce"))
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    p.add_argument("--data-dir", default=None)
    p.add_argument("--out", required=True)
    p.add_argument("--jobs", type=int, default=1, help="runs at once, one process each")
    p.add_argument("--epochs", type=int, default=30)
    p.add_argument("--model", default="{}", help="JSON HMCModelConfig overrides")
    p.add_argument("--train", default="{}", help="JSON HMCTrainConfig overrides")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: tabulate the runs already cached under OUT/runs (a reduced grid)")
    return p


def main(argv=None) -> int:
    """Run (or resume from the cache) the HMC grid and write JSON + Markdown; returns the exit code."""
    args = build_parser().parse_args(argv)
    model_cfg = json.loads(args.model)
    train_cfg = {"epochs": args.epochs, **json.loads(args.train)}
    cache = Path(args.out) / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(ds, m, c, s, args.data_dir, model_cfg, train_cfg, cache) for ds in args.datasets for m in args.methods
            for c in args.contrastive for s in args.seeds]
    t0 = time.time()
    if args.summarise_only:
        records = [json.loads((cache / f"{j[0]}_{j[1]}_{j[2]}_s{j[3]}.json").read_text()) for j in jobs
                   if (cache / f"{j[0]}_{j[1]}_{j[2]}_s{j[3]}.json").is_file()]
    elif args.jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(args.jobs) as pool:
            records = []
            for r in pool.imap_unordered(_job, jobs):
                records.append(r)
                print(f"[{len(records)}/{len(jobs)}] {r['dataset']} {r['method']} {r['contrastive']} s{r['seed']}: "
                      f"AU(PRC) {r['test']['au_prc']:.4f} ({r['train_seconds']:.0f} s)", flush=True)
    else:
        records = []
        for j in jobs:
            records.append(r := run_one(*j))
            print(f"[{len(records)}/{len(jobs)}] {r['dataset']} {r['method']} {r['contrastive']} s{r['seed']}: "
                  f"AU(PRC) {r['test']['au_prc']:.4f} ({r['train_seconds']:.0f} s)", flush=True)
    summary = summarise(records)
    tg = targets(summary)
    meta = {"command": command_line("hmc_table", argv), "seeds": args.seeds, "jobs": args.jobs,
            "runs_done": len(records), "runs_asked": len(jobs),
            "wall_seconds": round(time.time() - t0, 1), "model": model_cfg, "train": train_cfg,
            "sum_train_seconds": round(sum(r["train_seconds"] for r in records), 1)}
    md = markdown(summary, tg, meta)
    write_outputs(args.out, "hmc_table", md, {**meta, "summary": summary, "targets": tg, "runs": records})
    print(md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
