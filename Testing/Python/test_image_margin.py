"""The image's margin fit (image_margin): an annotation painted too thick or too thin all round has its
boundary moved to the image's edge; a correct one, or one whose error is not a margin, is not moved;
sizes are in mm on anisotropic grids; refine applies it before NeAR and says so."""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from NeARSlicerLib.cli import main
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.confidence import REFINED_MARGIN
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.image_margin import describe, fit
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask


def _shell(mask: np.ndarray, mm: float, spacing_kji) -> np.ndarray:
    """``mask`` grown (mm > 0) or shrunk (mm < 0) by ``|mm|`` in mm: the library's over/under-painting."""
    if mm > 0:
        return ndimage.distance_transform_edt(~mask, sampling=spacing_kji) <= mm
    return ndimage.distance_transform_edt(mask, sampling=spacing_kji) > -mm


@pytest.fixture(scope="module")
def glands():
    """Three adrenal-like glands (1 mm) each in its phantom CT, two standard and one of varied contrast."""
    out = []
    for seed, vary in ((1, False), (2, False), (3, True)):
        gland = adrenal_phantom(seed)
        out.append((gland, ct_phantom(gland, seed=seed, vary=vary)))
    return out


@pytest.mark.parametrize("mm", [1.0, -1.0, 2.0])
def test_a_gland_painted_too_thick_or_too_thin_is_moved_to_the_image_edge(glands, mm):
    for gland, image in glands:
        painted = _shell(gland, mm, (1.0, 1.0, 1.0))
        out, found = fit(painted, image, (1.0, 1.0, 1.0))
        assert found.judged and np.sign(found.mm) == -np.sign(mm), found
        assert dice(out, gland) > dice(painted, gland) + 0.1
        # 2 mm: the shells may stop a discrete distance level short (1.73 mm), the smaller margin applies
        assert dice(out, gland) >= (0.95 if abs(mm) == 1 else 0.8), (mm, found, dice(painted, gland), dice(out, gland))


def test_a_correct_annotation_is_not_moved(glands):
    for gland, image in glands:
        out, found = fit(gland, image, (1.0, 1.0, 1.0))
        assert found.judged and found.mm == 0.0
        assert np.array_equal(out, gland)


def test_errors_that_are_not_a_margin_are_not_moved(glands):
    gland, image = glands[0]
    rng = np.random.default_rng(0)
    # a blob painted onto one side and a cut tip: the image's edge is still on the rest of the boundary
    k, j, i = np.argwhere(gland)[rng.integers(gland.sum())]
    blob = np.zeros_like(gland)
    blob[max(k - 3, 0):k + 4, max(j - 3, 0):j + 4, max(i - 3, 0):i + 4] = True
    for painted in (gland | blob, gland & ~blob):
        out, found = fit(painted, image, (1.0, 1.0, 1.0))
        assert found.mm == 0.0 and np.array_equal(out, painted)


def test_no_edge_within_reach_means_no_margin():
    """An under-painted ball inside a region of its own intensity (no boundary in the image within
    2.5 mm): growing would flood that tissue, so nothing moves."""
    shape = (48, 48, 48)
    k, j, i = np.indices(shape)
    ball = (k - 24) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 8 ** 2
    same = (k - 24) ** 2 + (j - 24) ** 2 + (i - 24) ** 2 <= 18 ** 2  # the ball's tissue, 10 mm beyond it
    rng = np.random.default_rng(1)
    image = (np.where(same, 40.0, -100.0) + rng.normal(0, 10, shape)).astype(np.float32)
    painted = _shell(ball, -1.0, (1.0, 1.0, 1.0))
    out, found = fit(painted, image, (1.0, 1.0, 1.0))
    assert found.mm == 0.0 and np.array_equal(out, painted), found


