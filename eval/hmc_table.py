"""HMC results: flat, cascaded and joint (HiddeN), each without and with the HiMulCon-E term,
on the Clus-HMC sets, mean and spread over seeds, plus the hierarchy-faithfulness table; and the
validation-only selection of their settings (``--tune``).

For every (dataset, method, contrastive, seed) one model is trained by
:func:`xhyp.hmc.train.train_hmc` with the dataset's settings (:mod:`xhyp.hmc.settings`: early
stopping on the validation AU(PRC), F1 threshold chosen on validation, then a refit on train +
validation for the best number of epochs; Enron and ImCLEF07D hold 20% of their training file
out for validation, the yeast sets use their validation file), then scored once on test:
AU(PRC) (C-HMCNN's micro-averaged area, GO roots left out), micro/macro-F1 at the validation
threshold, P@1. Faithfulness of the label vectors against the known hierarchy: MAP and mean
rank of reconstructing every node's ancestors by distance (Nickel & Kiela 2017), Spearman's rho
of norm vs depth (Poincaré distances between the label points of cascaded/joint, Euclidean
distances between flat's output-layer vectors, as a reference).

``--tune`` trains the candidate settings of :data:`TUNE_CANDIDATES` (without refit) and reports
only their validation AU(PRC) (and MAP) -- no test data is read; the chosen values are those of
:mod:`xhyp.hmc.settings`.

Example::

    nice -n 5 python -m xhyp.eval.hmc_table --data-dir ../shared/data --out docs/results/hmc --jobs 2

Each run is cached as ``OUT/runs/DATASET_METHOD_CONTRASTIVE_sSEED.json`` (a rerun skips it
when it was trained with the same settings, and trains it again otherwise;
``--tune``: ``OUT/runs/tune/...``); writes ``OUT/hmc_table.md`` and ``OUT/hmc_table.json``
(``--tune``: ``OUT/hmc_tuning.*``).
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

from xhyp.eval.common import command_line, loadavg, write_outputs

DATASETS = ("cellcycle_FUN", "derisi_GO", "Enron_corr", "ImCLEF07D")
METHODS = ("flat", "cascaded", "joint")
CHMCNN_AU_PRC = {"cellcycle_FUN": 0.255, "derisi_GO": 0.370, "Enron_corr": 0.756, "ImCLEF07D": 0.927}
RESULT_KEYS = ("au_prc", "micro_f1", "macro_f1", "micro_f1@0.5", "P@1")
FAITH_KEYS = ("map", "mean_rank", "spearman_norm_depth")


def _settings(dataset: str, method: str, contrastive: str, seed: int, model_cfg: dict, train_cfg: dict):
    from xhyp.hmc.settings import settings_for

    m, t = settings_for(dataset, method)
    return {**m, **model_cfg, "method": method}, {**t, **train_cfg, "contrastive": contrastive, "seed": seed,
                                                  "threads": 1}


def run_path(cache: Path, dataset: str, method: str, contrastive: str, seed: int, tag: str = "") -> Path:
    """The run cache's file of one run: ``CACHE/DATASET_METHOD_CONTRASTIVE_sSEED[TAG].json``."""
    return cache / f"{dataset}_{method}_{contrastive}_s{seed}{tag}.json"


def same_settings(rec: dict, model_cfg: dict, train_cfg: dict) -> bool:
    """Whether a cached run record was trained with these settings (its ``model`` and ``train``
    entries, compared as JSON: the run cache is keyed by data set, method, contrastive kind and seed
    only, so a change of :mod:`xhyp.hmc.settings` or of ``--model`` / ``--train`` must not reuse it)."""
    norm = lambda v: json.loads(json.dumps(v, sort_keys=True))  # noqa: E731 (tuples -> lists, as on disk)
    return norm(rec.get("model")) == norm(model_cfg) and norm(rec.get("train")) == norm(train_cfg)


