"""Grid conversions and the source <-> working-cube round trip."""

from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from NeARSlicerLib.errors import InputError
from NeARSlicerLib.geometry import Grid, _covering_box, refine_box, to_source, to_working
from NeARSlicerLib.phantom import adrenal_phantom


def dice(a: np.ndarray, b: np.ndarray) -> float:
    a, b = np.asarray(a, bool), np.asarray(b, bool)
    return 2.0 * np.logical_and(a, b).sum() / (a.sum() + b.sum())


def rotation(deg_x: float, deg_y: float) -> np.ndarray:
    ax, ay = np.radians(deg_x), np.radians(deg_y)
    rx = np.array([[1, 0, 0], [0, np.cos(ax), -np.sin(ax)], [0, np.sin(ax), np.cos(ax)]])
    ry = np.array([[np.cos(ay), 0, np.sin(ay)], [0, 1, 0], [-np.sin(ay), 0, np.cos(ay)]])
    return ry @ rx


OBLIQUE = tuple(rotation(30, 30).ravel())


def centred(shape, spacing, direction=(1, 0, 0, 0, 1, 0, 0, 0, 1)) -> Grid:
    """A grid whose centre voxel sits at LPS (0, 0, 0)."""
    g = Grid(shape, spacing, (0, 0, 0), direction)
    c = g.index_to_lps((np.array(g.shape[::-1]) - 1) / 2.0)
    return Grid(shape, spacing, tuple(-c), direction)


