"""Shared plumbing of the experiment scripts (``python -m xhyp.eval.table2`` ...).

* :func:`load_xy`: a data set split by name, through :mod:`xhyp.datasets` when it knows the name,
  else straight from ``DATA_DIR/NAME/{train,test}.txt`` (Extreme Classification Repository text
  format), so the scripts also run on any folder laid out like ``../shared/data/bibtex``;
* :func:`write_outputs`: the Markdown table and the JSON of a script, written atomically into
  its ``--out`` directory;
* :func:`add_common_args`: ``--datasets --data-dir --out`` shared by every script.
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from xhyp.utils import atomic_save_json, atomic_write


def load_xy(dataset: str, split: str = "train", data_dir: str | Path | None = None):
    """``(X, Y)`` of a split of a named data set (see the module docstring for the lookup order).

    Raises:
        FileNotFoundError: neither the registry nor ``data_dir/dataset/split.txt`` has it.
    """
    from xhyp.datasets.formats import read_xc
    from xhyp.datasets.registry import load_dataset

    p = Path(data_dir) / dataset / f"{split}.txt" if data_dir is not None else None
    try:
        return load_dataset(dataset, split=split, data_dir=None if data_dir is None else str(data_dir))
    except (KeyError, FileNotFoundError, ValueError):
        if p is None or not p.is_file():
            raise
    return read_xc(p)


def propensity_ab(dataset: str) -> tuple[float, float]:
    """Jain et al. (2016) ``(A, B)`` for a data set (registry value, else 0.55, 1.5)."""
    try:
        from xhyp.commands import propensity_params

        return propensity_params(dataset)
    except Exception:  # registry absent or name unknown (toy data)
        return 0.55, 1.5


def add_common_args(p: argparse.ArgumentParser, datasets_default=("bibtex", "delicious")) -> None:
    """``--datasets``, ``--data-dir`` and ``--out`` (every script writes NAME.md and NAME.json there)."""
    p.add_argument("--datasets", nargs="+", default=list(datasets_default),
                   help=f"data set names (default: {' '.join(datasets_default)})")
    p.add_argument("--data-dir", default=None, help="data directory holding NAME/train.txt, NAME/test.txt "
                   "(default: the registry's, $XHYP_DATA)")
    p.add_argument("--out", required=True, help="output directory for the Markdown table and JSON")


def environment() -> dict:
    """Where and when a result was measured (stored in every JSON)."""
    import os

    import torch

    from xhyp import __version__

    return {"xhyp_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine()}


def write_outputs(out_dir: str | Path, name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write ``out_dir/name.md`` and ``out_dir/name.json`` (atomically); returns both paths."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    md, js = out / f"{name}.md", out / f"{name}.json"
    atomic_write(md, lambda f: f.write((markdown.rstrip() + "\n").encode()))
    atomic_save_json(json.loads(json.dumps(data, default=_jsonable)), js)
    return md, js


def _jsonable(o):
    if isinstance(o, (np.integer,)):
        return int(o)
    if isinstance(o, (np.floating,)):
        return float(o)
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def pct(v: float) -> str:
    """A fraction as a percentage with 2 decimals (``-`` for None/NaN)."""
    return "-" if v is None or (isinstance(v, float) and np.isnan(v)) else f"{100.0 * float(v):.2f}"
