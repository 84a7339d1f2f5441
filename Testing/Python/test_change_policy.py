"""Which of the prior's changes reach the output (confidence.apply_changes): thick corrections are
applied, a thin reshaping of a correct boundary is not (do no harm on near-correct masks)."""
import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib.confidence import apply_changes, thick_changes
from NeARSlicerLib.metrics import dice


def ball(shape, centre, radius):
    kk, jj, ii = np.indices(shape)
    return (kk - centre[0]) ** 2 + (jj - centre[1]) ** 2 + (ii - centre[2]) ** 2 <= radius ** 2


@pytest.fixture()
def case():
    """truth: a ball; annotation: the truth plus a blob painted over its edge; refined: what a
    prior with its own small boundary error gives (the truth shrunk by one voxel, the blob gone)."""
    shape = (56, 56, 56)
    truth = ball(shape, (28, 28, 28), 16)
    blob = ball(shape, (28, 28, 46), 6)
    annotation = truth | blob
    refined = ndimage.binary_erosion(truth)
    return truth, annotation, refined, blob & ~truth


def test_thick_policy_keeps_the_boundary_and_applies_the_blob_removal(case):
    truth, annotation, refined, blob = case
    out = apply_changes(annotation, refined, (1.0, 1.0, 1.0), "thick")
    assert out[blob].mean() < 0.15  # the painted-over blob is removed (but for its thin rim)
    far = ndimage.distance_transform_edt(~blob) > 4
    assert np.array_equal(out[far], annotation[far])  # elsewhere the annotation's boundary is kept exactly
    assert dice(out, truth) > max(dice(annotation, truth), dice(refined, truth)) + 0.01


def test_all_is_the_refined_mask_and_gated_follows_thick_errors(case):
    truth, annotation, refined, blob = case
    assert np.array_equal(apply_changes(annotation, refined, (1.0, 1.0, 1.0), "all"), refined)
    # the blob is far more than 2 % of the annotation: the gate opens around it. The blob goes with its
    # thin rim (which the thick policy leaves); the prior's thin shell far from it is not applied
    gated = apply_changes(annotation, refined, (1.0, 1.0, 1.0), "gated")
    thick = apply_changes(annotation, refined, (1.0, 1.0, 1.0), "thick")
    assert not gated[blob].any() and thick[blob].any()
    far = ndimage.distance_transform_edt(~blob) > 4
    assert np.array_equal(gated[far], annotation[far])
    assert dice(gated, truth) > max(dice(refined, truth), dice(annotation, truth)) + 0.01
    # the gate of before (every change once the thick ones pass 2 %) is near_mm=None
    assert np.array_equal(apply_changes(annotation, refined, (1.0, 1.0, 1.0), "gated", near_mm=None), refined)
    # a correct annotation (no blob): only the prior's thin shell differs (a small change), so nothing is applied
    assert 1.0 - dice(truth, refined) < 0.15
    assert np.array_equal(apply_changes(truth, refined, (1.0, 1.0, 1.0), "gated"), truth)
    assert not thick_changes(truth, refined, (1.0, 1.0, 1.0)).any()


def test_gated_applies_a_thin_but_large_correction():
    """A thin structure painted 2 voxels too wide: every change is thin, but it is a large part of
    the structure (1 - Dice > 0.15), so the annotation is rough and the whole correction applies."""
    shape = (40, 40, 40)
    truth = np.zeros(shape, bool)
    truth[8:32, 8:32, 18:22] = True  # a 4-voxel plate
    over = ndimage.binary_dilation(truth, iterations=2)
    assert not thick_changes(over, truth, (1.0, 1.0, 1.0)).any()
    assert np.array_equal(apply_changes(over, truth, (1.0, 1.0, 1.0), "thick"), over)
    assert np.array_equal(apply_changes(over, truth, (1.0, 1.0, 1.0), "gated"), truth)


