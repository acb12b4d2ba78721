#!/usr/bin/env python
"""kill -9 at random moments of `xhyp train` and `xhyp ensemble`, then the same command with --resume.

For each of ``--trials`` random moments (uniform over the length of an uninterrupted run, so
they fall into start-up, epochs, checkpoint saves and the final writes):

* **train**: ``xhyp train --file D --out M ...`` is killed with SIGKILL; ``xhyp predict`` on the
  killed directory must refuse it (exit 2) unless the run had finished; then the same command
  with ``--resume`` must exit 0, ``xhyp predict`` must exit 0, and no temporary file may remain;
* **ensemble**: the same with ``xhyp ensemble -M M`` (``--learners``, default 3);
* **mixed**: a finished model A, then ``xhyp train ... --overwrite`` of another configuration
  into the same directory, killed at a random moment: whenever the directory holds files of both
  runs (a file byte-identical to A's beside one that is not), ``xhyp predict`` must refuse it.

Prints a table and writes JSON (``--out``). Not part of the test suite (minutes); run::

    python scripts/kill_resume.py --trials 20 --out kill_resume.json
"""
from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
COMMON = ["--negatives", "10", "--dim", "8", "--knn", "5", "--threads", "1", "--val-fraction", "0.1",
          "--patience", "100", "--no-progress"]


def xhyp(*args) -> list[str]:
    return [sys.executable, "-m", "xhyp.cli", *map(str, args)]


def run(cmd, timeout=600) -> int:
    return subprocess.run(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout).returncode


def run_killed(cmd, after: float) -> bool:
    """Start ``cmd``, SIGKILL it after ``after`` seconds; True if it had already finished."""
    p = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        p.wait(timeout=after)
        return True
    except subprocess.TimeoutExpired:
        p.send_signal(signal.SIGKILL)
        p.wait()
        return False


def temps(d: Path) -> list[str]:
    return [str(p.relative_to(d)) for p in d.rglob(".*.tmp")]


