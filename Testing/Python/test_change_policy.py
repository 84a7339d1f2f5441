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
    # the blob is far more than 2 % of the annotation: a rough annotation gets every change
    assert np.array_equal(apply_changes(annotation, refined, (1.0, 1.0, 1.0), "gated"), refined)
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
