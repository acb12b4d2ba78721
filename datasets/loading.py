"""The one loader of a data set split: by registry name, folder name or file.

:func:`load_split` is what the CLI, the experiment drivers and the benchmarks call;
:func:`load_dataset` loads a registry dataset whatever its kind: Extreme Classification
Repository text files (:func:`xhyp.datasets.registry.locate_split`, then
:func:`xhyp.datasets.formats.read_xc`), the hierarchical multi-label sets
(:func:`xhyp.datasets.hmc.load_hmc_split`) and the generated ones
(:func:`xhyp.datasets.synthetic.make_hierarchical`).
"""
from __future__ import annotations

from .formats import read_xc
from .hmc import load_hmc_split
from .registry import DATASETS, get_spec, locate_split, resolve_data_dir
from .synthetic import make_hierarchical

__all__ = ["load_dataset", "load_split"]


def load_dataset(name: str, split: str = "train", data_dir=None):
    """Load one split of a registry dataset.

    Args:
        name: registry name (see :data:`xhyp.datasets.registry.DATASETS`).
        split: ``"train"`` or ``"test"``.
        data_dir: data directory (see :func:`xhyp.datasets.registry.resolve_data_dir`); unused for synthetic data.

    Returns:
        ``(X, Y)``: ``(N, F)`` float32 CSR features and ``(N, L)`` binary float32 CSR labels, with
        ``N, F, L`` as in the dataset's spec.

    Raises:
        KeyError: unknown name. ValueError: bad split.
        DatasetNotFoundError: the split's file is missing (the message says which files are
            expected where and how to get them).
        DataFormatError: the file's header disagrees with the spec, or the file is malformed.
    """
    spec = get_spec(name)
    if spec.fmt != "xc":  # hierarchical multi-label sets: preprocessed, see xhyp.datasets.hmc
        return load_hmc_split(name, split, data_dir)
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    if spec.kind == "synthetic":
        d = make_hierarchical(n_train=spec.n_train, n_test=spec.n_test, n_features=spec.n_features, seed=0)
        return d[f"X_{split}"], d[f"Y_{split}"]
    return read_xc(locate_split(name, split, data_dir))


def load_split(dataset: str | None = None, split: str = "train", path=None, data_dir=None):
    """``(X, Y)`` of a data set split by name, or of an Extreme Classification Repository text
    file: the one loader of the CLI, the experiment drivers and the benchmarks.

    A registry name goes through :func:`load_dataset`; a name the registry does not know is read
    from ``data_dir/NAME/SPLIT.txt`` when that file exists (any folder laid out like the shared
    ``bibtex/``, ``delicious/`` data).

    Args:
        dataset: registry name (``xhyp data list``) or folder name, or ``None`` when ``path`` is given.
        split: ``"train"`` or ``"test"`` (``"valid"`` too for the HMC sets).
        path: an Extreme Classification Repository text file.
        data_dir: data directory (default: ``$XHYP_DATA``, else ``./data``; see :func:`xhyp.datasets.registry.resolve_data_dir`).

    Returns:
        ``(X (N, F) float32 CSR, Y (N, L) float32 CSR)``.

    Raises:
        ValueError: neither or both of ``dataset`` and ``path``, or a bad split.
        KeyError: a name neither the registry nor ``data_dir`` knows.
        DatasetNotFoundError: a registry dataset's files are absent (says how to get them).
        DataFormatError: a malformed file (names file and line).
    """
    if (dataset is None) == (path is None):
        raise ValueError("give exactly one of a dataset name or a file path")
    if path is not None:
        return read_xc(path)
    if dataset not in DATASETS:
        folder = resolve_data_dir(data_dir) / dataset / f"{split}.txt"
        if folder.is_file():
            return read_xc(folder)
    return load_dataset(dataset, split=split, data_dir=data_dir)
