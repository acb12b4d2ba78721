"""Ensembles of learners: train M models with different seeds, predict with summed votes.

Gerald & Baskiotis, CAp 2019, section 2.6: several learners are trained independently (they
differ only by their random seed: initialisation, validation split, shuffling, negatives), each
votes for labels through the kNN of a query among its own embedded training examples, and the
ensemble ranks labels by the sum of those votes.

An ensemble directory ``OUT`` holds

* ``OUT/learner_00``, ``OUT/learner_01``, ...: ordinary model directories written by
  :func:`xhyp.training.loop.train` (each loadable with :meth:`xhyp.prediction.predictor.Predictor.load`), learner ``i``
  trained with seed ``seed + i``; a learner is *complete* when its ``train_summary.json`` and
  every file :class:`~xhyp.prediction.predictor.Predictor` needs exist;
* ``OUT/ensemble.json``: ``{"kind": "xhyp-ensemble", "members": ["learner_00", ...],
  "seed": s, "model": {...}, "train": {...}, "dataset": ..., "xhyp_version": ...}``.

:func:`train_ensemble` is resumable: complete learners are skipped, a learner interrupted
mid-training continues from its ``checkpoint.pt``, and asking for more learners than the
directory holds trains only the new ones.

Example::

    from xhyp.prediction import Ensemble, train_ensemble
    train_ensemble(X, Y, "runs/ens", n_learners=3, model_config={"dim": 50})
    scores = Ensemble.load("runs/ens").predict(X_test, top_k=5)   # (Q, L) CSR summed votes
"""
from __future__ import annotations

import json
import os
import re
import time
from pathlib import Path

import scipy.sparse as sp

from .. import modeldir
from ..config import ModelConfig, TrainConfig, config_changes, data_fingerprint, normalise_configs
from ..knn.vote import sum_top_scores
from ..training import train
from ..utils import atomic_save_json, atomic_save_sparse
from .predictor import PREDICTOR_FILES, Predictor

ENSEMBLE_FILE = "ensemble.json"
SUMMARY_FILE = "train_summary.json"


def learner_name(i: int) -> str:
    """Directory name of learner ``i`` (``learner_00``, ``learner_01``, ...)."""
    return f"learner_{i:02d}"


def is_ensemble_dir(path: str | Path) -> bool:
    """Whether ``path`` is an ensemble directory (holds ``ensemble.json``)."""
    return (Path(path) / ENSEMBLE_FILE).is_file()


def is_complete(model_dir: str | Path) -> bool:
    """Whether a learner directory finished training: summary and all predictor files present,
    and their sizes agree with its ``manifest.json`` (see :func:`xhyp.modeldir.verify`)."""
    d = Path(model_dir)
    if not all((d / n).is_file() for n in (SUMMARY_FILE, *PREDICTOR_FILES)):
        return False
    try:
        modeldir.verify(d, checksums=False)
    except modeldir.ModelDirError:
        return False
    return True


def _config_dicts(n_features: int, n_labels: int, model_config, train_config) -> tuple[dict, dict]:
    """The ``(model, train)`` sections of a learner's ``config.json`` (:func:`xhyp.config.normalise_configs`)."""
    mcfg, tcfg = normalise_configs(n_features, n_labels, model_config, train_config)
    return mcfg.to_dict(), tcfg.to_dict()


def train_learner(X: sp.csr_matrix, Y: sp.csr_matrix, out_dir: str | Path, model_config: dict,
                  train_config: dict, progress: bool = False, extra_config: dict | None = None) -> dict:
    """Train one ensemble member into ``out_dir`` unless it is already complete.

    * complete directory with the same configuration: nothing is trained;
    * ``checkpoint.pt`` with the same configuration: training resumes from it;
    * otherwise training starts from scratch.

    Args:
        X: ``(N, F)`` CSR raw training features. Y: ``(N, L)`` CSR labels.
        out_dir: the learner's model directory.
        model_config, train_config: dicts of :class:`ModelConfig` / :class:`TrainConfig` fields
            (``train_config["seed"]`` is the learner's seed).
        progress: tqdm bars. extra_config: more keys for ``config.json``.

    Returns:
        the learner's summary (also ``out_dir/train_summary.json``), with ``"skipped": True``
        when nothing was trained.

    Raises:
        ValueError: ``out_dir`` holds a learner trained with another configuration or other data.
    """
    d = Path(out_dir)
    resume = False
    if (d / "config.json").is_file():
        cfg = modeldir.read_json(d / "config.json", "model configuration")
        if not isinstance(cfg, dict):
            raise modeldir.ModelDirError(d / "config.json", "is not a model configuration (not a JSON object)")
        want_m, want_t = _config_dicts(X.shape[1], Y.shape[1], model_config, train_config)
        changed = config_changes({"model": {}, "train": {}, **cfg},
                                 {"model": want_m, "train": want_t, "data": data_fingerprint(X, Y)})
        if [c for c in changed if c != "data"]:
            raise ValueError(f"{d} holds a learner trained with another configuration ({changed}); remove it or "
                             "choose another output directory")
        if changed:
            raise ValueError(f"{d} holds a learner trained on other data ({cfg.get('data')})")
        if is_complete(d):
            return dict(modeldir.read_json(d / SUMMARY_FILE, "training summary"), skipped=True)
        resume = (d / "checkpoint.pt").is_file()
    t0 = time.time()
    # no checkpoint: a learner killed before its first epoch ended (its configuration was checked
    # above), started again from scratch
    res = train(X, Y, model_config, train_config, out_dir=d, resume=resume, progress=progress,
                extra_config=extra_config, overwrite=not resume)
    summary = {"seed": int(train_config.get("seed", 0)), "best_epoch": res.best_epoch,
               "val_p1": res.best_val_p1, "epochs_run": len(res.history),
               "train_seconds": round(time.time() - t0, 2), "resumed": resume,
               "data": data_fingerprint(X, Y)}
    if extra_config and "dataset" in extra_config:
        summary["dataset"] = extra_config["dataset"]
    atomic_save_json(summary, d / SUMMARY_FILE)
    return dict(summary, skipped=False)