def cached_records(jobs, cache: Path, model_cfg: dict, train_cfg: dict) -> tuple[list[dict], int]:
    """The cached run records of the grid's ``jobs`` (``(dataset, method, contrastive, seed, ...)``
    tuples) that were trained with the settings they would get now (:func:`same_settings`), and
    how many cached ones were left out for other settings (``--summarise-only``)."""
    records, stale = [], 0
    for j in jobs:
        f = run_path(cache, *j[:4])
        if f.is_file():
            r = json.loads(f.read_text())
            if same_settings(r, *_settings(*j[:4], model_cfg, train_cfg)):
                records.append(r)
            else:
                stale += 1
    return records, stale


def _faithfulness(model, method: str, hierarchy) -> dict:
    from xhyp.metrics import hierarchy_reconstruction, norm_depth_spearman

    if method == "flat":
        E, geo = model.label_vectors.detach().double().numpy(), "euclidean"
    else:
        E, geo = model.poincare_embeddings().detach().double().numpy(), "poincare"
    return {**hierarchy_reconstruction(E, hierarchy.ancestors(), geo), "geometry": geo,
            "spearman_norm_depth": norm_depth_spearman(E, hierarchy.depth())}


def run_one(dataset: str, method: str, contrastive: str, seed: int, data_dir, model_cfg: dict, train_cfg: dict,
            cache: Path, tune: bool = False) -> dict:
    """Train and evaluate one model (cached as JSON under ``cache``). With ``tune`` the model is
    trained without refit and only its validation AU(PRC) (and faithfulness) is recorded."""
    tag = "" if not tune else "_" + json.dumps({"m": model_cfg, "t": train_cfg}, sort_keys=True).translate(
        str.maketrans("", "", ' {}"')).replace(":", "=").replace(",", "_")
    path = run_path(cache, dataset, method, contrastive, seed, tag)
    mcfg, tcfg = _settings(dataset, method, contrastive, seed, model_cfg, train_cfg)
    if tune:
        tcfg["refit"] = False
    if path.is_file():
        rec = json.loads(path.read_text())
        if same_settings(rec, mcfg, tcfg):
            return rec
        print(f"[hmc_table] {path}: cached with other settings (xhyp.hmc.settings changed?); training it again",
              flush=True)
    import torch

    from xhyp.metrics import hmc_evaluate
    from xhyp.datasets.hmc import load_hmc
    from xhyp.hmc.train import train_hmc
    from xhyp.utils import atomic_save_json

    torch.set_num_threads(1)
    d = load_hmc(dataset, data_dir)
    load0 = loadavg()[0]
    t0, c0 = time.time(), time.process_time()
    r = train_hmc(d.X_train, d.Y_train, d.X_val, d.Y_val, mcfg, tcfg, hierarchy=d.hierarchy,
                  eval_labels=d.eval_labels)
    secs, cpu = time.time() - t0, time.process_time() - c0
    rec = {"dataset": dataset, "method": method, "contrastive": contrastive, "seed": seed, "model": mcfg,
           "train": tcfg, "threshold": r.threshold, "best_epoch": r.best_epoch, "epochs_run": len(r.history),
           "val_au_prc": r.best_val_au_prc, "train_seconds": round(secs, 2), "cpu_seconds": round(cpu, 2),
           "load_average": [load0, loadavg()[0]]}
    if not tune:
        rec["test"] = hmc_evaluate(d.Y_test, r.model.predict_proba(d.X_test), r.threshold, labels=d.eval_labels)
    if d.hierarchy is not None:
        rec["faithfulness"] = _faithfulness(r.model, method, d.hierarchy)
    atomic_save_json(rec, path)
    return rec


