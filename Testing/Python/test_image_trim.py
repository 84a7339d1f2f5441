"""The image's trim (image_trim): a piece of a segment painted into fat is removed; a correct segment,
a piece deep inside it and a piece in tissue of the structure's own density are not; refine trims its
output last, with a CT only, says so, and can be told not to."""
import json
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
from scipy import ndimage

from NeARSlicerLib.cli import main
from NeARSlicerLib.confidence import REFINED_TRIM
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.image_trim import describe, trim
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask

SHAPE = (48, 64, 64)


def _organ(spacing=(1.0, 1.0, 1.0), centre=(24, 32, 28), radii=(10, 12, 14)) -> np.ndarray:
    """An ellipsoid ``[k, j, i]``; ``centre`` and ``radii`` in mm, ``spacing`` (i, j, k) mm."""
    k, j, i = np.meshgrid(*[np.arange(n) * s for n, s in zip(SHAPE, spacing[::-1])], indexing="ij")
    return sum(((x - c) / r) ** 2 for x, c, r in zip((k, j, i), centre, radii)) <= 1


def _ct(tissue: np.ndarray, seed: int, spacing=(1.0, 1.0, 1.0), hu=40.0) -> np.ndarray:
    """Soft tissue (``hu``) in fat (-100 HU), partial-volume blur, 12 HU noise."""
    rng = np.random.default_rng(seed)
    image = ndimage.gaussian_filter(np.where(tissue, hu, -100.0), sigma=0.7 / np.asarray(spacing[::-1]))
    return (image + rng.normal(0, 12, tissue.shape)).astype(np.float32)


def _slab(organ: np.ndarray) -> np.ndarray:
    """A 6 x 10 x 8-voxel slab painted onto the organ's +i end, out into the fat."""
    slab = np.zeros_like(organ)
    last = int(np.argwhere(organ)[:, 2].max())
    slab[19:29, 27:37, last - 1:last + 7] = True
    return slab & ~organ


def test_a_slab_painted_into_fat_is_removed_and_nothing_of_the_organ():
    for seed in range(3):
        organ = _organ()
        image = _ct(organ, seed)
        painted = organ | _slab(organ)
        out, found = trim(painted, image, (1.0, 1.0, 1.0))
        assert found.judged and found.pieces >= 1 and found.removed == int((painted & ~out).sum())
        assert not (organ & ~out).any()  # only the slab's voxels go
        assert (_slab(organ) & ~out).sum() >= 0.7 * _slab(organ).sum(), found
        assert dice(out, organ) > dice(painted, organ) + 0.03


def test_a_correct_segment_is_not_trimmed():
    organ = _organ()
    for seed in range(3):
        out, found = trim(organ, _ct(organ, seed), (1.0, 1.0, 1.0))
        assert found.judged and found.removed == 0 and np.array_equal(out, organ)
    for seed, vary in ((1, False), (2, True)):  # adrenal-like glands in phantom CTs, beside an organ
        gland = adrenal_phantom(seed)
        out, found = trim(gland, ct_phantom(gland, seed=seed, vary=vary), (1.0, 1.0, 1.0))
        assert found.removed == 0 and np.array_equal(out, gland)


def test_a_piece_deep_inside_or_of_the_organs_own_density_stays():
    organ = _organ()
    # a cyst of fat density deep inside: whether it belongs to the segment is the annotator's call
    cyst = _organ(centre=(24, 32, 28), radii=(4, 4, 4))
    out, found = trim(organ, _ct(organ & ~cyst, 0), (1.0, 1.0, 1.0))
    assert found.removed == 0 and np.array_equal(out, organ)
    # a slab painted into a neighbour of the organ's own density: the image cannot tell them apart
    slab = _slab(organ)
    neighbour = ndimage.binary_dilation(slab, iterations=3) & ~organ
    out, found = trim(organ | slab, _ct(organ | neighbour, 0), (1.0, 1.0, 1.0))
    assert found.removed == 0


def test_sizes_are_in_mm_on_an_anisotropic_grid():
    """On 0.8 x 0.8 x 2.5 mm voxels a slab of 2-3 slices is thick enough (a ball of 1 mm is at least a
    voxel each way) and is removed; the organ keeps every voxel."""
    spacing = (0.8, 0.8, 2.5)
    organ = _organ(spacing, centre=(60, 26, 24), radii=(30, 12, 14))
    image = _ct(organ, 3, spacing)
    slab = np.zeros_like(organ)
    last = int(np.argwhere(organ)[:, 2].max())
    slab[22:27, 26:40, last - 1:last + 9] = True
    slab &= ~organ
    out, found = trim(organ | slab, image, spacing)
    assert not (organ & ~out).any() and (slab & ~out).sum() >= 0.7 * slab.sum(), found


