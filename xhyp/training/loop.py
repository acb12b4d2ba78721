"""The training loop: epochs, validation kNN, early stopping, resume, and the model directory.

Gerald & Baskiotis, CAp 2019, sections 2.3-2.6: :func:`train` minimises the sampled softmax of
:mod:`xhyp.training.loss` over the batches of :mod:`xhyp.training.batches` with the optimisers
of :mod:`xhyp.training.optim` (step sizes follow the batch size by the square-root rule), and
ends every epoch with a validation kNN (:mod:`xhyp.knn`: P@1 of the vote of the ``knn``
nearest training examples) that selects the best epoch and stops training after ``patience``
epochs without progress.

A model directory written by :func:`train` holds, each file written by this module only:

* ``config.json``: model, training and data configuration (self-describing), at the start;
* ``features.npz``: the feature pipeline, at the start;
* ``model.pt``: the best weights (by validation P@1), at every new best epoch;
* ``history.json``: per-epoch loss, validation P@1 and time, at every epoch;
* ``checkpoint.pt``: the last epoch's full state (weights, optimisers, RNGs, early-stopping
  counters) for ``--resume``, at every epoch;
* ``reranker.npz`` (``rerank="linear"``) and ``config.json`` again, with the prediction settings
  chosen on the validation split (``config.json["predict"]``: :mod:`xhyp.training.prediction_fit`),
  at the end;
* ``train_emb.pt`` / ``train_labels.npz``: the kNN database (all training examples embedded
  by the best model, and their labels), used by :mod:`xhyp.prediction.predictor`, at the end;

then :mod:`xhyp.modeldir` seals it with ``manifest.json``. The same database and the feature
pipeline are also returned in memory (:class:`TrainResult`).

torch, geoopt and the kNN modules are imported inside the functions that use them, so that
``import xhyp.training`` (and ``xhyp --help``) stays cheap.
"""
from __future__ import annotations

import contextlib
import dataclasses
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from ..config import (ABSENT_MEANS, RESUMABLE_KEYS, ModelConfig, TrainConfig, config_changes,
                      data_fingerprint, normalise_configs)
from ..modeldir import model_dir_writer
from ..utils import (atomic_save_json, atomic_save_sparse, atomic_torch_save, find_non_finite, resolve_device,
                     seed_everything)
from .batches import NegativeSampler, prefetched, prepare_batch, radial_pair_scale
from .loss import train_step


class NonFiniteLossError(ValueError):
    """Training produced a non-finite loss (or parameter). The message names the epoch and the
    step; nothing of the failed epoch is written, so the model directory keeps the last good
    epoch (``model.pt`` and ``checkpoint.pt``; ``--resume`` restarts from it)."""


@dataclass
class TrainResult:
    """What :func:`train` returns: the best model, its kNN database and feature pipeline (in
    memory, as saved in the model directory), the directory and the history.

    Attributes:
        model: the :class:`~xhyp.embedding.model.HyperbolicXMC` with the best weights.
        train_emb: ``(N, n)`` float32 CPU embeddings of every training example (the kNN database).
        train_labels: ``(N, L)`` float32 CSR labels of those examples.
        pipeline: the fitted :class:`~xhyp.embedding.features.FeaturePipeline`.
        out_dir: the model directory (``None``: nothing was written).
        history: per-epoch records (``history.json``).
        best_epoch: the epoch whose weights the model holds (1-based).
        best_val_p1: its validation P@1 (NaN without a validation split).
        config: the model directory's ``config.json``: ``{"model", "train", "data", ...}``, with
            ``"predict"`` (the settings chosen after training, :mod:`xhyp.training.prediction_fit`)
            when ``rerank`` or ``knn_grid`` asks for them.
        scorer: the shortlist scorers (:class:`xhyp.knn.rerank.LabelScorer`, ``reranker.npz``) of
            ``rerank="linear"``, else ``None``.
    """

    model: object  # HyperbolicXMC
    train_emb: object  # torch.Tensor (N, n)
    train_labels: sp.csr_matrix
    pipeline: object  # FeaturePipeline
    out_dir: Path | None
    history: list
    best_epoch: int
    best_val_p1: float
    config: dict
    scorer: object = None  # LabelScorer


