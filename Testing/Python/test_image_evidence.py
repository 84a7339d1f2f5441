"""Do no harm with the image (image_evidence): a shape-only prior's change that the image contradicts
is undone, one that the image supports stays, and the real CT's pancreas case that the general prior
made worse (bench --all-structures, label 7, seed 1) is no longer made worse."""
import json
import warnings

import numpy as np
import pytest
import SimpleITK as sitk

from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.bench import BENCH_SEED
from NeARSlicerLib.image_evidence import support, undo_contradicted
from NeARSlicerLib.io import read_image
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.refine import RefineOptions, refine_mask

SPACING = (1.5, 1.5, 3.0)  # (i, j, k) mm: the check works in mm on anisotropic grids
SHAPE = (24, 56, 56)


def _ball(centre_mm, radius_mm) -> np.ndarray:
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, SPACING[::-1])], indexing="ij")
    return (k - centre_mm[0]) ** 2 + (j - centre_mm[1]) ** 2 + (i - centre_mm[2]) ** 2 <= radius_mm ** 2


@pytest.fixture(scope="module")
def scene():
    """An organ (60 HU) in fat (-100 HU) with a neighbour of bone-like intensity (400 HU), noise 15 HU."""
    organ = _ball((36, 42, 42), 22)
    neighbour = _ball((36, 42, 80), 12) & ~organ
    rng = np.random.default_rng(5)
    image = np.where(organ, 60.0, np.where(neighbour, 400.0, -100.0)) + rng.normal(0, 15, SHAPE)
    return organ, neighbour, image.astype(np.float32)


def test_a_removed_piece_that_looks_like_the_organ_is_put_back(scene):
    organ, _, image = scene
    cap = organ & (np.arange(SHAPE[2])[None, None, :] * SPACING[0] > 54)  # the prior cut off a cap of organ
    out, verdict = undo_contradicted(organ, organ & ~cap, image, SPACING)
    assert cap.sum() > 100
    assert np.array_equal(out, organ) and verdict.restored == cap.sum() and verdict.withdrawn == 0


def test_an_added_piece_that_looks_like_the_surroundings_is_taken_out(scene):
    organ, neighbour, image = scene
    blob = _ball((36, 15, 42), 8) & ~organ  # the prior grew into fat
    grown_into_bone = neighbour & _ball((36, 42, 64), 8)  # and into the bright neighbour
    out, verdict = undo_contradicted(organ, organ | blob | grown_into_bone, image, SPACING)
    assert np.array_equal(out, organ) and verdict.withdrawn == (blob | grown_into_bone).sum()


def test_changes_that_the_image_supports_stay(scene):
    organ, neighbour, image = scene
    # the annotation leaked into fat and the bright neighbour and missed a cap: the prior repairs all three
    leak = (_ball((36, 15, 42), 8) | (neighbour & _ball((36, 42, 64), 8))) & ~organ
    cap = organ & (np.arange(SHAPE[2])[None, None, :] * SPACING[0] > 54)
    annotation = (organ | leak) & ~cap
    out, verdict = undo_contradicted(annotation, organ, image, SPACING)
    assert np.array_equal(out, organ) and verdict.restored == verdict.withdrawn == 0 and verdict.judged


def test_support_is_the_share_of_the_change_the_image_agrees_with(scene):
    """The confidence with an image: a repair the image agrees with has support 1, a change into fat
    and bone 0, a mix its agreed share by voxels; no change or too small a reference: None."""
    organ, neighbour, image = scene
    leak = (_ball((36, 15, 42), 8) | (neighbour & _ball((36, 42, 64), 8))) & ~organ
    cap = organ & (np.arange(SHAPE[2])[None, None, :] * SPACING[0] > 54)
    annotation = (organ | leak) & ~cap
    assert support(annotation, organ, image, SPACING) == pytest.approx(1.0, abs=0.02)  # the repair
    assert support(organ, annotation, image, SPACING) == pytest.approx(0.0, abs=0.02)  # the damage
    blob = _ball((36, 15, 42), 8) & ~organ
    cut = organ & ~_ball((36, 42, 42), 19)  # a shell of organ as large as the blob
    # the prior removes a leak into fat (agreed) and a shell of organ (contradicted)
    both = support(organ | blob, organ & ~cut, image, SPACING)
    assert both == pytest.approx(blob.sum() / (cut.sum() + blob.sum()), abs=0.02)
    assert 0.05 < both < 0.95
    assert support(organ, organ, image, SPACING) is None
    speck = _ball((36, 42, 42), 2)
    assert support(speck, np.zeros_like(speck), image, SPACING) is None


def test_too_small_a_reference_gives_no_verdict(scene):
    _, _, image = scene
    speck = _ball((36, 42, 42), 2)
    out, verdict = undo_contradicted(speck, np.zeros_like(speck), image, SPACING)
    assert not verdict.judged and not out.any()  # the change stands as proposed


