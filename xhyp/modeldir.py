"""A model (or ensemble) directory as one consistent unit: lock, manifest, verification.

A training run writes its directory through :func:`model_dir_writer` (a decorator of
:func:`xhyp.training.loop.train`):

1. **Lock.** ``OUT/.xhyp.lock`` is locked with ``flock`` for the whole run, so a second writer
   fails at once with a message naming the process that holds it. The kernel drops the lock
   when its process dies (kill -9 included), so a stale lock file never blocks anyone.
2. **Leftovers.** Temporary files of the atomic writers (``.NAME.<pid>.<hex>.tmp``, see
   :func:`xhyp.utils.atomic_write`) whose process is dead are removed.
3. **One run per directory.** A directory that already holds model files is refused unless the
   run resumes it (``--resume``) or replaces it (``--overwrite``: its model files, the manifest
   first, are removed before anything is written, so an interrupted run never leaves a
   directory that looks complete; a resumed run that is interrupted rewrites files the
   manifest no longer matches).
4. **Manifest last.** When training returns, ``manifest.json`` is written: run id, creation time,
   the configuration, and the size and SHA-256 of every file (``config.json``, ``model.pt``,
   ``features.npz``, ``train_emb.pt``, ``train_labels.npz``, ``history.json``).

:func:`verify` (called by :meth:`xhyp.prediction.predictor.Predictor.load`) refuses a directory without a
manifest, or whose files differ from it (files of two runs, a file copied from another model,
a truncated file), with one line naming the bad file. An ensemble directory has its own
``manifest.json`` listing ``ensemble.json`` and each member's manifest checksum
(:func:`write_ensemble_manifest`, :func:`verify_ensemble`).

Every problem is a :class:`ModelDirError` (a ``ValueError``; missing files also are
``FileNotFoundError``) whose message is ``"{path}: {problem}"``.
"""
from __future__ import annotations

import errno
import fcntl
import functools
import hashlib
import inspect
import json
import os
import re
import time
import uuid
from pathlib import Path

from .config import normalise_configs
from .utils import atomic_save_json

MANIFEST = "manifest.json"
LOCK = ".xhyp.lock"
MODEL_KIND = "xhyp-model"
ENSEMBLE_KIND = "xhyp-ensemble-manifest"
# files a finished model directory holds, all listed in its manifest
MODEL_FILES = ("config.json", "model.pt", "features.npz", "train_emb.pt", "train_labels.npz", "history.json")
# files a finished model directory holds when its configuration asks for them (listed in its
# manifest then): the shortlist scorers of xhyp.rerank
OPTIONAL_MODEL_FILES = ("reranker.npz",)
# files a run writes (removed by --overwrite)
RUN_FILES = (*MODEL_FILES, *OPTIONAL_MODEL_FILES, "checkpoint.pt", "train_summary.json", MANIFEST)
_TMP = re.compile(r"^\.(?P<name>.+)\.(?P<pid>\d+)\.(?P<hex>[0-9a-f]+)\.tmp$")

__all__ = ["ModelDirError", "ModelFileMissingError", "MANIFEST", "model_dir_writer", "lock_dir", "clean_stale_temps",
           "prepare_dir", "write_manifest", "verify", "read_json", "load_file", "write_ensemble_manifest",
           "verify_ensemble", "check_training_data"]