def test_sizes_are_in_mm_on_an_anisotropic_grid():
    """An ellipsoid on 0.8 x 0.8 x 2.5 mm voxels over-painted in-plane by 0.8 mm: moved inwards by
    0.8 mm, which only takes in-plane voxels (no 2.5 mm slice is 0.8 mm from the outside)."""
    spacing = (0.8, 0.8, 2.5)  # (i, j, k) mm
    shape = (24, 80, 80)
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(shape, spacing[::-1])], indexing="ij")
    organ = ((k - 30) / 20) ** 2 + ((j - 32) / 18) ** 2 + ((i - 32) / 14) ** 2 <= 1
    rng = np.random.default_rng(2)
    image = ndimage.gaussian_filter(np.where(organ, 60.0, -90.0), sigma=(0.4, 0.8, 0.8))
    image = (image + rng.normal(0, 12, shape)).astype(np.float32)
    painted = organ.copy()
    painted |= ndimage.binary_dilation(organ, structure=np.array([[[0, 0, 0], [0, 0, 0], [0, 0, 0]],
                                                                  [[0, 1, 0], [1, 1, 1], [0, 1, 0]],
                                                                  [[0, 0, 0], [0, 0, 0], [0, 0, 0]]], bool))
    out, found = fit(painted, image, spacing)
    assert found.mm == pytest.approx(-0.8)
    assert dice(out, organ) > 0.97 > dice(painted, organ)


def test_refine_fits_the_margin_before_near_and_says_so(glands):
    gland, image = glands[0]
    grid = Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    painted = _shell(gland, 1.0, (1.0, 1.0, 1.0)).astype(np.uint8)
    before = painted.copy()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = refine_mask(painted, grid, image, RefineOptions(structure="adrenal gland"))
        off = refine_mask(painted, grid, image, RefineOptions(structure="adrenal gland", fit_margin=False))
        shape_only = refine_mask(painted, grid, None, RefineOptions(structure="adrenal gland"))
    assert np.array_equal(painted, before)
    assert res.info["image_margin_mm"] == -1.0 and res.info["image_margin_sides"] is None  # all round
    assert any(describe(-1.0) in w for w in res.warnings)
    # the S+A prior alone does not take the gland's extra millimetre away; the image's edge does
    assert dice(res.mask, gland) >= 0.97 and dice(off.mask, gland) < 0.9
    assert off.info["image_margin_mm"] is None and shape_only.info["image_margin_mm"] is None
    assert np.array_equal(res.removed, (painted > 0) & (res.mask == 0)) and not res.added.any()
    if res.info["action"] == REFINED_MARGIN:
        assert np.array_equal(res.mask, fit(painted, image, (1.0, 1.0, 1.0))[0])


def test_the_cli_reports_the_margin_and_can_turn_it_off(glands, tmp_path, capsys):
    gland, image = glands[1]
    painted = _shell(gland, -1.0, (1.0, 1.0, 1.0)).astype(np.uint8)
    for name, array in (("mask", painted), ("ct", image)):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nii.gz"))
    facts = {}
    for flag in ([], ["--no-margin-fit"], ["--image-voxel-mm", "1.5"]):
        out = tmp_path / f"out{len(flag)}.nii.gz"
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["refine", "--mask", str(tmp_path / "mask.nii.gz"), "--image", str(tmp_path / "ct.nii.gz"),
                         "--out", str(out), "--structure", "adrenal gland", "--json", *flag]) == 0
        facts[len(flag)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        facts[len(flag)]["dice"] = dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0, gland)
    assert facts[0]["image_margin_mm"] == 1.0 and facts[1]["image_margin_mm"] is None
    assert facts[2]["image_margin_mm"] == 0.0  # a 1 mm margin is finer than a 1.5 mm image shows
    assert any(describe(1.0) in w for w in facts[0]["warnings"])
    assert facts[0]["dice"] >= 0.95 and facts[0]["dice"] > facts[1]["dice"] + 0.1