def test_the_real_ct_pancreas_that_the_general_prior_made_worse_is_not_made_worse(shared_data, monkeypatch):
    """bench --all-structures' one structure made worse by > 1 DSC (label 7, seed 1: 51.3 -> 39.4 DSC,
    the shape-only general prior shrank an under-painted two-part mask); with the image check it is
    within 2 DSC of its input, and ``--changes all`` (no check) still shows the harm. Since 2026-12-07 the
    CT's low support keeps the gate closed on it (``test_change_gate_support.py``); the check is tested
    here with the gate opened by the change's size, as before."""
    import NeARSlicerLib.confidence as confidence

    folder = shared_data / "totalseg_example"
    image, grid = read_image(str(folder / "ct.nii.gz"))
    truth = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "seg.nii.gz"))) == 7
    annotation = corrupt(truth, grid.spacing, "mixture", BENCH_SEED + 100 * 7 + 1, image=image)
    monkeypatch.setattr(confidence, "CHANGE_SUPPORT", 0.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        checked = refine_mask(annotation, grid, image, RefineOptions(preset="default", structure="pancreas"))
        unchecked = refine_mask(annotation, grid, image, RefineOptions(preset="default", structure="pancreas",
                                                                         change_policy="all"))
    before = dice(annotation, truth)
    assert checked.info["prior_name"] == "anatomy-s" and checked.info["image_check"]["restored"] > 0
    assert dice(checked.mask, truth) >= before - 0.02, (before, dice(checked.mask, truth))
    assert unchecked.info["image_check"] is None and dice(unchecked.mask, truth) < before - 0.05


def test_a_large_box_judges_from_a_sub_sampled_reference_with_the_same_verdict(scene, monkeypatch):
    import NeARSlicerLib.image_evidence as evidence

    organ, neighbour, image = scene
    cap = organ & (np.arange(SHAPE[2])[None, None, :] * SPACING[0] > 54)
    blob = _ball((36, 15, 42), 8) & ~organ
    full, full_verdict = undo_contradicted(organ, (organ & ~cap) | blob, image, SPACING)
    monkeypatch.setattr(evidence, "MAX_VOXELS", 5_000)  # every 3rd or 4th voxel of the box
    sampled, sampled_verdict = undo_contradicted(organ, (organ & ~cap) | blob, image, SPACING)
    assert np.array_equal(sampled, full) and sampled_verdict == full_verdict
    assert np.array_equal(full, organ)


def test_a_thin_repair_that_the_ct_supports_opens_the_gate(shared_data, tmp_path, capsys):
    """ALAN val 1 of ``bench --appearance --errors mixture`` (a leak, then oversmoothing that thinned the
    gland): the prior's repair is thin, so on its shape alone the do-no-harm gate applies only its thick
    part (81 DSC). Its phantom CT supports 90 % of the change (``confidence.OPEN_SUPPORT`` 0.8): the
    gate opens and the whole repair is applied (85 DSC). Turned off (``image_opens_gate=False``, the
    CLI's ``--no-image-gate``), the thin repair is left out again; the CLI says which it was."""
    import NeARSlicerLib.confidence as confidence
    from NeARSlicerLib.bench import identity_grid
    from NeARSlicerLib.cli import main
    from NeARSlicerLib.io import write_image, write_mask
    from NeARSlicerLib.phantom import ct_phantom

    truth = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"][1].astype(bool)
    image = ct_phantom(truth, seed=BENCH_SEED + 1)
    painted = corrupt(truth, (1.0, 1.0, 1.0), "mixture", BENCH_SEED + 1, image=image)
    g = identity_grid(truth.shape)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        opened = refine_mask(painted.astype(np.uint8), g, image, RefineOptions(structure="adrenal gland"))
        closed = refine_mask(painted.astype(np.uint8), g, image, RefineOptions(structure="adrenal gland",
                                                                                 image_opens_gate=False))
    assert opened.info["image_support"] >= confidence.OPEN_SUPPORT and opened.info["gate_opened_by_image"]
    assert opened.info["action"] == confidence.REFINED
    assert not closed.info["gate_opened_by_image"] and closed.info["action"] == confidence.REFINED_ERRORS_ONLY
    assert dice(opened.mask, truth) > dice(closed.mask, truth) + 0.02
    assert dice(opened.mask, truth) > dice(painted, truth) + 0.03
    write_image(str(tmp_path / "ct.nii.gz"), image, g)
    write_mask(str(tmp_path / "left_adrenal_gland.nii.gz"), painted, g)
    args = ["refine", "--mask", str(tmp_path / "left_adrenal_gland.nii.gz"), "--image", str(tmp_path / "ct.nii.gz")]
    said = "the change is thin, but the CT supports it: applied everywhere"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert main(args + ["--out", str(tmp_path / "on.nii.gz")]) == 0
        assert said in capsys.readouterr().out
        assert main(args + ["--out", str(tmp_path / "off.nii.gz"), "--no-image-gate", "--json"]) == 0
        facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["gate_opened_by_image"] is False and facts["action"] == confidence.REFINED_ERRORS_ONLY