def timed(cmd) -> float:
    t0 = time.time()
    assert run(cmd) == 0, cmd
    return time.time() - t0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--trials", type=int, default=20)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--rows", type=int, default=1500)
    ap.add_argument("--epochs", type=int, default=6)
    ap.add_argument("--learners", type=int, default=3, help="ensemble size M")
    ap.add_argument("--phases", default="train,ensemble,mixed", help="comma-separated subset to run")
    ap.add_argument("--out", default="kill_resume.json")
    ap.add_argument("--work", help="work folder (default: a temporary one, removed)")
    args = ap.parse_args()
    rng = random.Random(args.seed)
    work = Path(args.work or tempfile.mkdtemp(prefix="xhyp-kill-"))
    work.mkdir(parents=True, exist_ok=True)
    sys.path.insert(0, str(REPO))
    from xhyp.datasets.formats import write_xc
    from xhyp.datasets.synthetic import make_hierarchical

    d = make_hierarchical(n_train=args.rows, n_test=200, n_features=300, seed=args.seed)
    data, test = work / "train.txt", work / "test.txt"
    write_xc(data, d["X_train"], d["Y_train"])
    write_xc(test, d["X_test"], d["Y_test"])
    epochs = ["--epochs", str(args.epochs)]

    def train_cmd(out, *extra):
        return xhyp("train", "--file", data, "--out", out, *epochs, *COMMON, *extra)

    def ens_cmd(out, *extra):
        return xhyp("ensemble", "--file", data, "--out", out, "-M", str(args.learners), *epochs, *COMMON, *extra)

    from xhyp.cli import main as xhyp_main

    def predict(model) -> int:
        """``xhyp predict`` in this process (torch imported once; same code path as the CLI)."""
        import contextlib
        import io

        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            return xhyp_main(["predict", "--model", str(model), "--file", str(test), "--out", str(work / "s.npz")])

    phases = args.phases.split(",")
    t_train = timed(train_cmd(work / "ref_model"))
    t_ens = timed(ens_cmd(work / "ref_ens")) if "ensemble" in phases else 0.0
    rows, failures = [], []
    for kind, make, length in (("train", train_cmd, t_train), ("ensemble", ens_cmd, t_ens)):
        for i in range(args.trials if kind in phases else 0):
            out = work / f"{kind}_{i:02d}"
            at = rng.uniform(0.2, length)
            finished = run_killed(make(out), at)
            sealed = (out / "manifest.json").exists()  # killed after its last write
            rc_killed = predict(out)
            rc_resume = run(make(out, "--resume"))
            rc_pred = predict(out)
            left = temps(out)
            ok = rc_resume == 0 and rc_pred == 0 and not left and rc_killed == (0 if sealed else 2)
            rows.append({"kind": kind, "trial": i, "kill_at_s": round(at, 2), "finished_before_kill": finished,
                         "sealed_after_kill": sealed,
                         "predict_after_kill": rc_killed, "resume_rc": rc_resume, "predict_rc": rc_pred,
                         "temps_left": left, "ok": ok})
            if not ok:
                failures.append(rows[-1])
            print(json.dumps(rows[-1]), flush=True)
            shutil.rmtree(out, ignore_errors=True)
    # mixed directories: A finished, B (other settings) with --overwrite killed at random moments
    a = work / "A"
    b_args = ("--overwrite", "--dim", "6", "--lr", "0.01")
    if "mixed" in phases:  # B uninterrupted: files B writes byte-identical to A's (same data) prove nothing
        assert run(train_cmd(work / "ref_B", *b_args)) == 0
        same = {p.name for p in (work / "ref_B").iterdir()
                if p.is_file() and (work / "ref_model" / p.name).is_file()
                and p.read_bytes() == (work / "ref_model" / p.name).read_bytes()}
    for i in range(args.trials if "mixed" in phases else 0):
        if a.exists():
            shutil.rmtree(a)
        shutil.copytree(work / "ref_model", a)
        a_bytes = {p.name: p.read_bytes() for p in a.iterdir() if p.is_file()}
        at = rng.uniform(0.2, t_train)
        finished = run_killed(train_cmd(a, *b_args), at)
        names = ["config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz"]
        present = [n for n in names if (a / n).exists()]
        from_a = [n for n in present if (a / n).read_bytes() == a_bytes.get(n) and n not in same]
        mixed = bool(from_a) and any((a / n).read_bytes() != a_bytes.get(n) for n in present)
        sealed = (a / "manifest.json").exists()
        rc = predict(a)
        ok = rc == (2 if mixed or not sealed else 0)
        rows.append({"kind": "mixed", "trial": i, "kill_at_s": round(at, 2), "finished_before_kill": finished,
                     "files_of_A": from_a, "mixed": mixed, "sealed": sealed, "predict_rc": rc, "ok": ok})
        if not ok:
            failures.append(rows[-1])
        print(json.dumps(rows[-1]), flush=True)
    print(f"{'kind':9} {'trials':>6} {'ok':>4} {'finished':>8} {'refused after kill':>18} {'temps left':>10}")
    for kind in ("train", "ensemble", "mixed"):
        r = [x for x in rows if x["kind"] == kind]
        refused = sum(1 for x in r if x.get("predict_after_kill", x.get("predict_rc")) == 2)
        print(f"{kind:9} {len(r):>6} {sum(x['ok'] for x in r):>4} {sum(x['finished_before_kill'] for x in r):>8} "
              f"{refused:>18} {sum(len(x.get('temps_left', [])) for x in r):>10}")
    result = {"trials": args.trials, "rows": args.rows, "epochs": args.epochs, "seconds_train": round(t_train, 2),
              "seconds_ensemble": round(t_ens, 2), "failures": failures, "runs": rows,
              "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]])}
    Path(args.out).write_text(json.dumps(result, indent=2) + "\n")
    print(f"{len(failures)} failures; wrote {args.out}")
    if not args.work:
        shutil.rmtree(work, ignore_errors=True)
    return 1 if failures else 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONUNBUFFERED", "1")
    sys.exit(main())
