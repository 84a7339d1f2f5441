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
