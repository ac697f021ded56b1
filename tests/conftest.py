import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SHARED_CIFAR = ROOT.parent / "shared" / "data" / "cifar10-jpeg.tar.gz"


@pytest.fixture(autouse=True)
def isolated_home(tmp_path, monkeypatch):
    """Every test writes runs into its own folder; the dataset cache is shared across the session."""
    monkeypatch.setenv("LTLIB_HOME", str(tmp_path / "runs"))
    # Datasets are found by name in the checkout's own data folders only, never in the user's $LTLIB_DATA.
    monkeypatch.setenv("LTLIB_DATA", str(tmp_path / "data"))
    monkeypatch.setenv("LTLIB_CACHE", os.environ.get("LTLIB_TEST_CACHE", str(ROOT / ".cache")))
    # Importing the app confines data paths for the whole process; tests of data read their own folders.
    monkeypatch.delenv("LTLIB_DATA_ROOTS", raising=False)
    return tmp_path / "runs"
