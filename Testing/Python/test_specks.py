"""Specks in the default's output: islands and enclosed holes smaller than ``min_island_mm3`` are
removed and filled, also where the annotation is otherwise kept; larger holes, notches and every
other voxel stay, and the action and warnings say the output is not the input."""
import warnings

import numpy as np

from NeARSlicerLib.confidence import REFINED_SPECKS
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.refine import RefineOptions, fill_small_holes, refine_mask


def _ball(shape=(32, 32, 32), r=10.0) -> np.ndarray:
    k, j, i = np.indices(shape)
    c = (np.array(shape) - 1) / 2
    return (k - c[0]) ** 2 + (j - c[1]) ** 2 + (i - c[2]) ** 2 <= r * r


def test_small_enclosed_holes_are_filled_in_mm_and_nothing_else():
    ball = _ball()
    painted = ball.copy()
    painted[15, 15, 15:17] = False  # a 2-voxel hole: a missed brush stroke
    painted[12:16, 18:21, 10:13] = False  # a 36-voxel cavity: larger than 10 mm^3 at 1 mm
    painted[15:17, 15, 26:] = False  # a notch open to the outside
    out = fill_small_holes(painted, (1.0, 1.0, 1.0), 10.0)
    assert out[15, 15, 15:17].all() and not out[12:16, 18:21, 10:13].any()
    assert np.array_equal(out & ~painted, ball & ~painted & (np.indices(ball.shape)[0] == 15)
                          & (np.indices(ball.shape)[1] == 15) & (np.indices(ball.shape)[2] < 20))
    # sizes are in mm^3: on 2 mm voxels the same 2-voxel hole is 16 mm^3 and stays
    assert np.array_equal(fill_small_holes(painted, (2.0, 2.0, 2.0), 10.0), painted)
    assert np.array_equal(fill_small_holes(painted, (1.0, 1.0, 1.0), 0.0), painted)


def _refine(mask, **options):
    grid = Grid(shape=mask.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return refine_mask(mask.astype(np.uint8), grid, None, RefineOptions(structure="adrenal gland", **options))


def _speckled(gland: np.ndarray) -> np.ndarray:
    """``gland`` with two voxels missed deep inside and three stray voxels outside its box."""
    painted = gland.copy()
    deep = gland.copy()
    for axis in range(3):
        for shift in (2, -2):
            deep &= np.roll(gland, shift, axis)
    inside = np.argwhere(deep)
    for k, j, i in inside[[0, len(inside) // 2]]:
        painted[k, j, i] = False
    lo = np.argwhere(gland).min(0)
    for d in (3, 6, 9):  # isolated voxels, apart from each other and the gland
        painted[lo[0] - d, lo[1] - d, lo[2] - 1] = True
    return painted


def test_a_kept_annotation_loses_its_specks_and_says_so():
    """Correct glands with three stray voxels outside and two missed ones inside: the default keeps each
    gland (one as already plausible, one as outside the shape prior's domain: too elongated) and cleans
    the specks, so the output is the clean gland and the action is not 'kept'."""
    for seed, domain in ((1, False), (4, True)):
        gland = adrenal_phantom(seed)
        painted = _speckled(gland)
        res = _refine(painted)
        assert res.info["out_of_domain"] is domain
        assert res.info["specks"] == {"removed": 3, "filled": 2}
        assert res.info["action"] == REFINED_SPECKS and np.array_equal(res.mask > 0, gland)
        assert np.array_equal(res.probability >= 0.5, gland)
        assert any("3 voxels of isolated specks removed, 2 voxels of small enclosed holes filled" in w for w in res.warnings)
        off = _refine(painted, min_island_mm3=0.0)
        assert off.info["specks"] is None and np.array_equal(off.mask > 0, painted)
    assert _refine(painted, change_policy="all").info["specks"] is None


def test_specks_and_a_trim_together_are_said_as_a_trim():
    """A kept annotation that lost specks and a piece painted into fat says the trim (the larger change);
    the warnings say both (the line beside Accept: ``test_slicer_noharm.test_outcome_texts``)."""
    import sys
    from pathlib import Path

    from NeARSlicerLib.confidence import REFINED_TRIM

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_image_trim import _ct, _organ, _slab

    organ = _organ()
    painted = organ | _slab(organ)
    painted[0, 0, 0] = True  # a stray voxel far from the organ
    grid = Grid(shape=painted.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = refine_mask(painted.astype(np.uint8), grid, _ct(organ, 5),
                          RefineOptions(prior="anatomy", preset="fast", modality="CT"))
    assert res.info["specks"]["removed"] == 1 and res.info["image_trim"]["removed"] > 0
    assert res.info["action"] == REFINED_TRIM and not res.mask[0, 0, 0]
    assert any("1 voxel of isolated specks removed" in w for w in res.warnings)
    assert any("that the image shows as the structure's surroundings were removed" in w for w in res.warnings)
