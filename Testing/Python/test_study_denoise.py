"""Study mode's denoise recipe: it helps on a shape class no prior has seen, and its refinement is
refine_mask's own with the adapted prior."""
import warnings

import numpy as np
import pytest

from NeARSlicerLib.anatomy_shapes import HELD_OUT_CLASSES, anatomy_study_cases
from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.bench import identity_grid
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.refine import RefineOptions, refine_mask
from NeARSlicerLib.study import StudyCase, StudyConfig, case_spacing, run_study
from NeARSlicerLib.study_adapt import redistort

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def unseen_study():
    """Four small shapes of the held-out classes, each annotation distorted by the error mixture."""
    raw = anatomy_study_cases(3, 4, classes=HELD_OUT_CLASSES, grid=40, extent_voxels=(24, 30))
    cases, truths = [], []
    for i, c in enumerate(raw):
        sp = float(c["spacing_mm"])
        noisy = corrupt(c["mask"], (sp,) * 3, "mixture", 500 + i)
        cases.append(StudyCase(f"c{i}", noisy.astype(np.uint8), identity_grid(c["mask"].shape, sp)))
        truths.append(np.asarray(c["mask"], bool))
    return cases, truths


def test_denoise_study_beats_its_input_on_an_unseen_class(unseen_study, tmp_path):
    cases, truths = unseen_study
    # 10 to 200 mm structures: each on its own working spacing (its longest side spans ~30 voxels)
    cfg = StudyConfig.for_recipe("denoise", epochs=2, extent_voxels=30, refine_preset="fast", margin_mm=4.0)
    res = run_study(cases, "anatomy", cfg, out_dir=str(tmp_path / "out"))
    before = np.mean([dice(c.mask, t) for c, t in zip(cases, truths)])
    after = np.mean([dice(m, t) for m, t in zip(res.masks, truths)])
    assert after > before, f"the denoise study should beat its input: {before:.3f} -> {after:.3f}"
    # every case was refined by refine_mask with the adapted prior (the saved study prior): same masks
    opts = RefineOptions(prior=str(tmp_path / "out" / "study_prior.safetensors"), preset="fast",
                         spacing_mm=case_spacing(cfg, cases[0]), margin_mm=4.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        again = refine_mask(cases[0].mask, cases[0].grid, None, opts)
    assert np.array_equal(again.mask, res.masks[0])
    # case 0 is painted on thick slices; the study prior, adapted on it as painted, refines it as painted
    assert again.info["painted_slices_mm"] is not None and again.info["slices_interpolated"] is False


def test_a_shape_only_study_with_images_checks_each_case_against_its_image(tmp_path):
    """Images given to a denoise study of a shape-only prior are not read to shape the segments, but
    each case's refinement is checked against its own image, as ``refine_mask`` does with the image:
    the same masks, and the study's warning says what the images were used for."""
    raw = anatomy_study_cases(3, 4, classes=HELD_OUT_CLASSES, grid=40, extent_voxels=(24, 30))
    cases = [StudyCase(f"c{i}", corrupt(c["mask"], (float(c["spacing_mm"]),) * 3, "mixture", 500 + i).astype(np.uint8),
                       identity_grid(c["mask"].shape, float(c["spacing_mm"])), c["image"]) for i, c in enumerate(raw)]
    cfg = StudyConfig.for_recipe("denoise", epochs=2, extent_voxels=30, refine_preset="fast", margin_mm=4.0)
    res = run_study(cases, "anatomy", cfg, out_dir=str(tmp_path / "out"))
    assert res.info["appearance"] is False  # the general prior is shape-only
    assert "this prior is shape-only: the images were not used to shape the segments, only to check the " \
           "prior's changes" in res.warnings
    assert not any("case c" in w and "shape-only" in w for w in res.warnings)  # said once, not per case
    sources = []
    for case, mask in zip(cases, res.masks):
        opts = RefineOptions(prior=str(tmp_path / "out" / "study_prior.safetensors"), preset="fast",
                             spacing_mm=case_spacing(cfg, case), margin_mm=4.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            again = refine_mask(case.mask, case.grid, case.image, opts)
        assert np.array_equal(again.mask, mask), case.name
        sources.append(again.info["confidence_from"])
    assert "image" in sources, sources  # the image's support is their confidence


def test_redistortion_is_seeded_and_changes_the_annotation(unseen_study):
    cases = unseen_study[0]
    m = cases[0].mask > 0
    a = redistort(m, 1.0, seed=0, epoch=1, case=0)
    assert np.array_equal(a, redistort(m, 1.0, seed=0, epoch=1, case=0))  # resumable: a pure function
    others = [redistort(m, 1.0, seed=0, epoch=e, case=0) for e in range(2, 6)]
    assert any(not np.array_equal(a, o) for o in others)  # a fresh corruption each epoch
    assert sum(not np.array_equal(m, o) for o in others) >= 3  # the input is (nearly) always a corrupted copy
    assert m.sum() == np.count_nonzero(cases[0].mask)  # the annotation itself is untouched


def test_a_share_of_the_denoise_pairs_is_left_clean(unseen_study):
    """As the priors are trained, a share of the study's training pairs is left clean (input = target),
    so that the adapted prior learns that a plausible shape stays; the draws are otherwise those of
    the recipe without clean pairs."""
    m = unseen_study[0][1].mask > 0
    assert StudyConfig.for_recipe("denoise").clean_share == pytest.approx(0.15)
    assert all(np.array_equal(redistort(m, 1.0, 0, e, 0, p_clean=0.999), m) for e in range(4))
    draws = [redistort(m, 1.0, 0, e, 0, p_clean=0.15) for e in range(40)]
    clean = sum(np.array_equal(d, m) for d in draws)
    assert 1 <= clean <= 15, clean  # about 6 of 40 left clean
    # a corrupted draw is the same corruption as without clean pairs (one random number decides)
    assert all(np.array_equal(d, redistort(m, 1.0, 0, e, 0)) for e, d in enumerate(draws) if not np.array_equal(d, m))


def _ellipsoid(shape, centre, radii) -> np.ndarray:
    kk, jj, ii = np.ogrid[tuple(slice(0, n) for n in shape)]
    return ((kk - centre[0]) / radii[0]) ** 2 + ((jj - centre[1]) / radii[1]) ** 2 + ((ii - centre[2]) / radii[2]) ** 2 <= 1


def test_study_takes_the_general_priors_working_scale():
    """A study warm-started from the general prior sees each structure at the prior's scale (its card:
    the structure spans 40 voxels of the cube), as refine_mask does: a 150 mm organ is not put on a
    1 mm cube. A fixed-scale prior (adrenal, 1 mm) keeps the study's 1 mm spacing."""
    grid = identity_grid((40, 64, 64), 3.0)
    organ = _ellipsoid(grid.shape, (20, 32, 32), (9, 25, 18)).astype(np.uint8)  # 57 x 153 x 111 mm
    cases = [StudyCase("organ", organ, grid)]
    res = run_study(cases, "anatomy", StudyConfig.for_recipe("fast", epochs=1))
    assert res.config.extent_voxels == 40.0
    assert case_spacing(res.config, cases[0]) == pytest.approx(153.0 / 40.0, rel=0.02)
    assert dice(res.masks[0], organ) >= 0.9, "the organ survives a study at the prior's scale"
    gland = StudyCase("gland", _ellipsoid((12, 16, 16), (6, 8, 8), (2, 5, 3)).astype(np.uint8),
                      identity_grid((12, 16, 16), 3.0))
    small = run_study([gland], "adrenal", StudyConfig.for_recipe("fast", epochs=1))
    assert small.config.extent_voxels is None and case_spacing(small.config, gland) == 1.0


def test_a_studys_do_no_harm_settings_reach_every_cases_refinement(unseen_study, tmp_path):
    """StudyConfig.refine_options are the do-no-harm settings of every case's final refinement (what
    --keep-threshold, --changes... give refine and batch); each case reports its refinement's facts
    (StudyResult.case_info, the summary's confidence and action). Options the study sets itself, bad
    values, or options for a recipe that does not refine are refused before anything trains."""
    import csv

    from NeARSlicerLib.errors import InputError

    cases = unseen_study[0][:2]
    cfg = StudyConfig.for_recipe("denoise", epochs=1, extent_voxels=30, margin_mm=4.0,
                                 refine_options={"keep_threshold": 1.0, "change_policy": "all"})
    res = run_study(cases, "anatomy", cfg, out_dir=str(tmp_path / "out"))
    assert len(res.case_info) == 2
    rows = list(csv.DictReader(open(tmp_path / "out" / "summary.csv")))
    for info, row, c, m in zip(res.case_info, rows, cases, res.masks):
        assert info["keep_threshold"] == 1.0 and info["change_policy"] == "all"
        assert info["prior_name"] == "study (anatomy_v1)"
        # confidence below 1: the annotation is kept (the default, 0, would refine it)
        assert info["confidence"] < 1.0 and info["action"].startswith("kept"), info
        assert row["action"] == info["action"] and float(row["confidence"]) == round(info["confidence"], 4)
        assert dice(m, c.mask) >= 0.99
    for bad, match in (({"prior": "adrenal"}, "refine_options take keep_threshold"),
                       ({"keep_threshold": 2.0}, "keep_threshold must be in"),
                       ({"change_policy": "some"}, "change policy must be one of")):
        with pytest.raises(InputError, match=match):
            run_study(cases, "anatomy", StudyConfig.for_recipe("denoise", refine_options=bad))
    with pytest.raises(InputError, match="apply to the denoise recipe only"):
        run_study(cases, "anatomy", StudyConfig.for_recipe("fast", refine_options={"keep_threshold": 0.5}))
