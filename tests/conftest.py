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