def _mp_context(threads: int):
    """Process start method for the training workers.

    ``fork`` (no re-import, so it starts in milliseconds) when each worker runs torch with one
    thread: a forked child that never enters an OpenMP parallel region cannot hit the
    fork-after-OpenMP hang. Otherwise ``forkserver`` with :mod:`xhyp.prediction.ensemble` preloaded (torch
    imported once, in a server that never ran a parallel region), else ``spawn``.
    """
    import multiprocessing as mp

    methods = mp.get_all_start_methods()
    if threads == 1 and "fork" in methods:
        return mp.get_context("fork")
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(["xhyp.prediction.ensemble"])
        return ctx
    return mp.get_context("spawn")


def _worker(args):
    """Process-pool entry point: train one learner (threads set before any torch work)."""
    X, Y, out_dir, mcfg, tcfg, extra, threads = args
    import torch

    if threads > 0:
        torch.set_num_threads(threads)
    return train_learner(X, Y, out_dir, mcfg, tcfg, progress=False, extra_config=extra)


def train_ensemble(X: sp.csr_matrix, Y: sp.csr_matrix, out_dir: str | Path, n_learners: int = 3,
                   model_config: ModelConfig | dict | None = None,
                   train_config: TrainConfig | dict | None = None, jobs: int = 1,
                   progress: bool = True, extra_config: dict | None = None, overwrite: bool = False) -> dict:
    """Train (or complete) an ensemble of ``n_learners`` learners in ``out_dir``.

    Learner ``i`` is a normal model directory ``out_dir/learner_{i:02d}`` trained with seed
    ``train_config.seed + i``; everything else is shared. Complete learners are skipped (see
    :func:`train_learner`), so an interrupted run continues where it stopped.

    Args:
        X: ``(N, F)`` CSR float32 raw training features. Y: ``(N, L)`` CSR binary labels.
        out_dir: ensemble directory.
        n_learners: ``M``.
        model_config, train_config: shared configuration (dataclass or dict of fields).
        jobs: learners trained at the same time, each in its own process (``1``: in this
            process, one after another). With ``jobs > 1`` and ``train_config.threads == 0``
            each process uses ``max(1, cpu_count // jobs)`` torch threads.
        progress: tqdm bars (sequential mode only).
        extra_config: more keys for every learner's ``config.json`` (e.g. the dataset name).
        overwrite: remove the ensemble ``out_dir`` holds (``ensemble.json``, its manifest and the
            ``learner_XX`` directories) and train a new one.

    Returns:
        ``{"members": [...], "learners": [per-learner summary...], "seconds": wall time}``;
        ``out_dir/ensemble.json`` is written before training starts and again at the end, then
        ``out_dir/manifest.json`` (:func:`xhyp.modeldir.write_ensemble_manifest`) marks it complete.

    Raises:
        ValueError: ``out_dir`` already holds an ensemble with another configuration.
        xhyp.modeldir.ModelDirError: another process is writing ``out_dir``.
    """
    if n_learners < 1:
        raise ValueError(f"n_learners must be >= 1, got {n_learners}")
    if jobs < 1:
        raise ValueError(f"jobs must be >= 1, got {jobs}")
    out = Path(out_dir)
    mdict, tdict = _config_dicts(X.shape[1], Y.shape[1], model_config, train_config)
    modeldir.check_training_data(X, Y)
    lock = modeldir.lock_dir(out, "ensemble")
    try:
        modeldir.clean_stale_temps(out)
        if overwrite:
            _clear_ensemble(out)
        elif not is_ensemble_dir(out) and any((out / n).exists() for n in modeldir.RUN_FILES):
            raise modeldir.ModelDirError(out, "holds a single model (from `xhyp train`), not an ensemble; use "
                                              "--overwrite to replace it, or another --out directory")
        res = _train_ensemble(X, Y, out, n_learners, mdict, tdict, jobs, progress, extra_config)
        modeldir.write_ensemble_manifest(out, [m for m in res["members"] if is_complete(out / m)])
        return res
    finally:
        lock.release()


