#!/usr/bin/env python
"""xhyp against the usual extreme-classification peers, on the same splits and features.

One command trains and evaluates every method on each data set and writes one Markdown table
(printed, and ``OUT.md`` beside ``--out``) and the JSON (``--out``)::

    python bench/peers.py --datasets bibtex delicious --data-dir ../shared/data \\
        --out bench/peers.json --xhyp-learners 3 --threads 2

Methods (``--peers``; each one is skipped with a message when its package is missing):

* ``xhyp``: one learner (``xhyp``) and an ensemble of ``--xhyp-learners`` learners
  (``xhyp-ensN``, summed votes, Gerald & Baskiotis 2019 section 2.6), through the Python API
  (:func:`xhyp.prediction.train_ensemble`, :class:`xhyp.prediction.Predictor`). The ensemble's learner 0
  *is* the single learner (seed 0; learner ``i`` has seed ``i``), so it is trained once; the
  ensemble's training time is the sum of its learners' times. Learners train one after another.
* ``parabel``: Parabel (Prabhu et al. 2018) as implemented by ``omikuji`` (its defaults: balanced
  2-means trees, 3 trees, beam 10).
* ``bonsai``: Bonsai (Khandagale et al. 2019) as ``omikuji`` documents it: unbalanced k-means with
  ``cluster_k = 100``, ``max_depth = 3`` (3 trees, the other settings as Parabel's).
* ``plt``: probabilistic label trees, ``napkinxc.models.PLT`` with its defaults.
* ``xrlinear``: XR-Linear (Yu et al. 2022, PECOS), PIFA label features, hierarchical 2-means
  indexer, ``XLinearModel`` with its defaults. ``libpecos`` pins older numpy/scipy and pulls a
  CUDA torch, so it gets its own virtual environment (``--pecos-venv``, default
  ``bench/.venv-pecos``), made on first use with the CPU ``torch==2.13.0`` installed first; the
  XR-Linear part runs there in a subprocess (``python bench/peers.py --pecos-worker DIR``) that
  needs only numpy/scipy/pecos and exchanges ``.npz`` files with this process.

Same splits and features: every method gets the train/test split of the data directory; the peers
get the training and test features L2-normalised per row (what xhyp's default ``features="l2"``
does inside its pipeline; xhyp is given the raw features and normalises them itself).

Scoring: every method's top-``--top-k`` test scores are saved as a sparse ``(N_test, L)`` matrix
(``WORK/DATASET/METHOD/predictions.npz``) and scored by the same code, :mod:`xhyp.metrics`
(P@k, and PSP@k with the inverse propensities of Jain et al. 2016, ``A, B`` from xhyp's registry).

Timings (wall clock, ``--threads`` threads for every method):

* ``train (s)``: fit plus writing the model to disk (xhyp: its learners' ``train_seconds``, which
  include the per-epoch validation and the final embedding of the training set);
* ``to best epoch (s)`` (xhyp only): the sum of the per-epoch ``seconds`` in ``history.json`` up
  to and including the best validation epoch (summed over learners for an ensemble): the time
  early stopping needed to *find* the model it keeps;
* ``predict (ms/pt)``: predicting the whole test set with the model already in memory (xhyp: the
  model directory loaded first, the kNN index built inside the timed call) divided by the number
  of test points. omikuji's Python binding predicts one point per call, which this includes;
* ``model (MB)``: bytes on disk of what prediction needs (xhyp: the files of
  ``xhyp.prediction.predictor.PREDICTOR_FILES`` and the shortlist scorers ``reranker.npz`` when the
  model has them, i.e. without the resumable ``checkpoint.pt``; the others:
  their saved model directory), in 10^6 bytes.

Threads: ``--threads`` is given to every method. On a machine shared with other jobs use
``--threads 1``: torch's 2-thread parallel regions wait for each other's time slices, and on the
2-core development machine at load average 17-19 a Delicious xhyp epoch took 333-475 s with 2
threads against 49-73 s with 1 thread (bench/peers.md). The results in bench/peers.md were
measured that way, on a loaded machine: compare methods within a run, not with idle-machine times.
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import scipy.sparse as sp

HERE = Path(__file__).resolve().parent
ALL_PEERS = ("xhyp", "parabel", "bonsai", "plt", "xrlinear")
KS = (1, 3, 5)
PECOS_TORCH = "torch==2.13.0"


class Unavailable(Exception):
    """A peer cannot run here (package missing, environment cannot be made); the message says why."""


# ------------------------------------------------------------------------------------------------
# small helpers
# ------------------------------------------------------------------------------------------------
def dir_bytes(path: Path, names=None) -> int:
    """Bytes of the regular files under ``path`` (only ``names`` directly in it when given)."""
    path = Path(path)
    if names is not None:
        return sum((path / n).stat().st_size for n in names if (path / n).is_file())
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def l2_rows(X: sp.csr_matrix) -> sp.csr_matrix:
    """Rows scaled to unit L2 norm (float32 CSR; all-zero rows stay zero)."""
    X = sp.csr_matrix(X, dtype=np.float32, copy=True)
    n = np.sqrt(np.asarray(X.multiply(X).sum(axis=1)).ravel())
    n[n == 0] = 1.0
    X = sp.csr_matrix(sp.diags((1.0 / n).astype(np.float32)) @ X, dtype=np.float32)
    X.sort_indices()
    return X


def pairs_to_csr(rows, n_labels: int) -> sp.csr_matrix:
    """``[[(label, score), ...], ...]`` -> ``(N, n_labels)`` float32 CSR."""
    indptr = np.zeros(len(rows) + 1, dtype=np.int64)
    indptr[1:] = np.cumsum([len(r) for r in rows])
    ind = np.fromiter((int(l) for r in rows for l, _ in r), dtype=np.int64, count=int(indptr[-1]))
    val = np.fromiter((float(s) for r in rows for _, s in r), dtype=np.float32, count=int(indptr[-1]))
    return sp.csr_matrix((val, ind, indptr), shape=(len(rows), n_labels))


class _StderrToFile:
    """Send file descriptor 2 to ``path`` for a while (omikuji's Rust code draws progress bars on
    it, tens of thousands of lines per run); Python's ``sys.stderr`` is flushed around the switch."""

    def __init__(self, path: Path):
        self.path = Path(path)

    def __enter__(self):
        sys.stderr.flush()
        self.saved = os.dup(2)
        self.f = open(self.path, "ab")
        os.dup2(self.f.fileno(), 2)
        return self

    def __exit__(self, *exc):
        sys.stderr.flush()
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.f.close()
        return False


