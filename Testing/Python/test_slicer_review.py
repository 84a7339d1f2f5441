"""Review tools on the MRML scene: the compare display/layout, the report PNG, optional outputs,
geometry conversions. The engine result is a stand-in here (a dilated segment), so these run
without a prior."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    logic,
    CT_PATH,
    LEFT_ADRENAL_LABEL,
    ct_case,
    fake_computed_job,
    fake_result,
    mrml_scene,
    scene_state,
    segment_arrays,
    segment_name_of,
    slicer_app,
)


@pytest.fixture
def applied(logic, ct_case):
    """A refinement (stand-in result: the segment dilated by one voxel) applied to the CT case."""
    import slicer

    volume, segmentation, labels = ct_case
    segment_id = labels[LEFT_ADRENAL_LABEL]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume) > 0
    job = fake_computed_job(logic, volume, segmentation, segment_id, ndi.binary_dilation(mask),
                            changeSegments=True, probabilityVolume=True)
    new_id = logic.applyRefinement(job)
    return dict(volume=volume, segmentation=segmentation, labels=labels, segment_id=segment_id, new_id=new_id,
                mask=mask, job=job)


def test_fixture_exposes_slicer_like_the_application(slicer_app):
    import slicer

    assert slicer.mrmlScene is slicer_app.scene
    assert slicer.modules.segmentations.logic() is slicer_app.segmentations_logic
    assert slicer.modules.volumes.logic() is slicer_app.volumes_logic
    assert slicer.app.mrmlScene() is slicer.mrmlScene
    assert slicer.app.applicationLogic() is slicer_app.app_logic


def test_volume_array_and_grid_match_simpleitk(logic, ct_case):
    """arrayFromVolume is [k, j, i] like SimpleITK, and the RAS->LPS grid equals ITK's geometry
    (for the box around the segment that the engine is given)."""
    import SimpleITK as sitk
    import slicer

    from NeARSlicerLib.geometry import Grid

    volume, segmentation, labels = ct_case
    image = sitk.ReadImage(str(CT_PATH))
    assert np.array_equal(slicer.util.arrayFromVolume(volume), sitk.GetArrayFromImage(image))
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    lo = np.array(job.cropOffset)
    hi = lo + np.array(job.mask.shape)
    assert job.fullShape == (30, 101, 122)
    assert job.grid.same_as(Grid.from_sitk(image).sub_grid(lo, hi), tol=1e-3)
    crop = tuple(slice(a, b) for a, b in zip(lo, hi))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(CT_PATH).replace("ct.nii.gz", "seg.nii.gz")))
    truth = seg == LEFT_ADRENAL_LABEL
    assert np.array_equal(job.mask > 0, truth[crop]) and job.mask.sum() == truth.sum(), "crop holds the whole segment"
    assert job.image.dtype == np.float32 and np.array_equal(job.image, sitk.GetArrayFromImage(image)[crop])
    # the crop keeps the engine's context (margin + field of view, 72 mm) where the volume has it
    spacing_kji = np.array(job.grid.spacing)[::-1]
    nonzero = np.nonzero(truth)
    for axis in range(3):
        assert lo[axis] == 0 or (nonzero[axis].min() - lo[axis]) * spacing_kji[axis] >= 72.0
        assert hi[axis] == truth.shape[axis] or (hi[axis] - 1 - nonzero[axis].max()) * spacing_kji[axis] >= 72.0


def test_identity_result_lands_exactly_on_the_original(logic, ct_case):
    """Whatever the crop, a result equal to the input is written back voxel for voxel."""
    import slicer

    volume, segmentation, labels = ct_case
    segment_id = labels[LEFT_ADRENAL_LABEL]
    job = logic.prepareRefinement(volume, segmentation, segment_id)
    job.result = fake_result(job.mask, job.mask)
    job.stats = {"segmentName": job.segmentName}
    new_id = logic.applyRefinement(job)
    original = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, new_id, volume)
    assert refined.shape == original.shape == job.fullShape
    assert np.array_equal(refined > 0, original > 0)


def test_geometry_from_the_segmentation_when_no_volume(logic, ct_case):
    volume, segmentation, labels = ct_case
    with_volume = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL])
    without = logic.prepareRefinement(None, segmentation, labels[LEFT_ADRENAL_LABEL])
    assert without.image is None and without.options["appearance"] is True
    assert without.grid.same_as(with_volume.grid)
    assert np.array_equal(without.mask, with_volume.mask)
    assert without.geometrySource == "segmentation" and with_volume.geometrySource == "volume"
    assert np.allclose(without.ijkToLocal, with_volume.ijkToLocal)


def test_apply_adds_optional_review_outputs(applied):
    import slicer

    segmentation = applied["segmentation"].GetSegmentation()
    names = {segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())}
    left = segment_name_of(LEFT_ADRENAL_LABEL)
    assert {f"{left} (NeAR)", f"{left} (NeAR added)", f"{left} (NeAR removed)"} <= names
    added_id = segmentation.GetSegmentIdBySegmentName(f"{left} (NeAR added)")
    added = slicer.util.arrayFromSegmentBinaryLabelmap(applied["segmentation"], added_id, applied["volume"]) > 0
    assert np.array_equal(added, ndi.binary_dilation(applied["mask"]) & ~applied["mask"])
    display = applied["segmentation"].GetDisplayNode()
    assert not display.GetSegmentVisibility(added_id), "change segments start hidden"
    probability = slicer.mrmlScene.GetFirstNodeByName(f"{left} (NeAR probability)")
    assert probability is not None and probability.IsA("vtkMRMLScalarVolumeNode")
    job = applied["job"]
    assert slicer.util.arrayFromVolume(probability).shape == job.mask.shape  # the box the engine saw
    import vtk

    matrix, ct_matrix = vtk.vtkMatrix4x4(), vtk.vtkMatrix4x4()
    probability.GetIJKToRASMatrix(matrix)
    applied["volume"].GetIJKToRASMatrix(ct_matrix)
    k, j, i = job.cropOffset
    corner = slicer.util.arrayFromVTKMatrix(ct_matrix) @ np.array([i, j, k, 1.0])
    assert np.allclose(slicer.util.arrayFromVTKMatrix(matrix)[:, 3], corner), "probability lies on the CT grid"
    # the NeAR outputs are not offered as inputs of a further refinement
    from NeARSlicerLogic import NeARSlicerLogic

    inputs = NeARSlicerLogic().refinableSegmentIds(applied["segmentation"])
    assert applied["segment_id"] in inputs and applied["new_id"] not in inputs and added_id not in inputs


def test_second_refinement_gets_a_unique_name(logic, applied):
    job = fake_computed_job(logic, applied["volume"], applied["segmentation"], applied["segment_id"], applied["mask"])
    second = logic.applyRefinement(job)
    assert applied["segmentation"].GetSegmentation().GetSegment(second).GetName() == f"{segment_name_of(LEFT_ADRENAL_LABEL)} (NeAR 2)"


def test_remove_refinement_restores_the_scene(logic, ct_case, mrml_scene):
    import slicer

    volume, segmentation, labels = ct_case
    before = scene_state(mrml_scene)
    segment_id = labels[LEFT_ADRENAL_LABEL]
    mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, volume)
    new_id = logic.applyRefinement(fake_computed_job(logic, volume, segmentation, segment_id, mask,
                                                     changeSegments=True))
    logic.removeRefinement(segmentation, new_id)
    assert scene_state(mrml_scene) == before


def test_show_comparison(logic, applied, mrml_scene):
    """Outline-only slices (original red, refined blue), both surfaces in 3D, the side-by-side
    layout, slice views linked and showing the CT. Display only: no voxel changes."""
    import slicer

    import NeARSlicerLogic as L

    layout = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLayoutNode")
    for name in ("Red", "Green"):
        slice_node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceNode")
        slice_node.SetLayoutName(name)
        composite = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSliceCompositeNode")
        composite.SetLayoutName(name)
    arrays = segment_arrays(applied["segmentation"], applied["volume"])

    center = logic.showComparison(applied["volume"], applied["segmentation"], applied["segment_id"], applied["new_id"])

    display = applied["segmentation"].GetDisplayNode()
    assert display.GetVisibility2DOutline() and not display.GetVisibility2DFill()
    red = display.GetSegmentOverrideColor(applied["segment_id"])
    blue = display.GetSegmentOverrideColor(applied["new_id"])
    assert (red.GetX(), red.GetY(), red.GetZ()) == pytest.approx(L.ORIGINAL_REVIEW_COLOR)
    assert (blue.GetX(), blue.GetY(), blue.GetZ()) == pytest.approx(L.REFINED_COLOR)
    segmentation = applied["segmentation"].GetSegmentation()
    visible = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
               if display.GetSegmentVisibility(segmentation.GetNthSegmentID(i))]
    assert sorted(visible) == sorted([applied["segment_id"], applied["new_id"]])
    assert display.GetVisibility3D()
    assert applied["segmentation"].GetSegmentation().ContainsRepresentation("Closed surface")
    assert layout.GetViewArrangement() == L.COMPARE_LAYOUT_ID
    assert "vtkMRMLViewNode" in layout.GetLayoutDescription(L.COMPARE_LAYOUT_ID)
    for i in range(slicer.mrmlScene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
        composite = slicer.mrmlScene.GetNthNodeByClass(i, "vtkMRMLSliceCompositeNode")
        assert composite.GetLinkedControl()
        assert composite.GetBackgroundVolumeID() == applied["volume"].GetID()
    assert np.allclose(center, applied["segmentation"].GetSegmentCenterRAS(applied["new_id"]))
    after = segment_arrays(applied["segmentation"], applied["volume"])
    assert all(np.array_equal(after[k], v) for k, v in arrays.items())


def test_save_report_png(logic, applied, tmp_path):
    pytest.importorskip("matplotlib")
    pytest.importorskip("skimage")
    path = logic.saveReport(tmp_path / "report.png", applied["segmentation"], applied["new_id"], applied["volume"])
    data = open(path, "rb").read()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.png"], "no temporary file left behind"


def test_report_into_a_missing_folder_writes_nothing(logic, applied, tmp_path):
    from NeARSlicerLib.errors import InputError

    with pytest.raises(InputError, match="does not exist"):
        logic.saveReport(tmp_path / "missing" / "report.png", applied["segmentation"], applied["new_id"],
                         applied["volume"], surfaces=False)
    assert list(tmp_path.iterdir()) == []


def test_reported_numbers_match_the_segments(logic, applied):
    """The stored statistics (shown in the status line and the report) agree with the segments in the
    scene, recomputed here: voxel counts, mL from the voxel size, Dice(original, refined)."""
    from NeARSlicerLib.metrics import dice

    stats = logic.refinementStats(applied["segmentation"], applied["new_id"])
    _, original, refined, spacing = logic.segmentArrays(applied["segmentation"], applied["segment_id"],
                                                        applied["new_id"], applied["volume"])
    voxel_ml = float(np.prod(spacing)) / 1000.0
    assert stats["voxelsBefore"] == int(original.sum()) and stats["voxelsAfter"] == int(refined.sum())
    assert stats["volumeBeforeMl"] == pytest.approx(original.sum() * voxel_ml)
    assert stats["volumeAfterMl"] == pytest.approx(refined.sum() * voxel_ml)
    assert stats["dice"] == pytest.approx(dice(original, refined), abs=1e-9)
    assert stats["voxelsAfter"] > stats["voxelsBefore"], "the stand-in result is the segment dilated"


def test_empty_engine_result_adds_an_empty_segment(logic, ct_case, mrml_scene):
    """The engine may find no plausible shape: the result is an empty (but valid) segment."""
    import slicer

    volume, segmentation, labels = ct_case
    segment_id = labels[LEFT_ADRENAL_LABEL]
    job = logic.prepareRefinement(volume, segmentation, segment_id)
    job.result = fake_result(job.mask, np.zeros_like(job.mask))
    job.stats = {"segmentName": job.segmentName}
    new_id = logic.applyRefinement(job)
    assert not (slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, new_id, volume) > 0).any()
    logic.removeRefinement(segmentation, new_id)
    assert segmentation.GetSegmentation().GetSegment(new_id) is None
