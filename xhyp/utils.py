"""Small shared helpers: atomic writes, seeding, device choice, the machine's load average."""
from __future__ import annotations

import json
import os
import random
import uuid
from pathlib import Path

import numpy as np


def atomic_write(path, write) -> None:
    """Call ``write(binary file)`` on a new temporary file beside ``path``, fsync it, then
    ``os.replace`` it onto ``path``: readers see the old file or the new one, never a part.

    The temporary file is removed if ``write`` raises. (torch is not imported here, so
    :mod:`xhyp.datasets` can use this without loading torch.)
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        with open(tmp, "xb") as f:  # usual permissions (0666 & ~umask), unlike mkstemp's 0600
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_save_json(obj, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + ``os.replace``)."""
    atomic_write(path, lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


class NonFiniteError(ValueError):
    """A NaN or infinite value where only finite numbers make sense (a hyper-parameter, a tensor
    about to be saved); the message names it."""


def check_finite_fields(obj) -> None:
    """Raise :class:`NonFiniteError` naming the first float field of a dataclass that is NaN or
    infinite (hyper-parameters are checked before any work is done)."""
    import dataclasses
    import math

    for f in dataclasses.fields(obj):
        v = getattr(obj, f.name)
        if isinstance(v, float) and not math.isfinite(v):
            raise NonFiniteError(f"{f.name} must be a finite number, got {v}")


def _first_non_finite(obj, where: str):
    """``(key path, tensor or array)`` of the first floating leaf of ``obj`` holding NaN or inf."""
    import torch

    if isinstance(obj, torch.Tensor):
        bad = obj.is_floating_point() and obj.numel() and not bool(torch.isfinite(obj).all())
        return (where, obj) if bad else None
    if isinstance(obj, np.ndarray):
        return (where, obj) if obj.dtype.kind == "f" and obj.size and not np.isfinite(obj).all() else None
    if isinstance(obj, dict):
        items = ((f"{where}.{k}" if where else str(k), v) for k, v in obj.items())
    elif isinstance(obj, (list, tuple)):
        items = ((f"{where}[{i}]", v) for i, v in enumerate(obj))
    else:
        return None
    return next((found for w, v in items if (found := _first_non_finite(v, w)) is not None), None)


def find_non_finite(obj) -> str | None:
    """Where the first NaN or infinite value of a floating tensor or array in ``obj`` (nested
    dicts, lists, tuples) is: its key path (``"labels"``, ``"state.w"``, ``"[2]"``; ``""`` for
    ``obj`` itself), or ``None`` when every value is finite."""
    found = _first_non_finite(obj, "")
    return None if found is None else found[0]


def check_finite_tensors(obj, path, where: str = "") -> None:
    """Raise :class:`NonFiniteError` if a floating tensor or array in ``obj`` (nested dicts,
    lists, tuples) holds NaN or inf; the message names ``path`` and the key.

    Raises:
        NonFiniteError: a non-finite value (nothing is to be written).
    """
    import torch

    found = _first_non_finite(obj, where)
    if found is None:
        return
    key, leaf = found
    if isinstance(leaf, torch.Tensor):
        raise NonFiniteError(f"{path}: refusing to save non-finite values (NaN/inf) in {key or 'the tensor'}; "
                             "training diverged (lower alpha or the learning rates)")
    raise NonFiniteError(f"{path}: refusing to save non-finite values (NaN/inf) in {key or 'the array'}")


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to ``path`` atomically; refuses (:class:`NonFiniteError`, nothing written)
    an object holding a NaN or infinite floating tensor."""
    import torch

    check_finite_tensors(obj, path)
    atomic_write(path, lambda f: torch.save(obj, f))


def atomic_save_npz(path, **arrays) -> None:
    """``np.savez`` to ``path`` atomically (``path`` keeps its name; no ``.npz`` is appended)."""
    atomic_write(path, lambda f: np.savez(f, **arrays))


def atomic_save_sparse(path, matrix) -> None:
    """``scipy.sparse.save_npz`` to ``path`` atomically, uncompressed; refuses NaN/inf values
    (see :class:`NonFiniteError`).

    (zlib compression took 1.0 s of the 1.9 s that ``xhyp predict`` spent on Delicious's 3,185
    test points, for a file 1.6x smaller; ``bench/bench_predict.py``.)
    """
    import scipy.sparse as sp

    check_finite_tensors(np.asarray(matrix.data), path, "the matrix")
    atomic_write(path, lambda f: sp.save_npz(f, matrix.tocsr(), compressed=False))


def loadavg() -> list:
    """1/5/15-minute load averages, rounded to 0.01 (``[]`` where the OS has none): other users'
    work inflates wall times on a shared machine, so benchmarks and experiments record it."""
    try:
        return [round(v, 2) for v in os.getloadavg()]
    except OSError:
        return []


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    import torch

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto"):
    """``"auto"`` -> CUDA when available else CPU; anything else is passed to ``torch.device``.

    Raises:
        ValueError: an unknown device name, or a CUDA device when torch sees no usable GPU.
    """
    import torch

    if isinstance(device, torch.device):
        dev = device
    elif device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    else:
        try:
            dev = torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ValueError(f"device {device!r}: {exc}") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {str(dev)!r}: no CUDA GPU is available to torch (torch.cuda.is_available() "
                         "is False; a CPU-only torch build or no driver); use --device cpu or auto")
    return dev
