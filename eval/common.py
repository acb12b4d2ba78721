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


def parse_overrides(items) -> dict:
    """``["epochs=10", "alpha=20"]`` -> ``{"epochs": 10, "alpha": 20.0}`` (types from :class:`TrainConfig`)."""
    from dataclasses import fields

    from xhyp.train import TrainConfig

    types = {f.name: type(f.default) for f in fields(TrainConfig)}
    out = {}
    for item in items or []:
        if "=" not in item:
            raise ValueError(f"--set expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        k = k.replace("-", "_")
        if k not in types:
            raise ValueError(f"unknown training option {k!r}; choose from {sorted(types)}")
        out[k] = types[k](v)
    return out


def add_cache_args(p: argparse.ArgumentParser, epochs: bool = True) -> None:
    """``--cache --epochs --set --seed``: the learner cache shared by the Table-4 family of scripts."""
    p.add_argument("--cache", help="learner cache shared by table4/5/6, fig2 and vote_sweep (default: OUT/cache)")
    if epochs:
        p.add_argument("--epochs", type=int, help="cap on training epochs (must match table4's to reuse its cache)")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="other TrainConfig overrides")
    p.add_argument("--seed", type=int, default=0, help="seed of learner 0 (learner i: seed + i)")


def cache_settings(args) -> tuple[dict, str]:
    """``(training overrides, cache directory)`` from the arguments of :func:`add_cache_args`.

    Raises:
        ValueError: a malformed or unknown ``--set`` item.
    """
    overrides = parse_overrides(args.set)
    if getattr(args, "epochs", None) is not None:
        overrides["epochs"] = args.epochs
    return overrides, args.cache or str(Path(args.out) / "cache")


def command_line(script: str, argv=None) -> str:
    """The command that ran ``python -m xhyp.eval.SCRIPT`` (stored in every JSON)."""
    import sys

    return f"python -m xhyp.eval.{script} " + " ".join(sys.argv[1:] if argv is None else argv)


def environment() -> dict:
    """Where and when a result was measured (stored in every JSON)."""
    import os

    import torch

    from xhyp import __version__

    return {"xhyp_version": __version__, "torch": torch.__version__, "python": platform.python_version(),
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": platform.machine()}


def write_outputs(out_dir: str | Path, name: str, markdown: str, data: dict) -> tuple[Path, Path]:
    """Write ``out_dir/name.md`` and ``out_dir/name.json`` (atomically); returns both paths.

    The JSON is ``data`` plus ``"environment"`` (:func:`environment`) when ``data`` has none.
    """
    data = {**data, "environment": data.get("environment") or environment()}
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
