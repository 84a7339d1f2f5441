"""The PNG report: written headless, fast, with both outlines drawn where the masks are."""

from __future__ import annotations

import os
import time

import numpy as np
import pytest
from matplotlib.image import imread

from NeARSlicerLib.baselines import closing, opening
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.report import append_panel_png, read_report_facts, save_report_png


def _colour_pixels(png: np.ndarray) -> tuple:
    """Counts of strongly red and strongly blue pixels (the outline colours)."""
    r, g, b = png[..., 0], png[..., 1], png[..., 2]
    red = (r > 0.8) & (g < 0.3) & (b < 0.3)
    blue = (b > 0.8) & (r < 0.3) & (g < 0.5)
    return int(red.sum()), int(blue.sum())


def test_report_png_with_image_and_metrics(tmp_path):
    m = adrenal_phantom(1)
    ct = ct_phantom(m, seed=1)
    original, refined = opening(m, (1, 1, 1), 3.0), closing(m, (1, 1, 1), 3.0)
    path = tmp_path / "report.png"
    t0 = time.perf_counter()
    save_report_png(path, ct, original, refined, (1.0, 1.0, 1.0), title="seed 1",
                    metrics={"dice": 0.9123, "nsd_1mm": 0.88, "iterations": 200})
    assert time.perf_counter() - t0 < 2.0
    png = imread(str(path))
    assert png.ndim == 3 and png.shape[0] > 200 and png.shape[1] > 800
    red, blue = _colour_pixels(png)
    assert red > 200 and blue > 200  # both outlines drawn
    assert os.listdir(tmp_path) == ["report.png"]  # atomic: no temp file left


def test_report_without_image_on_anisotropic_grid(tmp_path):
    original = np.zeros((12, 60, 50), bool)
    original[4:8, 20:40, 15:35] = True
    refined = np.zeros_like(original)
    refined[4:9, 22:42, 15:37] = True
    path = tmp_path / "aniso.png"
    save_report_png(path, None, original, refined, (0.7, 0.7, 5.0))
    red, blue = _colour_pixels(imread(str(path)))
    assert red > 100 and blue > 100


def test_report_handles_an_empty_refined_mask(tmp_path):
    original = np.zeros((20, 20, 20), bool)
    original[8:12, 8:12, 8:12] = True
    path = tmp_path / "empty.png"
    save_report_png(path, None, original, np.zeros_like(original), (1, 1, 1), metrics={"dice": 0.0})
    red, blue = _colour_pixels(imread(str(path)))
    assert red > 50 and blue == 0


def test_report_rejects_mismatched_inputs(tmp_path):
    a = np.zeros((10, 10, 10), bool)
    with pytest.raises(InputError, match="report masks must be 3D and alike"):
        save_report_png(tmp_path / "x.png", None, a, a[:-1], (1, 1, 1))
    with pytest.raises(InputError, match="report image shape"):
        save_report_png(tmp_path / "x.png", np.zeros((10, 10, 9)), a, a, (1, 1, 1))
    assert not (tmp_path / "x.png").exists()


def test_report_numbers_are_those_of_the_masks(tmp_path):
    m = adrenal_phantom(2)
    original, refined = opening(m, (1, 1, 1), 3.0), closing(m, (1, 1, 1), 3.0)
    path = tmp_path / "r.png"
    save_report_png(path, None, original, refined, (0.8, 0.9, 1.5), title="case 2",
                    metrics={"Dice": dice(original, refined), "steps": np.int64(7)})
    facts = read_report_facts(str(path))
    assert facts == {"title": "case 2", "original_voxels": int(original.sum()), "refined_voxels": int(refined.sum()),
                     "spacing": [0.8, 0.9, 1.5], "metrics": {"Dice": dice(original, refined), "steps": 7}}
    assert 0.3 < facts["metrics"]["Dice"] < 1.0  # a real overlap, not a placeholder


def test_append_panel_is_atomic_and_keeps_the_numbers(tmp_path, monkeypatch):
    m = adrenal_phantom(3)
    path = tmp_path / "r.png"
    save_report_png(path, None, m, closing(m, (1, 1, 1), 3.0), (1, 1, 1), metrics={"Dice": 0.5})
    before = path.read_bytes()
    h, w = imread(str(path)).shape[:2]
    panel = np.zeros((64, 64, 3), np.uint8)
    panel[..., 1] = 200  # green: easy to find
    append_panel_png(str(path), panel, "3D")
    png = imread(str(path))
    assert png.shape[0] == h and png.shape[1] == w + h  # the panel is a square of the report's height
    green = (png[..., 1] > 0.7) & (png[..., 0] < 0.2) & (png[..., 2] < 0.2)
    assert green[:, w:].sum() > 0.3 * h * h and green[:, :w].sum() == 0
    assert read_report_facts(str(path))["metrics"] == {"Dice": 0.5}
    assert os.listdir(tmp_path) == ["r.png"]

    # a failing write leaves the report as it was
    appended = path.read_bytes()
    from matplotlib.figure import Figure

    def disk_full(self, fname, **kwargs):
        with open(fname, "wb") as f:
            f.write(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(Figure, "savefig", disk_full)
    with pytest.raises(OSError, match="No space left"):
        append_panel_png(str(path), panel, "3D")
    assert path.read_bytes() == appended != before
    assert os.listdir(tmp_path) == ["r.png"]
