"""Bad inputs, cancel and failures: a clear message each, and the scene exactly as it was."""

import numpy as np
import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    logic,
    LEFT_ADRENAL_LABEL,
    add_segment,
    ct_case,
    fake_computed_job,
    fake_result,
    mrml_scene,
    require_engine,
    scene_state,
    segment_arrays,
    slicer_app,
)


def _refine_fails(logic, scene, volume, segmentation, segment_id, match, error=None, **options):
    from NeARSlicerLib.errors import InputError

    before = scene_state(scene)
    with pytest.raises(error or InputError, match=match):
        logic.refineSegment(volume, segmentation, segment_id, **options)
    assert scene_state(scene) == before, "a failed refinement changed the scene"


def test_input_error_is_a_value_error():
    from NeARSlicerLib.errors import InputError

    assert issubclass(InputError, ValueError)


def test_unknown_segment_id(logic, ct_case, mrml_scene):
    volume, segmentation, _ = ct_case
    _refine_fails(logic, mrml_scene, volume, segmentation, "NoSuchSegment", "'NoSuchSegment' not found")


def test_no_segmentation(logic, ct_case, mrml_scene):
    volume, _, _ = ct_case
    _refine_fails(logic, mrml_scene, volume, None, "x", "no segmentation")


def test_empty_segment(logic, ct_case, mrml_scene):
    volume, segmentation, _ = ct_case
    empty_id = segmentation.GetSegmentation().AddEmptySegment("", "empty one")
    _refine_fails(logic, mrml_scene, volume, segmentation, empty_id, "'empty one' is empty")


def test_no_volume_and_no_segmentation_geometry(logic, mrml_scene, slicer_app):
    import slicer

    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "free")
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "drawn")
    _refine_fails(logic, mrml_scene, None, segmentation, segment_id, "no geometry of its own")


def test_2d_volume(logic, mrml_scene, slicer_app):
    import slicer

    volume = slicer.util.addVolumeFromArray(np.zeros((1, 40, 40), np.int16), np.diag([1.0, 1.0, 1.0, 1.0]), name="slice")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg2d")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.zeros((1, 40, 40), np.uint8)
    mask[0, 10:20, 10:20] = 1
    segment_id = add_segment(segmentation, "square", mask, volume)
    _refine_fails(logic, mrml_scene, volume, segmentation, segment_id, "is 2D")


def test_a_label_map_given_as_the_volume_is_refused(logic, mrml_scene, slicer_app):
    """The console API takes any volume node; a label map's voxels are labels, which the modality
    check read as an MR image (the widget's selector does not offer label maps)."""
    import slicer

    labels = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLabelMapVolumeNode", "labels")
    mask = np.zeros((20, 30, 30), np.uint8)
    mask[5:15, 10:20, 10:20] = 1
    slicer.util.updateVolumeFromArray(labels, mask.astype(np.int16))
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(labels)
    segment_id = add_segment(segmentation, "box", mask, labels)
    _refine_fails(logic, mrml_scene, labels, segmentation, segment_id, "is a label map, not an image")


def test_a_segmentation_of_planar_contours_is_refused_before_computing(logic, ct_case, mrml_scene):
    """An RT structure set's segmentation stores planar contours, which Slicer cannot make from voxels:
    said first, with the way out, instead of failing once the result is to be added."""
    volume, segmentation, labels = ct_case
    segmentation.GetSegmentation().SetSourceRepresentationName("Planar contour")
    _refine_fails(logic, mrml_scene, volume, segmentation, labels[9], "stores its segments as Planar contour")


def test_nan_volume(logic, mrml_scene, slicer_app):
    import slicer

    image = np.zeros((20, 30, 30), np.float32)
    image[5, 5, 5] = np.nan
    volume = slicer.util.addVolumeFromArray(image, np.diag([2.0, 2.0, 2.0, 1.0]), name="has NaN")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "seg")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    mask = np.zeros(image.shape, np.uint8)
    mask[8:12, 10:20, 10:20] = 1
    segment_id = add_segment(segmentation, "blob", mask, volume)
    _refine_fails(logic, mrml_scene, volume, segmentation, segment_id, "NaN")


def test_volume_and_segmentation_do_not_overlap(logic, ct_case, mrml_scene):
    import slicer

    volume, segmentation, labels = ct_case
    far = np.diag([3.0, 3.0, 3.0, 1.0])
    far[:3, 3] = (5000.0, 5000.0, 5000.0)  # 5 m away from the CT
    other = slicer.util.addVolumeFromArray(np.zeros((20, 20, 20), np.int16), far, name="elsewhere")
    _refine_fails(logic, mrml_scene, other, segmentation, labels[LEFT_ADRENAL_LABEL], "does not overlap")


