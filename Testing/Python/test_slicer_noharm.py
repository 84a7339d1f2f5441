"""The Slicer side of do-no-harm: the volume's DICOM modality reaches the engine, and the result's
confidence, action and modality are kept with the result and said plainly beside Accept."""

import numpy as np
import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    LEFT_ADRENAL_LABEL,
    ct_case,
    logic,
    mrml_scene,
    require_engine,
    slicer_app,
)


def test_dicom_modality_reaches_the_engine_options(ct_case):
    from NeARSlicerLogic import compute
    import NeARSlicerLogic as L

    volume, segmentation, labels = ct_case
    job = L.NeARSlicerLogic().prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    assert compute.volumeModality(volume) is None and "modality" not in compute.engineOptions(job)
    volume.SetAttribute("DICOM.Modality", "MR")
    assert compute.engineOptions(job)["modality"] == "MR"
    assert "modality" not in job.options, "the job's own options are not modified"


@pytest.mark.parametrize("switch, option, flag", [("fitMargin", "fit_margin", "--no-margin-fit"),
                                                  ("trimToImage", "trim_to_image", "--no-image-trim"),
                                                  ("imageOpensGate", "image_opens_gate", "--no-image-gate")])
def test_the_image_fits_can_be_turned_off_from_slicer(ct_case, switch, option, flag):
    """refineSegment(fitMargin=False) is the CLI's --no-margin-fit and refineSegment(trimToImage=False)
    its --no-image-trim, in-process and in the engine batch; the default leaves the engine's own (on,
    with a CT)."""
    import NeARSlicerLogic as L
    from NeARSlicerLogic.batch_engine import command

    volume, segmentation, labels = ct_case
    logic = L.NeARSlicerLogic()
    segment = labels[LEFT_ADRENAL_LABEL]
    assert option not in logic.prepareRefinement(volume, segmentation, segment, preset="fast").options
    job = logic.prepareRefinement(volume, segmentation, segment, preset="fast", **{switch: False})
    assert job.options[option] is False
    args = command("python", ["--cases", "in"], "out", workers=1, options={switch: False})
    assert flag in args and flag not in command("python", ["--cases", "in"], "out")


def test_change_policy_reaches_the_engine_and_is_checked(ct_case):
    """refineSegment(changes=...) becomes the engine's change policy; an unknown one is refused
    before anything runs, and the default leaves the engine's own (do no harm: gated)."""
    import NeARSlicerLogic as L
    from NeARSlicerLib.errors import InputError

    volume, segmentation, labels = ct_case
    logic = L.NeARSlicerLogic()
    segment = labels[LEFT_ADRENAL_LABEL]
    assert "change_policy" not in logic.prepareRefinement(volume, segmentation, segment, preset="fast").options
    job = logic.prepareRefinement(volume, segmentation, segment, preset="fast", changes="thick")
    assert job.options["change_policy"] == "thick"
    before = segmentation.GetSegmentation().GetNumberOfSegments()
    with pytest.raises(InputError, match="changes must be one of all, thick, gated, got 'some'"):
        logic.refineSegment(volume, segmentation, segment, preset="fast", changes="some")
    assert segmentation.GetSegmentation().GetNumberOfSegments() == before


