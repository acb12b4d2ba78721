"""Cost of the shortlist re-ranker at extreme-classification sizes: fit time, model size, memory,
prediction time, for the re-ranker's settings side by side.

Each (shape, setting) runs in its own subprocess on synthetic data shaped like a registry data
set (:func:`xhyp.datasets.synthetic.make_like`: the published ``N``, ``F``, ``L`` and features and
labels per example; random, so nothing is learnable, but every size is real):

1. an embedding is trained for one epoch (dim 50, no re-ranker; ``epoch_seconds``, the yardstick of
   the fit time, and ``model.pt``'s size, that of ``reranker.npz``; ``--max-steps S``: S steps only): the
   re-ranker's costs depend on the sizes, not on the embedding's quality;
2. the after-training step of :func:`xhyp.training.prediction_fit.fit_prediction` runs as
   ``xhyp train`` runs it, with the setting's ``rerank_*`` options: the training examples'
   leave-one-out shortlists (``mine`` s), the per-label SVMs (``fit`` s, ``--threads`` threads),
   the choice of ``k`` and ``w`` on the validation split (``select`` s); its peak RSS is
   measured from the end of step 1 (``VmHWM`` reset through ``/proc/self/clear_refs``);
3. ``reranker.npz`` is written (its bytes), and ``--queries`` test rows are predicted with the
   re-ranker (``w = 1``, whatever the selection chose on random data) and without (``w = 0``).

With ``--label-fraction f < 1`` step 2 fits a seeded random ``f`` of the labels only (the labels
are independent) and the fit time, weights and file size are projected by ``1 / f`` (marked
``*``); prediction is then not run. That is how the unbounded setting is measured where fitting
every label would not fit in memory. A watchdog ends a run whose RSS passes ``--max-rss-gib``.

Settings (``--settings``): ``unbounded`` is the first re-ranker's (solver tolerance 1e-4, every shortlisted label, every
mined negative, no pruning); ``default`` the library's current defaults; ``prune-only`` and
``caps-only`` keep one kind of bound; ``NAME:KEY=VALUE,KEY=VALUE`` is the defaults with those
training options (e.g. ``s200:rerank_shortlist=200``).

Usage::

    python bench/bench_rerank.py --shapes wiki10-31k delicious-200k@0.05 --settings unbounded default \\
        --label-fraction unbounded=0.05 --json bench/rerank_results.json

Prints a Markdown table and writes the JSON (every measurement, with the load averages).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import threading
import time

SETTINGS = {
    "unbounded": {"rerank_shortlist": 0, "rerank_negatives": 0, "rerank_prune": 0.0, "rerank_tol": 1e-4},
    "default": {},
    "prune-only": {"rerank_shortlist": 0, "rerank_negatives": 0},
    "caps-only": {"rerank_prune": 0.0},
}


def _status(key: str) -> float:
    """``VmHWM`` / ``VmRSS`` of this process in GiB."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 2 ** 20
    return float("nan")


