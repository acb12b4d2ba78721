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
import scipy.sparse as sp

from xhyp.utils import atomic_save_json


def read_xc_text(path: str | Path):
    """Read an Extreme Classification Repository text file.

    Format: a header ``N F L``, then one line per point ``l1,l2,... f:v f:v ...`` (0-based ids;
    a point without labels starts with a space).

    Returns:
        ``(X (N, F) float32 CSR, Y (N, L) float32 CSR)``.

    Raises:
        ValueError: malformed header or line (the message names the file and line number).
    """
    path = Path(path)
    with open(path) as f:
        header = f.readline().split()
        try:
            n, n_feat, n_lab = (int(v) for v in header)
        except ValueError:
            raise ValueError(f"{path}:1: expected a header 'N_points N_features N_labels', got {header}") from None
        xr, xc, xv, yr, yc = [], [], [], [], []
        i = -1
        for i, line in enumerate(f):
            line = line.rstrip("\n")
            if not line.strip():
                i -= 1
                continue
            try:
                if line[0] in " \t":
                    labels, feats = "", line.split()
                else:
                    parts = line.split()
                    if ":" in parts[0]:
                        labels, feats = "", parts
                    else:
                        labels, feats = parts[0], parts[1:]
                for lab in filter(None, labels.split(",")):
                    yr.append(i)
                    yc.append(int(lab))
                for fv in feats:
                    k, v = fv.split(":")
                    xr.append(i)
                    xc.append(int(k))
                    xv.append(float(v))
            except ValueError as exc:
                raise ValueError(f"{path}:{i + 2}: {exc}") from None
    if i + 1 != n:
        raise ValueError(f"{path}: header announces {n} points, found {i + 1}")
    X = sp.csr_matrix((np.asarray(xv, np.float32), (xr, xc)), shape=(n, n_feat))
    Y = sp.csr_matrix((np.ones(len(yr), np.float32), (yr, yc)), shape=(n, n_lab))
    X.sum_duplicates()
    Y.sum_duplicates()
    Y.data[:] = 1.0
    return X, Y


def write_xc_text(path: str | Path, X: sp.csr_matrix, Y: sp.csr_matrix) -> None:
    """Write ``(X, Y)`` in the Extreme Classification Repository text format (for toy data)."""
    X, Y = sp.csr_matrix(X), sp.csr_matrix(Y)
    lines = [f"{X.shape[0]} {X.shape[1]} {Y.shape[1]}"]
    for i in range(X.shape[0]):
        labs = ",".join(str(j) for j in sorted(Y.indices[Y.indptr[i]:Y.indptr[i + 1]]))
        row = X[i]
        feats = " ".join(f"{j}:{v:g}" for j, v in sorted(zip(row.indices, row.data)))
        lines.append(f"{labs} {feats}")
    Path(path).write_text("\n".join(lines) + "\n")


def load_xy(dataset: str, split: str = "train", data_dir: str | Path | None = None):
    """``(X, Y)`` of a split of a named data set (see the module docstring for the lookup order).

    Raises:
        FileNotFoundError: neither the registry nor ``data_dir/dataset/split.txt`` has it.
    """
    if data_dir is not None:
        p = Path(data_dir) / dataset / f"{split}.txt"
    else:
        p = None
    try:
        from xhyp.datasets.registry import load_dataset

        try:
            return load_dataset(dataset, split=split, data_dir=None if data_dir is None else str(data_dir))
        except (KeyError, FileNotFoundError, ValueError):
            if p is None or not p.is_file():
                raise
    except ImportError:  # xhyp.datasets not installed yet: read the text file directly
        pass
    if p is None or not p.is_file():
        raise FileNotFoundError(f"no data for {dataset!r} split {split!r}: expected {p} (give --data-dir)")
    try:
        from xhyp.datasets.formats import read_xc

        return read_xc(p)
    except ImportError:
        return read_xc_text(p)


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
    tmp = md.with_suffix(".md.tmp")
    tmp.write_text(markdown.rstrip() + "\n")
    tmp.replace(md)
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
