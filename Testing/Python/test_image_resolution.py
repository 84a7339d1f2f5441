"""image_resolution: an image resampled from coarser voxels is read as such, and only then.

Interpolated from 3 mm (linear, B-spline) the acquired voxel is read within 0.15 mm on boxes the size of
a refinement's; images made at their own grid (white or correlated noise, the phantoms of the project)
are never read as resampled; an axis resampled alone does not make the image coarse (the finest side
counts); refine reads it when not told and then fits the margin as when told.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib.image_resolution import acquired_voxel_mm, read_axis
from NeARSlicerLib.metrics import dice


def _coarse_ct(shape_mm=(72, 72, 72), voxel=3.0, seed=0) -> np.ndarray:
    """A CT-like image made on a ``voxel`` mm grid: blobs of organ and fat, 15 HU noise."""
    rng = np.random.default_rng(seed)
    n = tuple(int(round(s / voxel)) for s in shape_mm)
    blobs = ndimage.gaussian_filter(rng.normal(size=n), 2.0)
    ct = np.where(blobs > 0, 50.0, -100.0) + rng.normal(0.0, 15.0, n)
    return ndimage.gaussian_filter(ct, 0.5).astype(np.float32)


def _native(shape_vox=(90, 90, 90), spacing=0.7, noise_fwhm_mm=None, noise_hu=12.0, seed=0) -> np.ndarray:
    """An image made at its own ``spacing`` mm grid: smooth anatomy, white or Gaussian-correlated noise."""
    rng = np.random.default_rng(seed)
    anatomy = ndimage.gaussian_filter(rng.normal(size=shape_vox), 12.0 / spacing)
    img = ndimage.gaussian_filter(np.where(anatomy > 0, 55.0, -100.0), 0.8 / spacing)
    noise = rng.normal(size=shape_vox)
    if noise_fwhm_mm:
        noise = ndimage.gaussian_filter(noise, noise_fwhm_mm / 2.355 / spacing)
    return np.round(img + noise_hu * noise / noise.std()).astype(np.float32)


@pytest.mark.parametrize("order", [1, 3])
@pytest.mark.parametrize("fine", [0.75, 1.0])
def test_an_image_interpolated_from_3_mm_reads_3_mm(order, fine):
    coarse = _coarse_ct(seed=order)
    fine_img = np.round(ndimage.zoom(coarse, 3.0 / fine, order=order, mode="nearest", grid_mode=True))
    found = acquired_voxel_mm(fine_img, (fine,) * 3)
    assert found is not None and abs(found - 3.0) <= 0.15, found
    for axis in range(3):
        assert abs(read_axis(fine_img, fine, axis).period_mm - 3.0) <= 0.15


@pytest.mark.parametrize("fwhm", [None, 1.0, 1.5, 2.5])
def test_an_image_made_at_its_own_grid_is_not_read_as_resampled(fwhm):
    for seed in range(3):
        for noise in (12.0, 4.0):
            img = _native(noise_fwhm_mm=fwhm, noise_hu=noise, seed=seed)
            assert acquired_voxel_mm(img, (0.7,) * 3) is None, (fwhm, seed, noise)
            # a box of it, the size of a small structure's refinement
            assert acquired_voxel_mm(img[10:60, 20:70, 5:55], (0.7,) * 3) is None, (fwhm, seed, noise)


def test_the_project_s_phantom_cts_are_not_read_as_resampled():
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    for seed, sp in ((0, 1.0), (1, 0.7), (2, 0.8)):
        gland = adrenal_phantom(seed, shape=(int(64 / sp),) * 3, spacing=sp)
        assert acquired_voxel_mm(ct_phantom(gland, seed=seed, spacing=(sp,) * 3, vary=True), (sp,) * 3) is None


def test_the_finest_side_counts_an_axis_resampled_alone_does_not():
    """Slices of 3 mm resampled to 0.75 mm along k only (in-plane voxels as acquired): the k axis reads
    3 mm, the image's finest acquired side is its in-plane 0.75 mm, so nothing is reported."""
    native = _native(shape_vox=(30, 96, 96), spacing=0.75, seed=4)
    stacked = np.round(ndimage.zoom(native, (4.0, 1.0, 1.0), order=1, mode="nearest", grid_mode=True))
    spacing_kji = (0.75, 0.75, 0.75)
    assert abs(read_axis(stacked, spacing_kji[0], 0).period_mm - 3.0) <= 0.15
    assert read_axis(stacked, spacing_kji[1], 1).period_mm is None
    assert acquired_voxel_mm(stacked, spacing_kji[::-1]) is None


