"""Generated data: a small learnable hierarchical problem and large look-alikes for benchmarks.

* :func:`make_hierarchical`: a label tree, documents whose words come from the nodes on their
  labels' root-to-leaf paths plus background noise (``synthetic-hier`` in the registry);
* :func:`make_like`: random sparse data with the published shapes and densities of a registry
  dataset (``wiki10-31k``, ``delicious-200k``...), power-law feature and label frequencies, built
  in chunks so that full scale fits in a few GB. Not learnable; for speed and memory benchmarks.
"""
from __future__ import annotations

import numpy as np
import scipy.sparse as sp

__all__ = ["make_hierarchical", "make_like"]


def _tree(branching: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """Parent id (-1 for top-level nodes) and depth (0 = top level) of a full tree, breadth first."""
    parents, depth = [], []
    level = [-1]
    for d, b in enumerate(branching):
        nxt = []
        for p in level:
            for _ in range(b):
                nxt.append(len(parents))
                parents.append(p)
                depth.append(d)
        level = nxt
    return np.asarray(parents, dtype=np.int64), np.asarray(depth, dtype=np.int64)


def make_hierarchical(n_train: int = 3000, n_test: int = 1000, n_features: int = 500,
                      branching: tuple[int, ...] = (4, 4, 5), seed: int = 0, words_per_node: float = 1.5,
                      noise_words: float = 20.0, n_char: int = 5, p_second_path: float = 0.3) -> dict:
    """A hierarchical multi-label problem with a known label tree.

    The labels are the nodes of a full tree with ``branching[d]`` children per node at depth
    ``d`` (default ``4 + 16 + 80 = 100`` labels). Each point picks one leaf (a second one with
    probability ``p_second_path``) and is labelled with every node on the root-to-leaf paths
    (3 to 6 labels, about 4 on average). Each node owns ``n_char`` characteristic features; a
    point's features are term counts: ``Poisson(words_per_node)`` words drawn from the
    characteristic features of each of its labels plus ``Poisson(noise_words)`` words drawn
    uniformly from the vocabulary. A 10-nearest-neighbour vote (cosine) gets a P@1 around 0.85.

    Args:
        n_train, n_test: numbers of points.
        n_features: vocabulary size ``F``.
        branching: children per node, level by level.
        seed: everything is a deterministic function of the arguments.
        words_per_node, noise_words, n_char, p_second_path: difficulty knobs (see above).

    Returns:
        dict with ``X_train`` ``(n_train, F)``, ``Y_train`` ``(n_train, L)``, ``X_test``,
        ``Y_test`` (float32 CSR, sorted indices; ``Y`` binary), ``parents`` (list of ``L`` ints,
        the parent label id or -1) and ``depth`` (list of ``L`` ints, 0 for top-level labels).

    Raises:
        ValueError: a non-positive size or an empty tree.
    """
    if n_train < 0 or n_test < 0 or n_features <= 0 or not branching or min(branching) <= 0:
        raise ValueError("sizes must be positive and branching a non-empty tuple of positive ints")
    rng = np.random.default_rng(seed)
    parents, depth = _tree(tuple(branching))
    n_labels = len(parents)
    leaves = np.flatnonzero(depth == len(branching) - 1)
    # ancestors-or-self of each leaf, as a (n_leaves, L) 0/1 matrix
    paths = np.zeros((len(leaves), n_labels), dtype=bool)
    for i, leaf in enumerate(leaves):
        node = leaf
        while node >= 0:
            paths[i, node] = True
            node = parents[node]
    if n_labels * n_char <= n_features:
        char = rng.permutation(n_features)[:n_labels * n_char].reshape(n_labels, n_char)
    else:
        char = rng.integers(0, n_features, size=(n_labels, n_char))

    n = n_train + n_test
    first = rng.integers(0, len(leaves), size=n)
    second = rng.integers(0, len(leaves), size=n)
    Ydense = paths[first] | (paths[second] & (rng.random(n) < p_second_path)[:, None])
    Y = sp.csr_matrix(Ydense, dtype=np.float32)

    rows, labs = Y.nonzero()
    k = rng.poisson(words_per_node, size=len(rows))
    w_rows = np.repeat(rows, k)
    w_feat = char[np.repeat(labs, k), rng.integers(0, n_char, size=int(k.sum()))]
    k_noise = rng.poisson(noise_words, size=n)
    w_rows = np.concatenate([w_rows, np.repeat(np.arange(n), k_noise)])
    w_feat = np.concatenate([w_feat, rng.integers(0, n_features, size=int(k_noise.sum()))])
    X = sp.csr_matrix((np.ones(len(w_rows), np.float32), (w_rows, w_feat)), shape=(n, n_features))
    X.sum_duplicates()  # counts; also sorts the indices
    return {"X_train": X[:n_train], "Y_train": Y[:n_train], "X_test": X[n_train:], "Y_test": Y[n_train:],
            "parents": parents.tolist(), "depth": depth.tolist()}


def _power_law_ids(rng, n_ids: int, exponent: float, size: int, perm: np.ndarray) -> np.ndarray:
    """Ids whose popularity ranks follow a (continuous) power law ``p(r) ~ (r + 1) ** -exponent``,
    ranks mapped to ids by ``perm``."""
    u = rng.random(size)
    if abs(exponent - 1.0) < 1e-9:
        r = np.expm1(u * np.log1p(n_ids))
    else:
        s = 1.0 - exponent
        r = (1.0 + u * ((n_ids + 1.0) ** s - 1.0)) ** (1.0 / s) - 1.0
    return perm[np.minimum(r.astype(np.int64), n_ids - 1)]


def _sample_rows(rng, counts: np.ndarray, n_ids: int, exponent: float, perm: np.ndarray,
                 oversample: float = 1.5) -> tuple[np.ndarray, np.ndarray]:
    """About ``counts[i]`` distinct power-law ids for each row ``i``: ``(row counts, sorted ids)``.

    Draws ``oversample * counts[i]`` ids with replacement, removes repeats, then keeps each of a
    row's ``u`` distinct ids with probability ``counts[i] / u`` (so the mean count is right).
    """
    draws = np.ceil(counts * oversample).astype(np.int64) + 2
    rows = np.repeat(np.arange(len(counts), dtype=np.int64), draws)
    keys = np.sort(rows * n_ids + _power_law_ids(rng, n_ids, exponent, len(rows), perm))
    keys = keys[np.append(True, keys[1:] != keys[:-1])]  # (np.unique hashes: much slower here)
    rows = keys // n_ids
    distinct = np.bincount(rows, minlength=len(counts))
    keys = keys[rng.random(len(keys)) * distinct[rows] < counts[rows]]
    return np.bincount(keys // n_ids, minlength=len(counts)), (keys % n_ids).astype(np.int32)


def _sizes(rng, n: int, mean: float, cap: int) -> np.ndarray:
    """Skewed positive sizes with the given mean (1 + Poisson with a Gamma(2) rate), at most cap."""
    lam = rng.gamma(2.0, max(mean - 1.0, 1e-9) / 2.0, size=n)
    return np.minimum(1 + rng.poisson(lam), cap)


def make_like(name: str, scale: float = 1.0, seed: int = 0, rows_per_chunk: int = 20000,
              feature_exponent: float = 0.8, label_exponent: float = 1.0) -> dict:
    """Random sparse data shaped like a registry dataset, for speed and memory benchmarks.

    Same ``F`` and ``L`` as the dataset; ``round(scale * N)`` train and test points; features and
    labels per point with the dataset's published means (e.g. ``wiki10-31k``: 673 features and
    18.6 labels per point; ``delicious-200k``: 301 and 75.5); feature and label frequencies follow
    power laws (exponents ``feature_exponent`` and ``label_exponent``) over randomly permuted
    ids. Feature values are positive with 6 decimals, like the repository's BoW files. Generated
    ``rows_per_chunk`` rows at a time; full-scale ``delicious-200k`` takes about 1.5 GB and half a
    minute.

    Args:
        name: registry name with ``avg_features`` and ``avg_labels`` (see
            :class:`xhyp.datasets.registry.DatasetSpec`).
        scale: fraction of the published number of points (``0 < scale``).
        seed: random seed (the output is a deterministic function of the arguments).

    Returns:
        dict with ``X_train``, ``Y_train``, ``X_test``, ``Y_test`` (float32 CSR, sorted indices).

    Raises:
        KeyError: unknown name. ValueError: the spec has no densities, or ``scale <= 0``.
    """
    from .registry import get_spec

    spec = get_spec(name)
    if not spec.avg_features or not spec.avg_labels:
        raise ValueError(f"dataset {name!r} has no published densities to imitate")
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    rng = np.random.default_rng(seed)
    F, L = spec.n_features, spec.n_labels
    f_perm, l_perm = rng.permutation(F), rng.permutation(L)

    def split(n: int):
        xc, xi, xv, yc, yi = [], [], [], [], []
        for a in range(0, n, rows_per_chunk):
            m = min(rows_per_chunk, n - a)
            c, i = _sample_rows(rng, _sizes(rng, m, spec.avg_features, F), F, feature_exponent, f_perm)
            xc.append(c)
            xi.append(i)
            v = np.round(rng.gamma(1.0, 0.1, size=len(i)), 6)
            xv.append(np.maximum(v, 1e-6).astype(np.float32))
            c, i = _sample_rows(rng, _sizes(rng, m, spec.avg_labels, L), L, label_exponent, l_perm)
            yc.append(c)
            yi.append(i)

        def csr(counts, ids, vals, n_cols):
            indptr = np.zeros(n + 1, dtype=np.int64)
            np.cumsum(np.concatenate(counts) if counts else [], out=indptr[1:])
            ids = np.concatenate(ids) if ids else np.zeros(0, np.int32)
            vals = np.concatenate(vals) if vals else np.zeros(0, np.float32)
            if indptr[-1] < 2**31:
                indptr = indptr.astype(np.int32)
            return sp.csr_matrix((vals, ids, indptr), shape=(n, n_cols))

        X = csr(xc, xi, xv, F)
        Y = csr(yc, yi, [np.ones(len(i), np.float32) for i in yi], L)
        return X, Y

    X_train, Y_train = split(max(1, round(scale * spec.n_train)))
    X_test, Y_test = split(max(1, round(scale * spec.n_test)))
    return {"X_train": X_train, "Y_train": Y_train, "X_test": X_test, "Y_test": Y_test}
