"""HMC training time, one run of the results grid at a time, for two versions of the code side by side.

Each run is one cell of ``python -m xhyp.eval.hmc_table`` (``run_one``: the dataset's settings of
``xhyp.hmc.settings``, early stopping on validation, refit on train + validation, one torch
thread, test scores once), in a fresh subprocess whose ``PYTHONPATH`` is one of ``--src``: a
checkout of this repository each (e.g. the baseline revision made with ``git worktree add
/tmp/base REV``). With two sources the versions of one repetition run at the same time, one per
core (``--serial``: one after the other), so that both see the same machine. Prints a table
(train and CPU seconds, best epoch, validation and test AU(PRC), the label vectors' MAP) and
writes JSON. ``--parts E`` times the parts of a run instead (the set-up with the label-embedding
pre-training, then the mean of E training epochs and of E validation passes): methods with a
label loss may stop at other epochs in two versions, and the parts compare them epoch for epoch.

Usage::

    python bench/bench_hmc.py --data-dir ../shared/data --src /tmp/base . \\
        --runs derisi_GO:cascaded:none ImCLEF07D:joint:hmce
    python bench/bench_hmc.py --data-dir ../shared/data --src /tmp/base . --serial --parts 5 \\
        --runs derisi_GO:cascaded:none --json bench/hmc_parts.json
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

_CHILD = r"""
import json, sys, tempfile
from pathlib import Path
import xhyp
from xhyp.eval.hmc_table import run_one
ds, method, contrastive, seed, data_dir = sys.argv[1:6]
with tempfile.TemporaryDirectory() as tmp:
    r = run_one(ds, method, contrastive, int(seed), data_dir, {}, {}, Path(tmp))
print("RESULT " + json.dumps({"src": str(Path(xhyp.__file__).parents[1]), "train_seconds": r["train_seconds"],
                              "cpu_seconds": r["cpu_seconds"], "best_epoch": r["best_epoch"],
                              "val_au_prc": r["val_au_prc"], "test_au_prc": r["test"]["au_prc"],
                              "map": r.get("faithfulness", {}).get("map"), "load": r["load_average"]}))
"""

_PARTS = r"""
import json, sys, time
from pathlib import Path
import numpy as np, scipy.sparse as sp, torch
import xhyp
from xhyp.datasets.hmc import load_hmc
from xhyp.eval.hmc_table import _settings
from xhyp.hmc.models import HMCModelConfig
from xhyp.hmc.train import HMCTrainConfig, _Fit, _val_au_prc
from xhyp.utils import loadavg, seed_everything
ds, method, contrastive, seed, data_dir, epochs = sys.argv[1:7]
torch.set_num_threads(1)
d = load_hmc(ds, data_dir)
m, t = _settings(ds, method, contrastive, int(seed), {}, {})
seed_everything(int(seed))
Y = sp.csr_matrix(d.Y_train, dtype=np.float32)
load0, t0 = loadavg()[0], time.perf_counter()
fit = _Fit(HMCModelConfig.from_dict({**m, "n_features": d.X_train.shape[1], "n_labels": Y.shape[1]}),
           HMCTrainConfig.from_dict(t), d.X_train, Y, d.hierarchy, d.eval_labels, np.random.default_rng(int(seed)))
t1 = time.perf_counter()
for _ in range(int(epochs)):
    fit.epoch()
t2 = time.perf_counter()
for _ in range(int(epochs)):
    _val_au_prc(fit.model, d.X_val, sp.csr_matrix(d.Y_val, dtype=np.float32), d.eval_labels)
t3 = time.perf_counter()
print("RESULT " + json.dumps({"src": str(Path(xhyp.__file__).parents[1]), "setup_seconds": round(t1 - t0, 2),
                              "epoch_seconds": round((t2 - t1) / int(epochs), 3),
                              "validation_seconds": round((t3 - t2) / int(epochs), 3), "load": [load0, loadavg()[0]]}))