TUNE_CANDIDATES = {  # validation-only selection (--tune): the settings of xhyp.hmc.settings were chosen from these
    # stage 1 (--tune --methods flat): the encoder
    "flat": [{"model": {"hidden": h, "layers": n}} for h, n in ((256, 2), (512, 1), (512, 2))],
    # stage 2 (--tune --methods joint --contrastive none): the start and the weight of joint's label loss
    "joint": [{"train": {"joint_init": i, "label_weight": w}} for i in ("random", "pretrained")
              for w in (0.003, 0.01, 0.03)],
    # stage 3 (--tune --methods joint --contrastive hmce): the weight of the contrastive term
    "joint+hmce": [{"train": {"contrastive_weight": w}} for w in (0.01, 0.1)],
    # stage 4 (--tune --datasets derisi_GO --stages cascaded@derisi_GO joint@derisi_GO --contrastive none):
    # joint's label loss on derisi_GO (441,084 ordered pairs: pair_batch 512 sees 3% of them an epoch),
    # beside cascaded's label-embedding MAP under the same protocol
    "cascaded@derisi_GO": [{}],
    "joint@derisi_GO": [{"train": {"joint_init": i, "label_weight": w, "pair_batch": b}} for i, w, b in (
        ("random", 0.01, 0), ("random", 0.003, 512), ("pretrained", 0.1, 512), ("pretrained", 0.3, 512))]
    + [{"train": {"joint_init": "random", "label_weight": w, "label_lr": 0.01}} for w in (0.03, 0.1, 0.3)]
    + [{"model": {"init_label_scale": 1e-3}, "train": {"joint_init": "pretrained", "label_weight": 0.3}},
       {"train": {"joint_init": "pretrained", "label_weight": 0.3, "pretrain_epochs": 3}}],
    # stage 5 (--tune --stages cascaded#score joint#score --contrastive none): the label score without the label
    # vector's norm (label_score "unit": direction times a learned per-label gain) against the dot product, with
    # each set's present settings, and joint's pre-trained start with heavier label losses under it
    "cascaded#score": [{}, {"model": {"label_score": "unit"}}],
    "joint#score": [{}, {"model": {"label_score": "unit"}}]
    + [{"model": {"label_score": "unit"}, "train": {"joint_init": "pretrained", "label_weight": w}} for w in (0.1, 0.3)],
    # and on derisi_GO, where joint's MAP stays below cascaded's, heavier label losses still
    "joint@derisi_GO#score": [{"model": {"label_score": "unit"}, "train": {"joint_init": "pretrained",
                                                                          "label_weight": w}} for w in (1.0, 3.0)],
}


def tune_jobs(datasets, methods, data_dir, cache: Path, contrastive_kinds=("none", "hmce"), stages=None
              ) -> list[tuple]:
    """The ``--tune`` runs: the :data:`TUNE_CANDIDATES` of ``methods`` and ``contrastive_kinds``
    (of the keys ``stages`` only, when given) on every dataset (a key ``METHOD[+KIND][@DATASET][#NAME]``:
    with ``@DATASET`` on that dataset only; ``#NAME`` only names a stage), seed 0."""
    jobs = []
    for ds in datasets:
        for key, cands in TUNE_CANDIDATES.items():
            stage, _, only = key.partition("#")[0].partition("@")
            method, _, contrastive = stage.partition("+")
            if method not in methods or (contrastive or "none") not in contrastive_kinds or only not in ("", ds) \
                    or (stages is not None and key not in stages):
                continue
            for c in cands:
                jobs.append((ds, method, contrastive or "none", 0, data_dir, c.get("model", {}), c.get("train", {}),
                             cache, True))
    return jobs