def _run(mask, image, **options):
    grid = Grid(shape=mask.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return refine_mask(mask.astype(np.uint8), grid, image, RefineOptions(**options))


def test_refine_trims_last_says_so_and_can_be_told_not_to():
    """NeAR keeps this segment (``fast``, the general prior: the image contradicts its change); the trim
    still removes the slab painted into fat, and the action says the result is no longer the input.
    Without the trim, with every change of the prior, or without an image read as CT, nothing is trimmed."""
    sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "benchmarks"))
    from no_harm import mr_phantom

    organs = _organ()
    image = _ct(organs, 5)
    painted = organs | _slab(_organ())
    before = painted.copy()
    # this small synthetic box has no air or bone to be recognised as CT by: declared, as DICOM says
    res = _run(painted, image, prior="anatomy", preset="fast", modality="CT")
    off = _run(painted, image, prior="anatomy", preset="fast", modality="CT", trim_to_image=False)
    assert np.array_equal(painted, before)
    assert off.info["action"].startswith("kept") and np.array_equal(off.mask > 0, painted)
    assert off.info["image_trim"] is None
    expected, found = trim(painted, image, (1.0, 1.0, 1.0))
    assert found.removed > 0 and res.info["action"] == REFINED_TRIM
    assert np.array_equal(res.mask > 0, expected) and res.info["image_trim"] == found.as_dict()
    assert np.array_equal(res.removed, painted & ~expected) and not res.added.any()
    assert np.array_equal(res.probability >= 0.5, expected)
    assert any(describe(found.removed, found.pieces) in w for w in res.warnings)
    # like the image check, the trim is part of the do-no-harm default: ``--changes all`` is the prior's mask
    assert _run(painted, image, prior="anatomy", preset="fast", modality="CT", change_policy="all").info[
        "image_trim"] is None
    for mr in (_run(painted, image, prior="anatomy", preset="fast", modality="MR"),
               _run(painted, mr_phantom(painted, 5), prior="anatomy", preset="fast")):  # declared; guessed
        assert mr.info["modality"] == "MR" and mr.info["image_trim"] is None
        assert not any("were removed" in w for w in mr.warnings)


def test_the_cli_reports_the_trim_and_can_turn_it_off(tmp_path, capsys):
    organs = _organ()
    painted = (organs | _slab(_organ())).astype(np.uint8)
    for name, array in (("mask", painted), ("ct", _ct(organs, 6))):
        sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / f"{name}.nii.gz"))
    facts = {}
    for flag in ([], ["--no-image-trim"]):
        out = tmp_path / f"out{len(flag)}.nii.gz"
        capsys.readouterr()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            assert main(["refine", "--mask", str(tmp_path / "mask.nii.gz"), "--image", str(tmp_path / "ct.nii.gz"),
                         "--out", str(out), "--prior", "anatomy", "--preset", "fast", "--modality", "CT", "--json", *flag]) == 0
        facts[len(flag)] = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
        facts[len(flag)]["dice"] = dice(sitk.GetArrayFromImage(sitk.ReadImage(str(out))) > 0, organs)
    assert facts[0]["image_trim"]["removed"] > 0 and facts[1]["image_trim"] is None
    assert facts[0]["dice"] > facts[1]["dice"] + 0.03


def test_a_box_too_large_is_not_judged(monkeypatch):
    import NeARSlicerLib.image_trim as image_trim

    organ = _organ()
    painted = organ | _slab(organ)
    monkeypatch.setattr(image_trim, "MAX_BOX_VOXELS", 10_000)
    out, found = trim(painted, _ct(organ, 0), (1.0, 1.0, 1.0))
    assert not found.judged and found.removed == 0 and np.array_equal(out, painted)


@pytest.mark.parametrize("removed, pieces, text", [
    (120, 1, "120 voxels in 1 piece that the image shows as the structure's surroundings were removed"),
    (300, 2, "300 voxels in 2 pieces that the image shows as the structure's surroundings were removed")])
def test_the_words(removed, pieces, text):
    assert describe(removed, pieces) == text
