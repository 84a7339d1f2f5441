"""The engine installs from pip alone: its wheel holds every shipped prior (weights, card, model card)
and the ``nearslicer`` command, and builds without setuptools' deprecation warnings."""
from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PRIORS = ROOT / "NeARSlicer" / "NeARSlicerLib" / "priors"


def test_the_wheel_holds_every_shipped_prior_and_the_command(tmp_path):
    import setuptools

    if int(setuptools.__version__.split(".")[0]) < 77:  # pyproject's build requirement, offline
        pytest.skip(f"building the wheel without the network needs setuptools >= 77, found {setuptools.__version__}")
    # built from a copy: pip builds in the source tree, which would leave build/ in the checkout
    source = tmp_path / "source"
    shutil.copytree(ROOT / "NeARSlicer" / "NeARSlicerLib", source / "NeARSlicer" / "NeARSlicerLib",
                    ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    run = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-w",
                          str(tmp_path), str(source)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "Deprecat" not in run.stderr and "would be ignored" not in run.stderr, run.stderr[-2000:]
    (wheel,) = tmp_path.glob("nearslicer-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        entry_points = next(archive.read(n).decode() for n in names if n.endswith(".dist-info/entry_points.txt"))
    shipped = {f"NeARSlicerLib/priors/{p.name}" for p in PRIORS.iterdir() if p.suffix in (".safetensors", ".json", ".md")}
    assert len(shipped) >= 8 and shipped <= names, sorted(shipped - names)
    assert "nearslicer = NeARSlicerLib.cli:run" in entry_points
