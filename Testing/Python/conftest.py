"""Shared pytest setup: make ``NeARSlicerLib`` importable from a checkout and locate shared data."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[2]
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"

try:  # an installed package (pip install -e .) wins; otherwise use this checkout's sources
    import NeARSlicerLib  # noqa: F401
except ImportError:
    sys.path.insert(0, str(REPO_ROOT / "NeARSlicer"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``<repo>/../shared/data``, or skip: those data are not part of the repository."""
    if not SHARED_DATA.is_dir():
        pytest.skip(f"shared data folder {SHARED_DATA} is absent (it lives beside the repository, not in it)")
    return SHARED_DATA