def _clear_ensemble(out: Path) -> None:
    """Remove what an ensemble run wrote in ``out`` (for ``overwrite``)."""
    import re
    import shutil

    for n in (modeldir.MANIFEST, ENSEMBLE_FILE, "ensemble_summary.json"):
        (out / n).unlink(missing_ok=True)
    for p in out.iterdir():
        if p.is_dir() and re.fullmatch(r"learner_\d+", p.name):
            shutil.rmtree(p)


def _train_ensemble(X, Y, out: Path, n_learners: int, mdict: dict, tdict: dict, jobs: int, progress: bool,
                    extra_config: dict | None) -> dict:
    base_seed = int(tdict["seed"])
    meta_path = out / ENSEMBLE_FILE
    if meta_path.is_file():
        old = modeldir.read_json(meta_path, "ensemble description")
        if not isinstance(old, dict):
            raise modeldir.ModelDirError(meta_path, "is not an ensemble description (not a JSON object)")
        if config_changes({"model": {}, "train": {}, **old}, {"model": mdict, "train": tdict}):
            raise ValueError(f"{out} holds an ensemble with another configuration "
                             f"({old.get('model')}, {old.get('train')}); choose another directory")
    from .. import __version__

    names = [learner_name(i) for i in range(n_learners)]
    meta = {"kind": "xhyp-ensemble", "members": names, "seed": base_seed, "model": mdict,
            "train": tdict, "xhyp_version": __version__}
    if meta_path.is_file():  # keep members beyond n_learners that an earlier, larger run trained
        old_members = old.get("members", [])
        meta["members"] = names + [m for m in old_members if m not in names]
    if extra_config:
        meta.update({k: v for k, v in extra_config.items() if k not in meta})
    (out / modeldir.MANIFEST).unlink(missing_ok=True)  # incomplete until the end of this run
    atomic_save_json(meta, meta_path)

    tasks = []
    for i in range(n_learners):
        t = dict(tdict, seed=base_seed + i)
        tasks.append((out / names[i], t))
    t0 = time.time()
    results: list[dict | None] = [None] * n_learners
    if jobs == 1:
        for i, (d, t) in enumerate(tasks):
            if progress:
                print(f"[ensemble] {d.name} (seed {t['seed']})", flush=True)
            results[i] = train_learner(X, Y, d, mdict, t, progress=progress, extra_config=extra_config)
    else:
        from concurrent.futures import ProcessPoolExecutor

        threads = int(tdict.get("threads", 0)) or max(1, (os.cpu_count() or 1) // jobs)
        todo = [i for i, (d, _) in enumerate(tasks) if not is_complete(d)]
        for i, (d, t) in enumerate(tasks):
            if i not in todo:  # still validates configuration and data
                results[i] = train_learner(X, Y, d, mdict, t, extra_config=extra_config)
        X = sp.csr_matrix(X)
        Y = sp.csr_matrix(Y)
        with ProcessPoolExecutor(max_workers=min(jobs, max(1, len(todo))),
                                 mp_context=_mp_context(threads)) as pool:
            futs = {i: pool.submit(_worker, (X, Y, str(tasks[i][0]), mdict, tasks[i][1], extra_config, threads))
                    for i in todo}
            for i, f in futs.items():
                results[i] = f.result()
                if progress:
                    r = results[i]
                    print(f"[ensemble] {names[i]} done: best epoch {r['best_epoch']}, "
                          f"val P@1 {r['val_p1']:.4f}, {r['train_seconds']}s", flush=True)
    seconds = round(time.time() - t0, 2)
    atomic_save_json(meta, meta_path)
    return {"out": str(out), "members": meta["members"], "learners": results, "seconds": seconds,
            "trained": sum(1 for r in results if r and not r.get("skipped")),
            "skipped": sum(1 for r in results if r and r.get("skipped"))}


class Ensemble:
    """A trained ensemble: its member directories, loaded lazily one at a time at prediction.

    Args:
        member_dirs: model directories of the members.
        meta: the ``ensemble.json`` contents (``{}`` for an ad-hoc list of models).
    """

    def __init__(self, member_dirs, meta: dict | None = None):
        self.member_dirs = [Path(d) for d in member_dirs]
        if not self.member_dirs:
            raise ValueError("an ensemble needs at least one member")
        self.meta = meta or {}

    @classmethod
    def load(cls, directory: str | Path, n_members: int | None = None) -> "Ensemble":
        """Open an ensemble directory written by :func:`train_ensemble`.

        Args:
            directory: the ensemble directory.
            n_members: use only the first ``n_members`` members (default: all).

        Raises:
            FileNotFoundError: no ``ensemble.json``, or a member is incomplete (the message names it).
        """
        d = Path(directory)
        if not is_ensemble_dir(d):
            raise FileNotFoundError(f"{d / ENSEMBLE_FILE} is missing: {d} is not an xhyp ensemble directory")
        meta = modeldir.read_json(d / ENSEMBLE_FILE, "ensemble description")
        if not isinstance(meta, dict) or not isinstance(meta.get("members"), list) or not meta["members"] or \
                not all(isinstance(m, str) and re.fullmatch(r"learner_\d+", m) for m in meta["members"]):
            raise modeldir.ModelDirError(d / ENSEMBLE_FILE, "has no valid \"members\" list of learner_XX names")
        members = meta["members"][:n_members] if n_members else meta["members"]
        dirs = [d / m for m in members]
        for m in dirs:
            if not is_complete(m):
                raise modeldir.ModelFileMissingError(m, f"ensemble member is incomplete (training interrupted?); "
                                                        f"rerun `xhyp ensemble --out {d} ...` to finish it")
        modeldir.verify_ensemble(d, members, ENSEMBLE_FILE)
        return cls(dirs, meta)

    def __len__(self) -> int:
        return len(self.member_dirs)

    def predict_members(self, X: sp.csr_matrix, top_k: int = 100, **predict_kw):
        """Yield each member's ``(Q, L)`` CSR scores (see :meth:`xhyp.prediction.predictor.Predictor.predict`)."""
        for d in self.member_dirs:
            yield Predictor.load(d).predict(X, top_k=top_k, **predict_kw)

    def predict(self, X: sp.csr_matrix, top_k: int = 100, member_top_k: int | None = None,
                **predict_kw) -> sp.csr_matrix:
        """Summed votes of all members (Gerald & Baskiotis 2019, section 2.6).

        Each member predicts its top ``member_top_k`` labels (:meth:`predict_members`), and those
        cut score lists are summed (:func:`xhyp.knn.vote.sum_top_scores`): a label a member cut
        away adds nothing for it. With ``member_top_k`` at least the number of labels a member
        votes for, this is the sum of the full votes (:func:`xhyp.knn.vote.vote_members`).

        Args:
            X: ``(Q, F)`` CSR raw features.
            top_k: labels kept per query after summing.
            member_top_k: labels kept per query and member before summing (default ``top_k``).
            **predict_kw: ``k``, ``index``, ``weighting``... for every member.

        Returns:
            ``(Q, L)`` float32 CSR scores.
        """
        return sum_top_scores(self.predict_members(X, member_top_k or top_k, **predict_kw), top_k)


def expand_model_dirs(model_dirs) -> list[Path]:
    """Replace every ensemble directory in a list of model directories by its member directories."""
    dirs = [model_dirs] if isinstance(model_dirs, (str, Path)) else list(model_dirs)
    out: list[Path] = []
    for d in dirs:
        out.extend(Ensemble.load(d).member_dirs if is_ensemble_dir(d) else [Path(d)])
    return out


def aggregate_files(pred_paths, out: str | Path | None = None, top_k: int = 100) -> sp.csr_matrix:
    """Sum saved score matrices (``.npz`` from ``xhyp predict``), e.g. of learners run elsewhere.

    Args:
        pred_paths: ``.npz`` files of ``(Q, L)`` sparse scores, all the same shape.
        out: where to write the summed ``.npz`` (atomically); ``None`` only returns it.
        top_k: labels kept per query after summing.

    Returns:
        ``(Q, L)`` float32 CSR.

    Raises:
        ValueError: no file, or files of different shapes (the message names the file).
    """
    paths = [Path(p) for p in pred_paths]
    if not paths:
        raise ValueError("aggregate needs at least one prediction file")
    shape = None

    def load():
        nonlocal shape
        for p in paths:
            S = modeldir.load_file(p, lambda q: sp.load_npz(q).tocsr(), "score matrix (.npz from `xhyp predict`)")
            if shape is not None and S.shape != shape:
                raise ValueError(f"{p}: score matrix is {S.shape[0]} x {S.shape[1]}, the first file's is "
                                 f"{shape[0]} x {shape[1]}")
            shape = S.shape
            yield S

    total = sum_top_scores(load(), top_k)
    if out is not None:
        atomic_save_sparse(out, total)
    return total


__all__ = ["Ensemble", "train_ensemble", "train_learner", "aggregate_files", "expand_model_dirs",
           "is_ensemble_dir", "is_complete", "learner_name"]