def test_result_facts_are_kept_and_said_beside_accept(ct_case):
    """A clean real label (nothing to correct) refined by the engine in-process: the stats hold
    the engine's confidence, action and modality, and the result text says it was kept."""
    require_engine()
    import NeARSlicerLogic as L
    from NeARSlicerLib.refine import RefineOptions, refine_mask
    from NeARSlicerLogic.job import formatOutcome

    volume, segmentation, labels = ct_case
    logic = L.NeARSlicerLogic()
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="default")
    result = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options))
    logic.setJobResult(job, result, result.seconds)
    stats = job.stats
    assert stats["action"] == result.info["action"] and stats["confidence"] == result.info["confidence"]
    assert stats["modality"] == "CT" and stats["prior"] == result.info["prior_name"]
    assert stats["slicesInterpolated"] is result.info["slices_interpolated"] is False  # not painted on slices
    # a CT was read: the confidence is the image's support of the prior's change, and the text says so;
    # where the prior proposed no change at all there is nothing for the image to support (the views' estimate)
    source = "views" if result.info["image_support"] is None else "image"
    assert stats["confidenceFrom"] == result.info["confidence_from"] == source, result.info
    assert source == "views" or result.info["confidence"] == result.info["image_support"]
    text = formatOutcome(stats)
    assert f"confidence {result.info['confidence']:.2f}{' from the image' if source == 'image' else ','}" in text
    if result.info["action"].startswith("kept"):
        assert text.startswith("Kept the original") and np.array_equal(result.mask, job.mask)
    elif result.info["action"] == "refined: margin fitted to the image only":
        assert text.startswith("NeAR's changes were not applied, but its boundary was moved")
    elif result.info["action"].startswith("refined:"):
        assert text.startswith("Corrected thick errors only")
    else:
        assert text.startswith("Refined")
    new_id = logic.applyRefinement(job)
    assert logic.refinementStats(segmentation, new_id)["action"] == result.info["action"]