def _load_avg() -> list:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


# ------------------------------------------------------------------------------------------------
# peers: each returns {"train_seconds", "predict_seconds", "model_bytes", "scores", "settings", ...}
# ------------------------------------------------------------------------------------------------
def run_xhyp(data: dict, work: Path, args):
    """xhyp, one learner and (``args.xhyp_learners > 1``) an ensemble sharing learner 0 (a generator:
    yields the single learner's row before the ensemble trains)."""
    try:
        import torch

        from xhyp.cli import config_from_pairs
        from xhyp.config import TrainConfig
        from xhyp.knn.vote import sum_top_scores
        from xhyp.modeldir import OPTIONAL_MODEL_FILES
        from xhyp.prediction import Predictor, train_ensemble
        from xhyp.prediction.predictor import PREDICTOR_FILES
    except ImportError as e:
        raise Unavailable(f"xhyp cannot be imported ({e})")
    if args.threads:
        torch.set_num_threads(args.threads)
    tcfg = dict(config_from_pairs(args.xhyp_set, TrainConfig), seed=args.seed, threads=args.threads)
    mcfg = {"dim": args.xhyp_dim}
    ens_dir = work / "xhyp-ensemble"
    if not args.resume:
        shutil.rmtree(ens_dir, ignore_errors=True)
    Xtr, Ytr, Xte = data["X_train"], data["Y_train"], data["X_test"]
    extra = {"dataset": data["name"]}
    predict_kw = {"k": args.xhyp_knn} if args.xhyp_knn else {}

    def learner_stats(d: Path) -> dict:
        summ = json.loads((d / "train_summary.json").read_text())
        hist = json.loads((d / "history.json").read_text())
        best = int(summ["best_epoch"])
        to_best = sum(float(h.get("seconds", h.get("train_seconds", 0.0))) for h in hist if int(h["epoch"]) <= best)
        return {"train_seconds": float(summ["train_seconds"]), "best_epoch": best, "epochs_run": len(hist),
                "to_best_seconds": round(to_best, 3), "val_p1": summ.get("val_p1"),
                "model_bytes": dir_bytes(d, (*PREDICTOR_FILES, *OPTIONAL_MODEL_FILES))}

    def timed_predict(dirs, member_top_k):
        preds = [Predictor.load(d) for d in dirs]
        t0 = time.perf_counter()
        if len(preds) == 1:
            S = preds[0].predict(Xte, top_k=args.top_k, **predict_kw)
        else:
            S = sum_top_scores((p.predict(Xte, top_k=member_top_k, **predict_kw) for p in preds), args.top_k)
        return S, time.perf_counter() - t0

    train_ensemble(Xtr, Ytr, ens_dir, n_learners=1, model_config=mcfg, train_config=tcfg, jobs=1,
                   progress=args.progress, extra_config=extra)
    d0 = ens_dir / "learner_00"
    st = learner_stats(d0)
    S, secs = timed_predict([d0], args.top_k)
    settings = {"model": mcfg, "train": tcfg, "knn": args.xhyp_knn or "training default",
                "model_dir": str(d0)}
    yield ("xhyp", {"train_seconds": st["train_seconds"], "to_best_seconds": st["to_best_seconds"],
                         "predict_seconds": secs, "model_bytes": st["model_bytes"], "scores": S,
                         "settings": settings, "learners": [st]})
    if args.xhyp_learners > 1:
        n = args.xhyp_learners
        train_ensemble(Xtr, Ytr, ens_dir, n_learners=n, model_config=mcfg, train_config=tcfg, jobs=1,
                       progress=args.progress, extra_config=extra)
        dirs = [ens_dir / f"learner_{i:02d}" for i in range(n)]
        sts = [learner_stats(d) for d in dirs]
        S, secs = timed_predict(dirs, args.xhyp_member_top_k)
        yield (f"xhyp-ens{n}", {
            "train_seconds": sum(s["train_seconds"] for s in sts),
            "to_best_seconds": round(sum(s["to_best_seconds"] for s in sts), 3),
            "predict_seconds": secs, "model_bytes": sum(s["model_bytes"] for s in sts), "scores": S,
            "settings": dict(settings, learners=n, member_top_k=args.xhyp_member_top_k, model_dir=str(ens_dir),
                             seeds=list(range(args.seed, args.seed + n))),
            "learners": sts})


