"""Dice and NSD on cases that can be computed by hand."""
import numpy as np
import pytest

from NeARSlicerLib.metrics import dice, normalized_surface_dice


def test_dice_hand_computed():
    a = np.zeros((4, 4, 4), bool)
    b = np.zeros((4, 4, 4), bool)
    a[0, 0, :2] = True  # 2 voxels
    b[0, 0, 1:4] = True  # 3 voxels, 1 shared
    assert dice(a, b) == pytest.approx(2 * 1 / 5)
    assert dice(a, a) == 1.0
    assert dice(np.zeros_like(a), np.zeros_like(a)) == 1.0
    assert dice(a, np.zeros_like(a)) == 0.0


def _cube(shape, lo, hi):
    m = np.zeros(shape, bool)
    m[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = True
    return m


def test_nsd_identical_and_disjoint():
    a = _cube((20, 20, 20), (5, 5, 5), (10, 10, 10))
    far = _cube((20, 20, 20), (14, 14, 14), (18, 18, 18))
    assert normalized_surface_dice(a, a) == 1.0
    assert normalized_surface_dice(a, far) == 0.0
    assert normalized_surface_dice(a, np.zeros_like(a)) == 0.0


def test_nsd_shift_within_and_beyond_tolerance():
    a = _cube((30, 30, 30), (10, 10, 10), (20, 20, 20))
    b = np.roll(a, 1, axis=2)  # every surface voxel moves by 1 voxel along i
    assert normalized_surface_dice(a, b, (1.0, 1.0, 1.0), 1.0) == 1.0
    # with 2 mm voxels along i the same shift is 2 mm: the two faces normal to i fall outside 1 mm
    nsd_aniso = normalized_surface_dice(a, b, (2.0, 1.0, 1.0), 1.0)
    assert 0.5 < nsd_aniso < 1.0
    # with 1.5 mm tolerance on 1 mm voxels a 2-voxel shift keeps only voxels that meet the other side's surface
    b2 = np.roll(a, 2, axis=2)
    assert normalized_surface_dice(a, b2, (1.0, 1.0, 1.0), 1.5) < 1.0
    assert normalized_surface_dice(a, b2, (1.0, 1.0, 1.0), 2.0) == 1.0
