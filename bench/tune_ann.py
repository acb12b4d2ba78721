"""Held-out choice of the ``ann`` index's defaults: cluster size and ``nprobe`` against speed.

    python bench/tune_ann.py --out bench/results_ann8_tuning.json

Runs on a second draw of ``bench_knn.py``'s synthetic Delicious-200K shape (``--seed 1``; the
benchmark itself uses seed 0), so the defaults are not chosen on the benchmark's queries. For each
``points_per_cluster`` and ``nprobe`` (``--grid``): recall@10 against the exact kernel, and the
CPU time per query (``time.process_time``, ``--threads`` threads, default 1: less sensitive to
other jobs on the machine than wall time) of the probe + int8 scan, over all queries, beside the
exact kernel's CPU time per query on 1,000 queries, measured alternately (minimum of
``--repeats``). Prints a Markdown table and writes JSON (settings, load average, rows).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE / "results_ann8_tuning.json"))
    p.add_argument("--work", default=None, help="folder caching the data and ground truth (default: temp)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--grid", nargs="+", default=["192:40,44", "256:34,38", "384:26,30", "512:21,24"],
                   help="points_per_cluster:nprobe,nprobe,...")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args(argv)
    import tempfile

    import torch

    from bench_knn import synthetic
    from xhyp.knn import kernels as K
    from xhyp.knn.index import make_index
    from xhyp.utils import atomic_write

    work = Path(args.work or tempfile.mkdtemp(prefix="xhyp_tune_"))
    work.mkdir(parents=True, exist_ok=True)
    files = [work / f"{name}{args.seed}.npy" for name in ("db", "q", "gt")]
    torch.set_num_threads(os.cpu_count() or 1)
    if not all(f.exists() for f in files):
        db, q = synthetic(196_606, 100_095, 50, 2000, 0.9, 0.6, 0.07, args.seed)  # bench_knn.py's defaults
        _, gt = K.knn(torch.from_numpy(q), torch.from_numpy(db), 10)
        for f, a in zip(files, (db, q, gt.numpy())):
            np.save(f, a)
    db, q, gt = (torch.from_numpy(np.load(f)) for f in files)
    start = os.getloadavg()

    def exact_us():
        t0 = time.process_time()
        K.knn(q[:1000].contiguous(), db, 10)
        return (time.process_time() - t0) / 1000 * 1e6

    rows = []
    for cell in args.grid:
        ppc, probes = int(cell.split(":")[0]), [int(v) for v in cell.split(":")[1].split(",")]
        torch.set_num_threads(os.cpu_count() or 1)
        t0 = time.time()
        idx = make_index("ann", points_per_cluster=ppc).add(db)
        build = time.time() - t0
        torch.set_num_threads(args.threads)
        for P in probes:
            ta, te = [], []
            for _ in range(args.repeats):
                t0 = time.process_time()
                pr = K.ivf_probe(q, idx.cen_aug, P)
                _, I = K.ivf_knn8(q, idx.db_sorted, idx.packed, idx.block_offsets, idx.centroids, idx.ids,
                                  idx.offsets, pr, 10)
                ta.append((time.process_time() - t0) / q.shape[0] * 1e6)
                te.append(exact_us())
            recall = float((I[:, :, None] == gt[:, None, :]).any(2).float().mean())
            row = {"points_per_cluster": ppc, "n_clusters": int(idx.centroids.shape[0]), "nprobe": P,
                   "recall@10": recall, "ann_us_per_query": min(ta), "exact_us_per_query": min(te),
                   "ratio": min(te) / min(ta), "build_seconds": build, "loadavg": os.getloadavg()[0]}
            rows.append(row)
            print(f"ppc {ppc} C {row['n_clusters']} nprobe {P}: recall {recall:.4f}, ann {min(ta):.2f} us/q, "
                  f"exact {min(te):.1f} us/q, {row['ratio']:.1f}x, build {build:.0f} s", flush=True)
    table = ["| points per cluster | C | nprobe | recall@10 | ann µs / query | exact µs / query | × exact | build s |",
             "|---|---|---|---|---|---|---|---|"]
    table += [f"| {r['points_per_cluster']} | {r['n_clusters']:,} | {r['nprobe']} | {r['recall@10']:.4f} | "
              f"{r['ann_us_per_query']:.2f} | {r['exact_us_per_query']:.1f} | {r['ratio']:.1f} | "
              f"{r['build_seconds']:.0f} |" for r in rows]
    print("\n".join(table))
    out = {"settings": vars(args), "loadavg_start": start, "loadavg_end": os.getloadavg(), "rows": rows,
           "markdown": "\n".join(table)}
    atomic_write(args.out, lambda f: f.write((json.dumps(out, indent=2) + "\n").encode()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
