"""NeARSlicerLogic.refineSegment end to end, headless, on the real Slicer libraries (slicer-core).

The real CT example is loaded as a scalar volume and its multilabel map as a segmentation node;
the left adrenal (label 9) is distorted into a new segment, which is refined with the shipped
prior (preset "fast"). One refinement is shared by the tests of this module.
"""

import numpy as np
import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    CT_PATH,
    DISTORT_SEED,
    DISTORTION_3MM,
    LEFT_ADRENAL_LABEL,
    SEG_PATH,
    add_segment,
    create_headless_slicer,
    mrml_scene,
    require_engine,
    require_totalseg_data,
    scene_state,
    segment_arrays,
    slicer_app,
)

DISTORTED_NAME = "adrenal_gland_left distorted"


@pytest.fixture(scope="module")
def refined(slicer_app):
    require_totalseg_data()
    require_engine()
    import slicer

    import NeARSlicerLogic as L
    from NeARSlicerLib.distort import DistortionParams, distort

    slicer_app.clear()
    volume = L.loadVolumeFile(str(CT_PATH), name="ct")
    segmentation, labels = L.loadLabelmapAsSegmentation(str(SEG_PATH), volume, name="seg")
    truth = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, labels[LEFT_ADRENAL_LABEL], volume) > 0
    distorted = distort(truth, seed=DISTORT_SEED, params=DistortionParams(**DISTORTION_3MM)).astype(np.uint8)
    distorted_id = add_segment(segmentation, DISTORTED_NAME, distorted, volume)

    before = segment_arrays(segmentation, volume)
    volume_before = np.array(slicer.util.arrayFromVolume(volume), copy=True)
    nodes_before = scene_state(slicer_app.scene)[0]
    progress = []
    logic = L.NeARSlicerLogic()
    new_id = logic.refineSegment(volume, segmentation, distorted_id, preset="fast", seed=0,
                                 progress=lambda f, m: progress.append((f, m)))
    data = dict(logic=logic, volume=volume, segmentation=segmentation, labels=labels, truth=truth,
                distorted=distorted, distorted_id=distorted_id, new_id=new_id, before=before,
                volume_before=volume_before, nodes_before=nodes_before, progress=progress)
    yield data
    slicer_app.clear()


def test_new_segment_name_color_and_place(refined):
    segmentation = refined["segmentation"].GetSegmentation()
    segment = segmentation.GetSegment(refined["new_id"])
    assert segment is not None, "the result is in the same segmentation node"
    assert segment.GetName() == DISTORTED_NAME + " (NeAR)"
    r, g, b = segment.GetColor()
    assert b > 0.8 and r < 0.3 and g < 0.6, f"refined segment should be blue, got {(r, g, b)}"
    display = refined["segmentation"].GetDisplayNode()
    override = display.GetSegmentOverrideColor(refined["distorted_id"])
    assert override.GetX() > 0.8 and override.GetY() < 0.3 and override.GetZ() < 0.3, "original shown red"
    assert display.GetSegmentVisibility(refined["new_id"])
    # exactly one segment was added; no helper node was left behind
    assert segmentation.GetNumberOfSegments() == len(refined["before"]) + 1
    assert scene_state(refined["segmentation"].GetScene())[0] == refined["nodes_before"]


def test_new_segment_geometry(refined):
    import slicer

    from NeARSlicerLib.metrics import dice

    volume, segmentation_node = refined["volume"], refined["segmentation"]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation_node, refined["new_id"], volume) > 0
    assert mask.shape == slicer.util.arrayFromVolume(volume).shape == (30, 101, 122)
    assert 0.3 * refined["truth"].sum() < mask.sum() < 3.0 * refined["truth"].sum()
    # on the right place: overlaps the annotation it refines, centred within a voxel or two of it
    assert dice(mask, refined["distorted"]) > 0.4
    centre_refined = np.array(segmentation_node.GetSegmentCenterRAS(refined["new_id"]))
    centre_original = np.array(segmentation_node.GetSegmentCenterRAS(refined["distorted_id"]))
    assert np.linalg.norm(centre_refined - centre_original) < 9.0  # mm (3 mm voxels)
    stats = refined["logic"].refinementStats(segmentation_node, refined["new_id"])
    assert stats["voxelsAfter"] == int(mask.sum())
    assert stats["voxelsBefore"] == int(refined["distorted"].sum())
    assert stats["dice"] == pytest.approx(dice(mask, refined["distorted"]), abs=1e-6)


def test_original_segment_volume_and_others_untouched(refined):
    import slicer

    after = segment_arrays(refined["segmentation"], refined["volume"])
    for segment_id, array in refined["before"].items():
        assert np.array_equal(after[segment_id], array), f"segment {segment_id} changed"
    assert np.array_equal(slicer.util.arrayFromVolume(refined["volume"]), refined["volume_before"])
    original = refined["segmentation"].GetSegmentation().GetSegment(refined["distorted_id"])
    assert original.GetName() == DISTORTED_NAME


