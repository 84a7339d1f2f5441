"""Opening, erosion and dilation by an ellipsoid from distance transforms (ellipsoid_morphology.py) give
scipy's voxels with the same element, on any grid and reach, masks touching the array's faces included;
the specks' hole filling and island dropping (refine.fill_small_holes, drop_islands) and the domain's
parts (domain.shape_facts), each read on the mask's own box, give what they gave on the whole array."""
import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib import ellipsoid_morphology as em
from NeARSlicerLib.domain import SPECK_FRACTION, shape_facts
from NeARSlicerLib.refine import drop_islands, fill_small_holes


def _random_mask(rng: np.random.Generator) -> np.ndarray:
    shape = tuple(int(n) for n in rng.integers(3, 36, 3))
    if rng.random() < 0.15:
        mask = rng.random(shape) < 0.8  # speckled, most of it set: reaches every face
    else:
        smooth = ndimage.gaussian_filter(rng.random(shape), rng.uniform(0.5, 3.0))
        mask = smooth > np.quantile(smooth, rng.uniform(0.2, 0.8))
    if rng.random() < 0.5:  # in a larger volume, off its faces on some sides only
        return np.pad(mask, [(int(a), int(b)) for a, b in rng.integers(0, 6, (3, 2))])
    return mask


def test_the_element_is_a_ball_in_mm_rounded_to_voxels():
    assert list(em.reach((0.7, 0.7, 0.7), 4.9)) == [7, 7, 7]  # a 4.9 mm working voxel on a 0.7 mm CT
    assert list(em.reach((0.8, 0.8, 3.0), 1.0)) == [1, 1, 1]  # at least a voxel along the thick slices' axis
    assert list(em.reach((0.5, 0.5, 0.5), 0.5, at_least_mm=1.0)) == [2, 2, 2]  # never under at_least_mm
    el = em.element(em.reach((1.0, 1.0, 2.0), 4.0))  # (i, j, k) mm: 2 voxels along k, 4 along j and i
    assert el.shape == (5, 9, 9)
    assert el[2, 4, 0] and el[0, 4, 4] and not el[0, 0, 4] and not el[2, 0, 0]


@pytest.mark.parametrize("seed", range(2))
def test_opening_erosion_and_dilation_equal_scipys(seed):
    rng = np.random.default_rng(seed)
    for _ in range(40):
        mask = _random_mask(rng)
        spacing = tuple(float(s) for s in rng.choice([0.5, 0.7, 1.0, 2.5, 3.0, 5.0], 3))
        reach = em.reach(spacing, rng.uniform(0.5, 8.0), float(rng.choice([0.0, 1.0])))
        element = em.element(reach)
        assert np.array_equal(em.opening(mask, reach), ndimage.binary_opening(mask, element)), (spacing, reach)
        assert np.array_equal(em.erosion(mask, reach), ndimage.binary_erosion(mask, element, border_value=0))
        assert np.array_equal(em.dilation(mask, reach), ndimage.binary_dilation(mask, element))


def test_a_thin_shell_has_no_opening_and_a_thick_blob_keeps_its_own():
    kk, jj, ii = np.indices((60, 60, 60))
    r = np.sqrt((kk - 30) ** 2 + (jj - 30) ** 2 + (ii - 30) ** 2)
    shell = (r >= 20) & (r < 22)  # a prior's thin reconstruction error all round
    blob = np.sqrt((kk - 30) ** 2 + (jj - 30) ** 2 + (ii - 52) ** 2) <= 6  # a painted blob
    reach = em.reach((0.7, 0.7, 0.7), 2.1)  # 3 voxels
    assert not em.opening(shell, reach).any()
    opened = em.opening(shell | blob, reach)
    assert opened.any() and opened.sum() >= 0.6 * blob.sum()
    assert np.array_equal(opened, ndimage.binary_opening(shell | blob, em.element(reach)))
    empty = np.zeros((5, 5, 5), bool)
    assert not em.opening(empty, reach).any() and not em.dilation(empty, reach).any()


def _holes_filled_by_fill_holes(mask: np.ndarray, spacing, min_mm3: float) -> np.ndarray:
    """The definition: binary_fill_holes' holes (face-connected), each filled when under min_mm3."""
    holes = ndimage.binary_fill_holes(mask) & ~mask
    labels, n = ndimage.label(holes)
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing))
    small = sizes < min_mm3
    small[0] = False
    return mask | small[labels]


@pytest.mark.parametrize("seed", range(2))
def test_small_holes_are_binary_fill_holes_holes(seed):
    rng = np.random.default_rng(100 + seed)
    for _ in range(60):
        mask = _random_mask(rng)
        spacing = tuple(float(s) for s in rng.choice([0.5, 1.0, 3.0], 3))
        min_mm3 = float(rng.choice([1.0, 10.0, 50.0, 1e6]))
        out = fill_small_holes(mask, spacing, min_mm3)
        assert np.array_equal(out, _holes_filled_by_fill_holes(mask, spacing, min_mm3)), (mask.shape, spacing)


def _islands_dropped_on_the_whole_array(mask: np.ndarray, spacing, min_mm3: float) -> np.ndarray:
    """The definition: 26-connected parts under min_mm3 dropped, never the largest (the first on a tie)."""
    labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
    if n < 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(spacing))
    keep = (sizes >= min_mm3) | (np.arange(n) == int(np.argmax(sizes)))
    return keep[labels - 1] & (labels > 0)


def test_islands_and_parts_read_on_the_masks_box_are_the_whole_arrays():
    rng = np.random.default_rng(7)
    for _ in range(60):
        mask = _random_mask(rng)
        if not mask.any():
            continue
        spacing = tuple(float(s) for s in rng.choice([0.5, 1.0, 3.0], 3))
        min_mm3 = float(rng.choice([1.0, 10.0, 100.0]))
        assert np.array_equal(drop_islands(mask, spacing, min_mm3),
                              _islands_dropped_on_the_whole_array(mask, spacing, min_mm3))
        labels, n = ndimage.label(mask, structure=np.ones((3, 3, 3), bool))
        facts = shape_facts(mask, spacing)
        if n == 1:
            assert facts.components == 1
        # the extent is the large parts' (SPECK_FRACTION of the largest or more), as on the whole array
        sizes = np.bincount(labels.ravel())[1:]
        core = np.isin(labels, np.flatnonzero(sizes >= SPECK_FRACTION * sizes.max()) + 1)
        extent = max((np.ptp(np.flatnonzero(core.any(axis=tuple(b for b in range(3) if b != a)))) + 1) * spacing[2 - a]
                     for a in range(3))
        assert facts.size_mm == pytest.approx(extent)