def phantom_on(grid: Grid, seed: int = 0) -> np.ndarray:
    """The 1 mm phantom (centred at the origin) sampled, nearest neighbour, onto ``grid``."""
    ph = adrenal_phantom(seed)
    src = centred(ph.shape, (1, 1, 1))
    out = sitk.Resample(src.to_sitk(ph.astype(np.uint8)), grid.to_sitk(np.zeros(grid.shape, np.uint8)),
                        sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    return sitk.GetArrayFromImage(out)


# --- Grid ------------------------------------------------------------------------------------
def test_grid_sitk_round_trip_and_affine_match_simpleitk():
    g = Grid((5, 6, 7), (0.7, 0.8, 5.0), (10.5, -3.25, 40.0), OBLIQUE)
    img = g.to_sitk(np.arange(5 * 6 * 7, dtype=np.int16).reshape(5, 6, 7))
    assert img.GetSize() == (7, 6, 5)
    assert Grid.from_sitk(img) == g
    affine = g.ijk_to_lps()
    for ijk in [(0, 0, 0), (6, 5, 4), (1.5, 2.25, 3.0)]:
        expected = img.TransformContinuousIndexToPhysicalPoint(ijk)
        np.testing.assert_allclose(affine @ np.r_[ijk, 1.0], np.r_[expected, 1.0], atol=1e-9)
    # The voxel value at [k, j, i] is the one SimpleITK puts at index (i, j, k).
    assert img[6, 5, 4] == sitk.GetArrayFromImage(img)[4, 5, 6]


def test_grid_from_affine_recovers_spacing_direction_origin():
    g = Grid((5, 6, 7), (0.7, 0.8, 5.0), (10.5, -3.25, 40.0), OBLIQUE)
    back = Grid.from_ijk_to_lps(g.shape, g.ijk_to_lps())
    assert back.same_as(g, tol=1e-9)
    np.testing.assert_allclose(back.spacing, (0.7, 0.8, 5.0), atol=1e-12)


def test_same_as_respects_tolerance():
    g = Grid((4, 4, 4), (1, 1, 1), (0, 0, 0))
    assert g.same_as(Grid((4, 4, 4), (1, 1, 1), (5e-5, 0, 0)))
    assert not g.same_as(Grid((4, 4, 4), (1, 1, 1), (5e-4, 0, 0)))
    assert not g.same_as(Grid((4, 4, 5), (1, 1, 1), (0, 0, 0)))
    assert not g.same_as(Grid((4, 4, 4), (1, 1, 1.001), (0, 0, 0)))
    assert not g.same_as(Grid((4, 4, 4), (1, 1, 1), (0, 0, 0), OBLIQUE))


def test_grid_rejects_bad_geometry():
    with pytest.raises(InputError, match="spacing must be positive"):
        Grid((4, 4, 4), (1, 0, 1), (0, 0, 0))
    with pytest.raises(InputError, match="singular"):
        Grid((4, 4, 4), (1, 1, 1), (0, 0, 0), (1, 0, 0, 1, 0, 0, 0, 0, 1))
    with pytest.raises(InputError, match="does not match grid shape"):
        Grid((4, 4, 4), (1, 1, 1), (0, 0, 0)).to_sitk(np.zeros((4, 4, 5)))


# --- to_working ------------------------------------------------------------------------------
def test_working_grid_is_an_even_isotropic_cube_centred_on_the_mask():
    g = Grid((20, 80, 90), (0.7, 0.7, 5.0), (3.0, -7.0, 11.0), OBLIQUE)
    mask = np.zeros(g.shape, np.uint8)
    mask[4:9, 10:70, 20:41] = 1  # extents: i 21*0.7=14.7, j 60*0.7=42, k 5*5=25 mm
    w = to_working(mask, g, margin_mm=8.0, spacing_mm=1.0, min_fov_mm=32.0)
    n = 42 + 16  # largest extent + 2 margins = 58 mm -> 58 voxels (already even)
    assert w.grid.shape == (n, n, n)
    assert w.grid.spacing == (1.0, 1.0, 1.0)
    np.testing.assert_allclose(w.grid.direction, g.direction, atol=1e-12)  # oblique axes kept
    bbox_centre = g.index_to_lps([(20 + 40) / 2, (10 + 69) / 2, (4 + 8) / 2])
    cube_centre = w.grid.index_to_lps([(n - 1) / 2] * 3)
    np.testing.assert_allclose(cube_centre, bbox_centre, atol=1e-4)
    assert w.source_grid == g and w.mask.dtype == np.float32 and w.image is None
    assert 0.0 <= w.mask.min() and w.mask.max() <= 1.0
    # Linear interpolation keeps the volume: 5*60*21 voxels of 0.7*0.7*5 mm^3.
    assert abs(w.mask.sum() - mask.sum() * 0.7 * 0.7 * 5.0) < 0.02 * mask.sum() * 2.45
    # Small masks get the minimum field of view, rounded up to an even voxel count.
    small = to_working(mask[:, :, :], g, margin_mm=0.0, spacing_mm=1.5, min_fov_mm=64.0)
    assert small.grid.shape == (44, 44, 44)  # ceil(64/1.5) = 43 -> 44


def test_image_resampled_consistently_and_padded_with_its_minimum():
    g = centred((10, 40, 40), (1.0, 1.0, 3.0))
    rng = np.random.default_rng(0)
    image = rng.normal(0, 50, g.shape).astype(np.float32) - 200  # min well above -1000
    mask = np.zeros(g.shape, np.uint8)
    mask[3:7, 15:25, 15:25] = 1
    w = to_working(mask, g, image, min_fov_mm=64.0)  # 64 mm cube overhangs the 30 mm slab
    assert w.image.shape == w.grid.shape and w.image.dtype == np.float32
    assert np.isclose(w.image.min(), image.min(), atol=1e-3)
    assert np.isclose(w.image[0, 0, 0], image.min())  # outside the scan
    # The cropped fast path equals a plain full-volume SimpleITK resample.
    ref = sitk.Resample(g.to_sitk(image), w.grid.to_sitk(np.zeros(w.grid.shape, np.uint8)), sitk.Transform(),
                        sitk.sitkLinear, float(image.min()), sitk.sitkFloat32)
    np.testing.assert_allclose(w.image, sitk.GetArrayFromImage(ref), atol=1e-3)


def test_touches_border_flag():
    g = centred((12, 30, 30), (1, 1, 1))
    mask = np.zeros(g.shape, np.uint8)
    mask[4:8, 10:20, 10:20] = 1
    assert not to_working(mask, g).touches_border
    mask[4:8, 10:20, 25:30] = 1  # reaches the last i column
    assert to_working(mask, g).touches_border


@pytest.mark.parametrize("shape,message", [
    ((30, 30), "2D input"),
    ((1, 30, 30), "2D input"),
    ((30, 30, 1), "2D input"),
    ((4, 30, 30, 2), "expected a 3D mask"),
])
def test_to_working_rejects_non_volumes(shape, message):
    mask = np.ones(shape, np.uint8)
    g = Grid((max(shape[0], 1), 30, 30), (1, 1, 1), (0, 0, 0))
    with pytest.raises(InputError, match=message):
        to_working(mask, g)


def test_to_working_rejects_empty_and_mismatched_inputs():
    g = centred((10, 20, 20), (1, 1, 1))
    with pytest.raises(InputError, match="mask is empty"):
        to_working(np.zeros(g.shape, np.uint8), g)
    mask = np.zeros(g.shape, np.uint8)
    mask[4:6, 8:12, 8:12] = 1
    with pytest.raises(InputError, match=r"image shape \(10, 20, 21\) does not match mask shape \(10, 20, 20\)"):
        to_working(mask, g, np.zeros((10, 20, 21), np.float32))
    with pytest.raises(InputError, match="does not match its grid shape"):
        to_working(mask, centred((10, 20, 21), (1, 1, 1)))
    bad = np.zeros(g.shape, np.float32)
    bad[0, 0, 0] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        to_working(mask, g, bad)


# --- round trip: mask -> working cube -> source, thresholded at 0.5 --------------------------
def round_trip_dice(mask: np.ndarray, grid: Grid) -> float:
    w = to_working(mask, grid)
    back = to_source(w.mask, w.grid, grid)
    assert back.shape == grid.shape and back.dtype == np.float32
    return dice(back >= 0.5, mask)


@pytest.mark.parametrize("label", [8, 9])
def test_round_trip_real_adrenals_3mm(shared_data, label):
    img = sitk.ReadImage(str(shared_data / "totalseg_example" / "seg.nii.gz"))
    mask = (sitk.GetArrayFromImage(img) == label).astype(np.uint8)
    d = round_trip_dice(mask, Grid.from_sitk(img))
    assert d >= 0.95, f"label {label}: round-trip Dice {d:.4f}"  # measured 1.000 for both


def test_round_trip_oblique_grid():
    g = centred((50, 50, 50), (1.3, 1.3, 1.3), OBLIQUE)  # 30 degrees about x and about y
    mask = phantom_on(g, seed=0)
    assert mask.sum() > 1000
    d = round_trip_dice(mask, g)
    assert d >= 0.95, f"oblique round-trip Dice {d:.4f}"  # measured 0.995


def test_round_trip_anisotropic_grid():
    g = centred((16, 100, 100), (0.7, 0.7, 5.0))
    mask = phantom_on(g, seed=1)
    assert mask.sum() > 1000
    d = round_trip_dice(mask, g)
    assert d >= 0.95, f"anisotropic round-trip Dice {d:.4f}"  # measured 0.987


def test_round_trip_oblique_anisotropic_grid():
    g = centred((16, 100, 100), (0.7, 0.7, 5.0), OBLIQUE)
    mask = phantom_on(g, seed=2)
    d = round_trip_dice(mask, g)
    assert d >= 0.95, f"oblique anisotropic round-trip Dice {d:.4f}"  # measured 0.988


def test_to_source_sub_block_equals_full_resample_and_is_zero_outside():
    src = centred((40, 120, 120), (0.8, 0.8, 2.5), OBLIQUE)
    mask = np.zeros(src.shape, np.uint8)
    mask[18:22, 50:70, 55:65] = 1
    w = to_working(mask, src)
    prob = np.random.default_rng(1).uniform(0, 1, w.grid.shape).astype(np.float32)
    out = to_source(prob, w.grid, src)
    ref = sitk.Resample(w.grid.to_sitk(prob), src.to_sitk(np.zeros(src.shape, np.uint8)), sitk.Transform(),
                        sitk.sitkLinear, 0.0, sitk.sitkFloat32)
    np.testing.assert_allclose(out, sitk.GetArrayFromImage(ref), atol=1e-5)
    assert out[:, :5].max() == 0.0  # far outside the 64 mm cube
    with pytest.raises(InputError, match="does not match working grid"):
        to_source(prob[:-1], w.grid, src)


def test_patient_direction_of_array_sides():
    """An array side names the patient direction it faces (LPS), from the grid's direction."""
    lps = Grid(shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    assert [lps.patient_direction(s) for s in ("+i", "-i", "+j", "-j", "+k", "-k")] == [
        "left", "right", "posterior", "anterior", "superior", "inferior"]
    ras = Grid(shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(-1, 0, 0, 0, -1, 0, 0, 0, 1))
    assert [ras.patient_direction(s) for s in ("+i", "+j", "+k")] == ["right", "anterior", "superior"]
    # axial slices tilted by 20 degrees about i: +k still mostly superior, +j mostly posterior
    c, s = np.cos(np.deg2rad(20)), np.sin(np.deg2rad(20))
    tilted = Grid(shape=(4, 4, 4), spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=(1, 0, 0, 0, c, -s, 0, s, c))
    assert (tilted.patient_direction("+k"), tilted.patient_direction("-j")) == ("superior", "anterior")


def test_on_lattice_reads_the_same_voxels_stored_otherwise_and_nothing_else():
    """Flipped, permuted and cropped storage of one lattice is read exactly (as SimpleITK's own filters
    store it); another spacing, a part-voxel shift, a rotation or a target reaching outside give None."""
    from NeARSlicerLib.geometry import on_lattice

    rng = np.random.default_rng(0)
    values = rng.normal(size=(7, 9, 11)).astype(np.float32)
    grid = Grid((7, 9, 11), (0.8, 1.1, 2.5), (3.0, -4.0, 10.0), (0.0, -1.0, 0.0, 1.0, 0.0, 0.0, 0.0, 0.0, 1.0))
    image = grid.to_sitk(values)
    for stored in (sitk.Flip(image, (True, False, True)), sitk.PermuteAxes(image, (1, 2, 0)),
                   image[2:9, 1:7, 1:5], sitk.Flip(sitk.PermuteAxes(image[3:10, :, 2:], (2, 0, 1)), (False, True, True))):
        target = Grid.from_sitk(stored)
        assert np.array_equal(on_lattice(values, grid, target), sitk.GetArrayFromImage(stored))
    shifted = sitk.Image(image)
    shifted.SetOrigin((3.4, -4.0, 10.0))
    resampled = sitk.Resample(image, (11, 9, 7), sitk.Transform(), sitk.sitkLinear, image.GetOrigin(), (0.8, 1.0, 2.5),
                              image.GetDirection())
    rotated = Grid((7, 9, 11), (0.8, 1.1, 2.5), (3.0, -4.0, 10.0), (1.0, 0.0, 0.0, 0.0, 0.8, -0.6, 0.0, 0.6, 0.8))
    outside = Grid((7, 9, 12), (0.8, 1.1, 2.5), (3.0, -4.0, 10.0), grid.direction)
    for target in (Grid.from_sitk(shifted), Grid.from_sitk(resampled), rotated, outside):
        assert on_lattice(values, grid, target) is None


@pytest.mark.parametrize("scale", [
    {"spacing_mm": 1.0, "min_fov_mm": 64.0, "margin_mm": 4.0},  # a fixed-scale prior's cube (the adrenal's)
    {"extent_voxels": 40.0, "min_fov_mm": 1e-3, "margin_mm": 0.0, "min_side_voxels": 64, "max_side_voxels": 128},
], ids=["fixed", "extent"])
@pytest.mark.parametrize("direction", [(1, 0, 0, 0, 1, 0, 0, 0, 1), OBLIQUE], ids=["axial", "oblique"])
def test_refine_box_holds_the_working_cube_and_what_its_resampling_reads(scale, direction):
    g = centred((60, 200, 220), (0.7, 0.7, 3.0), direction)
    mask = np.zeros(g.shape, np.uint8)
    mask[25:31, 90:110, 100:118] = 1  # 14 x 12.6 x 18 mm
    mask[40, 20, 200] = 1  # a speck far off: the cube ignores it, the box must not
    lo, hi = refine_box(mask, g, 0, **scale)
    assert np.all(lo <= [25, 20, 100]) and np.all(hi >= [41, 110, 201])
    work = to_working(mask, g, min_component_fraction=0.02, **scale)
    read_lo, read_hi = _covering_box(g, work.grid, pad=2)  # what to_working and to_source read and write
    assert np.all(lo <= read_lo) and np.all(hi >= read_hi), (lo, hi, read_lo, read_hi)
    mask[40, 20, 200] = 0
    lo, hi = refine_box(mask, g, 0, **scale)
    assert np.prod(hi - lo) < 0.5 * mask.size  # without the speck, a crop


def test_distances_near_a_mask_are_the_whole_arrays_distance_transform():
    """distance_outside and distance_inside work on the mask's box (the error library's and the image
    normalisation's distances, a training batch's largest cost): within the reach they equal scipy's
    distance transform of the whole array, and beyond it every voxel is farther than the reach."""
    from scipy import ndimage

    from NeARSlicerLib.geometry import distance_inside, distance_outside

    rng = np.random.default_rng(5)
    for trial in range(40):
        shape = tuple(int(n) for n in rng.integers(6, 30, 3))
        mask = np.zeros(shape, bool)
        lo = [int(rng.integers(0, n)) for n in shape]
        size = [int(rng.integers(1, 8)) for _ in shape]
        mask[tuple(slice(a, a + s) for a, s in zip(lo, size))] = rng.random(size)[
            tuple(slice(0, min(s, n - a)) for a, s, n in zip(lo, size, shape))] < 0.7
        spacing = np.asarray(rng.choice([0.25, 0.5, 0.8, 1.0, 2.5], 3), float)
        reach = float(rng.uniform(0.5, 6.0))
        whole = ndimage.distance_transform_edt(~mask, sampling=spacing)
        if not mask.any():  # scipy's values without a zero, as the error library read them
            assert np.array_equal(distance_outside(mask, spacing, reach), whole)
            assert not distance_inside(mask, spacing).any()
            continue
        near = distance_outside(mask, spacing, reach)
        within = whole <= reach
        assert np.array_equal(near[within], whole[within]) and np.all(near[~within] > reach), (shape, spacing, reach)
        assert np.array_equal(distance_inside(mask, spacing), ndimage.distance_transform_edt(mask, sampling=spacing))