def tuning_markdown(records: list[dict], meta: dict) -> str:
    """The ``--tune`` report: validation AU(PRC) (and label-embedding MAP) of every candidate,
    with the settings each run actually used."""
    lines = [f"Command: `{meta['command']}`", "",
             "Validation split only (no test data read); seed 0; no refit. The settings columns are those the "
             "run used (the candidate's values, the others from `xhyp.hmc.settings` as it stood at that stage).",
             "", "| dataset | method | contrastive | candidate | hidden x layers | joint start | label w | "
             "contrastive w | val AU(PRC) (%) | MAP (%) | best epoch | train s | CPU s | load |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in sorted(records, key=lambda r: (r["dataset"], r["method"], r["contrastive"], json.dumps(r["cand"]))):
        faith, m, t = r.get("faithfulness"), r["model"], r["train"]
        map_ = f"{100 * faith['map']:.2f}" if faith else "-"
        cpu = f"{r['cpu_seconds']:.0f}" if "cpu_seconds" in r else "-"
        joint = (t["joint_init"], f"{t['label_weight']:g}") if r["method"] == "joint" else ("-", "-")
        cw = f"{t['contrastive_weight']:g}" if r["contrastive"] != "none" else "-"
        lines.append(f"| {r['dataset']} | {r['method']} | {r['contrastive']} | `{json.dumps(r['cand'])}` | "
                     f"{m['hidden']} x {m['layers']} | {joint[0]} | {joint[1]} | {cw} | {100 * r['val_au_prc']:.2f} | "
                     f"{map_} | {r['best_epoch']} | {r['train_seconds']:.0f} | {cpu} | {r['load_average'][0]:.1f} |")
    return "\n".join(lines)


def _job(args):
    rec = run_one(*args)
    return {**rec, "cand": {k: v for k, v in (("model", args[5]), ("train", args[6])) if v}}


def summarise(records: list[dict]) -> dict:
    """``{dataset: {method: {contrastive: {metric: [mean, std, n]}}}}`` over seeds (std: ddof=0)."""
    groups: dict = {}
    for r in records:
        vals = {**r["test"], **{k: v for k, v in r.get("faithfulness", {}).items() if k in FAITH_KEYS},
                "train_seconds": r["train_seconds"], "cpu_seconds": r.get("cpu_seconds", float("nan")),
                "best_epoch": r["best_epoch"]}
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


def contrastive_effect(summary: dict, kind: str = "hmce") -> dict:
    """``{dataset: {method: {"au_prc": delta, "map": delta}}}``: mean with the ``kind`` term minus
    mean without it (percentage points; ``map`` only where a hierarchy is known)."""
    out: dict = {}
    for ds, ms in summary.items():
        for m, cs in ms.items():
            a, b = cs.get(kind, {}), cs.get("none", {})
            d = {k: 100 * (a[k][0] - b[k][0]) for k in ("au_prc", "map") if k in a and k in b}
            if d:
                out.setdefault(ds, {})[m] = d
    return out


def markdown(summary: dict, tg: dict, meta: dict) -> str:
    """The Markdown report: the AU(PRC)/F1 results table, the hierarchy-faithfulness table, the
    contrastive term's effect, the run times and the target status, from :func:`summarise`-style
    ``summary``, targets ``tg`` and run ``meta``."""
    lines = [f"Command: `{meta['command']}`", "",
             f"Seeds {meta['seeds']}; {meta['runs_done']} of {meta['runs_asked']} runs ({meta.get('jobs', 1)} at "
             f"once); wall time {meta.get('wall_seconds', 0) / 60:.1f} min; sum of training times "
             f"{meta['sum_train_seconds'] / 60:.1f} min, of CPU times {meta.get('sum_cpu_seconds', 0) / 60:.1f} min "
             "(one torch thread a run: on two otherwise idle cores the grid would take about half of that); "
             f"1-minute load average {meta.get('load', '-')}; overrides: "
             f"model {json.dumps(meta['model'])}, training {json.dumps(meta['train'])} (other settings: "
             "`xhyp.hmc.settings`).", "",
             "### Test results (mean ± std over seeds, %)", "",
             "| dataset | method | contrastive | seeds | AU(PRC) | micro-F1 | macro-F1 | micro-F1@0.5 | P@1 | train s | "
             "CPU s | best epoch |", "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for ds, ms in summary.items():
        for m in METHODS:
            for c, s in sorted(ms.get(m, {}).items(), key=lambda kv: kv[0] != "none"):
                cells = [_cell(s, k) for k in RESULT_KEYS] + [_cell(s, k, 1.0, 1) for k in
                                                               ("train_seconds", "cpu_seconds", "best_epoch")]
                lines.append(f"| {ds} | {m} | {c} | {s['au_prc'][2]} | " + " | ".join(cells) + " |")
        if ds in CHMCNN_AU_PRC:
            lines.append(f"| {ds} | C-HMCNN (published) | - | 10 | {100 * CHMCNN_AU_PRC[ds]:.1f} | | | | | | | |")
    lines += ["", "### Hierarchy faithfulness of the label vectors (mean ± std over seeds)", "",
              "| dataset | method | contrastive | MAP (%) | mean rank | Spearman(norm, depth) |", "|---|---|---|---|---|---|"]
    for ds, ms in summary.items():
        for m in METHODS:
            for c, s in sorted(ms.get(m, {}).items(), key=lambda kv: kv[0] != "none"):
                if "map" in s:
                    lines.append(f"| {ds} | {m} | {c} | {_cell(s, 'map')} | {_cell(s, 'mean_rank', 1.0, 1)} | "
                                 f"{_cell(s, 'spearman_norm_depth', 1.0, 3)} |")
    lines += ["", "flat's vectors are compared with Euclidean distances (a reference: flat has no hyperbolic "
              "embedding); cascaded and joint with Poincaré distances between the labels' points of the ball.", ""]
    eff = contrastive_effect(summary)
    if eff:
        lines += ["### Effect of the contrastive term (HiMulCon-E; mean with minus mean without, points)", "",
                  "| dataset | method | AU(PRC) | MAP |", "|---|---|---|---|"]
        for ds, ms in eff.items():
            for m, d in ms.items():
                lines.append(f"| {ds} | {m} | {d['au_prc']:+.2f} | " +
                             (f"{d['map']:+.2f} |" if "map" in d else "- |"))
        lines.append("")
    lines += ["### Targets (variant without the contrastive term)", ""]
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
    p.add_argument("--model", default="{}", help="JSON HMCModelConfig overrides of xhyp.hmc.settings")
    p.add_argument("--train", default="{}", help="JSON HMCTrainConfig overrides of xhyp.hmc.settings")
    p.add_argument("--stages", nargs="+", default=None, choices=list(TUNE_CANDIDATES),
                   help="--tune: only these keys of TUNE_CANDIDATES (default: all)")
    p.add_argument("--tune", action="store_true", help="run the validation-only selection (TUNE_CANDIDATES) "
                   "instead of the grid; writes OUT/hmc_tuning.md/json")
    p.add_argument("--summarise-only", action="store_true",
                   help="train nothing: tabulate the runs already cached under OUT/runs (a reduced grid)")
    return p


# runs handed out longest first (the order of their mean time in the last full grid), so that the
# workers of --jobs finish together instead of one running a long last job alone
_COST_RANK = {k: {v: i for i, v in enumerate(vals, 1)} for k, vals in (
    ("datasets", ("derisi_GO", "ImCLEF07D", "cellcycle_FUN", "Enron_corr")),
    ("methods", ("cascaded", "joint", "flat")), ("contrastive", ("hmce", "hmc", "none")))}


def _longest_first(job: tuple) -> tuple:
    """Sort key of a grid job ``(dataset, method, contrastive, seed, ...)``: expected longest first
    (an unknown dataset before the known ones)."""
    ds, method, contrastive, seed = job[:4]
    return (_COST_RANK["datasets"].get(ds, 0), _COST_RANK["methods"][method],
            _COST_RANK["contrastive"][contrastive], seed)


def _run_all(jobs: list, n_jobs: int, show) -> list[dict]:
    records = []
    if n_jobs > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(n_jobs) as pool:
            for r in pool.imap_unordered(_job, jobs):
                records.append(r)
                show(len(records), len(jobs), r)
    else:
        for j in jobs:
            records.append(_job(j))
            show(len(records), len(jobs), records[-1])
    return records


def _show(i: int, n: int, r: dict) -> None:
    score = f"test AU(PRC) {r['test']['au_prc']:.4f}" if "test" in r else f"val AU(PRC) {r['val_au_prc']:.4f}"
    print(f"[{i}/{n}] {r['dataset']} {r['method']} {r['contrastive']} s{r['seed']} {json.dumps(r.get('cand', {}))}: "
          f"{score} ({r['train_seconds']:.0f} s, load {r['load_average'][0]:.1f})", flush=True)


def main(argv=None) -> int:
    """Run (or resume from the cache) the HMC grid (or the ``--tune`` selection) and write JSON +
    Markdown; returns the exit code."""
    args = build_parser().parse_args(argv)
    model_cfg, train_cfg = json.loads(args.model), json.loads(args.train)
    t0, load = time.time(), [loadavg()[0]]
    if args.tune:
        records = _run_all(tune_jobs(args.datasets, args.methods, args.data_dir, Path(args.out) / "runs" / "tune",
                                     args.contrastive, args.stages), args.jobs, _show)
        meta = {"command": command_line("hmc_table", argv), "wall_seconds": round(time.time() - t0, 1),
                "candidates": TUNE_CANDIDATES}
        old = Path(args.out) / "hmc_tuning.json"  # earlier stages stay in the report
        if old.is_file():
            keep = {(r["dataset"], r["method"], r["contrastive"], json.dumps(r["cand"], sort_keys=True))
                    for r in records}
            records = [r for r in json.loads(old.read_text())["runs"]
                       if (r["dataset"], r["method"], r["contrastive"], json.dumps(r["cand"], sort_keys=True))
                       not in keep] + records
        write_outputs(args.out, "hmc_tuning", tuning_markdown(records, meta), {**meta, "runs": records})
        return 0
    cache = Path(args.out) / "runs"
    cache.mkdir(parents=True, exist_ok=True)
    jobs = [(ds, m, c, s, args.data_dir, model_cfg, train_cfg, cache) for ds in args.datasets for m in args.methods
            for c in args.contrastive for s in args.seeds]
    jobs.sort(key=_longest_first)
    if args.summarise_only:
        records, stale = cached_records(jobs, cache, model_cfg, train_cfg)
        if stale:
            print(f"[hmc_table] left out {stale} cached runs trained with other settings", flush=True)
    else:
        records = _run_all(jobs, args.jobs, _show)
    order = {k: {v: i for i, v in enumerate(vals)} for k, vals in
             (("dataset", args.datasets), ("method", args.methods), ("contrastive", args.contrastive))}
    records.sort(key=lambda r: (order["dataset"][r["dataset"]], order["method"][r["method"]],
                                order["contrastive"][r["contrastive"]], r["seed"]))  # tables in the order asked
    load.append(loadavg()[0])
    summary = summarise(records)
    tg = targets(summary)
    meta = {"command": command_line("hmc_table", argv), "seeds": args.seeds, "jobs": args.jobs,
            "runs_done": len(records), "runs_asked": len(jobs), "wall_seconds": round(time.time() - t0, 1),
            "load": f"{load[0]} at the start, {load[1]} at the end", "model": model_cfg, "train": train_cfg,
            "sum_train_seconds": round(sum(r["train_seconds"] for r in records), 1),
            "sum_cpu_seconds": round(sum(r.get("cpu_seconds", 0.0) for r in records), 1),
            "contrastive_effect": contrastive_effect(summary)}
    md = markdown(summary, tg, meta)
    write_outputs(args.out, "hmc_table", md, {**meta, "summary": summary, "targets": tg, "runs": records})
    print(md)
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
