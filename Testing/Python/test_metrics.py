"""Dice and NSD on cases that can be computed by hand or checked against a reference."""
import math

import numpy as np
import pytest

from NeARSlicerLib.metrics import (
    block_areas,
    dice,
    normalized_surface_dice,
    normalized_surface_dice_voxels,
    nsd,
    surface_area,
)


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


def _ball(shape, centre_kji, radius_mm, spacing=(1.0, 1.0, 1.0)):
    k, j, i = np.indices(shape)
    return (((i - centre_kji[2]) * spacing[0]) ** 2 + ((j - centre_kji[1]) * spacing[1]) ** 2
            + ((k - centre_kji[0]) * spacing[2]) ** 2) <= radius_mm ** 2


BOTH = [normalized_surface_dice, normalized_surface_dice_voxels]


def test_default_nsd_is_the_area_weighted_one():
    assert nsd is normalized_surface_dice


@pytest.mark.parametrize("metric", BOTH)
def test_nsd_identical_disjoint_and_empty(metric):
    a = _cube((20, 20, 20), (5, 5, 5), (10, 10, 10))
    far = _cube((20, 20, 20), (14, 14, 14), (18, 18, 18))
    empty = np.zeros_like(a)
    assert metric(a, a) == 1.0
    assert metric(a, far) == 0.0
    assert metric(a, empty) == 0.0 and metric(empty, a) == 0.0
    assert metric(empty, empty) == 1.0


@pytest.mark.parametrize("metric", BOTH)
def test_nsd_shift_within_and_beyond_tolerance(metric):
    a = _cube((30, 30, 30), (10, 10, 10), (20, 20, 20))
    b = np.roll(a, 1, axis=2)  # every surface element moves by 1 voxel along i
    assert metric(a, b, (1.0, 1.0, 1.0), 1.0) == 1.0
    # with 2 mm voxels along i the same shift is 2 mm: the two faces normal to i fall outside 1 mm
    assert 0.5 < metric(a, b, (2.0, 1.0, 1.0), 1.0) < 1.0
    b2 = np.roll(a, 2, axis=2)
    assert metric(a, b2, (1.0, 1.0, 1.0), 1.5) < 1.0
    assert metric(a, b2, (1.0, 1.0, 1.0), 2.0) == 1.0


def test_block_areas_hand_computed():
    """Marching-cubes areas of single blocks: a corner triangle, a flat square, a chamfer."""
    t = block_areas((1.0, 1.0, 1.0))
    assert t[0] == 0.0 and t[255] == 0.0
    assert t[1] == pytest.approx(math.sqrt(3) / 8)  # triangle between three edge midpoints at 1/2
    assert t[0b00001111] == pytest.approx(1.0)  # the lower layer (k = 0) of the block: a unit square
    assert t[0b00000011] == pytest.approx(math.sqrt(0.5))  # two voxels along i: a 1 x sqrt(1/2) chamfer
    # a mask and its complement share their surface
    assert all(t[c] == pytest.approx(t[255 - c]) for c in range(256))


def test_surface_area_of_a_voxel_and_a_box_by_hand():
    one = np.zeros((5, 5, 5), bool)
    one[2, 2, 2] = True
    assert surface_area(one) == pytest.approx(math.sqrt(3))  # octahedron with vertices at +-1/2
    # a 2x2x2 box on (i, j, k) = (2, 1, 1) mm voxels: flat faces, chamfered edges, corner triangles
    box = _cube((6, 6, 6), (2, 2, 2), (4, 4, 4))
    si, sj, sk = 2.0, 1.0, 1.0
    faces = 2 * (sj * sk + si * sk + si * sj)
    edges = 4 * (si * math.hypot(sj, sk) + sj * math.hypot(si, sk) + sk * math.hypot(si, sj)) / 2
    corners = 8 * 0.5 * math.sqrt((sj * sk) ** 2 + (si * sk) ** 2 + (si * sj) ** 2) / 4
    assert surface_area(box, (si, sj, sk)) == pytest.approx(faces + edges + corners)


