"""Shared fixtures: the real data beside the checkout (``../shared/data``, or ``$XHYP_DATA``)."""
import os
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def shared_data_dir() -> Path:
    """The folder of real datasets: ``$XHYP_DATA``, else ``../shared/data`` next to the repository.

    Missing: the test fails under CI (``$CI`` set), else it is skipped.
    """
    path = Path(os.environ.get("XHYP_DATA") or REPO_ROOT.parent / "shared" / "data")
    if not path.is_dir():
        msg = f"real data not found at {path} (set XHYP_DATA to the shared data folder)"
        if os.environ.get("CI"):
            pytest.fail(msg)
        pytest.skip(msg)
    return path


def require(module: str):
    """Import an optional test dependency (faiss, napkinxc...): skipped when it is missing, except
    under CI (``$CI`` set), where a missing extra must fail the run instead of hiding its tests.

    Args:
        module: dotted module name, e.g. ``"napkinxc.metrics"``.

    Returns:
        the imported module.
    """
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError as exc:
        msg = f"optional test dependency {module!r} is not installed ({exc}); pip install -e '.[test]'"
        if os.environ.get("CI"):
            pytest.fail(msg, pytrace=False)
        pytest.skip(msg)


# ------------------------------------------------------------------------------------------------
# by-hand votes (plain numpy loops, independent of xhyp.knn.vote), shared by the prediction tests


def np_vote(I, D, Y, weighting="count", alpha=1.0, id_order=False):
    """By hand: ``S[q, l]`` = the sum of the weights of the neighbours of ``q`` holding label ``l``.

    A neighbour ``j`` weighs ``1 + 1e-3 exp(-(D[q, j] - D[q, 0]))`` (``"count"``: 1 plus a
    tie-break) or ``exp(-alpha (D[q, j] - D[q, 0]))`` (``"distance"``). ``id_order`` adds them in
    increasing neighbour id (the summation order of the scipy reference and the kernel, so that
    float64 sums agree bit for bit).

    Args:
        I: ``(Q, k)`` neighbour ids. D: ``(Q, k)`` their distances. Y: ``(N, L)`` labels.

    Returns:
        ``(Q, L)`` float64 dense scores.
    """
    import numpy as np

    Yd = (Y.toarray() if hasattr(Y, "toarray") else np.asarray(Y)) > 0
    I, D = np.asarray(I), np.asarray(D, np.float64)
    S = np.zeros((I.shape[0], Yd.shape[1]))
    for q in range(I.shape[0]):
        for j in (np.argsort(I[q], kind="stable") if id_order else range(I.shape[1])):
            gap = D[q, j] - D[q, 0]
            S[q, Yd[I[q, j]]] += 1.0 + 1e-3 * np.exp(-gap) if weighting == "count" else np.exp(-alpha * gap)
    return S


def np_top_k(S, top_k):
    """By hand: keep each row's ``top_k`` largest positive entries (ties: lower label id first)."""
    import numpy as np

    out = np.zeros_like(S)
    for q in range(S.shape[0]):
        cols = sorted(np.flatnonzero(S[q]), key=lambda c: (-S[q, c], c))[:top_k]
        out[q, cols] = S[q, cols]
    return out