def _omikuji(data: dict, work: Path, args, bonsai: bool) -> dict:
    try:
        import omikuji
    except ImportError as e:
        raise Unavailable(f"package omikuji is not installed ({e}); pip install omikuji (or .[bench])")
    from xhyp.datasets.formats import write_xc

    work.mkdir(parents=True, exist_ok=True)
    train_file = work / "train.txt"
    write_xc(train_file, data["X_train_l2"], data["Y_train"])
    hp = omikuji.Model.default_hyper_param()
    hp.n_trees = 3
    if bonsai:  # omikuji's README, "Regular k-means for shallow trees" (Bonsai, Khandagale et al. 2019)
        hp.cluster_balanced = False
        hp.cluster_k = 100
        hp.max_depth = 3
    settings = {k: getattr(hp, k) for k in dir(hp) if not k.startswith("_") and
                isinstance(getattr(hp, k), (int, float, bool))}
    settings["beam_size"] = 10
    n_threads = args.threads or None
    model_dir = work / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    with _StderrToFile(work / "omikuji.log"):  # its log and progress bars
        t0 = time.perf_counter()
        model = omikuji.Model.train_on_data(str(train_file), hp, n_threads=n_threads)
        model.save(str(model_dir))
        train_s = time.perf_counter() - t0
    train_file.unlink()
    if n_threads:
        model.init_prediction_thread_pool(n_threads)
    X = data["X_test_l2"]
    t0 = time.perf_counter()
    rows = []
    for i in range(X.shape[0]):
        a, b = X.indptr[i], X.indptr[i + 1]
        rows.append(model.predict(list(zip(X.indices[a:b].tolist(), X.data[a:b].tolist())),
                                  beam_size=10, top_k=args.top_k))
    pred_s = time.perf_counter() - t0
    return {"train_seconds": train_s, "predict_seconds": pred_s, "model_bytes": dir_bytes(model_dir),
            "scores": pairs_to_csr(rows, data["Y_train"].shape[1]), "settings": settings}


def run_parabel(data, work, args):
    return [("parabel", _omikuji(data, work, args, bonsai=False))]


