"""Training throughput: pairs/s, epoch seconds and peak memory, baseline and new trainer side by side.

Each (shape, trainer) runs in its own subprocess (so its peak RSS is its own) on synthetic data
shaped like a registry dataset (:func:`xhyp.datasets.synthetic.make_like`), one epoch, dim 50:

* ``baseline``: the previous trainer's path (per-pair negatives, dense geoopt RiemannianAdam
  on every label row each step, batches prepared inline, validation on all examples, no radial term),
* ``new``: the current defaults (shared negatives, row-sparse label optimiser, prefetch thread,
  capped validation, the frequency-weighted radial term of the loss),
* ``new-noradial``: ``new`` without the radial term (``radial_weight=0``: the defaults before it),
  to time what the term costs.

Both stop after the embedding is trained: the shortlist re-ranker that the defaults fit after
training (``rerank="linear"``, :mod:`xhyp.knn.rerank`) is switched off here (``rerank="none"``,
``knn_grid=""``) and timed by ``bench/bench_rerank.py``; ``--with-rerank`` keeps it (the
``train() s`` column then includes its fit, and the peak RSS its memory).

``--max-steps N`` stops an epoch after N steps (pairs/s is then measured on those steps and the
epoch time is projected as pairs-per-epoch / pairs-per-second + validation seconds; the table
says which). The load average before and after each run is recorded: other jobs on the machine
slow both trainers, so compare the ratio of rows measured in the same run.

Usage::

    python bench/bench_train.py                       # both shapes, both trainers, CPU
    python bench/bench_train.py --device cuda --json bench/train_cuda.json
    python bench/bench_train.py --shapes delicious-200k@1.0 --trainers new   # full scale, memory
"""
from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time

TRAINERS = {
    "baseline": {"negative_mode": "pair", "label_update": "dense", "prefetch": 0, "lr_scaling": "none",
                 "val_max_queries": 0, "val_max_database": 0, "radial_weight": 0.0},
    "new": {},
    "new-noradial": {"radial_weight": 0.0},
}


def _loadavg() -> str:
    """The 1/5/15-minute load averages as one string, for the table (``"n/a"`` without them)."""
    from xhyp.utils import loadavg

    return " ".join(f"{v:.2f}" for v in loadavg()) or "n/a"