def test_the_cli_refuses_an_image_voxel_that_is_not_a_size(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main(["refine", "--mask", str(tmp_path / "m.nii.gz"), "--out", str(tmp_path / "o.nii.gz"),
              "--image-voxel-mm", "0"])
    assert stop.value.code == 2
    assert "expected a positive size in mm, got 0" in capsys.readouterr().err


def test_an_image_not_read_as_ct_is_not_fitted(glands):
    """MR-like images: the fit is for CT only (on the MR-like generator it shrank correct glands)."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from no_harm import mr_phantom

    gland, _ = glands[0]
    grid = Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    painted = _shell(gland, 1.0, (1.0, 1.0, 1.0)).astype(np.uint8)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        res = refine_mask(painted, grid, mr_phantom(gland, 3), RefineOptions(structure="adrenal gland", preset="fast"))
    assert res.info["modality"] != "CT" and res.info["image_margin_mm"] is None
    assert not any("to the image's edge" in w for w in res.warnings)


def test_a_gland_painted_too_thick_on_one_side_is_moved_on_that_side(glands):
    """Painted one voxel too far along +i only (the gland and its copy shifted by 1 mm): no margin all
    round, one on the +i side, inwards. Only the voxels whose boundary faces +i are judged there, so
    a third or more of the extra paint goes (measured 37-40 %), for far less of the gland."""
    for gland, image in glands[:2]:
        painted = gland | np.roll(gland, 1, axis=2)
        out, found = fit(painted, image, (1.0, 1.0, 1.0))
        assert found.mm == 0.0 and found.sides == (("+i", -1.0),), found
        extra = painted & ~gland
        assert not (out & ~painted).any()  # only taken in
        assert (extra & ~out).sum() >= 0.3 * extra.sum() > 0
        assert (gland & ~out).sum() <= 0.2 * extra.sum()
        assert dice(out, gland) > dice(painted, gland)
    assert describe(0.0, found.sides) == ("its boundary was moved to the image's edge on 1 of its 6 sides (+i 1.0 mm "
                                          "inwards: painted too thick or too thin on that side)")


def test_refine_names_a_moved_side_by_the_patient_s_direction(glands):
    """The side refine reports is where it lies in the patient, from the grid's direction: the +i side
    is the patient's left on an LPS-aligned grid and their right on a grid whose i axis runs right
    (a NIfTI stored in RAS order)."""
    gland, image = glands[0]
    painted = (gland | np.roll(gland, 1, axis=2)).astype(np.uint8)
    for direction, side in (((1, 0, 0, 0, 1, 0, 0, 0, 1), "left"), ((-1, 0, 0, 0, -1, 0, 0, 0, 1), "right")):
        grid = Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=direction)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = refine_mask(painted, grid, image, RefineOptions(structure="adrenal gland"))
        assert res.info["image_margin_mm"] == 0.0 and res.info["image_margin_sides"] == [[side, -1.0]], res.info
        assert any(f"on 1 of its 6 sides ({side} 1.0 mm inwards" in w for w in res.warnings), res.warnings


def test_a_box_too_large_for_the_whole_box_is_fitted_from_a_sample_of_its_boundary(glands, monkeypatch):
    """Past ``MAX_BOX_VOXELS`` (about 1 s per million voxels) the margin is judged from the cells its
    boundary crosses (``boundary_sample``; test_boundary_sample.py): here the same margin, the same voxels."""
    import NeARSlicerLib.image_margin as image_margin

    gland, image = glands[0]
    painted = _shell(gland, 1.0, (1.0, 1.0, 1.0))
    whole = fit(painted, image, (1.0, 1.0, 1.0))
    assert whole[1].mm == -1.0
    monkeypatch.setattr(image_margin, "MAX_BOX_VOXELS", 10_000)
    out, found = fit(painted, image, (1.0, 1.0, 1.0))
    assert found == whole[1] and np.array_equal(out, whole[0])


def test_the_prior_s_domain_is_judged_after_the_margin_fit(shared_data):
    """ALAN val 91 of ``bench --appearance --errors mixture`` (painted 1.7 mm too thin all round, then
    oversmoothed): as painted it is 19 mm long, shorter than any gland the adrenal prior saw, so it
    was kept as out of the domain at 64 DSC with only its margin fitted. Judged after the fit, it is
    in the domain and refined (86 DSC); without the fit it is still out of the domain."""
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.bench import BENCH_SEED

    truth = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"][91].astype(bool)
    image = ct_phantom(truth, seed=BENCH_SEED + 91)
    painted = corrupt(truth, (1.0, 1.0, 1.0), "mixture", BENCH_SEED + 91, image=image)
    g = Grid(shape=truth.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0),
             direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted = refine_mask(painted.astype(np.uint8), g, image, RefineOptions(structure="adrenal gland"))
        unfitted = refine_mask(painted.astype(np.uint8), g, image, RefineOptions(structure="adrenal gland",
                                                                                  fit_margin=False))
    assert fitted.info["image_margin_mm"] > 1.0 and not fitted.info["out_of_domain"]
    assert fitted.info["working_shape"] is not None  # NeAR ran
    assert dice(fitted.mask, truth) >= 0.8 > dice(painted, truth) + 0.4
    assert unfitted.info["out_of_domain"] and unfitted.info["size_mm"] < fitted.info["size_mm"]


def test_no_margin_finer_than_the_image_s_own_voxel(glands):
    """An image resampled from a coarser grid (a 3 mm CT under a segmentation oversampled in Slicer)
    places no edge finer than its own voxel: margins below ``image_voxel_mm`` are not applied."""
    gland, image = glands[0]
    painted = _shell(gland, 1.0, (1.0, 1.0, 1.0))
    assert fit(painted, image, (1.0, 1.0, 1.0))[1].mm == -1.0
    out, found = fit(painted, image, (1.0, 1.0, 1.0), image_voxel_mm=1.0)  # as fine as the grid: as before
    assert found.mm == -1.0 and dice(out, gland) >= 0.95
    for coarse in (1.5, 3.0):
        out, found = fit(painted, image, (1.0, 1.0, 1.0), image_voxel_mm=coarse)
        assert found.mm == 0.0 and not found.sides and np.array_equal(out, painted), (coarse, found)
    with pytest.raises(InputError, match="image_voxel_mm"):
        refine_mask(painted.astype(np.uint8), Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)),
                    image, RefineOptions(structure="adrenal gland", image_voxel_mm=-1.0))


def test_a_correct_real_gland_on_a_grid_finer_than_its_ct_is_kept(shared_data):
    """The real CT's right adrenal gland (TotalSegmentator label 8, 3 mm) on a 1 mm cube, as Slicer hands
    it over for an oversampled segmentation: told the CT's own 3 mm voxel, refine keeps the correct
    gland (the margin fit moved one side 2 mm outwards on the interpolated CT: Dice 0.886)."""
    from NeARSlicerLib.bench import real_ct_cases

    folder = shared_data / "totalseg_example"
    case = real_ct_cases(folder / "ct.nii.gz", folder / "seg.nii.gz", (8,), per_label=1, family="shift")[0]
    assert case.image_voxel_mm == 3.0
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        told = refine_mask(case.truth.astype(np.uint8), case.grid, case.image,
                           RefineOptions(structure="adrenal gland", image_voxel_mm=case.image_voxel_mm))
    assert told.info["image_margin_mm"] is None or told.info["image_margin_mm"] == 0.0
    assert dice(told.mask, case.truth) >= 0.97


def test_a_study_keeps_a_correct_real_gland_on_a_grid_finer_than_its_ct(shared_data):
    """A study's final refinement reads each case's own image voxel (StudyCase.image_voxel_mm, what
    Slicer's study of an oversampled segmentation sets per case): the real CT's correct right adrenal
    gland on a 1 mm cube is kept; told the cube's own 1 mm (which overrides what the image shows), the
    margin fit on the interpolated CT moves it."""
    from NeARSlicerLib.bench import real_ct_cases
    from NeARSlicerLib.study import StudyCase, StudyConfig, run_study

    folder = shared_data / "totalseg_example"
    case = real_ct_cases(folder / "ct.nii.gz", folder / "seg.nii.gz", (8,), per_label=1, family="shift")[0]
    kept = {}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for told in (case.image_voxel_mm, 1.0):
            study_case = StudyCase("right", case.truth.astype(np.uint8), case.grid, case.image,
                                   structure="adrenal gland", image_voxel_mm=told)
            result = run_study([study_case], "adrenal", StudyConfig.for_recipe("denoise", epochs=1))
            kept[told] = dice(result.masks[0], case.truth)
    assert kept[3.0] >= 0.97 and kept[1.0] < kept[3.0] - 0.05, kept
    with pytest.raises(InputError, match="case right: image_voxel_mm .* must be a positive size in mm, got 0"):
        run_study([StudyCase("right", case.truth.astype(np.uint8), case.grid, case.image, image_voxel_mm=0.0)],
                  "adrenal", StudyConfig.for_recipe("denoise", epochs=1))


def test_the_cli_study_gives_every_case_the_image_voxel(tmp_path, monkeypatch):
    """nearslicer study --image-voxel-mm MM: every case's final refinement is told the image's own voxel."""
    import NeARSlicerLib.cli as cli

    masks = tmp_path / "masks"
    masks.mkdir()
    gland = adrenal_phantom(0).astype(np.uint8)
    for name in ("a", "b"):
        sitk.WriteImage(sitk.GetImageFromArray(gland), str(masks / f"{name}.nii.gz"))
    seen = []
    monkeypatch.setattr(cli, "_one_study", lambda args, cfg, cases, *rest: seen.extend(
        (c.name, c.image_voxel_mm) for c in cases))
    assert main(["study", "--masks", str(masks), "--out", str(tmp_path / "out"), "--image-voxel-mm", "3"]) == 0
    assert sorted(seen) == [("a", 3.0), ("b", 3.0)]
