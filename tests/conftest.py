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
