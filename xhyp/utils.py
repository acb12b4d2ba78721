"""Small shared helpers: atomic writes, seeding, device choice."""
from __future__ import annotations

import json
import os
import random
import tempfile
from pathlib import Path

import numpy as np
import torch


def _atomic_write(path: Path, write) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def atomic_save_json(obj, path) -> None:
    """Write ``obj`` as indented JSON to ``path`` atomically (temp file + ``os.replace``)."""
    _atomic_write(Path(path), lambda f: f.write((json.dumps(obj, indent=2, sort_keys=True) + "\n").encode()))


def atomic_torch_save(obj, path) -> None:
    """``torch.save`` to ``path`` atomically."""
    _atomic_write(Path(path), lambda f: torch.save(obj, f))


def atomic_save_npz(path, **arrays) -> None:
    """``np.savez`` to ``path`` atomically (``path`` keeps its name; no ``.npz`` is appended)."""
    _atomic_write(Path(path), lambda f: np.savez(f, **arrays))


def atomic_save_sparse(path, matrix) -> None:
    """``scipy.sparse.save_npz`` to ``path`` atomically."""
    import scipy.sparse as sp

    _atomic_write(Path(path), lambda f: sp.save_npz(f, matrix.tocsr()))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and CUDA) RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def resolve_device(device: str = "auto") -> torch.device:
    """``"auto"`` -> CUDA when available else CPU; anything else is passed to ``torch.device``."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(device)