def test_nsd_area_weighted_by_hand_on_a_tiny_box():
    """The 2x2x2 box against itself moved one 2 mm voxel along i, tolerance 1 mm: every surface
    element of the box's lower-i layer of blocks is 2 mm from the other surface (the rest are
    within 1 mm), and the same holds for the moved box's upper-i layer."""
    si, sj, sk = 2.0, 1.0, 1.0
    a = _cube((6, 6, 8), (2, 2, 2), (4, 4, 4))
    b = np.roll(a, 1, axis=2)
    corner = 0.5 * math.sqrt((sj * sk) ** 2 + (si * sk) ** 2 + (si * sj) ** 2) / 4
    total = (2 * (sj * sk + si * sk + si * sj)
             + 4 * (si * math.hypot(sj, sk) + sj * math.hypot(si, sk) + sk * math.hypot(si, sj)) / 2
             + 8 * corner)
    # the lower-i layer: the face normal to i, the four edges bounding it (along j and k), four corners
    far = sj * sk + 2 * (sj * math.hypot(si, sk) + sk * math.hypot(si, sj)) / 2 + 4 * corner
    expected = (total - far) / total
    assert normalized_surface_dice(a, b, (si, sj, sk), 1.0) == pytest.approx(expected)
    assert normalized_surface_dice(a, b, (si, sj, sk), 2.0) == 1.0


def test_sphere_shifted_by_a_known_amount():
    a = _ball((40, 40, 40), (20, 20, 20), 12.0)
    # one voxel: every surface element has its moved copy 1 mm away
    assert normalized_surface_dice(a, np.roll(a, 1, axis=2), tolerance_mm=1.0) == 1.0
    # farther shifts lose surface, monotonically, and a 2 mm tolerance forgives 2 voxels
    values = [normalized_surface_dice(a, np.roll(a, d, axis=2)) for d in (1, 2, 3, 4)]
    assert values[0] > values[1] > values[2] > values[3] > 0.2
    assert normalized_surface_dice(a, np.roll(a, 2, axis=2), tolerance_mm=2.0) == 1.0
    # values computed with DeepMind's surface-distance 0.1 (compute_surface_dice_at_tolerance)
    assert values[1] == pytest.approx(0.773805, abs=1e-5)
    assert values[2] == pytest.approx(0.510484, abs=1e-5)


def test_sphere_on_anisotropic_spacing():
    sp = (0.8, 0.8, 2.5)  # (i, j, k) mm: a physical sphere is an ellipsoid of voxels
    a = _ball((24, 48, 48), (12, 24, 24), 14.0, sp)
    b = np.roll(a, 1, axis=0)  # 2.5 mm along k
    v = normalized_surface_dice(a, b, sp, 1.0)
    assert v == pytest.approx(0.678047, abs=1e-5)  # DeepMind's surface-distance 0.1 gives 0.678047
    assert normalized_surface_dice(a, b, sp, 2.5) == 1.0
    # the same shift along i (0.8 mm) stays within 1 mm
    assert normalized_surface_dice(a, np.roll(a, 1, axis=2), sp, 1.0) == 1.0
    # the area is that of the physical sphere, within marching cubes' overestimate on a staircase
    assert 1.0 < surface_area(a, sp) / (4 * math.pi * 14.0 ** 2) < 1.2


def test_sphere_area_and_agreement_with_the_voxel_count():
    a = _ball((40, 40, 40), (20, 20, 20), 12.0)
    assert 1.0 < surface_area(a) / (4 * math.pi * 12.0 ** 2) < 1.1
    # a slightly larger, off-centre sphere: both definitions see mostly matching surface
    b = _ball((40, 40, 40), (20.4, 19.7, 20.3), 12.6)
    area, voxels = normalized_surface_dice(a, b), normalized_surface_dice_voxels(a, b)
    assert 0.9 < area < 1.0 and 0.9 < voxels < 1.0
    assert abs(area - voxels) < 0.06


def test_nsd_checks_spacing_and_shapes():
    a = _cube((8, 8, 8), (2, 2, 2), (5, 5, 5))
    with pytest.raises(ValueError, match="spacing"):
        normalized_surface_dice(a, a, (1.0, 0.0, 1.0))
    with pytest.raises(ValueError, match="different shapes"):
        normalized_surface_dice(a, a[:-1])