def run_one(shape: str, trainer: str, device: str, max_steps: int, threads: int, batch_size: int,
            with_rerank: bool = False) -> dict:
    """Train one epoch in this process and return its measurements."""
    import numpy as np
    import torch

    from xhyp.datasets.synthetic import make_like
    from xhyp.training import train

    name, _, scale = shape.partition("@")
    t = time.time()
    d = make_like(name, scale=float(scale or 1.0), seed=0)
    gen_s = time.time() - t
    X, Y = d["X_train"], d["Y_train"]
    del d
    cfg = dict(TRAINERS[trainer], epochs=1, device=device, threads=threads, max_steps=max_steps, seed=0)
    if not with_rerank:
        cfg.update(rerank="none", knn_grid="")
    if batch_size:
        cfg["batch_size"] = batch_size
    if device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    t = time.time()
    res = train(X, Y, {"dim": 50}, cfg, progress=False)
    total_s = time.time() - t
    h = res.history[0]
    pairs_epoch = int(Y.nnz * (1 - 0.05))
    full = max_steps == 0 or h["pairs"] >= pairs_epoch * 0.999
    out = {
        "shape": shape, "trainer": trainer, "device": device, "n": X.shape[0], "F": X.shape[1], "L": Y.shape[1],
        "pairs_measured": h["pairs"], "pairs_per_epoch": pairs_epoch, "pairs_per_second": h["pairs_per_second"],
        "train_seconds": h["train_seconds"], "val_seconds": h.get("val_seconds", 0.0),
        "epoch_seconds": h["seconds"] if full else round(pairs_epoch / h["pairs_per_second"] + h.get("val_seconds", 0.0), 2),
        "epoch_projected": not full, "train_call_seconds": round(total_s, 2), "data_seconds": round(gen_s, 2),
        "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2 ** 20, 3),
        "val_p1": h.get("val_p1"), "loss": h["loss"], "threads": torch.get_num_threads(),
        "finite": bool(np.isfinite(h["loss"])),
    }
    if device.startswith("cuda"):
        out["cuda_peak_gib"] = round(torch.cuda.max_memory_allocated() / 2 ** 30, 3)
    return out


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shapes", nargs="+", default=["wiki10-31k", "delicious-200k@0.05"],
                   help="registry names, optionally @scale (default: wiki10-31k delicious-200k@0.05)")
    p.add_argument("--trainers", nargs="+", default=["baseline", "new"], choices=sorted(TRAINERS))
    p.add_argument("--device", default="cpu")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--batch-size", type=int, default=0, help="override the batch size (0: default)")
    p.add_argument("--max-steps", type=int, default=0, help="steps per run (0: the whole epoch)")
    p.add_argument("--baseline-max-steps", type=int, default=-1,
                   help="steps for the baseline only (default: --max-steps)")
    p.add_argument("--with-rerank", action="store_true", help="keep the shortlist re-ranker fitted after "
                   "training (default: off, the bench times the embedding trainer)")
    p.add_argument("--json", default="bench/train_results.json", help="output JSON")
    p.add_argument("--one", help=argparse.SUPPRESS)  # internal: shape,trainer
    a = p.parse_args(argv)
    if a.one:
        shape, trainer, steps = a.one.split(",")
        print("RESULT " + json.dumps(run_one(shape, trainer, a.device, int(steps), a.threads, a.batch_size, a.with_rerank)))
        return 0
    rows = []
    for shape in a.shapes:
        for trainer in a.trainers:
            steps = a.baseline_max_steps if trainer == "baseline" and a.baseline_max_steps >= 0 else a.max_steps
            before = _loadavg()
            cmd = [sys.executable, os.path.abspath(__file__), "--one", f"{shape},{trainer},{steps}",
                   "--device", a.device, "--threads", str(a.threads), "--batch-size", str(a.batch_size)]
            cmd += ["--with-rerank"] if a.with_rerank else []
            proc = subprocess.run(cmd, capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stdout[-2000:], proc.stderr[-4000:], file=sys.stderr)
                rows.append({"shape": shape, "trainer": trainer, "error": proc.stderr.strip().splitlines()[-1:]})
                continue
            r = json.loads(line[0][7:])
            r["loadavg_before"], r["loadavg_after"] = before, _loadavg()
            rows.append(r)
            print(f"{shape:>22} {trainer:>8}: {r['pairs_per_second']:>10,.0f} pairs/s  epoch "
                  f"{r['epoch_seconds']:>7.1f} s{' (projected)' if r['epoch_projected'] else ''}  peak "
                  f"{r['peak_rss_gib']:.2f} GiB  load {r['loadavg_before']} -> {r['loadavg_after']}", flush=True)
    print()
    print("| shape | trainer | pairs/s | epoch s | train s | val s | train() s | peak RSS GiB | speed-up | "
          "load before / after |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    for r in rows:
        if "error" in r:
            print(f"| {r['shape']} | {r['trainer']} | error: {r['error']} |")
            continue
        base = next((b for b in rows if b.get("shape") == r["shape"] and b.get("trainer") == "baseline"
                     and "error" not in b), None)
        sp = f"{r['pairs_per_second'] / base['pairs_per_second']:.1f}x" if base else ""
        print(f"| {r['shape']} | {r['trainer']} | {r['pairs_per_second']:,.0f} | {r['epoch_seconds']:.1f}"
              f"{'*' if r['epoch_projected'] else ''} | {r['train_seconds']:.1f} | {r['val_seconds']:.2f} | "
              f"{r['train_call_seconds']:.1f} | "
              f"{r['peak_rss_gib']:.2f} | {sp} | {r['loadavg_before']} / {r['loadavg_after']} |")
    print("\n(* projected from the measured steps: pairs per epoch / pairs per second + validation seconds)")
    if a.json:
        from xhyp.utils import atomic_save_json

        atomic_save_json({"argv": sys.argv, "device": a.device, "threads": a.threads, "with_rerank": a.with_rerank,
                          "results": rows}, a.json)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