def precision_at_1(scores: sp.csr_matrix, Y: sp.csr_matrix) -> float:
    """P@1 of CSR scores against CSR labels (fraction, rows without scores count as misses)."""
    from ..metrics import precision_at_k

    return float(precision_at_k(Y, scores, k=1)[0])


def knn_scores(db, Y_db: sp.csr_matrix, q, k: int, weighting: str, alpha: float, geometry: str,
               top_k: int = 1, device=None) -> sp.csr_matrix:
    """Scores of the vote of the ``k`` nearest database points of each query (exact search).

    Args:
        db: ``(N, n)`` float32 database embeddings.
        Y_db: ``(N, L)`` CSR labels of the database.
        q: ``(Q, n)`` float32 query embeddings.
        k: neighbours.
        weighting, alpha: see :func:`xhyp.knn.vote.vote`.
        geometry: the embeddings' geometry.
        top_k: labels kept per query.
        device: where the search runs (``None``: where ``db`` is; on a GPU, the CUDA kNN kernel);
            the neighbours come back to the CPU for the vote.

    Returns:
        ``(Q, L)`` float32 CSR scores.
    """
    from ..knn.index import make_index
    from ..knn.vote import vote

    D, I = make_index("exact", geometry=geometry, device=device).add(db).search(q, k)
    return vote(I, D, Y_db, top_k=top_k, weighting=weighting, alpha=alpha)