def run_bonsai(data, work, args):
    return [("bonsai", _omikuji(data, work, args, bonsai=True))]


def run_plt(data, work, args):
    try:
        from napkinxc.models import PLT
    except ImportError as e:
        raise Unavailable(f"package napkinxc is not installed ({e}); pip install napkinxc (or .[bench])")
    model_dir = work / "model"
    shutil.rmtree(model_dir, ignore_errors=True)
    work.mkdir(parents=True, exist_ok=True)
    model = PLT(str(model_dir), threads=args.threads, seed=args.seed)
    t0 = time.perf_counter()
    model.fit(data["X_train_l2"], data["Y_train"])  # napkinxc writes the model into model_dir
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    rows = model.predict_proba(data["X_test_l2"], top_k=args.top_k)
    pred_s = time.perf_counter() - t0
    return [("plt", {"train_seconds": train_s, "predict_seconds": pred_s, "model_bytes": dir_bytes(model_dir),
                     "scores": pairs_to_csr(rows, data["Y_train"].shape[1]),
                     "settings": {"class": "napkinxc.models.PLT", "defaults": True, "seed": args.seed}})]


# -- XR-Linear (libpecos) in its own virtual environment -----------------------------------------
def _venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def ensure_pecos_venv(venv: Path, install: bool = True) -> Path:
    """The pecos virtualenv's python, making the environment first if needed.

    The CPU ``torch==2.13.0`` is installed before ``libpecos`` so that pip keeps it instead of
    pulling a CUDA build. Raises :class:`Unavailable` with pip's last lines when that fails.
    """
    py = _venv_python(venv)
    probe = [str(py), "-c", "import pecos.xmc.xlinear.model"]
    if py.is_file() and subprocess.run(probe, capture_output=True).returncode == 0:
        return py
    if not install:
        raise Unavailable(f"no working libpecos in {venv} (run without --no-pecos-install to make it)")
    print(f"[peers] making the XR-Linear environment {venv} (libpecos; a few minutes)", flush=True)
    steps = []
    if not py.is_file():
        steps.append([sys.executable, "-m", "venv", str(venv)])
    steps += [[str(py), "-m", "pip", "install", "-q", "--upgrade", "pip", "wheel", "setuptools"],
              [str(py), "-m", "pip", "install", "-q", PECOS_TORCH],
              [str(py), "-m", "pip", "install", "-q", "libpecos"]]
    for cmd in steps:
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            tail = " | ".join((r.stderr or r.stdout).strip().splitlines()[-3:])
            raise Unavailable(f"`{' '.join(cmd[-3:])}` failed in {venv}: {tail}")
    r = subprocess.run(probe, capture_output=True, text=True)
    if r.returncode != 0:
        raise Unavailable(f"libpecos installed in {venv} but does not import: "
                          f"{(r.stderr.strip().splitlines() or ['?'])[-1]}")
    return py


def pecos_worker(d: Path) -> None:
    """Runs inside the pecos venv: train XR-Linear on ``d/train.npz``, predict ``d/test.npz``.

    Writes ``d/model/`` (the saved model), ``d/scores.npz`` and ``d/result.json``.
    """
    from pecos.xmc import Indexer, LabelEmbeddingFactory
    from pecos.xmc.xlinear.model import XLinearModel

    cfg = json.loads((d / "job.json").read_text())
    threads = int(cfg["threads"]) or -1
    X = sp.load_npz(d / "X_train.npz").tocsr().astype(np.float32)
    Y = sp.load_npz(d / "Y_train.npz").tocsr().astype(np.float32)
    Xt = sp.load_npz(d / "X_test.npz").tocsr().astype(np.float32)
    t0 = time.perf_counter()
    label_feat = LabelEmbeddingFactory.create(Y, X, method="pifa")
    chain = Indexer.gen(label_feat, indexer_type="hierarchicalkmeans", seed=int(cfg["seed"]), threads=threads)
    model = XLinearModel.train(X, Y, C=chain, threads=threads)
    model.save(str(d / "model"))
    train_s = time.perf_counter() - t0
    t0 = time.perf_counter()
    S = model.predict(Xt, only_topk=int(cfg["top_k"]), threads=threads)
    pred_s = time.perf_counter() - t0
    sp.save_npz(d / "scores.npz", sp.csr_matrix(S, dtype=np.float32))
    import pecos

    (d / "result.json").write_text(json.dumps({"train_seconds": train_s, "predict_seconds": pred_s,
                                               "pecos_version": getattr(pecos, "__version__", "?"),
                                               "numpy": np.__version__}))