@pytest.mark.parametrize("stats, start", [
    ({"action": "refined", "confidence": 0.9, "appearance": True, "modality": "CT", "prior": "adrenal-sa"},
     "Refined (confidence 0.90, shape and image, image read as CT, prior adrenal-sa). Review, then Accept."),
    ({"action": "refined", "confidence": 0.3}, "Refined with LOW confidence (confidence 0.30"),
    ({"action": "refined", "confidence": 0.85, "confidenceFrom": "image", "appearance": True},
     "Refined (confidence 0.85 from the image, shape and image). Review, then Accept."),
    ({"action": "refined", "confidence": 0.2, "confidenceFrom": "image"},
     "Refined with LOW confidence (confidence 0.20 from the image"),
    ({"action": "kept: already plausible", "confidence": 0.2}, "Kept the original (already plausible, confidence 0.20)"),
    ({"action": "refined", "confidence": 0.8, "outOfDomain": True}, "Refined (confidence 0.80"),
    ({"action": "refined: thick errors only, boundary kept", "confidence": 0.1},
     "Corrected thick errors only (blobs, holes, slabs, leaks, cut parts); the original boundary was kept"),
    ({"action": "refined"}, "Refined (no confidence measured: the 'fast' preset has no mirrored views"),
    ({"action": "refined", "confidence": 0.7, "paintedSlicesMm": 4.0}, "Refined (confidence 0.70"),
    ({"action": "kept: already plausible", "confidence": 0.7, "paintedSlicesMm": 4.0}, "Kept the original"),
    ({"action": "refined", "confidence": 0.7, "paintedSlicesMm": 4.0, "slicesInterpolated": True},
     "Refined (confidence 0.70"),
    ({"action": "refined", "confidence": 0.9, "imageRestored": 56, "imageWithdrawn": 0}, "Refined (confidence 0.90"),
    ({"action": "kept: the image contradicts the prior's changes", "confidence": 0.6, "imageRestored": 12,
      "imageWithdrawn": 3}, "Kept the original (the image contradicts the prior's changes, confidence 0.60)"),
    ({"action": "refined: margin fitted to the image only", "confidence": 0.4, "confidenceFrom": "image",
      "imageMarginMm": -1.0}, "NeAR's changes were not applied, but its boundary was moved 1.0 mm inwards to the "
                              "image's edge (painted too thick all round) (confidence 0.40 from the image"),
    ({"action": "refined", "confidence": 0.9, "imageMarginMm": 1.5}, "Refined (confidence 0.90"),
    ({"action": "refined: margin fitted to the image only", "confidence": 0.3, "imageMarginMm": 0.0,
      "imageMarginSides": [["left", -1.0], ["inferior", 1.0]]},
     "NeAR's changes were not applied, but its boundary was moved to the image's edge on 2 of its 6 sides (left "
     "1.0 mm inwards, inferior 1.0 mm outwards: painted too thick or too thin on those sides) (confidence 0.30"),
    ({"action": "refined: trimmed to the image only", "confidence": 0.2, "imageTrimmed": 120, "imageTrimmedPieces": 1},
     "NeAR's changes were not applied, but 120 voxels in 1 piece that the image shows as the structure's "
     "surroundings were removed (confidence 0.20"),
    ({"action": "refined", "confidence": 0.9, "imageTrimmed": 300, "imageTrimmedPieces": 2}, "Refined (confidence 0.90"),
    ({"action": "refined: specks cleaned only", "confidence": 0.1, "specksRemoved": 3, "specksFilled": 2},
     "NeAR's changes were not applied; only specks were cleaned (3 voxels of isolated specks removed, 2 voxels "
     "of small enclosed holes filled) (confidence 0.10"),
    ({"action": "refined", "confidence": 0.9, "specksRemoved": 0, "specksFilled": 4}, "Refined (confidence 0.90"),
    ({"action": "refined", "confidence": 0.86, "confidenceFrom": "image", "gateOpenedByImage": True},
     "Refined (confidence 0.86 from the image"),
    ({"action": "kept: already plausible", "confidence": 0.19, "confidenceFrom": "image", "gateClosedByImage": True},
     "Kept"),
    ({"action": "refined: trimmed to the image only", "confidence": 0.2, "imageTrimmed": 120, "imageTrimmedPieces": 1,
      "specksRemoved": 1, "specksFilled": 0},
     "NeAR's changes were not applied, but 120 voxels in 1 piece that the image shows as the structure's"),
])
def test_outcome_texts(slicer_app, stats, start):
    from NeARSlicerLogic.job import formatOutcome

    text = formatOutcome(stats)
    assert text.startswith(start)
    assert ("outside the prior's training domain" in text) == bool(stats.get("outOfDomain"))
    # a staircase is named only where the refined surface was applied because of it
    assert ("painted on 4.0 mm slices" in text) == (stats.get("paintedSlicesMm") is not None
                                                    and stats["action"] == "refined")
    assert ("slices were interpolated" in text) == bool(stats.get("slicesInterpolated"))
    # what the image check undid is said, with its counts
    undone = stats.get("imageRestored") or stats.get("imageWithdrawn")
    assert ("Checked against the image" in text) == bool(undone)
    # a margin moved to the image's edge is said once, with its size and direction
    margin = stats.get("imageMarginMm")
    assert text.count("to the image's edge") == (1 if margin or stats.get("imageMarginSides") else 0)
    if margin and stats["action"] == "refined":
        assert "Before NeAR, its boundary was moved 1.5 mm outwards to the image's edge (painted too thin" in text
    if undone:
        assert f"{stats['imageRestored']} voxels the prior removed were put back and {stats['imageWithdrawn']}" in text
    # cleaned specks are said once, with their counts
    specks = stats.get("specksRemoved") or stats.get("specksFilled")
    assert text.count("of isolated specks removed") == (1 if specks else 0)
    # what the image trimmed is said once, with its counts
    assert text.count("as the structure's surroundings were removed") == (1 if stats.get("imageTrimmed") else 0)
    # a thin change applied because the CT supports it is said, with the share the image supports
    assert ("but the CT supports 86% of it: the refined surface replaces the original everywhere." in text) == bool(
        stats.get("gateOpenedByImage"))
    # a large change held back because the CT supports little of it is said, with the share it supports
    assert ("NeAR proposed a large change, but the CT supports only 19% of it: it was not applied whole." in text
            ) == bool(stats.get("gateClosedByImage"))
    if stats.get("imageTrimmed") and stats["action"] == "refined":
        assert text.endswith("Last, 300 voxels in 2 pieces that the image shows as the structure's surroundings "
                             "were removed.")


