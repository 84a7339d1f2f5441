"""The Slicer side of the prior choice, headless on the real MRML (slicer-core): the segment's name
and terminology reach the engine as ``structure``; the panel's choice maps to an engine prior."""

import numpy as np
import pytest

from slicer_fixture import add_segment, mrml_scene, slicer_app  # noqa: F401  (pytest fixtures)

ADRENAL_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                       "Structure~SCT^23451007^Adrenal gland~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")


@pytest.fixture
def scene_with_segments(mrml_scene):
    import slicer

    from NeARSlicerLib.phantom import adrenal_phantom

    gland = adrenal_phantom(seed=2, shape=(48, 64, 64)).astype(np.uint8)
    volume = slicer.util.addVolumeFromArray(np.zeros(gland.shape, np.float32), np.eye(4), name="ct")
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    seg.CreateDefaultDisplayNodes()
    seg.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    named = add_segment(seg, "spleen", gland, volume)
    coded = add_segment(seg, "Segment_1", gland, volume)
    seg.GetSegmentation().GetSegment(coded).SetTag("TerminologyEntry", ADRENAL_TERMINOLOGY)
    return volume, seg, named, coded


def test_segment_name_and_terminology_reach_the_engine(scene_with_segments, logic):
    from NeARSlicerLib.prior import is_adrenal_structure
    from NeARSlicerLogic.priorchoice import segmentStructure

    volume, seg, named, coded = scene_with_segments
    assert segmentStructure(seg, named).split(" | ")[0] == "spleen"
    coded_text = segmentStructure(seg, coded)
    assert coded_text.startswith("Segment_1 | ") and "Adrenal gland" in coded_text
    assert is_adrenal_structure(coded_text) and not is_adrenal_structure(segmentStructure(seg, named))
    job = logic.prepareRefinement(volume, seg, coded, prior="auto", preset="fast")
    assert job.options["structure"] == coded_text and job.options["prior"] == "auto"
    job = logic.prepareRefinement(volume, seg, named, preset="fast")
    assert job.options["structure"].startswith("spleen") and job.options["prior"] is None


@pytest.fixture
def logic(slicer_app):
    import NeARSlicerLogic as L

    return L.NeARSlicerLogic()


def test_panel_choices_map_to_engine_priors(tmp_path):
    from NeARSlicerLib.errors import InputError
    from NeARSlicerLib.prior import prior_names
    from NeARSlicerLogic.priorchoice import PRIOR_CHOICES, priorFromChoice

    mapped = [priorFromChoice(c, str(tmp_path / "p.safetensors")) for c in PRIOR_CHOICES]
    assert mapped == ["auto", "adrenal", "anatomy", str(tmp_path / "p.safetensors")]
    assert set(mapped[:3]) <= set(prior_names())  # every name the panel sends, the engine knows
    with pytest.raises(InputError, match="needs a prior file"):
        priorFromChoice("file", ".")
    with pytest.raises(InputError, match="unknown prior choice"):
        priorFromChoice("liver")


def test_the_prior_used_is_said_plainly():
    from NeARSlicerLogic.priorchoice import describePrior

    assert describePrior({"prior_name": "adrenal-sa"}) == "Prior: adrenal (shape + image)"
    assert describePrior({"prior_name": "anatomy-s"}) == "Prior: general anatomy (shape only)"
    assert describePrior({"prior_name": None, "prior": "/data/priors/my_liver.safetensors"}) == \
        "Prior: file my_liver.safetensors"
    assert describePrior({}) == "" and describePrior(None) == ""


def test_a_label_map_read_by_slicer_is_named_by_its_label_table(mrml_scene, logic, tmp_path):
    """TotalSegmentator's multi-label NIfTI loaded as a segmentation: Slicer's reader names its segments
    Segment_<value> and ignores the file's label table; ``auto`` reads the table's name instead, so the
    adrenal gland gets the adrenal prior. A segment the user renamed, or added later as Segment_N with
    another label value, keeps its own name."""
    import slicer

    from label_table_files import caret_xml, write_with_extension
    from NeARSlicerLib.phantom import adrenal_phantom
    from NeARSlicerLib.prior import is_adrenal_structure
    from NeARSlicerLogic.priorchoice import segmentStructure

    labels = np.zeros((48, 64, 64), np.uint8)
    labels[adrenal_phantom(seed=2, shape=labels.shape)] = 8
    labels[2:8, 2:8, 2:8] = 1
    path = tmp_path / "seg.nii.gz"
    write_with_extension(path, labels, caret_xml({1: "spleen", 8: "adrenal_gland_right"}))
    seg = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    storage = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationStorageNode")
    storage.SetFileName(str(path))
    seg.SetAndObserveStorageNodeID(storage.GetID())
    assert storage.ReadData(seg)  # as Slicer's "Segmentation" file reader does
    segmentation = seg.GetSegmentation()
    ids = {segmentation.GetNthSegment(i).GetName(): segmentation.GetNthSegmentID(i)
           for i in range(segmentation.GetNumberOfSegments())}
    assert set(ids) == {"Segment_1", "Segment_8"}  # Slicer's names: nothing says "adrenal"
    gland = segmentStructure(seg, ids["Segment_8"])
    assert gland.split(" | ")[0] == "adrenal_gland_right" and is_adrenal_structure(gland)
    assert segmentStructure(seg, ids["Segment_1"]).split(" | ")[0] == "spleen"
    import SimpleITK as sitk

    from NeARSlicerLogic.io import loadVolumeFile

    sitk.WriteImage(sitk.GetImageFromArray(np.zeros(labels.shape, np.int16)), str(tmp_path / "ct.nii.gz"))
    volume = loadVolumeFile(str(tmp_path / "ct.nii.gz"))  # the CT on the label map's grid
    job = logic.prepareRefinement(volume, seg, ids["Segment_8"], prior="auto", preset="fast")
    assert job.options["structure"] == gland
    # a name of the user's own wins; a segment added later as Segment_9 is no label 9 of the file
    segmentation.GetSegment(ids["Segment_1"]).SetName("my gland")
    assert segmentStructure(seg, ids["Segment_1"]).split(" | ")[0] == "my gland"
    added = add_segment(seg, "Segment_9", labels == 1, volume)
    write_with_extension(path, labels, caret_xml({1: "spleen", 8: "adrenal_gland_right", 9: "adrenal_gland_left"}))
    assert segmentStructure(seg, added).split(" | ")[0] == "Segment_9"