def _reset_peak() -> None:
    """Reset ``VmHWM`` to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def _watchdog(limit_gib: float) -> None:
    def watch():
        while True:
            if _status("VmRSS") > limit_gib:
                print(f"RSS above {limit_gib} GiB: stopped", file=sys.stderr, flush=True)
                os._exit(3)
            time.sleep(0.2)

    threading.Thread(target=watch, daemon=True).start()


def _loadavg() -> str:
    with open("/proc/loadavg") as f:
        return " ".join(f.read().split()[:3])


def run_one(shape: str, setting: str, label_fraction: float, threads: int, max_steps: int, queries: int) -> dict:
    """Steps 1-3 of the module docstring in this process; returns the measurements."""
    import numpy as np
    import torch

    from xhyp.config import TrainConfig
    from xhyp.datasets.synthetic import make_like
    from xhyp.knn.index import make_index
    from xhyp.knn.rerank import LabelScorer
    from xhyp.prediction import Predictor
    from xhyp.training import train
    from xhyp.training.loop import validation_split
    from xhyp.training.prediction_fit import fit_prediction, mine_shortlists

    torch.set_num_threads(threads)
    name, _, scale = shape.partition("@")
    d = make_like(name, scale=float(scale or 1.0), seed=0)
    X, Y, Xq = d["X_train"], d["Y_train"], d["X_test"][:queries]
    del d
    t = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        res = train(X, Y, {"dim": 50}, {"epochs": 1, "max_steps": max_steps, "threads": threads, "seed": 0,
                                        "rerank": "none", "knn_grid": ""}, out_dir=tmp, progress=False)
        model_mb = os.path.getsize(os.path.join(tmp, "model.pt")) / 1e6
    out = {"shape": shape, "setting": setting, "n": X.shape[0], "F": X.shape[1], "L": Y.shape[1],
           "labels_per_example": round(Y.nnz / X.shape[0], 1), "embed_train_seconds": round(time.time() - t, 1),
           "epoch_seconds": None if max_steps else round(res.history[0]["seconds"], 2),
           "model_pt_mb": round(model_mb, 1), "threads": threads, "rss_before_gib": round(_status("VmRSS"), 2)}
    cfg = TrainConfig.from_dict({**SETTINGS[setting], "threads": threads, "seed": 0})
    out["options"] = {k: v for k, v in cfg.to_dict().items() if k.startswith(("rerank", "knn"))}
    Xp, Yc = res.pipeline.transform(X), res.train_labels
    tr, va = validation_split(X.shape[0], cfg.val_fraction, cfg.seed)
    _reset_peak()
    if label_fraction >= 1:
        t = time.time()
        settings, scorer = fit_prediction(res.model, Xp, Yc, tr, va, res.train_emb, cfg)
        out["fit_prediction_seconds"] = round(time.time() - t, 1)
        out.update({k: settings.get(k) for k in ("mine_seconds", "fit_seconds", "select_seconds", "scorer_nnz",
                                                 "shortlist_mean", "k", "rerank_weight")})
        out["fit_seconds"] = round(settings["fit_seconds"] - settings["mine_seconds"], 1)
        out["projected"] = False
    else:
        t = time.time()
        index = make_index("exact", geometry="poincare").add(res.train_emb[tr])
        mined = mine_shortlists(index, res.train_emb[tr], Yc[tr], cfg.rerank_knn, cfg.rerank_shortlist)
        out["mine_seconds"] = round(time.time() - t, 1)
        out["shortlist_mean"] = round(mined.nnz / mined.shape[0], 2)
        labels = np.sort(np.random.default_rng(0).choice(Y.shape[1], int(round(label_fraction * Y.shape[1])),
                                                         replace=False))
        t = time.time()
        scorer = LabelScorer.fit(Xp[tr], Yc[tr][:, labels], mined[:, labels], C=cfg.rerank_c, seed=0, threads=threads,
                                 prune=cfg.rerank_prune, max_negatives=cfg.rerank_negatives, tol=cfg.rerank_tol)
        out["fit_seconds"] = round((time.time() - t) / label_fraction, 1)
        out["scorer_nnz"] = int(scorer.coef.nnz / label_fraction)
        out["projected"] = True
    out["fit_peak_rss_gib"] = round(_status("VmHWM"), 2)
    with tempfile.TemporaryDirectory() as tmp:
        scorer.save(os.path.join(tmp, "reranker.npz"))
        out["reranker_mb"] = round(os.path.getsize(os.path.join(tmp, "reranker.npz")) / 1e6 / label_fraction, 1)
    out["label_fraction"] = label_fraction
    if label_fraction >= 1:
        p = Predictor(res.model, res.pipeline, res.train_emb, Yc, {"train": cfg.to_dict(), "predict": settings},
                      scorer)
        for w in (1.0, 0.0):
            _reset_peak()
            t = time.time()
            S = p.predict(Xq, top_k=100, rerank_weight=w, device="cpu")
            out[f"predict_ms_per_query_w{w:g}"] = round(1000 * (time.time() - t) / Xq.shape[0], 3)
            out[f"predict_peak_rss_gib_w{w:g}"] = round(_status("VmHWM"), 2)
            assert S.shape == (Xq.shape[0], Y.shape[1])
    return out


def print_table(rows: list) -> None:
    """The Markdown table of the measurements (``fit / epoch``: the fit in embedding epochs of the
    same run; ``npz / model.pt``: the scorers' file against the embedding model's)."""
    print("| shape | setting | shortlist/ex | mine s | fit s | epoch s | fit / epoch | select s | weights | "
          "reranker.npz MB | model.pt MB | npz / model.pt | fit peak RSS GiB | predict ms/q (w=1 / w=0) | "
          "load before / after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['setting']} | error: {r['error']} |")
            continue
        star = "*" if r["projected"] else ""
        pred = (f"{r['predict_ms_per_query_w1']:.2f} / {r['predict_ms_per_query_w0']:.2f}"
                if "predict_ms_per_query_w1" in r else "")
        ep, mb = r.get("epoch_seconds"), r.get("model_pt_mb")
        per_epoch = f"{r['fit_seconds'] / ep:.1f}{star}" if ep else ""
        per_model = f"{r['reranker_mb'] / mb:.1f}{star}" if mb else ""
        print(f"| {r['shape']} | {r['setting']} | {r['shortlist_mean']:.0f} | {r['mine_seconds']:.1f} | "
              f"{r['fit_seconds']:.1f}{star} | {ep or ''} | {per_epoch} | {r.get('select_seconds') or ''} | "
              f"{r['scorer_nnz']:,}{star} | {r['reranker_mb']:.1f}{star} | {mb or ''} | {per_model} | "
              f"{r['fit_peak_rss_gib']:.2f} | {pred} | {r['loadavg_before']} / {r['loadavg_after']} |")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["wiki10-31k", "delicious-200k@0.05"])
    p.add_argument("--settings", nargs="+", default=["unbounded", "default"],
                   help=f"from {sorted(SETTINGS)}, or NAME:KEY=VALUE,KEY=VALUE (training options)")
    p.add_argument("--label-fraction", nargs="*", default=[], metavar="SETTING=F",
                   help="fit only a fraction of the labels for a setting and project (e.g. unbounded=0.05)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--max-steps", type=int, default=0,
                   help="training steps of the embedding (default 0: one whole epoch, timed as epoch_seconds)")
    p.add_argument("--queries", type=int, default=2000, help="test rows predicted (default: 2000)")
    p.add_argument("--max-rss-gib", type=float, default=16.0, help="watchdog limit (default: 16)")
    p.add_argument("--json", default="bench/rerank_results.json")
    p.add_argument("--print", metavar="JSON", help="print the table of a JSON written before, and stop")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: shape,setting,fraction
    a = p.parse_args(argv)
    if a.print:
        with open(a.print) as f:
            print_table(json.load(f)["rows"])
        return 0
    for i, s in enumerate(a.settings):
        if ":" in s:
            from xhyp.cli import config_from_pairs
            from xhyp.config import TrainConfig

            name, pairs = s.split(":", 1)
            SETTINGS[name] = config_from_pairs(pairs.split(","), TrainConfig)
            a.settings[i] = name
        elif s not in SETTINGS:
            p.error(f"unknown setting {s!r}")
    if a.one:
        _watchdog(a.max_rss_gib)
        shape, setting, frac = a.one.split(",")
        print("RESULT " + json.dumps(run_one(shape, setting, float(frac), a.threads, a.max_steps, a.queries)))
        return 0
    fractions = {k: float(v) for k, v in (s.split("=") for s in a.label_fraction)}
    rows = []
    for shape in a.shapes:
        for setting in a.settings:
            before, t0 = _loadavg(), time.time()
            spec = [f"{setting}:" + ",".join(f"{k}={v}" for k, v in SETTINGS[setting].items())] if SETTINGS[setting] else []
            cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{shape},{setting},{fractions.get(setting, 1.0)}",
                   "--settings", spec[0] if spec else setting,
                   "--threads", str(a.threads), "--max-steps", str(a.max_steps), "--queries", str(a.queries),
                   "--max-rss-gib", str(a.max_rss_gib)]
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-3000:], file=sys.stderr)
                rows.append({"shape": shape, "setting": setting, "error": (proc.stderr.strip().splitlines() or ["?"])[-1],
                             "seconds": round(time.time() - t0, 1), "loadavg_before": before})
                continue
            r = json.loads(line[0][7:])
            r.update(loadavg_before=before, loadavg_after=_loadavg(), seconds=round(time.time() - t0, 1))
            rows.append(r)
            print(json.dumps(r), file=sys.stderr, flush=True)
    print_table(rows)
    if a.json:
        from xhyp.utils import atomic_save_json

        atomic_save_json({"command": "python bench/bench_rerank.py " + " ".join(sys.argv[1:] if argv is None else argv),
                          "rows": rows}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