def test_the_engines_trim_reaches_the_outcome_line(ct_case):
    """attachResult takes the engine's ``image_trim`` and ``specks`` into the job's statistics, and the
    line beside Accept says them; a trim or a cleaning that changed nothing is not said."""
    from types import SimpleNamespace

    import NeARSlicerLogic as L
    from NeARSlicerLogic.job import attachResult, formatOutcome

    volume, segmentation, labels = ct_case
    job = L.NeARSlicerLogic().prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    for removed, pieces in ((40, 2), (0, 0)):
        info = {"action": "refined: trimmed to the image only" if removed else "kept: already plausible",
                "confidence": 0.3, "image_trim": {"removed": removed, "pieces": pieces, "judged": True},
                "specks": {"removed": pieces, "filled": 0}}
        attachResult(job, SimpleNamespace(mask=job.mask, warnings=[], info=info), 1.0)
        assert job.stats.get("imageTrimmed") == (removed or None)
        assert job.stats.get("specksRemoved") == (pieces or None)
        assert ("40 voxels in 2 pieces that the image shows" in formatOutcome(job.stats)) == bool(removed)


def _lesion_deep_in_soft_tissue(slicer):
    """A CT (2 mm, air around a 320 mm body of soft tissue) with a 40 mm lesion at its centre: the
    72 mm box that Slicer crops around the lesion holds soft tissue only, no air or fat to tell CT by."""
    from slicer_fixture import add_segment
    from soft_tissue_lesion import lesion_in_soft_tissue

    lesion, ct = lesion_in_soft_tissue((90, 180, 180), air_voxels=10)  # [k, j, i]
    volume = slicer.util.addVolumeFromArray(ct, np.diag([2.0, 2.0, 2.0, 1.0]), name="abdomen")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "lesions")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    return volume, segmentation, add_segment(segmentation, "lesion", lesion, volume)


def test_the_whole_volume_tells_the_modality_not_the_crop(logic, mrml_scene):
    """Slicer hands the engine a box around the segment. Deep in an organ that box holds no air or fat,
    and read alone it does not look like CT; the CLI reads the whole file. The job carries the whole
    volume's facts, so the engine reads the crop as CT, as the CLI does (margin fit included), both
    in-process and in the engine process."""
    require_engine()
    import slicer

    from NeARSlicerLib import modality
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    volume, segmentation, segment = _lesion_deep_in_soft_tissue(slicer)
    job = logic.prepareRefinement(volume, segmentation, segment, preset="fast")
    assert job.image.shape != slicer.util.arrayFromVolume(volume).shape, "the job holds a crop"
    assert modality.detect(job.image).modality != modality.CT, "the premise: the crop alone is misread"
    assert job.scan.detected.modality == modality.CT
    assert job.scan.outside == pytest.approx(float(slicer.util.arrayFromVolume(volume).min()))
    alone = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options))
    assert alone.info["modality"] != "CT", "without the whole volume's facts the engine misreads the crop"
    in_process = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options), scan=job.scan)
    assert in_process.info["modality"] == "CT" and in_process.info["image_margin_mm"] is not None

    new_id = logic.refineSegment(volume, segmentation, segment, preset="fast")  # the engine process
    stats = logic.refinementStats(segmentation, new_id)
    assert stats["modality"] == "CT", stats
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, new_id, volume) > 0
    whole = np.zeros(refined.shape, bool)
    whole[tuple(slice(a, a + n) for a, n in zip(job.cropOffset, job.mask.shape))] = in_process.mask > 0
    assert np.array_equal(refined, whole), "the engine process gives the in-process result"


def test_nan_far_from_the_segment_leaves_the_whole_scans_facts_finite(logic, mrml_scene):
    """NaN voxels beyond the crop (a reconstruction's padding) do not reach the crop, which is refined;
    the whole volume's facts are read on its finite voxels, so the engine gets a real darkest value."""
    import slicer

    volume, segmentation, segment = _lesion_deep_in_soft_tissue(slicer)
    voxels = slicer.util.arrayFromVolume(volume)
    voxels[:, :, :3] = np.nan  # far outside the lesion's 72 mm box
    slicer.util.arrayFromVolumeModified(volume)
    job = logic.prepareRefinement(volume, segmentation, segment, preset="fast")
    assert np.isfinite(job.image).all()
    finite = voxels[np.isfinite(voxels)]
    assert job.scan.outside == pytest.approx(float(finite.min())) and job.scan.detected.modality == "CT"
