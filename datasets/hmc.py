"""Hierarchical multi-label data: the label hierarchy and the preprocessed Clus-HMC splits.

* :class:`Hierarchy`: the label DAG (a tree for FunCat), with depths, ancestor sets and the
  per-level label groups that HiMulCon's losses and the faithfulness metrics use;
* :func:`raw_hmc_splits` / :func:`load_hmc_split`: the files of a registry HMC dataset (the
  Clus-HMC ARFF files, or RCV1-v2 through scikit-learn), raw or as one preprocessed split;
* :func:`load_hmc`: a registry HMC dataset as train / validation / test splits, preprocessed as
  C-HMCNN (Giunchiglia & Lukasiewicz 2020) does: missing values imputed with the training mean,
  then every feature standardised with the training mean and standard deviation; the labels are
  closed under ancestors by :func:`xhyp.datasets.formats.read_hmc_arff`.

The Gene Ontology sets keep their three ontology roots (``GO0003674``, ``GO0005575``,
``GO0008150``) as labels but leave them out of the evaluation (:attr:`HMCData.eval_labels`), as
C-HMCNN's ``to_skip`` list does; FunCat sets evaluate every node.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from .formats import DataFormatError, read_hmc_arff, topological_order
from .registry import DatasetNotFoundError, get_spec, rcv1_splits, resolve_data_dir

__all__ = ["Hierarchy", "HMCData", "load_hmc", "load_hmc_split", "raw_hmc_splits", "preprocess_dense", "GO_ROOTS"]

GO_ROOTS = ("GO0003674", "GO0005575", "GO0008150")  # molecular function, cellular component, biological process


@dataclass
class Hierarchy:
    """A label hierarchy (DAG), node ``i`` having the parents ``parents[i]``.

    Attributes:
        names: the ``L`` node names.
        parents: for each node, its parents' ids (empty for a top-level node).
    """

    names: list[str]
    parents: list[list[int]]
    _anc: list[frozenset] | None = field(default=None, repr=False, compare=False)

    def __post_init__(self):
        if len(self.names) != len(self.parents):
            raise ValueError(f"{len(self.names)} names but {len(self.parents)} parent lists")
        L = len(self.parents)
        for i, ps in enumerate(self.parents):
            if any(not 0 <= p < L or p == i for p in ps):
                raise ValueError(f"node {i} ({self.names[i]!r}) has a parent id out of range or itself: {ps}")

    def __len__(self) -> int:
        return len(self.names)

    def _order(self) -> list[int]:

        order = topological_order(self.parents)
        if len(order) != len(self.parents):
            raise ValueError("the hierarchy has a cycle")
        return order

    def ancestors(self) -> list[frozenset]:
        """Strict ancestors of every node (transitive closure of the parent relation)."""
        if self._anc is None:
            anc: list[set] = [set() for _ in self.parents]
            for v in self._order():
                for p in self.parents[v]:
                    anc[v] |= anc[p] | {p}
            self._anc = [frozenset(a) for a in anc]
        return self._anc

    def depth(self) -> np.ndarray:
        """``(L,)`` int64 depth: 1 for top-level nodes, else 1 + the smallest parent depth (the
        shortest path to the root, as C-HMCNN orders GO nodes)."""
        d = np.zeros(len(self), np.int64)
        for v in self._order():
            d[v] = 1 + (min(d[p] for p in self.parents[v]) if self.parents[v] else 0)
        return d

    def levels(self) -> list[np.ndarray]:
        """Node ids of each depth ``1..D`` (``levels()[k-1]`` holds the nodes of depth ``k``)."""
        d = self.depth()
        return [np.flatnonzero(d == k) for k in range(1, int(d.max(initial=0)) + 1)]

    def ancestor_matrix(self) -> sp.csr_matrix:
        """``(L, L)`` binary CSR, entry ``(i, j)`` = 1 iff ``j`` is a strict ancestor of ``i``."""
        rows = [i for i, a in enumerate(self.ancestors()) for _ in a]
        cols = [j for a in self.ancestors() for j in sorted(a)]
        return sp.csr_matrix((np.ones(len(rows), np.float32), (rows, cols)), shape=(len(self), len(self)))

    def is_closed(self, Y) -> bool:
        """Whether every label set (rows of ``(N, L)`` binary ``Y``) contains its nodes' parents."""
        Y = sp.csr_matrix(Y, dtype=np.float32)
        edges = [(c, p) for c, ps in enumerate(self.parents) for p in ps]
        if not edges:
            return True
        P = sp.csr_matrix((np.ones(len(edges), np.float32), tuple(zip(*edges))), shape=(len(self), len(self)))
        implied = (Y @ P) > 0
        return (implied - implied.multiply(Y > 0)).nnz == 0

    def to_dict(self) -> dict:
        """JSON-able form (``{"names": [...], "parents": [[...], ...]}``)."""
        return {"names": list(self.names), "parents": [list(map(int, p)) for p in self.parents]}

    @classmethod
    def from_dict(cls, d: dict) -> "Hierarchy":
        """Inverse of :meth:`to_dict`."""
        return cls(list(d["names"]), [list(p) for p in d["parents"]])

    def save(self, path) -> None:
        """Write :meth:`to_dict` as JSON, atomically."""
        from xhyp.utils import atomic_save_json

        atomic_save_json(self.to_dict(), path)

    @classmethod
    def load(cls, path) -> "Hierarchy":
        """Read a file written by :meth:`save`."""
        return cls.from_dict(json.loads(Path(path).read_text()))