def test_refinement_moves_toward_the_true_label(refined):
    import slicer

    from NeARSlicerLib.metrics import dice

    mask = slicer.util.arrayFromSegmentBinaryLabelmap(refined["segmentation"], refined["new_id"], refined["volume"]) > 0
    d_refined, d_distorted = dice(mask, refined["truth"]), dice(refined["distorted"], refined["truth"])
    assert d_refined > d_distorted, f"Dice(refined, true) {d_refined:.3f} <= Dice(distorted, true) {d_distorted:.3f}"


def test_progress_reported(refined):
    fractions = [f for f, _ in refined["progress"]]
    assert fractions and fractions[-1] == pytest.approx(1.0)
    assert all(0.0 <= f <= 1.0 for f in fractions)


def test_status_line(refined):
    import NeARSlicerLogic as L

    text = L.formatStats(refined["logic"].refinementStats(refined["segmentation"], refined["new_id"]))
    assert "Dice(original, refined)" in text and "mL" in text and "%" in text


def test_accept_refinement(refined):
    """Runs last in this module: it renames segments of the shared scene."""
    segmentation_node, logic = refined["segmentation"], refined["logic"]
    segmentation = segmentation_node.GetSegmentation()
    original_index = segmentation.GetSegmentIndex(refined["distorted_id"])
    original_color = segmentation.GetSegment(refined["distorted_id"]).GetColor()
    count = segmentation.GetNumberOfSegments()

    assert logic.acceptRefinement(segmentation_node, refined["new_id"]) == refined["new_id"]
    accepted = segmentation.GetSegment(refined["new_id"])
    original = segmentation.GetSegment(refined["distorted_id"])
    assert accepted.GetName() == DISTORTED_NAME
    assert original.GetName() == DISTORTED_NAME + " (original)"
    assert accepted.GetColor() == pytest.approx(original_color)
    assert segmentation.GetSegmentIndex(refined["new_id"]) == original_index
    assert segmentation.GetNumberOfSegments() == count, "nothing is deleted"
    display = segmentation_node.GetDisplayNode()
    assert not display.GetSegmentVisibility(refined["distorted_id"])
    assert display.GetSegmentVisibility(refined["new_id"])
    # the kept original still holds its voxels
    after = segment_arrays(segmentation_node, refined["volume"])
    assert np.array_equal(after[refined["distorted_id"]], refined["before"][refined["distorted_id"]])
    # accepting twice, or accepting a segment that is not a NeAR result, is refused
    from NeARSlicerLib.errors import InputError

    with pytest.raises(InputError, match="already accepted"):
        logic.acceptRefinement(segmentation_node, refined["new_id"])
    with pytest.raises(InputError, match="not a NeAR refinement"):
        logic.acceptRefinement(segmentation_node, refined["labels"][8])


def test_a_segmentation_stored_as_surfaces_is_refined_and_keeps_its_kind(slicer_app):
    """A segment whose segmentation stores closed surfaces (a model imported into Segmentations, a
    .seg.vtm) has no labelmap until converted. Before, it was refused as "empty: paint it before
    refining"; now a copy is converted for the engine (the node untouched), and the result is added as
    a surface, following the engine's voxels exactly."""
    require_totalseg_data()
    require_engine()
    import slicer
    import vtk
    from vtk.util.numpy_support import vtk_to_numpy

    import NeARSlicerLogic as L

    slicer_app.clear()
    volume = L.loadVolumeFile(str(CT_PATH), name="ct")
    labels_node, labels = L.loadLabelmapAsSegmentation(str(SEG_PATH), volume, name="seg")
    labels_node.CreateClosedSurfaceRepresentation()
    gland = vtk.vtkPolyData()
    gland.DeepCopy(labels_node.GetSegmentation().GetSegment(labels[LEFT_ADRENAL_LABEL]).GetRepresentation(
        "Closed surface"))
    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "surfaces")
    node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
    segmentation = node.GetSegmentation()
    segmentation.SetSourceRepresentationName("Closed surface")
    source_id = node.AddSegmentFromClosedSurfaceRepresentation(gland, "left adrenal gland", [1, 0, 0])
    points_before = vtk_to_numpy(
        segmentation.GetSegment(source_id).GetRepresentation("Closed surface").GetPoints().GetData()).copy()

    logic = L.NeARSlicerLogic()
    job = logic.prepareRefinement(volume, node, source_id, preset="fast", seed=0)
    assert 100 < int(job.mask.sum()) < 250, "the gland (about 180 voxels of 3 mm) read from its surface"
    assert not segmentation.ContainsRepresentation("Binary labelmap"), "the node itself was not converted"
    logic.computeRefinement(job)
    new_id = logic.applyRefinement(job)
    assert segmentation.GetSourceRepresentationName() == "Closed surface"
    assert segmentation.GetSegment(new_id).GetName() == "left adrenal gland (NeAR)"
    _, original, refined, _ = logic.segmentArrays(node, source_id, new_id, volume)
    assert int(refined.sum()) == int(job.result.mask.sum()), "the surface follows the engine's voxels"
    assert int(original.sum()) == int(job.mask.sum())
    assert 2 * (original & refined).sum() / (original.sum() + refined.sum()) > 0.7  # in place
    points_after = vtk_to_numpy(
        segmentation.GetSegment(source_id).GetRepresentation("Closed surface").GetPoints().GetData())
    assert np.array_equal(points_after, points_before), "the original surface is untouched"
    slicer_app.clear()
