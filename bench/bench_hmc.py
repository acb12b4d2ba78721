"""HMC training time, one run of the results grid at a time, for two versions of the code side by side.

Each run is one cell of ``python -m xhyp.eval.hmc_table`` (``run_one``: the dataset's settings of
``xhyp.hmc.settings``, early stopping on validation, refit on train + validation, one torch
thread, test scores once), in a fresh subprocess whose ``PYTHONPATH`` is one of ``--src``: a
checkout of this repository each (e.g. the baseline revision made with ``git worktree add
/tmp/base REV``). With two sources the versions of one repetition run at the same time, one per
core (``--serial``: one after the other), so that both see the same machine. Prints a table
(train and CPU seconds, best epoch, validation and test AU(PRC), the label vectors' MAP) and
writes JSON.

Usage::

    python bench/bench_hmc.py --data-dir ../shared/data --src /tmp/base . \\
        --runs derisi_GO:cascaded:none ImCLEF07D:joint:hmce
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


def _start(src: str, run: str, seed: int, data_dir: str) -> subprocess.Popen:
    ds, method, contrastive = run.split(":")
    env = {**os.environ, "PYTHONPATH": str(Path(src).resolve()), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-c", _CHILD, ds, method, contrastive, str(seed), data_dir],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish(p: subprocess.Popen) -> dict:
    out, err = p.communicate()
    lines = [line for line in out.splitlines() if line.startswith("RESULT ")]
    if p.returncode != 0 or not lines:
        raise RuntimeError(f"run failed (exit {p.returncode}):\n{err[-2000:]}")
    return json.loads(lines[-1][len("RESULT "):])


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
    p.add_argument("--json", default="bench/hmc_results.json")
    a = p.parse_args(argv)
    from xhyp.utils import loadavg

    rows, t0 = [], time.time()
    for rep in range(a.repeat):
        for run in a.runs:
            if a.serial:
                results = [_finish(_start(src, run, a.seed, a.data_dir)) for src in a.src]
            else:
                procs = [_start(src, run, a.seed, a.data_dir) for src in a.src]
                results = [_finish(q) for q in procs]
            for src, r in zip(a.src, results):
                rows.append({"run": run, "seed": a.seed, "repeat": rep, "src_arg": src, **r})
                print(f"{run} s{a.seed} [{src}]: {r['train_seconds']:.1f} s train, {r['cpu_seconds']:.1f} s CPU, "
                      f"best epoch {r['best_epoch']}, test AU(PRC) {r['test_au_prc']:.4f}", flush=True)
    header = ("| run | code | train s | CPU s | best epoch | val AU(PRC) | test AU(PRC) | MAP | load |\n"
              "|---|---|---|---|---|---|---|---|---|")
    print(header)
    for r in rows:
        m = f"{100 * r['map']:.2f}" if r["map"] is not None else "-"
        print(f"| {r['run']} s{r['seed']} | {r['src_arg']} | {r['train_seconds']:.1f} | {r['cpu_seconds']:.1f} | "
              f"{r['best_epoch']} | {100 * r['val_au_prc']:.2f} | {100 * r['test_au_prc']:.2f} | {m} | "
              f"{r['load'][0]:.2f}-{r['load'][1]:.2f} |")
    from xhyp.eval.common import environment
    from xhyp.utils import atomic_save_json

    atomic_save_json({"command": "python bench/bench_hmc.py " + " ".join(sys.argv[1:] if argv is None else argv),
                      "parallel": not a.serial and len(a.src) > 1, "wall_seconds": round(time.time() - t0, 1),
                      "load_end": loadavg(), "rows": rows, "environment": environment()}, a.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
