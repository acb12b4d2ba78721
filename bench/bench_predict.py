"""Time per point of ``xhyp predict`` on a dataset's test split, broken down by stage.

    python bench/bench_predict.py --model DIR [--dataset delicious] [--index exact ann] --out bench/results_predict.json

Stages (each timed over all test points, median of ``--repeats`` runs, same process, same
threads): reading the test file, embedding (``Predictor.embed``: feature pipeline + projector),
index build (``make_index(...).add(train embeddings)``, once per model), search (``index.search``),
vote (``xhyp.knn.vote.vote``), writing (``atomic_save_sparse`` of the score matrix), and the whole
``xhyp.commands.predict_model`` call (what ``xhyp predict`` runs, index build and reading
included). Prints a table in ms per point and writes JSON. The reference figure is Parabel's
0.24 ms/point on Delicious (omikuji, same machine, from the issue).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--model", required=True)
    p.add_argument("--dataset", default="delicious")
    p.add_argument("--data-dir", default=os.environ.get("XHYP_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--index", nargs="+", default=["exact", "ann"])
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--out", default=str(ROOT / "bench" / "results_predict.json"))
    args = p.parse_args(argv)
    import torch

    torch.set_num_threads(args.threads)
    from xhyp import commands
    from xhyp.config import PredictConfig
    from xhyp.datasets.formats import read_xc
    from xhyp.knn.index import make_index
    from xhyp.knn.vote import vote
    from xhyp.prediction import Predictor
    from xhyp.utils import atomic_save_sparse, atomic_write

    def timed(fn):
        ts, r = [], None
        for _ in range(args.repeats):
            t0 = time.perf_counter()
            r = fn()
            ts.append(time.perf_counter() - t0)
        return statistics.median(ts), r

    path = Path(args.data_dir) / args.dataset / "test.txt"
    t_read, (X, _) = timed(lambda: read_xc(path))
    Q = X.shape[0]
    pred = Predictor.load(args.model)
    pc = PredictConfig().for_model(pred.config.get("train"))  # the model's vote settings
    k, weighting, alpha = pc.k, pc.weighting, pc.alpha
    t_embed, q = timed(lambda: pred.embed(X))
    rows = []
    tmp = Path(tempfile.mkdtemp(prefix="xhyp_bp_"))
    for kind in args.index:
        t_build, idx = timed(lambda: make_index(kind, geometry=pred.model.config.geometry).add(pred.train_emb))
        t_search, (D, I) = timed(lambda: idx.search(q, k))
        t_vote, S = timed(lambda: vote(I, D, pred.train_labels, top_k=100, weighting=weighting, alpha=alpha))
        t_write, _ = timed(lambda: atomic_save_sparse(tmp / "s.npz", S))
        t_cmd, _ = timed(lambda: commands.predict_model(args.model, tmp / "c.npz", path=str(path), index=kind))
        r = {"index": kind, "queries": Q, "read_ms": 1e3 * t_read / Q, "embed_ms": 1e3 * t_embed / Q,
             "build_s": t_build, "search_ms": 1e3 * t_search / Q, "vote_ms": 1e3 * t_vote / Q,
             "write_ms": 1e3 * t_write / Q, "predict_model_ms": 1e3 * t_cmd / Q}
        rows.append(r)
    head = ["index", "read", "embed", "build (s)", "search", "vote", "write", "xhyp predict total"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in rows:
        lines.append(f"| {r['index']} | {r['read_ms']:.3f} | {r['embed_ms']:.3f} | {r['build_s']:.2f} | "
                     f"{r['search_ms']:.3f} | {r['vote_ms']:.3f} | {r['write_ms']:.3f} | {r['predict_model_ms']:.3f} |")
    table = "\n".join(lines)
    print(f"ms per point on {args.dataset} test ({Q:,} points), threads={args.threads}, "
          f"load average {os.getloadavg()}\n" + table)
    res = {"rows": rows, "markdown": table, "threads": args.threads, "loadavg": os.getloadavg(),
           "command": " ".join([Path(sys.executable).name, *sys.argv]), "parabel_ms_per_point": 0.24}
    atomic_write(args.out, lambda f: f.write((json.dumps(res, indent=2) + "\n").encode()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
