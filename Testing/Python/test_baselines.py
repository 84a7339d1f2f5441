"""Slicer-style smoothing baselines: what each one removes or fills, in millimetres."""

from __future__ import annotations

import numpy as np
import pytest

from NeARSlicerLib.baselines import BASELINES, ball, closing, gaussian, largest_component, median, opening
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.phantom import adrenal_phantom

ISO = (1.0, 1.0, 1.0)


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def sphere(shape=(40, 40, 40), radius_mm=10.0, spacing=ISO) -> np.ndarray:
    """A ball of ``radius_mm`` at the centre of a grid with ``spacing`` (i, j, k)."""
    axes = [(np.arange(n) - (n - 1) / 2.0) * s for n, s in zip(shape, spacing[::-1])]
    kk, jj, ii = np.meshgrid(*axes, indexing="ij")
    return kk ** 2 + jj ** 2 + ii ** 2 <= radius_mm ** 2


def test_ball_footprints_are_physical():
    assert ball(3, ISO).shape == (3, 3, 3) and ball(3, ISO).sum() == 19  # corners excluded
    assert ball(5, ISO).shape == (5, 5, 5)
    aniso = ball(3, (0.7, 0.7, 5.0))
    assert aniso.shape == (1, 5, 5)  # 3 mm never reaches the next 5 mm slice
    assert aniso[0, 2].sum() == 5 and aniso[0, :, 2].sum() == 5
    assert ball(1, ISO).sum() == 1
    with pytest.raises(InputError, match="kernel size must be positive"):
        ball(0, ISO)


def test_opening_removes_thin_spur_and_keeps_body():
    body = sphere()
    spurred = body.copy()
    spurred[20, 20, 30:39] = True  # a 1-voxel-thin spike out of the ball
    out = opening(spurred, ISO, 3.0)
    assert not out[20, 20, 32:39].any()
    assert dice(out, body) > 0.97


def test_closing_fills_a_slit_and_works_at_the_border():
    body = sphere()
    slit = body.copy()
    slit[:, 19:21, :] = False  # a 2 mm cut through the middle
    assert dice(closing(slit, ISO, 3.0), body) > 0.99
    # A mask touching the array border keeps its border voxels (no erosion from outside).
    edge = np.zeros((20, 20, 20), bool)
    edge[:, 5:15, 5:15] = True
    assert np.array_equal(closing(edge, ISO, 5.0), edge)


def test_median_removes_speckle_and_fills_pinholes():
    body = sphere()
    noisy = body.copy()
    noisy[2, 2, 2] = True        # isolated speck
    noisy[20, 20, 20] = False    # pinhole inside
    out = median(noisy, ISO, 3.0)
    assert not out[2, 2, 2] and out[20, 20, 20]
    assert dice(out, body) > 0.98


def test_gaussian_smooths_staircase_but_keeps_volume():
    body = sphere(radius_mm=10)
    out = gaussian(body, ISO, 1.0)
    assert dice(out, body) > 0.97
    assert not gaussian(np.pad(np.ones((1, 1, 1), bool), 5), ISO, 1.0).any()  # a lone voxel vanishes
    with pytest.raises(InputError, match="sigma must be positive"):
        gaussian(body, ISO, 0.0)


def test_anisotropic_spacing_is_respected():
    sp = (0.7, 0.7, 5.0)
    body = sphere(shape=(12, 60, 60), radius_mm=15.0, spacing=sp)
    for name, fn in BASELINES.items():
        out = fn(body, sp)
        assert out.dtype == bool and out.shape == body.shape
        assert dice(out, body) > 0.9, name
    # Opening with 3 mm on 5 mm slices works in-plane only: a one-slice-thick plate survives.
    plate = np.zeros((12, 60, 60), bool)
    plate[6, 10:50, 10:50] = True
    assert opening(plate, sp, 3.0).sum() > 0.8 * plate.sum()
    assert not opening(plate, ISO, 3.0).any()  # the same plate at 1 mm is thinner than the ball


def test_largest_component_uses_26_connectivity():
    m = np.zeros((10, 10, 10), bool)
    m[1:4, 1:4, 1:4] = True            # 27 voxels
    m[6:8, 6:8, 6:8] = True            # 8 voxels, separate
    m[4, 4, 4] = True                  # touches the big cube only by a corner
    out = largest_component(m)
    assert out.sum() == 28 and not out[6:8, 6:8, 6:8].any()
    assert not largest_component(np.zeros((4, 4, 4))).any()


def test_baselines_run_on_the_phantom_and_stay_close():
    m = adrenal_phantom(0)
    for name, fn in BASELINES.items():
        out = fn(m, ISO)
        assert 0.6 < dice(out, m) <= 1.0, name


def test_bad_inputs():
    with pytest.raises(InputError, match="expected a 3D mask"):
        median(np.ones((5, 5)), ISO)
    with pytest.raises(InputError, match="spacing must be 3 positive values"):
        closing(np.ones((5, 5, 5)), (1.0, 1.0))
    with pytest.raises(InputError, match="spacing must be 3 positive values"):
        opening(np.ones((5, 5, 5)), (1.0, -1.0, 1.0))