def test_thickness_is_in_millimetres_with_at_least_one_voxel():
    shape = (40, 40, 40)
    a = ball(shape, (20, 20, 20), 12)
    slab = np.zeros(shape, bool)
    slab[:, :, 20:23] = True  # 3 voxels thick: holds a one-voxel ball, not a 2-voxel one
    b = a & ~slab
    assert thick_changes(a, b, (3.0, 3.0, 3.0)).any()  # 3 mm voxels: radius one voxel
    assert thick_changes(a, b, (1.0, 1.0, 1.0)).any()
    assert not thick_changes(a, b, (0.5, 0.5, 0.5)).any()  # 0.5 mm voxels: 1 mm = 2 voxels, the slab is thinner


def test_unknown_policy_is_refused(case):
    truth, annotation, refined, _ = case
    with pytest.raises(ValueError, match="change policy"):
        apply_changes(annotation, refined, (1.0, 1.0, 1.0), "some")


def test_refine_and_batch_command_lines_carry_the_policy():
    """--changes and --keep-threshold reach RefineOptions from `refine` and `batch` alike; absent,
    RefineOptions' default (gated) stands."""
    from NeARSlicerLib.cli import _option_fields, build_parser
    from NeARSlicerLib.refine import RefineOptions

    parser = build_parser()
    batch = parser.parse_args(["batch", "--cases", "in", "--out", "out", "--changes", "thick", "--keep-threshold", "0.5"])
    assert RefineOptions(**_option_fields(batch)).change_policy == "thick"
    assert _option_fields(batch)["keep_threshold"] == 0.5
    refine = parser.parse_args(["refine", "--mask", "m.nii.gz", "--out", "o.nii.gz"])
    assert "change_policy" not in _option_fields(refine) and RefineOptions().change_policy == "gated"
    with pytest.raises(SystemExit):
        parser.parse_args(["refine", "--mask", "m.nii.gz", "--out", "o.nii.gz", "--changes", "some"])