def test_unknown_preset(logic, ct_case, mrml_scene):
    volume, segmentation, labels = ct_case
    _refine_fails(logic, mrml_scene, volume, segmentation, labels[LEFT_ADRENAL_LABEL], "unknown preset",
                  preset="turbo")


def test_cancel_leaves_scene_unchanged(logic, ct_case, mrml_scene):
    require_engine()
    from NeARSlicerLib.errors import Cancelled

    volume, segmentation, labels = ct_case
    arrays = segment_arrays(segmentation, volume)
    _refine_fails(logic, mrml_scene, volume, segmentation, labels[LEFT_ADRENAL_LABEL], "cancel",
                  error=Cancelled, preset="fast", cancel=lambda: True)
    after = segment_arrays(segmentation, volume)
    assert all(np.array_equal(after[k], v) for k, v in arrays.items())


def test_cancel_with_an_event_set_midway(logic, ct_case, mrml_scene):
    """The GUI's cancel flag is a threading.Event set while the engine runs."""
    require_engine()
    import threading

    from NeARSlicerLib.errors import Cancelled

    volume, segmentation, labels = ct_case
    event = threading.Event()

    def progress(fraction, message):
        if fraction > 0.1:
            event.set()

    _refine_fails(logic, mrml_scene, volume, segmentation, labels[LEFT_ADRENAL_LABEL], "cancel",
                  error=Cancelled, preset="fast", progress=progress, cancel=event)


def test_engine_error_leaves_scene_unchanged(logic, ct_case, mrml_scene, tmp_path):
    require_engine()
    from NeARSlicerLib.errors import PriorError

    volume, segmentation, labels = ct_case
    _refine_fails(logic, mrml_scene, volume, segmentation, labels[LEFT_ADRENAL_LABEL], "not found",
                  error=PriorError, preset="fast", prior=str(tmp_path / "missing.safetensors"))


def test_failure_while_writing_the_result_rolls_back(logic, ct_case, mrml_scene, monkeypatch):
    """All or nothing: the second labelmap write fails -> no half-written segment, no probability
    volume, the original's display restored."""
    import slicer

    volume, segmentation, labels = ct_case
    segment_id = labels[LEFT_ADRENAL_LABEL]
    from scipy import ndimage as ndi

    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume) > 0
    job = fake_computed_job(logic, volume, segmentation, segment_id, ndi.binary_dilation(mask),
                            changeSegments=True, probabilityVolume=True)
    before = scene_state(mrml_scene)
    arrays = segment_arrays(segmentation, volume)
    from NeARSlicerLogic import grids

    real = grids.writeSegment
    calls = []

    def flaky(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(grids, "writeSegment", flaky)
    with pytest.raises(RuntimeError, match="disk full"):
        logic.applyRefinement(job)
    monkeypatch.undo()
    assert len(calls) == 2
    assert scene_state(mrml_scene) == before
    after = segment_arrays(segmentation, volume)
    assert all(np.array_equal(after[k], v) for k, v in arrays.items())


def test_refine_segments_is_all_or_nothing(logic, ct_case, mrml_scene, monkeypatch):
    volume, segmentation, labels = ct_case
    before = scene_state(mrml_scene)
    calls = []
    real_apply = logic.applyRefinement

    def compute(job, progress=None, cancel=None):
        job.result = fake_result(job.mask, job.mask)
        job.stats = {"segmentName": job.segmentName}

    def apply(job, showResult=True):
        calls.append(job.segmentId)
        if len(calls) == 2:
            raise RuntimeError("second segment failed")
        return real_apply(job, showResult)

    monkeypatch.setattr(logic, "computeRefinement", compute)
    monkeypatch.setattr(logic, "applyRefinement", apply)
    with pytest.raises(RuntimeError, match="second segment failed"):
        logic.refineSegments(volume, segmentation, [labels[8], labels[9], labels[1]])
    assert scene_state(mrml_scene) == before


def test_refine_segments_defaults_to_input_segments(logic, ct_case, mrml_scene, monkeypatch):
    volume, segmentation, labels = ct_case

    def compute(job, progress=None, cancel=None):
        job.result = fake_result(job.mask, job.mask)
        job.stats = {"segmentName": job.segmentName}

    monkeypatch.setattr(logic, "computeRefinement", compute)
    done = logic.refineSegments(volume, segmentation, [labels[8], labels[9]])
    assert set(done) == {labels[8], labels[9]}
    inputs = logic.refinableSegmentIds(segmentation)
    assert labels[8] in inputs and not set(done.values()) & set(inputs), "NeAR outputs are not inputs"