class ModelDirError(ValueError):
    """A model or ensemble directory (or one of its files) that cannot be used.

    ``str(exc)`` is ``"{path}: {problem}"``; ``path`` and ``problem`` are attributes.
    """

    def __init__(self, path, problem: str):
        self.path = str(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")

    def __reduce__(self):  # picklable (ensemble worker processes)
        return type(self), (self.path, self.problem)


class ModelFileMissingError(ModelDirError, FileNotFoundError):
    """A file a model directory needs is absent (also a ``FileNotFoundError``)."""


# --------------------------------------------------------------------------------------------
# lock and leftovers
# --------------------------------------------------------------------------------------------

def _pid_alive(pid: int) -> bool:
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


class DirLock:
    """An exclusive ``flock`` on ``directory/.xhyp.lock`` (released by :meth:`release` or when
    the process dies). The lock file holds the owner's pid, for the error message only."""

    _held: dict = {}  # resolved path -> DirLock held by this process

    def __init__(self, directory: Path, what: str = "training"):
        self.directory = Path(directory)
        self.path = self.directory / LOCK
        key = str(self.directory.resolve())
        old = DirLock._held.pop(key, None)
        if old is not None:  # an earlier run of this process that raised and kept its lock
            old.release()
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(self.fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                os.close(self.fd)
                raise
            try:
                owner = os.pread(self.fd, 64, 0).decode(errors="replace").split()[0]
            except (OSError, IndexError):
                owner = "?"
            os.close(self.fd)
            raise ModelDirError(self.directory, f"is being written by another process (pid {owner}, lock "
                                f"{self.path.name}); wait for it to finish or stop it, then rerun") from None
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, f"{os.getpid()} {what}\n".encode(), 0)
        self.key = key
        DirLock._held[key] = self

    def release(self) -> None:
        if self.fd is not None:
            try:
                os.ftruncate(self.fd, 0)
            except OSError:
                pass
            os.close(self.fd)
            self.fd = None
        if DirLock._held.get(getattr(self, "key", None)) is self:
            del DirLock._held[self.key]

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


def lock_dir(directory, what: str = "training") -> DirLock:
    """Create ``directory`` and take its writer lock (see :class:`DirLock`).

    Raises:
        ModelDirError: another process holds the lock (the message gives its pid).
    """
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    return DirLock(d, what)


def clean_stale_temps(directory, recursive: bool = False) -> list[Path]:
    """Remove the atomic writers' temporary files (``.NAME.<pid>.<hex>.tmp``) of dead processes.

    Returns:
        the removed paths.
    """
    d = Path(directory)
    removed = []
    if not d.is_dir():
        return removed
    for p in (d.rglob(".*.tmp") if recursive else d.glob(".*.tmp")):
        m = _TMP.match(p.name)
        if m and p.is_file() and not _pid_alive(int(m.group("pid"))):
            try:
                p.unlink()
                removed.append(p)
            except FileNotFoundError:
                pass
    return removed


def prepare_dir(directory, resume: bool, overwrite: bool) -> None:
    """Make ``directory`` ready for a new run (call with its lock held).

    * ``resume``: the directory is kept as it is (a resumed run that is interrupted leaves files
      that no longer match the manifest, which :func:`verify` then refuses);
    * a directory holding model files without ``resume``: refused, unless ``overwrite`` (then
      those files, the manifest first, are removed).

    Raises:
        ModelDirError: the directory holds a model and neither ``resume`` nor ``overwrite``.
    """
    d = Path(directory)
    if resume:
        return
    present = [n for n in RUN_FILES if (d / n).exists()]
    if present and not overwrite:
        run = ""
        try:
            run = f" (run {json.loads((d / MANIFEST).read_text())['run_id']})"
        except (OSError, ValueError, KeyError, TypeError):
            pass
        raise ModelDirError(d, f"already holds a model{run} ({', '.join(present[:3])}...); use --resume to "
                               "continue its training, --overwrite to replace it, or another --out directory")
    (d / MANIFEST).unlink(missing_ok=True)
    for n in RUN_FILES:
        (d / n).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------
# manifest
# --------------------------------------------------------------------------------------------

def _digest(path: Path) -> tuple[int, str]:
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while chunk := f.read(1 << 22):
            h.update(chunk)
            size += len(chunk)
    return size, h.hexdigest()


def read_json(path, what: str = "JSON file") -> object:
    """``json.loads`` of a file, any problem raised as :class:`ModelDirError` naming it.

    Raises:
        ModelFileMissingError: no such file. ModelDirError: unreadable or not valid JSON.
    """
    p = Path(path)
    try:
        text = p.read_bytes()
    except FileNotFoundError:
        raise ModelFileMissingError(p, f"is missing (expected a {what})") from None
    except OSError as exc:
        raise ModelDirError(p, f"cannot be read: {exc.strerror or exc}") from None
    try:
        return json.loads(text.decode("utf-8-sig"))
    except UnicodeDecodeError:
        raise ModelDirError(p, f"is not a {what}: not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise ModelDirError(p, f"is not a valid {what}: {exc.msg} at line {exc.lineno} column {exc.colno}") from None


def load_file(path, loader, what: str):
    """``loader(path)``, with every failure of a damaged file raised as one :class:`ModelDirError`.

    Args:
        path: the file. loader: a function of the path (``torch.load``, ``np.load``...).
        what: what the file should be, for the message (``"PyTorch file"``...).

    Raises:
        ModelFileMissingError: no such file. ModelDirError: any other error of ``loader``.
    """
    p = Path(path)
    if not p.is_file():
        raise ModelFileMissingError(p, f"is missing (expected a {what})")
    if p.stat().st_size == 0:
        raise ModelDirError(p, f"is empty (0 bytes); expected a {what}")
    try:
        return loader(p)
    except MemoryError:
        raise
    except Exception as exc:  # noqa: BLE001 - any failure of a third-party loader on damaged bytes
        text = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        msg = text.splitlines()[0][:200] if text else ""
        raise ModelDirError(p, f"is damaged or not a {what} ({type(exc).__name__}{': ' + msg if msg else ''})") from None


def write_manifest(directory, run_id: str, files=None, kind: str = MODEL_KIND, extra: dict | None = None) -> dict:
    """Write ``directory/manifest.json`` (atomically) listing the size and SHA-256 of ``files``.

    Call it last: it marks the directory as complete. ``config`` is ``config.json`` when present.
    ``files`` defaults to a model directory's: ``MODEL_FILES`` and those of ``OPTIONAL_MODEL_FILES``
    it holds.

    Returns:
        the manifest dict.
    """
    d = Path(directory)
    if files is None:
        files = (*MODEL_FILES, *(n for n in OPTIONAL_MODEL_FILES if (d / n).is_file()))
    entries = {}
    for n in files:
        size, sha = _digest(d / n)
        entries[n] = {"size": size, "sha256": sha}
    from . import __version__

    man = {"kind": kind, "run_id": run_id, "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
           "xhyp_version": __version__, "files": entries}
    if "config.json" in entries:
        try:
            man["config"] = read_json(d / "config.json", "model configuration")
        except ModelDirError:  # recorded by its checksum anyway
            pass
    if extra:
        man.update(extra)
    atomic_save_json(man, d / MANIFEST)
    return man


def _check_entries(d: Path, man: dict, names, checksums: bool) -> None:
    files = man.get("files")
    if not isinstance(files, dict):
        raise ModelDirError(d / MANIFEST, "has no 'files' table; the directory is damaged")
    for n in names:
        p = d / n
        if n not in files or not isinstance(files[n], dict):
            raise ModelDirError(p, f"is not listed in {MANIFEST}: the directory mixes files of different runs "
                                   "or versions; retrain it (--overwrite)")
        if not p.is_file():
            raise ModelFileMissingError(p, f"is missing (listed in {MANIFEST}); the directory is incomplete")
        size = p.stat().st_size
        if size != files[n].get("size"):
            raise ModelDirError(p, f"has {size} bytes but {MANIFEST} says {files[n].get('size')}: the file was "
                                   "truncated, replaced or comes from another run; retrain (--overwrite) or restore it")
        if checksums and _digest(p)[1] != files[n].get("sha256"):
            raise ModelDirError(p, f"does not match its SHA-256 in {MANIFEST}: the file was modified or comes "
                                   "from another run; retrain (--overwrite) or restore it")


def verify(directory, names=MODEL_FILES, checksums: bool = True) -> dict:
    """Check that a model directory is one finished run: its manifest lists ``names`` and every
    file has the recorded size and (``checksums``) SHA-256.

    Returns:
        the manifest dict.

    Raises:
        ModelFileMissingError: the directory, its manifest or a file is missing.
        ModelDirError: a file differs from the manifest, or the manifest is damaged.
    """
    d = Path(directory)
    if not d.is_dir():
        raise ModelFileMissingError(d, "is not a directory (no such model)")
    for n in names:  # a missing file is named first (the usual interrupted run)
        if not (d / n).is_file():
            raise ModelFileMissingError(d / n, f"is missing: {d} is not a complete xhyp model directory (was "
                                               "training interrupted? rerun `xhyp train ... --resume`)")
    man = _read_manifest(d, MODEL_KIND, "model", f"{d} was not finished by `xhyp train` (interrupted, or written "
                         "by another run); rerun with --resume or --overwrite")
    _check_entries(d, man, names, checksums)
    return man


def _read_manifest(d: Path, kind: str, what: str, why_missing: str) -> dict:
    """``d/manifest.json`` as a dict of the given ``kind``; ``what`` ("model" / "ensemble") names
    it in messages, ``why_missing`` explains a missing manifest."""
    if not (d / MANIFEST).is_file():
        raise ModelFileMissingError(d / MANIFEST, f"is missing: {why_missing}")
    man = read_json(d / MANIFEST, f"{what} manifest")
    if not isinstance(man, dict) or man.get("kind") != kind:
        raise ModelDirError(d / MANIFEST, f"is not an xhyp {what} manifest")
    return man


def write_ensemble_manifest(directory, members, ensemble_file: str = "ensemble.json") -> dict:
    """Write an ensemble directory's manifest: ``ensemble.json`` and each member's ``manifest.json``
    (size and SHA-256), plus the members' run ids."""
    d = Path(directory)
    files = [ensemble_file] + [f"{m}/{MANIFEST}" for m in members]
    run_ids = {m: read_json(d / m / MANIFEST, "model manifest").get("run_id") for m in members}
    return write_manifest(d, uuid.uuid4().hex, files, kind=ENSEMBLE_KIND,
                          extra={"members": list(members), "member_runs": run_ids})


def verify_ensemble(directory, members, ensemble_file: str = "ensemble.json") -> dict:
    """Check an ensemble directory against its manifest (``ensemble.json`` and every member's
    manifest unchanged); each member's own files are checked by :func:`verify` when loaded.

    Raises:
        ModelDirError / ModelFileMissingError: see :func:`verify`.
    """
    d = Path(directory)
    man = _read_manifest(d, ENSEMBLE_KIND, "ensemble", f"the ensemble {d} was not finished by `xhyp ensemble` "
                         "(interrupted?); rerun the same command")
    _check_entries(d, man, [ensemble_file] + [f"{m}/{MANIFEST}" for m in members], True)
    return man


# --------------------------------------------------------------------------------------------
# the writer decorator of train()
# --------------------------------------------------------------------------------------------

def check_training_data(X, Y) -> None:
    """Refuse training data that cannot give a valid model: no rows, or non-finite features.

    Args:
        X: ``(N, F)`` CSR features. Y: ``(N, L)`` CSR labels.

    Raises:
        ValueError: ``N == 0``, or a NaN/inf value in ``X`` or ``Y`` (the message gives row and column).
    """
    import numpy as np

    if X.shape[0] == 0:
        raise ValueError("the training data has no examples (N = 0)")
    for name, M in (("feature", X), ("label", Y)):
        data = np.asarray(M.data)
        if data.dtype.kind == "f" and not np.isfinite(data).all():
            k = int(np.flatnonzero(~np.isfinite(data))[0])
            Mc = M.tocsr()
            row = int(np.searchsorted(Mc.indptr, k, side="right") - 1)
            raise ValueError(f"non-finite {name} value {data[k]} in training row {row}, column {int(Mc.indices[k])}; "
                             "fix or drop it (NaN/inf features make a NaN model)")


def _is_secondary_rank() -> bool:
    """True in a torch.distributed process other than rank 0 (``RANK``/``WORLD_SIZE`` set by
    torchrun or :func:`torch.multiprocessing.spawn` launchers): such a process reads ``out_dir``
    (for ``resume``) but rank 0 alone locks, writes and seals it."""
    try:
        return int(os.environ.get("WORLD_SIZE", "1")) > 1 and int(os.environ.get("RANK", "0")) != 0
    except ValueError:
        return False


def model_dir_writer(train_fn):
    """Decorator of :func:`xhyp.training.loop.train`: lock, clean, check and finalize ``out_dir``.

    Adds the keyword argument ``overwrite: bool = False``. ``resume`` in an existing directory
    that has no checkpoint yet (a run killed before its first epoch ended: only its start-up
    files, no ``model.pt``, no manifest) starts that run again. Before training: the data is checked
    (:func:`check_training_data`); with an ``out_dir``, its lock is taken (:func:`lock_dir`),
    stale temporary files removed (:func:`clean_stale_temps`) and the directory prepared
    (:func:`prepare_dir`). After training returns: ``manifest.json`` is written
    (:func:`write_manifest`) and the lock released. If training raises, no manifest is written.
    """
    sig = inspect.signature(train_fn)

    @functools.wraps(train_fn)
    def wrapper(*args, overwrite: bool = False, **kwargs):
        bound = sig.bind(*args, **kwargs)
        bound.apply_defaults()
        a = bound.arguments
        if a["X"].shape[0] == a["Y"].shape[0]:  # (a shape mismatch is train's own error)
            check_training_data(a["X"], a["Y"])
            # invalid settings: refused before anything is written
            normalise_configs(a["X"].shape[1], a["Y"].shape[1], a.get("model_config"), a.get("train_config"))
        out = a.get("out_dir")
        if out is None or _is_secondary_rank():
            return train_fn(*args, **kwargs)  # (ranks other than 0 of torchrun never write out_dir)
        resume = bool(a.get("resume"))
        if resume and not Path(out).is_dir():
            return train_fn(*args, **kwargs)  # train's own "no checkpoint" error
        lock = lock_dir(out)
        try:
            clean_stale_temps(out)
            d = Path(out)
            if resume and not (d / "checkpoint.pt").exists() and not (d / "model.pt").exists() \
                    and not (d / MANIFEST).exists():
                # a run killed before its first checkpoint: nothing was learnt, start it again
                resume, overwrite = False, True
                a["resume"] = False
            prepare_dir(out, resume, overwrite)
            res = train_fn(*bound.args, **bound.kwargs)
            write_manifest(out, uuid.uuid4().hex)
            return res
        finally:
            lock.release()

    wrapper.__signature__ = sig.replace(parameters=[*sig.parameters.values(), inspect.Parameter(
        "overwrite", inspect.Parameter.KEYWORD_ONLY, default=False)])
    # the signature users (and Sphinx) see: train's own, plus the keyword-only ``overwrite``
    params = list(sig.parameters.values())
    params.append(inspect.Parameter("overwrite", inspect.Parameter.KEYWORD_ONLY, default=False, annotation="bool"))
    wrapper.__signature__ = sig.replace(parameters=params)
    del wrapper.__wrapped__  # (else inspect.signature follows it and loses ``overwrite``)
    return wrapper
