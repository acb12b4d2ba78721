"""Reading a large XC text file: seconds, size of the result and peak memory of the process.

Writes a file shaped like a registry dataset (:func:`xhyp.datasets.synthetic.make_like`, the
training split; full-scale ``delicious-200k`` is 196,606 rows, 59.3M feature entries, a 1.0 GB
file) unless ``--file`` names one, then reads it with :func:`xhyp.datasets.read_xc` in a fresh
subprocess per run (so each peak RSS is the reader's own), for each interpreter of ``--python``:
give two virtual environments (the baseline's and this checkout's) to compare two versions of
the reader side by side, alternated ``--repeat`` times.

Usage::

    python bench/bench_read.py --shape delicious-200k --python /path/to/old/venv/bin/python .venv/bin/python
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

_CHILD = r"""
import json, resource, sys, time
from xhyp.datasets import read_xc
t = time.time()
X, Y = read_xc(sys.argv[1])
s = time.time() - t
size = sum(a.nbytes for M in (X, Y) for a in (M.data, M.indices, M.indptr))
print("RESULT " + json.dumps({"seconds": round(s, 2), "rows": X.shape[0], "x_nnz": int(X.nnz), "y_nnz": int(Y.nnz),
                              "result_gib": round(size / 2**30, 3),
                              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 3)}))
"""


def _loadavg() -> str:
    """The 1/5/15-minute load averages as one string, for the table (``"n/a"`` without them)."""
    from xhyp.utils import loadavg

    return " ".join(f"{v:.2f}" for v in loadavg()) or "n/a"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--shape", default="delicious-200k", help="registry name[@scale] for the generated file")
    p.add_argument("--file", help="read this file instead of generating one")
    p.add_argument("--workdir", default="bench/.read-work", help="where the generated file is kept")
    p.add_argument("--python", nargs="+", default=[sys.executable], help="interpreters to compare")
    p.add_argument("--repeat", type=int, default=2)
    p.add_argument("--json", default="bench/read_results.json")
    a = p.parse_args(argv)
    path = a.file
    if path is None:
        name, _, scale = a.shape.partition("@")
        path = os.path.join(a.workdir, f"{name}@{scale or '1.0'}_train.txt")
        if not os.path.exists(path):
            from xhyp.datasets.formats import write_xc
            from xhyp.datasets.synthetic import make_like

            os.makedirs(a.workdir, exist_ok=True)
            d = make_like(name, scale=float(scale or 1.0), seed=0)
            write_xc(path, d["X_train"], d["Y_train"])
            del d
    rows = []
    for rep in range(a.repeat):
        for py in a.python:
            before = _loadavg()
            proc = subprocess.run([py, "-c", _CHILD, path], capture_output=True, text=True)
            line = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            if proc.returncode != 0 or not line:
                print(proc.stderr[-2000:], file=sys.stderr)
                return 1
            r = dict(json.loads(line[0][7:]), python=py, repeat=rep, loadavg_before=before, loadavg_after=_loadavg())
            rows.append(r)
            print(f"{py}: {r['seconds']:.1f} s  result {r['result_gib']:.3f} GiB  peak {r['peak_rss_gib']:.3f} GiB"
                  f"  load {before} -> {r['loadavg_after']}", flush=True)
    print(f"\n{path}: {os.path.getsize(path) / 2**30:.2f} GiB on disk\n")
    print("| python | read (s) | result (GiB) | peak RSS (GiB) | peak / result | load before / after |")
    print("|---|---:|---:|---:|---:|---|")
    for r in rows:
        print(f"| {r['python']} | {r['seconds']:.1f} | {r['result_gib']:.3f} | {r['peak_rss_gib']:.3f} | "
              f"{r['peak_rss_gib'] / r['result_gib']:.2f} | {r['loadavg_before']} / {r['loadavg_after']} |")
    if a.json:
        from xhyp.utils import atomic_save_json

        atomic_save_json({"argv": sys.argv, "file": path, "results": rows}, a.json)
        print(f"wrote {a.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
