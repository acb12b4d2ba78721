"""kNN benchmark: every index kind side by side, on Delicious and at Delicious-200K scale.

One command::

    python bench/bench_knn.py --out bench/results.json            # Delicious + synthetic 200K
    python bench/bench_knn.py --large --out bench/results_1m7.json  # + synthetic 1.7M database
    python bench/bench_knn.py --quick --out /tmp/b.json            # small smoke run (~1 min)

prints a Markdown table and writes everything (settings, environment, raw numbers, targets) as
JSON to ``--out``.

What is measured, per contender (index kind + parameters):

* **build s**: ``make_index(...).add(db)`` wall time;
* **queries/s**: ``index.search(q, k)`` over the timed queries, median of up to ``--repeats``
  runs (one run when a run takes more than 20 s); slow contenders (``torch``, ``faiss-flat``)
  and one ``exact`` row are timed on a fixed random sample of ``--sample`` queries (column
  *queries*), the others on all queries;
* **recall@10**: ``|I ∩ I_exact| / 10`` against the fused exact kernel, averaged over the timed
  queries (the ground truth is the ``exact`` run on all queries); **recall@10 ties** counts a
  returned neighbour as correct when its exact distance is within the exact 10th distance
  (Delicious has many duplicate examples, i.e. tied distances, where the id recall depends on
  the tie-break); the targets use the tie-aware recall;
* **peak RSS Δ**: peak resident memory during ``add`` and the searches minus the resident
  memory just before ``add`` (Linux ``VmHWM`` after resetting it through
  ``/proc/self/clear_refs``; ``ru_maxrss`` would carry the parent's peak into the worker), each
  contender in its own subprocess (tracemalloc does not see torch's allocations); settings that
  share one built index (e.g. several ``nprobe``) share that number;
* on Delicious: **P@1/3/5** of the kNN vote (``xhyp.knn.vote.vote``, the model's ``knn`` and
  ``weighting``) from each contender's neighbours, and the same with exact search; there every
  contender searches ``max(k, knn)`` neighbours (recall is still measured on the first ``k``).

Every contender runs with the same thread count (``--threads``, default: all cores), set through
``OMP_NUM_THREADS``/``MKL_NUM_THREADS`` before importing torch, ``torch.set_num_threads`` and
``faiss.omp_set_num_threads``. Timings on a shared machine are noisy: the run records the load
average before and after.

Data:

* **delicious**: training examples (database, 12,920) and test examples (queries, 3,185)
  embedded by a model trained with ``xhyp.training.loop.train`` (default configuration, ``--epochs``
  epochs at most; cached in ``--work``) or the model directory given by ``--model``.
* **synthetic-200k**: 196,606 database points and 100,095 queries in dimension 50 (the sizes of
  Delicious-200K), ``x = p(u)`` (``xhyp.embedding.manifold.to_ball``) for ``u`` drawn from a mixture of
  ``--centers`` (2000) isotropic Gaussians (see :func:`synthetic`): uniform directions with
  log-normal radii, Zipf mixture weights (like label frequencies), within-component spread
  ``--spread``. The defaults were calibrated on the embeddings of a Delicious model trained by
  ``xhyp.training.loop.train`` (10 epochs): norm quantiles 5/50/95 % 0.27/0.42/0.63 (model:
  0.24/0.43/0.65) and median distance to the 10th neighbour / median distance between random
  points 0.44 (model: 0.44), both measured on 12,920 points. Its clusters are more uneven than
  the model's: with 64 random centroids a query's nearest cluster holds 7.6 % of the points on
  average (model: 2.7 %, even split: 1.6 %), which makes clustered/IVF search harder here.
* **synthetic-1.7m** (``--large``): 1,700,000 database points, ``--large-queries`` queries.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))


# ------------------------------------------------------------------------------------------------
# contenders


def contenders(dataset: str, n_db: int, quick: bool):
    """(name, kind, build params, [search settings], timed on the sample?) per contender."""
    c = [
        ("exact", "exact", {}, [{}], True),
        ("torch", "torch", {}, [{}], True),
        ("faiss-flat", "faiss-flat", {}, [{}], True),
        ("clustered", "clustered", {}, [{"nprobe": p} for p in (1, 2, 4, 8)], False),
    ]
    fine = 64 if dataset == "delicious" else (256 if quick else 1024)
    c.append((f"clustered C={fine}", "clustered", {"n_clusters": fine},
              [{"nprobe": p} for p in ((2, 4, 8, 16) if dataset == "delicious" else (4, 8, 16, 32))], False))
    c.append((f"clustered kmeans C={fine}", "clustered", {"n_clusters": fine, "centroids": "kmeans"},
              [{"nprobe": p} for p in ((2, 4, 8, 16) if dataset == "delicious" else (4, 8, 16, 32))], False))
    if dataset != "delicious":
        big = 256 if quick else 4096
        c.append((f"clustered kmeans C={big}", "clustered", {"n_clusters": big, "centroids": "kmeans"},
                  [{"nprobe": p} for p in (16, 32, 64, 128)], False))
    ann_probes = (4, 8, 12, 16, 30) if dataset == "delicious" else ((8, 16, 24) if quick else (22, 26, 30, 34))
    c.append(("ann", "ann", {}, [{"nprobe": p} for p in ann_probes], False))
    c.append(("ann float", "ann", {"codes": "float"}, [{"nprobe": p} for p in ann_probes[-2:]], False))
    if dataset == "delicious":  # ~N/64 clusters: nprobe 8-16 scans a fraction like nprobe 30 at 200K
        c.append(("ann C=200", "ann", {"n_clusters": 200}, [{"nprobe": p} for p in (6, 8, 12, 16)], False))
    c.append(("faiss-ivf", "faiss-ivf", {}, [{"nprobe": p} for p in (4, 16, 64)], False))
    c.append(("faiss-ivf spatial", "faiss-ivf", {"space": "spatial"}, [{"nprobe": p} for p in (4, 16, 64)], False))
    c.append(("faiss-hnsw", "faiss-hnsw", {}, [{"efSearch": e} for e in (32, 64, 128)], False))
    c.append(("faiss-hnsw lift", "faiss-hnsw", {"space": "lift"}, [{"efSearch": 128}], False))
    return c


# ------------------------------------------------------------------------------------------------
# worker: one contender in its own process


def _status_mb(field: str) -> float | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return float(line.split()[1]) / 1024.0  # kB
    except OSError:
        pass
    return None


def _reset_peak() -> float:
    """Reset the peak-RSS mark (Linux >= 4.0: /proc/self/clear_refs "5") and return the RSS in MB.

    ``getrusage``'s ``ru_maxrss`` cannot be used in the worker: Linux keeps the parent's value
    across ``fork`` + ``execve``, so a worker started by a large parent reports the parent's size.
    """
    try:
        Path("/proc/self/clear_refs").write_text("5")
    except OSError:
        pass
    rss = _status_mb("VmRSS")
    return rss if rss is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def _peak_mb() -> float:
    hwm = _status_mb("VmHWM")
    return hwm if hwm is not None else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0


def worker(spec: dict) -> dict:
    threads = int(spec["threads"])
    import torch

    torch.set_num_threads(threads)
    try:
        import faiss

        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    from xhyp.knn import extension
    from xhyp.knn.index import make_index

    work = Path(spec["work"])
    db = torch.from_numpy(np.load(work / f"{spec['dataset']}_db.npy"))
    q = torch.from_numpy(np.load(work / f"{spec['dataset']}_q.npy"))
    if spec["sample"] is not None:
        q = q[torch.from_numpy(np.load(work / f"{spec['dataset']}_sample.npy"))].contiguous()
    k = int(spec["k"])
    rss0 = _reset_peak()
    t0 = time.perf_counter()
    idx = make_index(spec["kind"], **spec["params"]).add(db)
    build = time.perf_counter() - t0
    rows = []
    for setting in spec["settings"]:
        for key, v in setting.items():
            setattr(idx, key, v)
        times, I = [], None
        for r in range(int(spec["repeats"])):
            t0 = time.perf_counter()
            _, I = idx.search(q, k)
            times.append(time.perf_counter() - t0)
            if times[-1] > 20.0:
                break
        secs = statistics.median(times)
        out = None
        if spec.get("save_ids"):
            out = str(work / f"ids_{spec['dataset']}_{spec['tag']}_{len(rows)}.npy")
            np.save(out, I.numpy())
        rows.append({"setting": setting, "seconds": secs, "times": times, "queries": int(q.shape[0]),
                     "qps": q.shape[0] / secs, "ids_file": out})
    return {"build_seconds": build, "rows": rows, "rss_delta_mb": _peak_mb() - rss0,
            "rss_before_mb": rss0, "ext": extension.ext_available("cpu"), "torch_threads": torch.get_num_threads()}


def run_worker(spec: dict) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(spec["threads"]), MKL_NUM_THREADS=str(spec["threads"]),
               OPENBLAS_NUM_THREADS=str(spec["threads"]))
    r = subprocess.run([sys.executable, str(Path(__file__).resolve()), "--worker", json.dumps(spec)],
                       capture_output=True, text=True, env=env)
    for line in r.stdout.splitlines():
        if line.startswith("RESULT:"):
            return json.loads(line[len("RESULT:"):])
    raise RuntimeError(f"worker failed for {spec['tag']}:\n{r.stdout[-2000:]}\n{r.stderr[-4000:]}")


# ------------------------------------------------------------------------------------------------
# data


def synthetic(n_db: int, n_q: int, dim: int, centers: int, center_radius: float, radius_sigma: float,
              spread: float, seed: int, zipf: float = 1.0):
    """Database and queries ``p(u)``, ``u`` from a Zipf-weighted Gaussian mixture (float32).

    Centre ``j``: a uniform direction times a log-normal radius (median ``center_radius``, log
    standard deviation ``radius_sigma``); component weights ``1 / rank`` (Zipf, like label
    frequencies); within a component ``u = centre + spread * N(0, I)``.
    """
    import torch

    from xhyp.embedding import manifold

    rng = np.random.default_rng(seed)
    direction = rng.normal(size=(centers, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    mu = direction * np.exp(np.log(center_radius) + radius_sigma * rng.normal(size=(centers, 1)))
    w = np.arange(1, centers + 1, dtype=np.float64) ** -zipf
    w /= w.sum()

    def draw(n):
        out = np.empty((n, dim), dtype=np.float32)
        for s in range(0, n, 200_000):
            m = min(200_000, n - s)
            z = rng.choice(centers, size=m, p=w)
            u = mu[z] + spread * rng.normal(size=(m, dim))
            out[s:s + m] = manifold.to_ball(torch.from_numpy(u)).float().numpy()
        return out

    return draw(n_db), draw(n_q)


def delicious(args, work: Path):
    """Embeddings of Delicious train (database) and test (queries) + labels + vote config."""
    import torch

    from xhyp.config import PredictConfig
    from xhyp.datasets import load_split
    from xhyp.prediction import Predictor

    X_tr, Y_tr = load_split("delicious", "train", data_dir=args.data_dir)
    X_te, Y_te = load_split("delicious", "test", data_dir=args.data_dir)
    model_dir = Path(args.model) if args.model else work / "delicious_model"
    if not args.model and not (model_dir / "train_emb.pt").exists():
        from xhyp.training import train

        t0 = time.time()
        print(f"training a Delicious model ({args.epochs} epochs at most) into {model_dir} ...", flush=True)
        train(X_tr, Y_tr, train_config={"epochs": args.epochs, "threads": args.threads}, out_dir=model_dir,
              progress=False)
        print(f"  trained in {time.time() - t0:.0f} s", flush=True)
    pred = Predictor.load(model_dir)
    if pred.train_emb.shape[0] != X_tr.shape[0]:
        raise SystemExit(f"{model_dir} was not trained on Delicious's training split ({args.data_dir})")
    torch.set_num_threads(args.threads)
    q = pred.embed(X_te).float().numpy()
    pc = PredictConfig().for_model(pred.config.get("train"))  # the model's vote settings
    info = {"model": str(model_dir), "knn": pc.k, "weighting": pc.weighting, "alpha": pc.alpha,
            "geometry": pred.model.config.geometry}
    return pred.train_emb.float().numpy(), q, pred.train_labels, Y_te, info


def precision_at(Y_true, S, ks=(1, 3, 5)):
    """``{"P@k": ...}`` of a score matrix (:func:`xhyp.metrics.precision_at_k`)."""
    from xhyp.metrics import precision_at_k

    curve = precision_at_k(Y_true, S, k=max(ks))
    return {f"P@{k}": float(curve[k - 1]) for k in ks}


# ------------------------------------------------------------------------------------------------
# driver


def recall_at(I, Igt, k):
    """Id recall: ``|I ∩ I_exact| / k`` averaged over the queries."""
    I, Igt = I[:, :k], Igt[:, :k]
    return float(np.mean([len(set(a) & set(b) - {-1}) / k for a, b in zip(I.tolist(), Igt.tolist())]))


def exact_dists(q, db, I, geometry="poincare", chunk=20000):
    """float64 distances of the (Q, k) ids I (``inf`` for -1), from the float32 coordinates."""
    import torch

    out = np.empty(I.shape, dtype=np.float64)
    for s in range(0, I.shape[0], chunk):
        Ii = torch.from_numpy(I[s:s + chunk]).long()
        d = _exact_dist(torch.from_numpy(q[s:s + chunk]), torch.from_numpy(db)[Ii.clamp_min(0)], geometry)
        out[s:s + chunk] = torch.where(Ii >= 0, d, torch.full_like(d, float("inf"))).numpy()
    return out


def tie_recall_at(D, Dgt, k, rtol=1e-6):
    """Tie-aware recall: a returned neighbour counts when its exact distance is within the exact
    k-th distance (duplicate training examples make many neighbours tie; the id recall then
    depends on the tie-break)."""
    kth = Dgt[:, k - 1:k] * (1 + rtol) + 1e-9
    return float(np.mean(np.minimum((D[:, :k] <= kth).sum(1), k) / k))


def loadavg():
    try:
        return os.getloadavg()
    except OSError:
        return None


def bench_dataset(name, db, q, args, work: Path, extra=None, geometry="poincare"):
    """Run every contender on one dataset; returns the result rows."""
    np.save(work / f"{name}_db.npy", db)
    np.save(work / f"{name}_q.npy", q)
    rng = np.random.default_rng(args.seed + 1)
    n_sample = min(args.sample, q.shape[0])
    sample = np.sort(rng.choice(q.shape[0], size=n_sample, replace=False))
    np.save(work / f"{name}_sample.npy", sample)
    # on Delicious the vote uses the model's knn neighbours: search max(k, knn), recall at k
    k_search = max(args.k, extra[2]["knn"]) if extra is not None else args.k
    base = {"work": str(work), "dataset": name, "k": k_search, "threads": args.threads, "repeats": args.repeats}
    print(f"\n## {name}: database {db.shape[0]:,} x {db.shape[1]}, queries {q.shape[0]:,} "
          f"(sample {n_sample:,}), k={k_search}, recall@{args.k}, threads={args.threads}", flush=True)

    # ground truth: the fused exact kernel on all queries (also a contender row)
    gt_spec = dict(base, tag="exact_all", kind="exact", params={}, settings=[{}], sample=None, save_ids=True,
                   repeats=1)
    res = run_worker(gt_spec)
    Igt = np.load(res["rows"][0]["ids_file"])
    Dgt = exact_dists(q, db, Igt, geometry)
    rows = [dict(dataset=name, contender="exact (all queries)", kind="exact", params={},
                 build_seconds=res["build_seconds"], rss_delta_mb=res["rss_delta_mb"], ext=res["ext"],
                 recall=1.0, recall_ties=1.0, **{k: v for k, v in res["rows"][0].items() if k != "ids_file"})]
    print(f"  exact (all queries): {rows[0]['qps']:.0f} q/s, built {res['build_seconds']:.2f} s", flush=True)
    save_ids = extra is not None
    for cname, kind, params, settings, on_sample in contenders(name, db.shape[0], args.quick):
        if args.only and cname not in args.only:
            continue
        spec = dict(base, tag=cname.replace(" ", "_").replace("=", ""), kind=kind, params=params,
                    settings=settings, sample=n_sample if on_sample else None, save_ids=True)
        try:
            res = run_worker(spec)
        except RuntimeError as e:
            print(f"  {cname}: FAILED {e}", flush=True)
            rows.append(dict(dataset=name, contender=cname, kind=kind, params=params, error=str(e)[-500:]))
            continue
        gt = Igt[sample] if on_sample else Igt
        dgt = Dgt[sample] if on_sample else Dgt
        qq = q[sample] if on_sample else q
        for r in res["rows"]:
            I = np.load(r["ids_file"])
            row = dict(dataset=name, contender=cname + (" (sample)" if on_sample and cname == "exact" else ""),
                       kind=kind, params=params, build_seconds=res["build_seconds"],
                       rss_delta_mb=res["rss_delta_mb"], ext=res["ext"], recall=recall_at(I, gt, args.k),
                       recall_ties=tie_recall_at(exact_dists(qq, db, I, geometry), dgt, args.k),
                       **{k: v for k, v in r.items() if k != "ids_file"})
            if save_ids and not on_sample:
                row["_ids"] = I
            rows.append(row)
            st = ", ".join(f"{a}={b}" for a, b in r["setting"].items())
            print(f"  {cname} {st}: {row['qps']:.0f} q/s on {row['queries']:,}, recall@{args.k} {row['recall']:.4f} "
                  f"(ties {row['recall_ties']:.4f}), "
                  f"built {res['build_seconds']:.2f} s, RSS +{res['rss_delta_mb']:.0f} MB", flush=True)
    if extra is not None:  # Delicious: P@k from each contender's neighbours
        from xhyp.knn.vote import vote

        Y_tr, Y_te, info = extra
        kv = info["knn"]
        import torch

        qi, dbt = torch.from_numpy(q), torch.from_numpy(db)
        for row in [rows[0]] + [r for r in rows[1:] if "_ids" in r]:
            I = Igt if row is rows[0] else row.pop("_ids")
            # the vote needs the neighbours' distances (tie-break / weighting): their exact values
            Ii = torch.from_numpy(I[:, :kv]).long()
            dd = _exact_dist(qi, dbt[Ii.clamp_min(0)], info["geometry"])
            dd = torch.where(Ii >= 0, dd, torch.full_like(dd, float("inf")))
            S = vote(Ii, dd.float(), Y_tr, top_k=5, weighting=info["weighting"], alpha=info["alpha"])
            row.update(precision_at(Y_te, S))
        for row in rows:
            row.pop("_ids", None)
    return rows


def _exact_dist(q, y, geometry):
    """float64 distances of the ``(Q, n)`` queries to their ``(Q, k, n)`` neighbours
    (:func:`xhyp.embedding.manifold.dist64`)."""
    from xhyp.embedding import manifold

    return manifold.dist64(q[:, None, :], y, geometry)


def fmt_setting(r):
    p = dict(r.get("params", {}))
    p.update(r.get("setting", {}))
    return ", ".join(f"{a}={b}" for a, b in p.items()) or "-"


def markdown(rows, k):
    has_p = any("P@1" in r for r in rows)
    head = ["dataset", "index", "params", "queries", "build s", "queries/s", f"recall@{k}", f"recall@{k} ties",
            "peak RSS Δ MB", "× exact"]
    if has_p:
        head += ["P@1", "P@3", "P@5"]
    out = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    exact_qps = {}
    for r in rows:
        if r.get("kind") == "exact" and "qps" in r:
            exact_qps.setdefault(r["dataset"], []).append(r["qps"])
    for r in rows:
        if "error" in r:
            out.append(f"| {r['dataset']} | {r['contender']} | {fmt_setting(r)} | failed | | | | | | |")
            continue
        ref = max(exact_qps.get(r["dataset"], [r["qps"]]))
        cells = [r["dataset"], r["contender"], fmt_setting(r), f"{r['queries']:,}", f"{r['build_seconds']:.2f}",
                 f"{r['qps']:,.0f}", f"{r['recall']:.4f}", f"{r.get('recall_ties', float('nan')):.4f}",
                 f"{r['rss_delta_mb']:.0f}", f"{r['qps'] / ref:.2f}"]
        if has_p:
            cells += [f"{100 * r[m]:.2f}" if m in r else "" for m in ("P@1", "P@3", "P@5")]
        out.append("| " + " | ".join(cells) + " |")
    return "\n".join(out)


def targets(rows):
    """Evaluate the issue's targets on the rows (synthetic-200k for speed, delicious for P@k)."""
    out = {}
    syn = [r for r in rows if r["dataset"] == "synthetic-200k" and "qps" in r]
    if syn:
        get = (lambda name: next((r for r in syn if r["contender"] == name), None))
        ex, tt, ff = get("exact (sample)"), get("torch"), get("faiss-flat")
        ex_all = get("exact (all queries)")
        if ex and tt:
            out["exact >= 2x torch"] = {"ratio": ex["qps"] / tt["qps"], "met": ex["qps"] >= 2 * tt["qps"]}
        if ex and ff:
            out["exact >= faiss-flat"] = {"ratio": ex["qps"] / ff["qps"], "met": ex["qps"] >= ff["qps"]}
        ref = max(r["qps"] for r in (ex, ex_all) if r)
        good = [r for r in syn if r["recall_ties"] >= 0.95 and r["kind"] not in ("exact", "torch")]
        if good:
            best = max(good, key=lambda r: r["qps"])
            out["recall>=0.95 at >= 20x exact"] = {"best": f"{best['contender']} {fmt_setting(best)}",
                                                   "speedup": best["qps"] / ref, "recall": best["recall_ties"],
                                                   "met": best["qps"] >= 20 * ref}
    dl = [r for r in rows if r["dataset"] == "delicious" and "P@1" in r]
    if dl:
        ex = next(r for r in dl if r["kind"] == "exact")
        cand = [r for r in dl if r["kind"] not in ("exact", "torch")]
        fastest = max(cand, key=lambda r: r["qps"])
        good = [r for r in cand if r["recall_ties"] >= 0.95]
        res = {}
        best_good = max(good, key=lambda r: r["qps"]) if good else None
        for label, r in (("fastest", fastest), ("fastest with recall>=0.95", best_good)):
            if r is None:
                continue
            diff = {m: 100 * (r[m] - ex[m]) for m in ("P@1", "P@3", "P@5")}
            res[label] = {"index": f"{r['contender']} {fmt_setting(r)}", "qps": r["qps"], "recall": r["recall_ties"],
                          "P_diff_points": diff, "met": all(abs(v) <= 0.5 for v in diff.values())}
        out["P@1/3/5 within 0.5 point of exact"] = res
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--out", default=str(HERE / "results.json"), help="JSON results file")
    p.add_argument("--work", help="folder for data, ground truth and the Delicious model (default: a temp dir)")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="threads for every contender")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--sample", type=int, default=2000, help="queries timed for the slow contenders")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--data-dir", default=os.environ.get("XHYP_DATA", str(ROOT.parent / "shared" / "data")))
    p.add_argument("--model", help="trained Delicious model directory (default: train one)")
    p.add_argument("--epochs", type=int, default=10, help="max epochs when training the Delicious model")
    p.add_argument("--no-delicious", action="store_true")
    p.add_argument("--no-synthetic", action="store_true")
    p.add_argument("--large", action="store_true", help="also a 1.7M-point synthetic database")
    p.add_argument("--large-queries", type=int, default=20000)
    p.add_argument("--n-db", type=int, default=196_606)
    p.add_argument("--n-q", type=int, default=100_095)
    p.add_argument("--dim", type=int, default=50)
    p.add_argument("--centers", type=int, default=2000, help="synthetic mixture components")
    p.add_argument("--center-radius", type=float, default=0.9, help="median |centre| in R^n")
    p.add_argument("--radius-sigma", type=float, default=0.6, help="log-sd of |centre|")
    p.add_argument("--spread", type=float, default=0.07, help="within-component standard deviation")
    p.add_argument("--zipf", type=float, default=1.0, help="exponent of the mixture weights rank^-zipf")
    p.add_argument("--only", nargs="*", help="contender names to run (default: all)")
    p.add_argument("--quick", action="store_true", help="small sizes: a smoke test of the script")
    p.add_argument("--worker", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.worker:
        print("RESULT:" + json.dumps(worker(json.loads(args.worker))), flush=True)
        return 0
    if args.quick:
        args.n_db, args.n_q, args.sample, args.repeats = 20_000, 5_000, 500, 1
        args.large_queries = 2000
    os.environ.setdefault("OMP_NUM_THREADS", str(args.threads))
    work = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="xhyp_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    import torch

    torch.set_num_threads(args.threads)
    from xhyp.knn import extension

    t_start = time.time()
    env = {"python": sys.version.split()[0], "torch": torch.__version__, "platform": platform.platform(),
           "cpu_count": os.cpu_count(), "threads": args.threads, "extension": extension.ext_available("cpu"),
           "loadavg_start": loadavg(), "command": " ".join([Path(sys.executable).name, *sys.argv])}
    try:
        import faiss

        env["faiss"] = faiss.__version__
    except ImportError:
        env["faiss"] = None
    rows, data_info = [], {}
    if not args.no_delicious:
        db, q, Y_tr, Y_te, info = delicious(args, work)
        data_info["delicious"] = info
        rows += bench_dataset("delicious", db, q, args, work, extra=(Y_tr, Y_te, info), geometry=info["geometry"])
    if not args.no_synthetic:
        gen = dict(dim=args.dim, centers=args.centers, center_radius=args.center_radius,
                   radius_sigma=args.radius_sigma, spread=args.spread, zipf=args.zipf, seed=args.seed)
        db, q = synthetic(args.n_db, args.n_q, **gen)
        data_info["synthetic-200k"] = dict(gen, n_db=args.n_db, n_q=args.n_q,
                                           norm_quantiles=np.quantile(np.linalg.norm(db, axis=1),
                                                                      [0.05, 0.5, 0.95]).tolist())
        rows += bench_dataset("synthetic-200k", db, q, args, work)
        del db, q
    if args.large:
        n_large = 170_000 if args.quick else 1_700_000
        gen = dict(dim=args.dim, centers=args.centers, center_radius=args.center_radius,
                   radius_sigma=args.radius_sigma, spread=args.spread, zipf=args.zipf, seed=args.seed + 7)
        db, q = synthetic(n_large, args.large_queries, **gen)
        data_info["synthetic-1.7m"] = dict(gen, n_db=n_large, n_q=args.large_queries)
        rows += bench_dataset("synthetic-1.7m", db, q, args, work)
    env["loadavg_end"] = loadavg()
    env["total_seconds"] = round(time.time() - t_start, 1)
    table = markdown(rows, args.k)
    tg = targets(rows)
    print("\n" + table + "\n")
    print("targets:", json.dumps(tg, indent=2))
    from xhyp.utils import atomic_write

    text = json.dumps({"env": env, "data": data_info, "rows": rows, "targets": tg, "markdown": table},
                      indent=2, default=str) + "\n"
    atomic_write(args.out, lambda f: f.write(text.encode()))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