"""


def _start(src: str, run: str, seed: int, data_dir: str, parts: int = 0) -> subprocess.Popen:
    ds, method, contrastive = run.split(":")
    src = Path(src).resolve()
    env = {**os.environ, "PYTHONPATH": str(src), "OMP_NUM_THREADS": "1"}
    # run from inside the checkout: `python -c` puts the working directory first on sys.path
    return subprocess.Popen([sys.executable, "-c", _PARTS if parts else _CHILD, ds, method, contrastive, str(seed),
                             str(Path(data_dir).resolve()), *([str(parts)] if parts else [])], cwd=src, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"run failed (exit {p.returncode}):\n{err[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


def _line(r: dict, parts: bool) -> str:
    if parts:
        return (f"set-up {r['setup_seconds']:.1f} s, epoch {r['epoch_seconds']:.2f} s, "
                f"validation {r['validation_seconds']:.2f} s")
    return (f"{r['train_seconds']:.1f} s train, {r['cpu_seconds']:.1f} s CPU, best epoch {r['best_epoch']}, "
            f"test AU(PRC) {r['test_au_prc']:.4f}")


def _table(rows: list[dict], parts: bool) -> str:
    """The Markdown table of the runs (``parts``: set-up, epoch and validation seconds)."""
    if parts:
        out = ["| run | code | set-up s | s / epoch | s / validation | load |", "|---|---|---|---|---|---|"]
        cells = lambda r: (f"{r['setup_seconds']:.1f} | {r['epoch_seconds']:.3f} | "  # noqa: E731
                           f"{r['validation_seconds']:.3f}")
    else:
        out = ["| run | code | train s | CPU s | best epoch | val AU(PRC) | test AU(PRC) | MAP | load |",
               "|---|---|---|---|---|---|---|---|---|"]
        cells = lambda r: (f"{r['train_seconds']:.1f} | {r['cpu_seconds']:.1f} | {r['best_epoch']} | "  # noqa: E731
                           f"{100 * r['val_au_prc']:.2f} | {100 * r['test_au_prc']:.2f} | "
                           + (f"{100 * r['map']:.2f}" if r["map"] is not None else "-"))
    out += [f"| {r['run']} s{r['seed']} | {r['src_arg']} | {cells(r)} | {r['load'][0]:.2f}-{r['load'][1]:.2f} |"
            for r in rows]
    return "\n".join(out)


def main(argv=None) -> int:
    """Run the benchmark; returns the exit code."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data-dir", required=True, help="directory holding hmc/ (the Clus-HMC sets)")
    p.add_argument("--src", nargs="+", default=["."], help="checkouts to compare (baseline first)")
    p.add_argument("--runs", nargs="+", default=["derisi_GO:cascaded:none", "ImCLEF07D:joint:hmce"],
                   help="DATASET:METHOD:CONTRASTIVE cells of the grid")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--repeat", type=int, default=1)
    p.add_argument("--serial", action="store_true", help="run the versions one after the other")
    p.add_argument("--parts", type=int, default=0, metavar="E",
                   help="instead of whole runs, time the parts: the set-up (label-embedding pre-training "
                        "included), then E training epochs and E validation passes (seconds each)")
    p.add_argument("--json", default="bench/hmc_results.json")
    a = p.parse_args(argv)
    from xhyp.eval.common import environment
    from xhyp.utils import atomic_save_json, loadavg

    rows, t0 = [], time.time()
    for rep in range(a.repeat):
        for run in a.runs:
            if a.serial:
                results = [_finish(_start(src, run, a.seed, a.data_dir, a.parts)) for src in a.src]
            else:
                procs = [_start(src, run, a.seed, a.data_dir, a.parts) for src in a.src]
                results = [_finish(q) for q in procs]
            for src, r in zip(a.src, results):
                if Path(r["src"]).resolve() != Path(src).resolve():
                    raise RuntimeError(f"--src {src} ran the code of {r['src']}")
                rows.append({"run": run, "seed": a.seed, "repeat": rep, "src_arg": src, **r})
                print(f"{run} s{a.seed} [{src}]: {_line(r, bool(a.parts))}", flush=True)
    print(_table(rows, bool(a.parts)))
    atomic_save_json({"command": "python bench/bench_hmc.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "parallel": not a.serial and len(a.src) > 1, "parts": a.parts,
                      "wall_seconds": round(time.time() - t0, 1), "load_end": loadavg(), "rows": rows,
                      "environment": environment()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