def test_too_few_planes_or_a_flat_image_read_nothing():
    assert acquired_voxel_mm(np.zeros((40, 40, 40), np.float32), (0.7,) * 3) is None
    coarse = _coarse_ct(shape_mm=(48, 48, 48))
    assert read_axis(np.round(ndimage.zoom(coarse, 1.5, order=1)), 2.0, 0).period_mm is None  # 24 - 2 planes


def test_refine_reads_the_voxel_of_a_ct_interpolated_from_3_mm(shared_data):
    """The real CT's correct right adrenal gland (3 mm) on a 1 mm cube, its CT interpolated: not told
    the CT's voxel, refine reads it (about 3 mm), says so, and keeps the gland as when told."""
    from NeARSlicerLib.bench import real_ct_cases
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    folder = shared_data / "totalseg_example"
    case = real_ct_cases(folder / "ct.nii.gz", folder / "seg.nii.gz", (8,), per_label=1, family="shift")[0]
    results = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for told in (None, 3.0):
            results[told] = refine_mask(case.truth.astype(np.uint8), case.grid, case.image,
                                        RefineOptions(structure="adrenal gland", image_voxel_mm=told))
    read = results[None].info["image_voxel_read_mm"]
    assert read is not None and abs(read - 3.0) <= 0.2, read
    assert any("resampled from about 3" in w for w in results[None].warnings), results[None].warnings
    assert results[3.0].info["image_voxel_read_mm"] is None  # told: nothing read
    assert np.array_equal(results[None].mask, results[3.0].mask)
    assert dice(results[None].mask, case.truth) >= 0.97


def test_refine_reads_nothing_on_the_ct_s_own_grid(shared_data):
    from NeARSlicerLib.io import read_image

    image, grid = read_image(str(shared_data / "totalseg_example" / "ct.nii.gz"))
    assert acquired_voxel_mm(image, grid.spacing) is None


def test_a_period_out_of_phase_between_quadrants_is_not_the_grid_s():
    """Four boxes, each interpolated from 3 mm, one with its coarse voxels shifted by half a voxel: each
    quadrant has the period, but not all in phase, so it is not one grid's pattern."""
    quads = []
    for q in range(4):
        fine = np.round(ndimage.zoom(_coarse_ct(seed=10 + q), 4.0, order=1, mode="nearest", grid_mode=True))
        quads.append(np.roll(fine, 2 * (q == 3), axis=0)[:, :48, :48])  # 2 planes: half a 3 mm voxel at 0.75 mm
    img = np.block([[quads[0], quads[1]], [quads[2], quads[3]]])
    assert read_axis(img, 0.75, 0).period_mm is None
    aligned = np.block([[quads[0], quads[2]], [quads[0], quads[2]]])
    assert abs(read_axis(aligned, 0.75, 0).period_mm - 3.0) <= 0.15


def test_the_cli_reports_the_voxel_it_read(shared_data, tmp_path, capsys):
    """``nearslicer refine --json`` on files: the real right adrenal gland and its CT interpolated to a
    1 mm cube report ``image_voxel_read_mm`` about 3 and the warning; with ``--image-voxel-mm 3`` nothing
    is read and the output file is the same."""
    import json

    from NeARSlicerLib.bench import real_ct_cases
    from NeARSlicerLib.cli import main
    from NeARSlicerLib.io import read_mask, write_image, write_mask

    folder = shared_data / "totalseg_example"
    case = real_ct_cases(folder / "ct.nii.gz", folder / "seg.nii.gz", (8,), per_label=1, family="shift")[0]
    ct, mask = tmp_path / "ct.nii.gz", tmp_path / "gland.nii.gz"
    write_image(str(ct), case.image, case.grid)
    write_mask(str(mask), case.truth.astype(np.uint8), case.grid)
    facts, outputs = {}, {}
    for told in (None, "3"):
        out = tmp_path / f"refined_{told}.nii.gz"
        args = ["refine", "--image", str(ct), "--mask", str(mask), "--out", str(out), "--structure", "adrenal",
                "--json"] + (["--image-voxel-mm", told] if told else [])
        assert main(args) == 0
        facts[told] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        outputs[told] = np.asarray(read_mask(str(out))[0]) > 0
    assert abs(facts[None]["image_voxel_read_mm"] - 3.0) <= 0.2, facts[None]
    assert any("resampled from about 3" in w for w in facts[None]["warnings"])
    assert facts["3"]["image_voxel_read_mm"] is None
    assert np.array_equal(outputs[None], outputs["3"])