@dataclass
class HMCData:
    """Preprocessed splits of an HMC dataset.

    Attributes:
        name: registry name.
        X_train, X_val, X_test: ``(N_*, F)`` float32 dense features (imputed, standardised).
        Y_train, Y_val, Y_test: ``(N_*, L)`` binary float32 CSR labels, closed under ancestors.
        hierarchy: the label hierarchy (None when unknown, e.g. RCV1 from scikit-learn).
        eval_labels: ``(L_eval,)`` int64 label ids the metrics use (all but the GO roots).
        val_from_train: True when the file had no validation split and ``X_val`` was held out
            of the training file.
    """

    name: str
    X_train: np.ndarray
    Y_train: sp.csr_matrix
    X_val: np.ndarray
    Y_val: sp.csr_matrix
    X_test: np.ndarray
    Y_test: sp.csr_matrix
    hierarchy: Hierarchy | None
    eval_labels: np.ndarray
    val_from_train: bool = False


def preprocess_dense(X_train: np.ndarray, *others: np.ndarray) -> tuple[np.ndarray, ...]:
    """Impute NaNs with the training column mean, then standardise with the training mean and
    standard deviation (a constant column gets scale 1), as C-HMCNN (``SimpleImputer`` +
    ``StandardScaler``).

    Args:
        X_train: ``(N, F)`` float features, NaN = missing.
        *others: further ``(N_i, F)`` arrays transformed with the training statistics.

    Returns:
        the transformed arrays, float32, in the order given.
    """
    X_train = np.asarray(X_train, np.float64)
    mean = np.nanmean(np.where(np.isnan(X_train).all(0), 0.0, X_train), axis=0) if X_train.size else \
        np.zeros(X_train.shape[1])
    mean = np.where(np.isnan(mean), 0.0, mean)
    filled = np.where(np.isnan(X_train), mean, X_train)
    mu, sd = filled.mean(0), filled.std(0)
    sd = np.where(sd > 0, sd, 1.0)

    def tf(X):
        X = np.asarray(X, np.float64)
        return ((np.where(np.isnan(X), mean, X) - mu) / sd).astype(np.float32)

    return tuple(tf(X) for X in (X_train, *others))