def validation_split(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """``(training rows, validation rows)`` of :func:`train`: sorted int64 ids, a seeded random
    ``val_fraction`` of ``range(n)`` held out (what early stopping and the after-training choices
    of :mod:`xhyp.training.prediction_fit` use)."""
    rng = np.random.default_rng(seed)
    perm = rng.permutation(n)
    n_val = int(round(n * val_fraction))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def _subset(rows: np.ndarray, cap: int, seed: int) -> np.ndarray:
    """``rows``, or a fixed sorted random subset of ``cap`` of them (``cap`` 0: all)."""
    if cap <= 0 or len(rows) <= cap:
        return rows
    return np.sort(np.random.default_rng(seed).choice(rows, size=cap, replace=False))


def _check_finite(losses: list, epoch: int, first_step: int, last_good: int):
    """Sum of the buffered per-step losses; :class:`NonFiniteLossError` if any is not finite."""
    import torch

    t = torch.stack(losses).double()
    bad = ~torch.isfinite(t)
    if bool(bad.any()):
        i = int(bad.nonzero()[0, 0])
        raise NonFiniteLossError(
            f"non-finite training loss ({float(t[i])}) at epoch {epoch + 1}, step {first_step + i + 1}: "
            f"training stopped; the model directory keeps the last good epoch ({last_good}). Lower "
            f"lr / lr_labels / alpha, or check the input for huge or non-finite feature values")
    return float(t.sum())


def _embed_rows(model, Xp: sp.csr_matrix, rows: np.ndarray, device, chunk: int = 8192):
    """Embed ``Xp[rows]`` chunk by chunk (no copy of the selected rows as a whole)."""
    import torch

    if len(rows) == Xp.shape[0]:  # rows are sorted and unique: all of them
        return model.embed(Xp, device=device)
    parts = [model.embed(Xp[rows[s:s + chunk]], device=device) for s in range(0, len(rows), chunk)]
    return torch.cat(parts) if parts else torch.zeros(0, model.config.dim)


@model_dir_writer  # lock, refuse a used directory (unless resume/overwrite), manifest last: xhyp.modeldir
def train(X: sp.csr_matrix, Y: sp.csr_matrix, model_config: ModelConfig | dict | None = None,
          train_config: TrainConfig | dict | None = None, out_dir: str | Path | None = None,
          resume: bool = False, progress: bool = True, extra_config: dict | None = None) -> TrainResult:
    """Train a joint example/label embedding (Gerald & Baskiotis, CAp 2019).

    Each epoch ends with a validation kNN (vote of the ``knn`` nearest training examples, P@1)
    for early stopping. To keep it a small share of the epoch it uses at most
    ``val_max_queries`` validation examples and a database of at most ``val_max_database``
    training examples, fixed random subsets drawn once from the seed (so epochs are compared on
    the same sample; a sampled database gives lower P@1 than the full one, uniformly across
    epochs). With the defaults, Bibtex and Delicious use every example.

    Data-parallel training (torch.distributed, see ``docs/distributed.md``): under torchrun
    (``WORLD_SIZE`` > 1, ``distributed="auto"``) every process draws the same batches and
    negatives, computes the loss of its block of each batch, and the gradients (row-sparse
    ones included) are summed across processes before every optimiser step
    (:mod:`xhyp.training.distributed`), so all processes hold identical parameters, equal to one process
    on the same global batch. Only rank 0 writes ``out_dir``.

    Args:
        X: ``(N, F)`` CSR float32 raw training features (preprocessing is part of the model).
        Y: ``(N, L)`` CSR binary training labels.
        model_config: :class:`ModelConfig` (``n_features``/``n_labels`` are taken from X, Y) or a
            dict of its fields.
        train_config: :class:`TrainConfig` or dict.
        out_dir: model directory (created); ``None`` keeps everything in memory.
        resume: continue from ``out_dir/checkpoint.pt`` (same data and configuration required).
        progress: show tqdm progress bars.
        extra_config: more keys for ``config.json`` (e.g. the dataset name).
        overwrite: (keyword, added by :func:`xhyp.modeldir.model_dir_writer`) replace the model
            an ``out_dir`` already holds; without it (or ``resume``) such a directory is refused.

    Returns:
        :class:`TrainResult`: the best model, the kNN database (every training example embedded
        by it) and the fitted feature pipeline, as the model directory holds them.

    Raises:
        ValueError: shape mismatch between X and Y, a resume with different data/config, or the
            contrastive term with data-parallel training.
        NonFiniteLossError: (a ValueError) a non-finite loss; names epoch and step, and nothing
            non-finite is written (the directory keeps the last good epoch).
        FileNotFoundError: ``resume`` without a checkpoint.
        xhyp.modeldir.ModelDirError: ``out_dir`` holds a model (no ``resume``/``overwrite``) or is
            being written by another process.
    """
    import torch
    from tqdm.auto import tqdm

    from .. import __version__
    from ..embedding.features import FeaturePipeline
    from ..embedding.model import HyperbolicXMC, LearnedScale
    from . import distributed as dist_utils
    from .optim import make_optimizers

    if X.shape[0] != Y.shape[0]:
        raise ValueError(f"X has {X.shape[0]} rows but Y has {Y.shape[0]}")
    mcfg, tcfg = normalise_configs(X.shape[1], Y.shape[1], model_config, train_config)
    device = resolve_device(tcfg.device)
    rank, world, device = dist_utils.setup(tcfg.distributed, device)
    if world > 1 and tcfg.contrastive != "none":
        raise ValueError("contrastive: the term couples all the examples of a batch; it is not available with "
                         "data-parallel training (run one process, or contrastive='none')")
    if tcfg.threads > 0:
        torch.set_num_threads(tcfg.threads)
    seed_everything(tcfg.seed)

    Y = sp.csr_matrix(Y, dtype=np.float32)
    Y.sort_indices()
    pipe = FeaturePipeline(tcfg.features).fit(X)
    Xp = pipe.transform(X)
    Xp.sort_indices()
    tr_idx, va_idx = validation_split(X.shape[0], tcfg.val_fraction, tcfg.seed)
    q_rows = _subset(va_idx, tcfg.val_max_queries, tcfg.seed + 2)
    db_rows = _subset(tr_idx, tcfg.val_max_database, tcfg.seed + 3)

    model = HyperbolicXMC(mcfg).to(device)
    if world > 1:
        dist_utils.broadcast_parameters(model)
    scale = LearnedScale(tcfg.alpha).to(device) if tcfg.learn_alpha else None  # a learned temperature
    opts = make_optimizers(model, tcfg, scale)
    alpha = scale if scale is not None else tcfg.alpha
    gen = torch.Generator().manual_seed(tcfg.seed)
    label_counts = np.asarray(Y[tr_idx].sum(0)).ravel()  # (L,) training examples per label
    sampler = NegativeSampler(label_counts, tcfg.sampling, gen, unique=tcfg.negative_draw == "unique")
    # the radial term's per-label share of a pair: not computed without the term, nor when every pair weighs 1
    radial_scale = (radial_pair_scale(label_counts, tcfg.radial_power)
                    if tcfg.radial_weight > 0 and tcfg.radial_power != 0 else None)
    config = {"model": mcfg.to_dict(), "train": tcfg.to_dict(), "data": data_fingerprint(X, Y),
              **(extra_config or {}), "xhyp_version": __version__}

    out = Path(out_dir) if out_dir is not None else None
    write = out is not None and rank == 0
    history, best, best_epoch, bad, start_epoch = [], -1.0, -1, 0, 0
    best_state, best_alpha = None, tcfg.alpha
    if resume:
        if out is None or not (out / "checkpoint.pt").exists():
            raise FileNotFoundError(f"--resume: no checkpoint at {out}/checkpoint.pt")
        ck = torch.load(out / "checkpoint.pt", map_location="cpu", weights_only=False)
        changed = config_changes(ck["config"], config, may_change=RESUMABLE_KEYS)
        if "data" in changed or "model" in changed:
            raise ValueError(f"{out}/checkpoint.pt was written for other data or another model "
                             f"configuration: {ck['config']['data']} / {ck['config']['model']}")
        if changed:
            saved = {k: ck["config"]["train"].get(k, ABSENT_MEANS.get(k)) for k in changed}
            raise ValueError(f"{out}/checkpoint.pt was trained with other settings of {changed} "
                             f"({list(saved.values())}); a resumed run may only change {sorted(RESUMABLE_KEYS)}; "
                             "to resume it as it was trained, pass "
                             + " ".join(f"--{k.replace('_', '-')} {v}" for k, v in saved.items() if v is not None))
        model.load_state_dict(ck["model"])
        if scale is not None:
            scale.load_state_dict(ck["scale"])
            best_alpha = ck["best_alpha"]
        for o, s in zip(opts, ck["optimizers"]):
            o.load_state_dict(s)
        gen.set_state(ck["generator"])
        torch.set_rng_state(ck["torch_rng"])
        history, best, best_epoch, bad = ck["history"], ck["best"], ck["best_epoch"], ck["bad"]
        best_state = ck["best_state"]
        start_epoch = ck["epoch"] + 1
    if write:
        out.mkdir(parents=True, exist_ok=True)
        atomic_save_json(config, out / "config.json")
        pipe.save(out / "features.npz")
        if resume and best_state is not None:  # model.pt is the checkpoint's best (a run killed between the two writes of an epoch)
            atomic_torch_save(best_state, out / "model.pt")

    sparse_labels = tcfg.label_update == "sparse"
    pin = device.type == "cuda"
    check_every = 1 if device.type == "cpu" else 64  # loss checks sync the device
    n_tr = len(tr_idx)
    shuffle_rng = np.random.default_rng(tcfg.seed + 1)
    for _ in range(start_epoch):  # keep the shuffling stream aligned after a resume
        shuffle_rng.permutation(n_tr)
    Y_db, Y_q = Y[db_rows], Y[q_rows]
    for epoch in range(start_epoch, tcfg.epochs):
        if bad >= tcfg.patience and len(va_idx) > 0:
            break
        t0 = time.time()
        model.train()
        perm = shuffle_rng.permutation(n_tr)
        starts = list(range(0, n_tr, tcfg.batch_size))
        if tcfg.max_steps > 0:
            starts = starts[:tcfg.max_steps]

        def make_batches(perm=perm, starts=starts):
            for s in starts:
                rows = tr_idx[np.sort(perm[s:s + tcfg.batch_size])]
                yield prepare_batch(Xp, Y, rows, sampler, tcfg, gen, rank, world, pin, row_blocks=sparse_labels,
                                    csr=device.type == "cpu", radial_scale=radial_scale)

        total, steps, n_pairs, buf = 0.0, 0, 0, []
        bar = tqdm(total=len(starts), desc=f"epoch {epoch + 1}/{tcfg.epochs}", disable=not progress or rank != 0,
                   leave=False, unit="batch")
        with contextlib.closing(prefetched(make_batches, tcfg.prefetch)) as batches:
            for b in batches:
                buf.append(train_step(model, opts, b.to(device), alpha, sparse_labels, world))
                steps += 1
                n_pairs += b.n_pairs
                if len(buf) >= check_every:
                    total += _check_finite(buf, epoch, steps - len(buf), best_epoch)
                    buf = []
                bar.update(1)
                if steps % 20 == 0 and progress:
                    bar.set_postfix(loss=f"{total / max(steps - len(buf), 1):.4f}")
        if buf:
            total += _check_finite(buf, epoch, steps - len(buf), best_epoch)
        bar.close()
        if world > 1:
            total = dist_utils.all_reduce_sum(total)
        train_time = time.time() - t0
        state = model.state_dict()
        bad_param = find_non_finite(state)
        if bad_param is not None:
            raise NonFiniteLossError(f"non-finite parameters ({bad_param}) after epoch {epoch + 1}, step {steps}: "
                                     f"training stopped; the model directory keeps the last good epoch ({best_epoch})")
        rec = {"epoch": epoch + 1, "loss": total / max(steps, 1), "train_seconds": round(train_time, 3),
               "pairs": n_pairs, "pairs_per_second": round(n_pairs / max(train_time, 1e-9), 1)}
        if scale is not None:
            rec["alpha"] = float(scale)
        if len(va_idx) > 0:
            db = _embed_rows(model, Xp, db_rows, device)
            q = _embed_rows(model, Xp, q_rows, device)
            scores = knn_scores(db, Y_db, q, tcfg.knn, tcfg.weighting, float(alpha), mcfg.geometry, device=device)
            p1 = precision_at_1(scores, Y_q)
            rec["val_p1"] = p1
            rec["val_seconds"] = round(time.time() - t0 - train_time, 3)
            if p1 > best:
                best, best_epoch, bad, best_alpha = p1, epoch + 1, 0, float(alpha)
                best_state = {k: v.detach().clone().cpu() for k, v in state.items()}
            else:
                bad += 1
        else:
            best_epoch, best_alpha = epoch + 1, float(alpha)
            best_state = {k: v.detach().clone().cpu() for k, v in state.items()}
        rec["seconds"] = round(time.time() - t0, 3)
        history.append(rec)
        if progress and rank == 0:
            msg = f"epoch {epoch + 1}: loss {rec['loss']:.4f}"
            if "val_p1" in rec:
                msg += f"  val P@1 {100 * rec['val_p1']:.2f}  (best {100 * best:.2f} @ {best_epoch})"
            tqdm.write(msg + f"  [{rec['seconds']:.1f}s, {rec['pairs_per_second']:.0f} pairs/s]")
        if write:  # (a run killed before model.pt is written: --resume rewrites it from the checkpoint)
            atomic_torch_save({
                "epoch": epoch, "model": state, "optimizers": [o.state_dict() for o in opts],
                "generator": gen.get_state(), "torch_rng": torch.get_rng_state(), "history": history,
                "best": best, "best_epoch": best_epoch, "bad": bad, "best_state": best_state,
                "config": config, "best_alpha": best_alpha,
                **({"scale": scale.state_dict()} if scale is not None else {}),
            }, out / "checkpoint.pt")
            atomic_save_json(history, out / "history.json")
            if best_epoch == epoch + 1:
                atomic_torch_save(best_state, out / "model.pt")

    if best_state is None:  # no epoch ran (epochs=0): the initial weights are the model
        best_state = {k: v.detach().clone().cpu() for k, v in model.state_dict().items()}
        if write:
            atomic_torch_save(best_state, out / "model.pt")
            atomic_save_json(history, out / "history.json")
    model.load_state_dict(best_state)
    # the kNN database: every training example (validation ones included), best model
    emb = model.embed(Xp, device=device)
    scorer = None
    if tcfg.rerank != "none" or tcfg.knn_grid.strip():  # shortlist scorers and prediction settings
        from .prediction_fit import fit_prediction

        config["predict"], scorer = fit_prediction(model, Xp, Y, tr_idx, va_idx, emb,
                                                   dataclasses.replace(tcfg, alpha=best_alpha), device=device)
    if scale is not None:  # the learned scale of the best epoch: the "distance" vote's default alpha
        config.setdefault("predict", {})["alpha"] = best_alpha
    if write:
        if scorer is not None:
            scorer.save(out / config["predict"]["reranker"])
        if "predict" in config:  # the settings chosen after training join the configuration
            atomic_save_json(config, out / "config.json")
        atomic_torch_save(emb, out / "train_emb.pt")
        atomic_save_sparse(out / "train_labels.npz", Y)
    return TrainResult(model=model, train_emb=emb, train_labels=Y, pipeline=pipe, out_dir=out, history=history,
                       best_epoch=best_epoch, best_val_p1=best if len(va_idx) > 0 else float("nan"), config=config,
                       scorer=scorer)