# ------------------------------------------------------------------ painted on thick slices
def paint_on_slices(mask, every, axis=0, phase=1):
    """``mask`` as painted on slices ``every`` voxels thick along ``axis`` and brought back to its grid:
    each slab repeats its middle slice (a staircase)."""
    m = np.moveaxis(mask, axis, 0)
    out = m.copy()
    for k0 in range(phase, m.shape[0], every):
        out[k0:k0 + every] = m[min(k0 + every // 2, m.shape[0] - 1)]
    return np.moveaxis(out, 0, axis)


def test_painted_slices_are_found_with_their_thickness_in_mm():
    from NeARSlicerLib.confidence import painted_slices

    truth = ball((56, 56, 56), (28, 28, 28), 14.3)
    spacing = (0.7, 0.8, 1.25)  # (i, j, k) mm
    for every, axis in ((3, 0), (4, 0), (5, 2)):
        found = painted_slices(paint_on_slices(truth, every, axis), spacing)
        assert found is not None and found.axis == axis
        assert found.thickness_mm == pytest.approx(every * spacing[2 - axis], rel=0.15)
    # a shape on its own grid, a 2-slice staircase (a near-correct annotation), a prism (one run of
    # identical slices) and a structure of few slices are not thick-slice paintings
    box = np.zeros((56, 56, 56), bool)
    box[10:40, 20:30, 15:35] = True
    thin = np.zeros((56, 56, 56), bool)
    thin[27:31] = ball((4, 56, 56), (2, 28, 28), 10)
    for m in (truth, paint_on_slices(truth, 2), box, thin):
        assert painted_slices(m, spacing) is None


def test_painted_slices_find_the_error_librarys_thick_slice_family():
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.confidence import painted_slices
    from NeARSlicerLib.phantom import adrenal_phantom

    for seed in range(4):
        clean = adrenal_phantom(seed=seed)
        found = painted_slices(corrupt(clean, (1.0, 1.0, 1.0), "thick_slice", seed), (1.0, 1.0, 1.0))
        assert found is not None and found.axis == 0 and 2.5 <= found.thickness_mm <= 6.0
        assert painted_slices(clean, (1.0, 1.0, 1.0)) is None


def test_gated_applies_the_whole_refinement_to_a_thick_slice_painting():
    from NeARSlicerLib.confidence import GATE_CHANGE, GATE_FRACTION

    truth = ball((56, 56, 56), (28, 28, 28), 14.3)
    annotation = paint_on_slices(truth, 4)
    # its staircase is a thin change of a few percent: neither the thick-change nor the change gate opens
    assert thick_changes(annotation, truth, (1.0, 1.0, 1.0)).sum() <= GATE_FRACTION * annotation.sum()
    assert 1.0 - dice(annotation, truth) <= GATE_CHANGE
    assert np.array_equal(apply_changes(annotation, truth, (1.0, 1.0, 1.0), "gated"), truth)
    assert np.array_equal(apply_changes(annotation, truth, (1.0, 1.0, 1.0), "thick"), annotation)


def test_refine_reports_a_thick_slice_painting_and_repairs_its_staircase():
    """End to end: a phantom gland painted on 4 mm slices is reported as such, and the default applies
    the prior's whole surface (the `thick` policy, which sees only thin changes here, keeps it)."""
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.phantom import adrenal_phantom
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    clean = adrenal_phantom(seed=1)
    annotation = paint_on_slices(clean, 4).astype(np.uint8)
    gated = refine_mask(annotation, grid, options=RefineOptions(preset="fast", prior="adrenal"))
    assert gated.info["painted_slices_mm"] == pytest.approx(4.0, abs=0.5)
    assert gated.info["action"] == "refined" and gated.info["change_policy"] == "gated"
    assert dice(gated.mask, clean) > dice(annotation, clean) + 0.02
    thick = refine_mask(annotation, grid, options=RefineOptions(preset="fast", prior="adrenal", change_policy="thick"))
    assert np.array_equal(thick.mask > 0, annotation > 0)
    assert refine_mask(clean.astype(np.uint8), grid,
                       options=RefineOptions(preset="fast", prior="adrenal")).info["painted_slices_mm"] is None


def test_default_output_of_an_every_change_refinement_is_refines_default():
    """``confidence.default_output`` (what the benchmarks score as the default from one every-change
    refinement) gives exactly what ``refine`` returns with the defaults: for a rough gland (changes
    applied) and for a rod outside the prior's domain (kept)."""
    from NeARSlicerLib.confidence import default_output
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.phantom import adrenal_phantom
    from NeARSlicerLib.refine import RefineOptions, card_meta, refine_mask

    grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    rod = np.zeros((64, 64, 64), np.uint8)
    rod[30:34, 30:34, 2:62] = 1
    for annotation in (paint_on_slices(adrenal_phantom(seed=2), 4).astype(np.uint8), rod):
        every = refine_mask(annotation, grid,
                            options=RefineOptions(preset="fast", prior="adrenal", change_policy="all"))
        default = refine_mask(annotation, grid, options=RefineOptions(preset="fast", prior="adrenal"))
        domain = card_meta(every.info["prior"], {}).get("domain")
        assert np.array_equal(default_output(annotation, every.mask > 0, grid.spacing, domain), default.mask > 0)
    assert default.info["action"] == "kept: outside the prior's domain"


def test_a_leak_goes_without_the_priors_reshaping_of_a_correct_boundary(shared_data):
    """ALAN val shapes 7 and 8 (no prior trained on them) with the error library's leaks (the bench's
    seeds): the leaks are thick enough to open the gate. Before 2026-12-06 the open gate applied the
    prior's whole mask, whose thin reshaping of the correct boundary elsewhere cost more than the leak
    (94.1 -> 91.9 and 88.8 -> 81.2 DSC); the changes near the leak alone beat the input."""
    from NeARSlicerLib.bench import BENCH_SEED, corrupt_case, identity_grid
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"]
    for i in (7, 8):
        truth = val[i].astype(bool)
        leaky = corrupt_case(truth, (1.0, 1.0, 1.0), "leak", BENCH_SEED + i)
        res = refine_mask(leaky, identity_grid(truth.shape), options=RefineOptions(structure="adrenal gland"))
        out = res.mask > 0
        assert dice(out, truth) > dice(leaky, truth) + 0.02, (i, dice(out, truth), dice(leaky, truth))
        assert not (out & ~leaky).sum() > 0.01 * truth.sum()  # nothing much painted elsewhere