def run_xrlinear(data, work, args):
    py = ensure_pecos_venv(Path(args.pecos_venv), install=not args.no_pecos_install)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    sp.save_npz(work / "X_train.npz", data["X_train_l2"])
    sp.save_npz(work / "Y_train.npz", sp.csr_matrix(data["Y_train"], dtype=np.float32))
    sp.save_npz(work / "X_test.npz", data["X_test_l2"])
    (work / "job.json").write_text(json.dumps({"threads": args.threads, "seed": args.seed, "top_k": args.top_k}))
    r = subprocess.run([str(py), str(Path(__file__).resolve()), "--pecos-worker", str(work)],
                       capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError("XR-Linear worker failed: " + " | ".join(r.stderr.strip().splitlines()[-3:]))
    res = json.loads((work / "result.json").read_text())
    S = sp.load_npz(work / "scores.npz").tocsr()
    for n in ("X_train.npz", "Y_train.npz", "X_test.npz"):
        (work / n).unlink()
    return [("xrlinear", {"train_seconds": res["train_seconds"], "predict_seconds": res["predict_seconds"],
                          "model_bytes": dir_bytes(work / "model"), "scores": S,
                          "settings": {"label_features": "pifa", "indexer": "hierarchicalkmeans",
                                       "XLinearModel": "defaults", "venv": str(args.pecos_venv),
                                       "pecos_version": res["pecos_version"], "pecos_numpy": res["numpy"]}})]


RUNNERS = {"xhyp": run_xhyp, "parabel": run_parabel, "bonsai": run_bonsai, "plt": run_plt,
           "xrlinear": run_xrlinear}


# ------------------------------------------------------------------------------------------------
# scoring, tables
# ------------------------------------------------------------------------------------------------
def score(Y_test, S, inv_prop) -> dict:
    """P@k and PSP@k (k = 1, 3, 5) of a score matrix, by :mod:`xhyp.metrics`."""
    from xhyp.metrics import precision_at_k, psprecision_at_k

    p = precision_at_k(Y_test, S, k=max(KS))
    ps = psprecision_at_k(Y_test, S, inv_prop, k=max(KS))
    out = {f"P@{k}": float(p[k - 1]) for k in KS}
    out.update({f"PSP@{k}": float(ps[k - 1]) for k in KS})
    return out


def prepare(name: str, data_dir) -> dict:
    """Load a data set's splits (:func:`xhyp.datasets.load_split`) and its propensity (A, B)."""
    from xhyp.datasets import load_split, propensity_params

    Xtr, Ytr = load_split(name, "train", data_dir=data_dir)
    Xte, Yte = load_split(name, "test", data_dir=data_dir)
    return make_data(name, Xtr, Ytr, Xte, Yte, propensity_params(name))


def make_data(name, Xtr, Ytr, Xte, Yte, ab=None) -> dict:
    """The dict every peer reads: raw and L2-normalised features, labels, propensity parameters
    (``ab``: ``(A, B)``; ``None``: the registry's default, :func:`xhyp.datasets.propensity_params`)."""
    if ab is None:
        from xhyp.datasets import propensity_params

        ab = propensity_params(None)
    Xtr, Xte = sp.csr_matrix(Xtr, dtype=np.float32), sp.csr_matrix(Xte, dtype=np.float32)
    Ytr, Yte = sp.csr_matrix(Ytr, dtype=np.float32), sp.csr_matrix(Yte, dtype=np.float32)
    return {"name": name, "X_train": Xtr, "Y_train": Ytr, "X_test": Xte, "Y_test": Yte,
            "X_train_l2": l2_rows(Xtr), "X_test_l2": l2_rows(Xte), "propensity": tuple(map(float, ab))}


def run_dataset(data: dict, peers, work: Path, args, log=print, on_update=None) -> dict:
    """Train, predict and score every requested peer on one data set.

    Returns ``{"name", "n_train", "n_test", "n_features", "n_labels", "propensity", "methods":
    {method: {...}}}``; a method that could not run has ``"status": "unavailable"`` or
    ``"failed"`` and a ``"reason"``. Predictions go to ``work/METHOD/predictions.npz``.
    ``on_update(res)`` (optional) is called after each peer, with the results so far.
    """
    from xhyp.metrics import inv_propensity
    from xhyp.utils import atomic_save_sparse

    A, B = data["propensity"]
    inv_prop = inv_propensity(data["Y_train"], A, B)
    res = {"name": data["name"], "n_train": int(data["X_train"].shape[0]), "n_test": int(data["X_test"].shape[0]),
           "n_features": int(data["X_train"].shape[1]), "n_labels": int(data["Y_train"].shape[1]),
           "propensity": [A, B], "methods": {}}
    n_test = data["X_test"].shape[0]
    def record(method, r, load0, t0):
        S = sp.csr_matrix(r.pop("scores"))
        pred_path = work / method / "predictions.npz"
        pred_path.parent.mkdir(parents=True, exist_ok=True)
        atomic_save_sparse(pred_path, S)
        r.update(status="ok", metrics=score(data["Y_test"], S, inv_prop),
                 predict_ms_per_point=1000.0 * r["predict_seconds"] / max(n_test, 1),
                 predictions=str(pred_path), load_avg_before=load0, load_avg_after=_load_avg())
        res["methods"][method] = r
        m = r["metrics"]
        log(f"[peers] {data['name']}: {method}: P@1 {100 * m['P@1']:.2f} P@3 {100 * m['P@3']:.2f} "
            f"P@5 {100 * m['P@5']:.2f}  train {r['train_seconds']:.1f}s  "
            f"predict {r['predict_ms_per_point']:.3f} ms/pt  ({time.time() - t0:.0f}s wall)")

    for peer in peers:
        log(f"[peers] {data['name']}: {peer} ...")
        load0 = _load_avg()
        t0 = time.time()
        try:
            # a runner yields (or returns a list of) (method, result) pairs: xhyp's single learner is
            # recorded before its ensemble trains
            for method, r in RUNNERS[peer](data, work / peer, args):
                record(method, r, load0, t0)
                if on_update:
                    on_update(res)
        except Exception as e:  # a peer that crashes must not lose the others' results
            key = peer if peer not in res["methods"] else f"{peer} (further rows)"
            if isinstance(e, Unavailable):
                log(f"[peers] {data['name']}: {peer} skipped: {e}")
                res["methods"][key] = {"status": "unavailable", "reason": str(e)}
            else:
                log(f"[peers] {data['name']}: {peer} failed: {type(e).__name__}: {e}")
                res["methods"][key] = {"status": "failed", "reason": f"{type(e).__name__}: {e}"}
            if on_update:
                on_update(res)
    return res


COLUMNS = ("P@1", "P@3", "P@5", "PSP@1", "PSP@3", "PSP@5", "train (s)", "to best epoch (s)",
           "predict (ms/pt)", "model (MB)")


FOOTER = """
How to read it: P@k and PSP@k in percent, every method scored by `xhyp.metrics` on its saved
top-5 test predictions (PSP with the Jain et al. 2016 inverse propensities, `A, B` from xhyp's
registry); the peers get L2-normalised features, xhyp normalises them itself (`features="l2"`).
`train (s)`: fit and save, wall clock (xhyp: includes each epoch's validation and the final embedding
of the training set; an ensemble: the sum over its learners, learned one after another, learner 0
being the single learner). `to best epoch (s)`: xhyp only, the sum of the epoch times of
`history.json` up to the best validation epoch. `predict (ms/pt)`: the whole test set with the model
in memory, divided by the test size (omikuji's Python binding predicts a point per call).
`model (MB)`: what prediction needs on disk (xhyp: without the resumable checkpoint). Parabel =
omikuji defaults (3 trees); Bonsai = omikuji unbalanced k-means, cluster_k 100, max_depth 3;
PLT = napkinxc defaults; XR-Linear = libpecos PIFA + hierarchical k-means + XLinearModel defaults,
in its own virtualenv.
"""


def markdown_table(results: list[dict]) -> str:
    """One Markdown table, a row per (data set, method); metrics in percent."""
    head = "| dataset | method | " + " | ".join(COLUMNS) + " |"
    lines = [head, "|---|---|" + "---:|" * len(COLUMNS)]
    def order(method):  # xhyp, xhyp-ensN, then the peers as in ALL_PEERS (JSON keys come back sorted)
        base = method.split("-")[0].split(" ")[0]
        return (ALL_PEERS.index(base) if base in ALL_PEERS else len(ALL_PEERS), method)

    for d in results:
        for method, r in sorted(d["methods"].items(), key=lambda kv: order(kv[0])):
            label = f"{method} ({r['run']})" if "run" in r else method
            if r.get("status") != "ok":
                lines.append(f"| {d['name']} | {label} | " + " | ".join(["—"] * len(COLUMNS))
                             + " |")
                continue
            m = r["metrics"]
            cells = [f"{100 * m[c]:.2f}" for c in COLUMNS[:6]]
            cells.append(f"{r['train_seconds']:.1f}")
            cells.append(f"{r['to_best_seconds']:.1f}" if "to_best_seconds" in r else "")
            cells.append(f"{r['predict_ms_per_point']:.3f}")
            cells.append(f"{r['model_bytes'] / 1e6:.2f}")
            lines.append(f"| {d['name']} | {label} | " + " | ".join(cells) + " |")
    notes = [f"- {d['name']} / {method}: {r['status']}: {r['reason']}"
             for d in results for method, r in d["methods"].items() if r.get("status") != "ok"]
    ratios = []
    for d in results:
        x, p = d["methods"].get("xhyp", {}), d["methods"].get("parabel", {})
        if x.get("status") == "ok" and p.get("status") == "ok":
            ratios.append(f"- {d['name']}: xhyp (1 learner) time to its best validation epoch / Parabel "
                          f"training time = {x['to_best_seconds']:.1f} / {p['train_seconds']:.1f} = "
                          f"{x['to_best_seconds'] / max(p['train_seconds'], 1e-9):.2f}x; prediction time per "
                          f"point xhyp / Parabel = {x['predict_ms_per_point']:.3f} / "
                          f"{p['predict_ms_per_point']:.3f} = "
                          f"{x['predict_ms_per_point'] / max(p['predict_ms_per_point'], 1e-12):.2f}x")
    out = "\n".join(lines) + "\n"
    if ratios:
        out += "\n" + "\n".join(ratios) + "\n"
    if notes:
        out += "\nNot run:\n" + "\n".join(notes) + "\n"
    props = ", ".join(f"{d['name']} A={d['propensity'][0]}, B={d['propensity'][1]}" for d in results)
    return out + FOOTER.replace("registry);", f"registry: {props});" if props else "registry);")


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--datasets", nargs="+", default=["bibtex", "delicious"])
    p.add_argument("--data-dir", default=None, help="folder holding NAME/train.txt, NAME/test.txt")
    p.add_argument("--out", default=str(HERE / "peers.json"), help="JSON output; the table goes to the same "
                   "name with .md")
    p.add_argument("--work", default=str(HERE / ".peers-work"), help="models and predictions (default "
                   "bench/.peers-work, git-ignored; each method's folder is replaced)")
    p.add_argument("--peers", nargs="+", default=list(ALL_PEERS), choices=ALL_PEERS)
    p.add_argument("--xhyp-learners", type=int, default=3, help="ensemble size (1: no ensemble row)")
    p.add_argument("--xhyp-dim", type=int, default=50)
    p.add_argument("--xhyp-knn", type=int, default=None, help="vote neighbours at prediction (default: "
                   "the training config's knn)")
    p.add_argument("--xhyp-member-top-k", type=int, default=100, help="labels kept per ensemble member "
                   "before summing (xhyp predict's default)")
    p.add_argument("--xhyp-set", nargs="*", default=[], metavar="KEY=VALUE", help="xhyp TrainConfig overrides")
    p.add_argument("--threads", type=int, default=0, help="threads for every method (0: each one's default; "
                   "1 on a loaded machine, see the module docstring)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--top-k", type=int, default=5, help="labels predicted per test point (>= 5)")
    p.add_argument("--resume", action="store_true", help="keep WORK's xhyp learners: complete ones (same "
                   "settings and data) are reused with the times measured when they were trained, interrupted "
                   "ones resume from their checkpoint (their train (s) then covers the resumed part only)")
    p.add_argument("--pecos-venv", default=str(HERE / ".venv-pecos"))
    p.add_argument("--no-pecos-install", action="store_true", help="never create the pecos environment")
    p.add_argument("--progress", action="store_true", help="xhyp's per-epoch progress bars")
    p.add_argument("--note", default="", help="with --render: a paragraph put above the table")
    p.add_argument("--render", nargs="+", metavar="JSON", help="train nothing: merge the data sets of these "
                   "earlier --out files into one table and JSON (--out)")
    args = p.parse_args(argv)
    if args.top_k < max(KS):
        p.error(f"--top-k must be >= {max(KS)}")
    if args.xhyp_learners < 1:
        p.error("--xhyp-learners must be >= 1")
    return args


def main(argv=None) -> dict:
    if argv is None and len(sys.argv) == 3 and sys.argv[1] == "--pecos-worker":
        pecos_worker(Path(sys.argv[2]))  # inside the pecos venv: no xhyp there
        return {}
    args = parse_args(argv)
    from xhyp.eval.common import environment
    from xhyp.utils import atomic_save_json, atomic_write

    if args.render:
        return render(args.render, Path(args.out), note=args.note)

    argv_used = sys.argv[1:] if argv is None else list(argv)
    command = "python bench/peers.py " + " ".join(argv_used)
    load_start = _load_avg()
    t0 = time.time()
    out = Path(args.out)
    results: list[dict] = []

    def write(current=None, final=False) -> str:
        """Write the JSON and the table of everything measured so far (atomically, after each
        method), so that an interrupted run leaves its finished rows behind."""
        done = results + ([current] if current is not None else [])
        env = environment()
        doc = {"command": command, "environment": env, "threads": args.threads, "load_avg_start": load_start,
               "load_avg_end": _load_avg(), "wall_seconds": round(time.time() - t0, 1), "complete": final,
               "datasets": done}
        atomic_save_json(doc, out)
        md = (f"Command: `{command}`\n\nMachine: {env['cpu_count']} CPUs, {env['machine']}, torch {env['torch']}, "
              f"threads {args.threads or 'default'}; load average (1, 5, 15 min) at start {load_start}, at end "
              f"{doc['load_avg_end']}; {env['date']}; {doc['wall_seconds']} s wall in all"
              f"{'' if final else ' (run still in progress or interrupted: partial)'}.\n\n" + markdown_table(done))
        atomic_write(out.with_suffix(".md"), lambda f: f.write(md.encode()))
        return md

    for name in args.datasets:
        data = prepare(name, args.data_dir)
        results.append(run_dataset(data, args.peers, Path(args.work) / name, args, on_update=write))
    md = write(final=True)
    print(md)
    return json.loads(out.read_text())


def render(paths, out: Path, note: str = "") -> dict:
    """Merge earlier runs' JSON (``--render``) into one JSON and table; each run keeps its command,
    machine and load in the merged JSON's ``runs`` and in the table's header lines."""
    from xhyp.utils import atomic_save_json, atomic_write

    runs = []
    for p in paths:
        try:
            runs.append(json.loads(Path(p).read_text()))
        except (OSError, ValueError) as e:
            raise SystemExit(f"--render: cannot read {p}: {e}")
    head = []
    merged: dict[str, dict] = {}
    for i, r in enumerate(runs, 1):
        env = r["environment"]
        names = ", ".join(d["name"] for d in r["datasets"])
        head.append(f"{i}. {names}: `{r['command']}` ({env['cpu_count']} CPUs, torch {env['torch']}, threads "
                    f"{r['threads'] or 'default'}; load average (1, 5, 15 min) at start {r['load_avg_start']}, "
                    f"at end {r['load_avg_end']}; finished {env['date']}; {r['wall_seconds']} s wall"
                    f"{'' if r.get('complete') else '; partial: interrupted'})")
        for d in r["datasets"]:  # one data set measured by several runs: the first run's row of a method wins
            m = merged.setdefault(d["name"], dict(d, methods={}))
            for method, res in d["methods"].items():
                if method not in m["methods"]:
                    m["methods"][method] = dict(res, run=i)
    datasets = list(merged.values())
    doc = {"runs": [{k: v for k, v in r.items() if k != "datasets"} for r in runs], "datasets": datasets,
           "note": note}
    atomic_save_json(doc, out)
    md = ((note.strip() + "\n\n" if note.strip() else "") + "Runs (the number after each method in the table), their commands, machine and load:\n\n"
          + "\n".join(head)) + "\n\n" + markdown_table(datasets)
    atomic_write(out.with_suffix(".md"), lambda f: f.write(md.encode()))
    print(md)
    return doc


if __name__ == "__main__":
    main()