def _split_val(n: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    perm = np.random.default_rng(seed).permutation(n)
    n_val = max(1, int(round(fraction * n)))
    return np.sort(perm[n_val:]), np.sort(perm[:n_val])


def load_hmc(name: str, data_dir=None, val_fraction: float = 0.2, seed: int = 0) -> HMCData:
    """Load a registry HMC dataset (``cellcycle_FUN``, ``derisi_GO``, ``Enron_corr``, ``ImCLEF07D``
    or ``rcv1``) as preprocessed train / validation / test splits.

    Args:
        name: registry name.
        data_dir: data directory (see :func:`xhyp.datasets.registry.resolve_data_dir`).
        val_fraction: share of the training file held out for validation when the dataset has no
            validation file (Enron, ImCLEF07D, RCV1).
        seed: seed of that hold-out (fixed per dataset, never the model seed, so that every
            method and seed sees the same split).

    Returns:
        an :class:`HMCData`.

    Raises:
        KeyError: unknown name. ValueError: not an HMC dataset.
        xhyp.datasets.registry.DatasetNotFoundError: files absent (the message says where).
        xhyp.datasets.formats.DataFormatError: malformed file, or splits whose hierarchies differ.
    """
    spec = get_spec(name)
    if spec.fmt not in ("hmc-arff", "sklearn-rcv1"):
        raise ValueError(f"dataset {name!r} is not a hierarchical multi-label dataset (format {spec.fmt!r})")
    raw = raw_hmc_splits(name, data_dir)
    X_tr, Y_tr = raw["train"]
    if "valid" in raw:
        X_va, Y_va = raw["valid"]
        from_train = False
    else:
        tr, va = _split_val(X_tr.shape[0], val_fraction, seed)
        X_va, Y_va = X_tr[va], Y_tr[va]
        X_tr, Y_tr = X_tr[tr], Y_tr[tr]
        from_train = True
    X_te, Y_te = raw["test"]
    if sp.issparse(X_tr):  # RCV1: tf-idf, already L2-normalised; kept sparse-as-dense rows
        X_tr, X_va, X_te = (sp.csr_matrix(x, dtype=np.float32) for x in (X_tr, X_va, X_te))
    else:
        X_tr, X_va, X_te = preprocess_dense(X_tr, X_va, X_te)
    hier = raw.get("hierarchy")
    L = Y_tr.shape[1]
    keep = np.arange(L)
    if hier is not None:
        skip = {i for i, nm in enumerate(hier.names) if nm in GO_ROOTS}
        keep = np.array([i for i in range(L) if i not in skip], np.int64)
    return HMCData(name, X_tr, sp.csr_matrix(Y_tr), X_va, sp.csr_matrix(Y_va), X_te, sp.csr_matrix(Y_te), hier,
                   keep, from_train)


def raw_hmc_splits(name: str, data_dir=None) -> dict:
    """The raw splits of an HMC dataset: ``{"train": (X, Y), "valid": (X, Y) (if the dataset has
    one), "test": (X, Y), "hierarchy": Hierarchy or None}``; ``X`` is a float32 ndarray with NaN
    for missing values (Clus-HMC) or a CSR matrix (RCV1), ``Y`` a binary CSR matrix.

    Raises:
        DatasetNotFoundError: a file is missing, or RCV1 cannot be downloaded (offline).
        DataFormatError: malformed files, or splits whose declared hierarchies differ.
    """
    spec = get_spec(name)
    root = resolve_data_dir(data_dir)
    if spec.fmt == "sklearn-rcv1":
        return {**rcv1_splits(root), "hierarchy": None}
    out, first = {}, None
    for split, rel in (("train", spec.files[0]), ("valid", spec.valid_file), ("test", spec.files[1])):
        if not rel:
            continue
        path = root / rel
        if not path.is_file():
            raise DatasetNotFoundError(
                f"dataset {name!r} ({split} split) not found: expected {path} (data directory: --data-dir, else "
                f"$XHYP_DATA, else ./data). Get the Clus-HMC .arff files from {spec.source}, then rerun.")
        X, Y, names, parents = read_hmc_arff(path)
        want = {"train": spec.n_train, "valid": spec.n_valid, "test": spec.n_test}[split]
        if X.shape[0] != want:
            raise DataFormatError(path, None, f"{X.shape[0]} rows but dataset {name!r} ({split}) has {want}")
        if first is None:
            first = (path, names, parents)
        elif (names, parents) != first[1:]:
            raise DataFormatError(path, None, f"its class hierarchy differs from the one of {first[0]}")
        out[split] = (X, Y)
    out["hierarchy"] = Hierarchy(first[1], first[2])
    return out


def load_hmc_split(name: str, split: str = "train", data_dir=None):
    """``(X, Y)`` of one split (``"train"``, ``"valid"``, ``"test"``) of an HMC dataset, preprocessed
    as :func:`load_hmc` does (``X`` as float32 CSR so that the XMC commands accept it).

    Raises:
        ValueError: bad split. See :func:`raw_hmc_splits` for the rest.
    """
    if split not in ("train", "valid", "test"):
        raise ValueError(f"split must be 'train', 'valid' or 'test', got {split!r}")
    d = load_hmc(name, data_dir)
    X, Y = {"train": (d.X_train, d.Y_train), "valid": (d.X_val, d.Y_val), "test": (d.X_test, d.Y_test)}[split]
    return sp.csr_matrix(X, dtype="float32"), Y
