"""Parent transforms and segmentation geometry: the refined segment lands where it belongs.

Placement is checked against references computed by code independent of the module's geometry:
the engine's own result (a mask on the engine's LPS grid) resampled by SimpleITK onto the world
grid, compared with the segment as Slicer itself exports it onto that grid (its segmentation
logic follows parent transforms). Runs on the real example (../shared) or the built-in phantom.
"""

import numpy as np
import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    LEFT_ADRENAL_LABEL,
    ct_case,
    fake_result,
    logic,
    mrml_scene,
    require_engine,
    scene_state,
    slicer_app,
)

# translation (mm) and a rotation of 20 degrees about an oblique axis: no voxel axis stays aligned
ANGLE = np.deg2rad(20.0)


def _rigid(centre, translation=(12.5, -7.25, 4.0), axis=(1.0, 2.0, 3.0)) -> np.ndarray:
    """Rotation by ANGLE about ``axis`` through ``centre`` (RAS mm), then ``translation`` (mm)."""
    axis = np.asarray(axis, float) / np.linalg.norm(axis)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(ANGLE) * k + (1 - np.cos(ANGLE)) * k @ k  # Rodrigues
    matrix = np.eye(4)
    matrix[:3, :3] = rotation
    matrix[:3, 3] = np.asarray(centre, float) - rotation @ np.asarray(centre, float) + np.asarray(translation)
    return matrix


def _centre(segmentation, segment_id):
    return np.array(segmentation.GetSegmentCenterRAS(segment_id))


def _transform(matrix, name="moved"):
    import slicer

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLLinearTransformNode", name)
    node.SetMatrixTransformToParent(slicer.util.vtkMatrixFromArray(matrix))
    return node


def _world_grid_volume(volume, toWorld):
    """A new, untransformed volume node whose grid is ``volume``'s grid placed in world (hardened)."""
    import slicer

    matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
    return slicer.util.addVolumeFromArray(np.zeros(slicer.util.arrayFromVolume(volume).shape, np.float32),
                                          toWorld @ matrix, name="world grid")


def _ijk_to_ras(volume):
    import vtk

    matrix = vtk.vtkMatrix4x4()
    volume.GetIJKToRASMatrix(matrix)
    return matrix


def _slicer_export(segmentation, segment_id, reference):
    """The segment on ``reference``'s grid, as Slicer's segmentation logic exports it."""
    import slicer

    return (slicer.util.arrayFromSegmentBinaryLabelmap(segmentation, segment_id, reference) > 0).astype(np.uint8)


def _sitk_reference(job, reference):
    """The engine's result (``job.result.mask`` on ``job.grid``, LPS) resampled by SimpleITK (nearest
    neighbour) onto ``reference``'s world grid (an untransformed volume node)."""
    import SimpleITK as sitk
    import slicer

    result = sitk.GetImageFromArray(np.ascontiguousarray((np.asarray(job.result.mask) > 0).astype(np.uint8)))
    result.SetSpacing(job.grid.spacing)
    result.SetOrigin(job.grid.origin)
    result.SetDirection(job.grid.direction)
    ras = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(reference))
    lps = np.diag([-1.0, -1.0, 1.0, 1.0]) @ ras
    spacing = np.linalg.norm(lps[:3, :3], axis=0)
    shape = slicer.util.arrayFromVolume(reference).shape
    target = sitk.Image([int(n) for n in shape[::-1]], sitk.sitkUInt8)
    target.SetSpacing([float(s) for s in spacing])
    target.SetOrigin([float(o) for o in lps[:3, 3]])
    target.SetDirection([float(d) for d in (lps[:3, :3] / spacing).ravel()])
    out = sitk.Resample(result, target, sitk.Transform(), sitk.sitkNearestNeighbor, 0, sitk.sitkUInt8)
    return sitk.GetArrayFromImage(out)


def _dice(a, b):
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    return 2.0 * np.count_nonzero(a & b) / max(np.count_nonzero(a) + np.count_nonzero(b), 1)


def _centre_distance_voxels(a, b):
    return float(np.linalg.norm(np.argwhere(a).mean(axis=0) - np.argwhere(b).mean(axis=0)))


def _assert_placed(segmentation, new_id, job, reference):
    placed = _slicer_export(segmentation, new_id, reference)
    expected = _sitk_reference(job, reference)
    assert expected.sum() > 20, "the engine's result is empty"
    assert placed.sum() > 20, "the refined segment is empty"
    dice = _dice(placed, expected)
    shift = _centre_distance_voxels(placed, expected)
    assert dice >= 0.95, f"Dice(refined segment, SimpleITK-placed engine result) = {dice:.3f}"
    assert shift <= 0.5, f"refined segment centre is {shift:.2f} voxels from where the engine put it"


def _identity_refine(logic, volume, segmentation, segment_id, **options):
    """Prepare, take the engine's input mask as its result, apply: the result must equal the original."""
    job = logic.prepareRefinement(volume, segmentation, segment_id, **options)
    logic.setJobResult(job, fake_result(job.mask, job.mask), seconds=0.0)
    return job, logic.applyRefinement(job)


@pytest.mark.parametrize("moved", ["volume", "segmentation", "both"])
def test_identity_result_lands_on_the_original_under_transforms(logic, ct_case, mrml_scene, moved):
    """With a translated + rotated parent transform on the volume, the segmentation or both (different
    ones), a result equal to the input is shown exactly where the original is, and the transforms stay."""
    volume, segmentation, labels = ct_case
    segment_id = labels[LEFT_ADRENAL_LABEL]
    centre = _centre(segmentation, segment_id)
    if moved in ("volume", "both"):
        volume.SetAndObserveTransformNodeID(_transform(_rigid(centre)).GetID())
    if moved in ("segmentation", "both"):
        segmentation.SetAndObserveTransformNodeID(
            _transform(_rigid(centre, (-6.0, 9.5, -3.0), (3.0, -1.0, 1.0))).GetID())
    transforms = (volume.GetTransformNodeID(), segmentation.GetTransformNodeID())
    job, new_id = _identity_refine(logic, volume, segmentation, segment_id)
    assert (volume.GetTransformNodeID(), segmentation.GetTransformNodeID()) == transforms, "transforms kept"
    original = _slicer_export(segmentation, segment_id, volume)
    refined = _slicer_export(segmentation, new_id, volume)
    assert original.sum() > 20
    assert _dice(refined, original) >= 0.95 and _centre_distance_voxels(refined, original) <= 0.5


def _engine_case(logic, ct_case, moved):
    require_engine()
    volume, segmentation, labels = ct_case
    matrix = _rigid(_centre(segmentation, labels[LEFT_ADRENAL_LABEL]))
    node = _transform(matrix)
    if moved == "volume":  # a registered CT with its segmentation: both under one transform
        volume.SetAndObserveTransformNodeID(node.GetID())
        segmentation.SetAndObserveTransformNodeID(node.GetID())
    else:  # the segmentation alone is moved: it is refined where it is shown
        segmentation.SetAndObserveTransformNodeID(node.GetID())
    job = logic.prepareRefinement(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast", seed=0)
    logic.computeRefinement(job)
    new_id = logic.applyRefinement(job)
    reference = _world_grid_volume(volume, matrix if moved == "volume" else np.eye(4))
    return volume, segmentation, labels, job, new_id, reference


def test_engine_result_under_a_transformed_volume_and_segmentation(logic, ct_case, mrml_scene):
    volume, segmentation, labels, job, new_id, reference = _engine_case(logic, ct_case, "volume")
    _assert_placed(segmentation, new_id, job, reference)
    # and the result sits on the original it refines (in world), not shifted away from it
    original = _slicer_export(segmentation, labels[LEFT_ADRENAL_LABEL], reference)
    assert _dice(_slicer_export(segmentation, new_id, reference), original) > 0.5


def test_engine_result_under_a_transformed_segmentation(logic, ct_case, mrml_scene):
    volume, segmentation, labels, job, new_id, reference = _engine_case(logic, ct_case, "segmentation")
    _assert_placed(segmentation, new_id, job, reference)
    original = _slicer_export(segmentation, labels[LEFT_ADRENAL_LABEL], reference)
    assert _dice(_slicer_export(segmentation, new_id, reference), original) > 0.5


def _grid_transform(name="warp"):
    import slicer
    import vtk

    node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLGridTransformNode", name)
    field = vtk.vtkImageData()
    field.SetDimensions(4, 4, 4)
    field.SetSpacing(100.0, 100.0, 100.0)
    field.SetOrigin(-150.0, -150.0, -150.0)
    field.AllocateScalars(vtk.VTK_DOUBLE, 3)
    from vtk.util.numpy_support import vtk_to_numpy

    displacement = vtk_to_numpy(field.GetPointData().GetScalars())
    displacement[:] = np.random.default_rng(0).normal(0.0, 2.0, displacement.shape)
    transform = slicer.vtkOrientedGridTransform()
    transform.SetDisplacementGridData(field)
    node.SetAndObserveTransformFromParent(transform)
    return node


@pytest.mark.parametrize("warped", ["volume", "segmentation"])
def test_non_linear_transform_is_refused_with_the_node_named(logic, ct_case, mrml_scene, warped):
    from NeARSlicerLib.errors import InputError

    volume, segmentation, labels = ct_case
    node = volume if warped == "volume" else segmentation
    node.SetAndObserveTransformNodeID(_grid_transform().GetID())
    before = scene_state(mrml_scene)
    with pytest.raises(InputError, match=rf"'{node.GetName()}' is under the non-linear transform 'warp'"):
        logic.refineSegment(volume, segmentation, labels[LEFT_ADRENAL_LABEL], preset="fast")
    assert scene_state(mrml_scene) == before


def _oversampled_segmentation(volume, mask, factor=2):
    """A new segmentation whose labelmap grid is ``factor`` times finer than ``volume``'s, holding
    ``mask`` (on the volume grid) upsampled, with a one-fine-voxel notch a coarse grid cannot hold."""
    import slicer

    matrix = slicer.util.arrayFromVTKMatrix(_ijk_to_ras(volume))
    fine = matrix.copy()
    fine[:3, :3] = matrix[:3, :3] / factor
    # fine voxel (0, 0, 0) is centred inside coarse voxel (0, 0, 0), offset by -(factor-1)/(2 factor) voxel
    fine[:3, 3] = matrix[:3, 3] - matrix[:3, :3] @ np.full(3, (factor - 1) / (2.0 * factor))
    fine_mask = np.kron(np.asarray(mask, np.uint8), np.ones((factor,) * 3, np.uint8))
    nonzero = np.argwhere(fine_mask)
    fine_mask[tuple(nonzero[len(nonzero) // 2])] = 0  # detail finer than a coarse voxel
    reference = slicer.util.addVolumeFromArray(np.zeros(fine_mask.shape, np.float32), fine, name="fine grid")
    segmentation = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", "fine")
    segmentation.SetReferenceImageGeometryParameterFromVolumeNode(reference)
    segment_id = segmentation.GetSegmentation().AddEmptySegment("", "gland")
    slicer.util.updateSegmentBinaryLabelmapFromArray(fine_mask, segmentation, segment_id, reference)
    return segmentation, segment_id, reference, fine_mask


def test_oversampled_segmentation_keeps_its_resolution(logic, ct_case, mrml_scene):
    import SimpleITK as sitk
    import slicer

    from slicer_fixture import CT_PATH

    volume, seg, labels = ct_case
    coarse = _slicer_export(seg, labels[LEFT_ADRENAL_LABEL], volume)
    segmentation, segment_id, reference, fine_mask = _oversampled_segmentation(volume, coarse)
    job, new_id = _identity_refine(logic, volume, segmentation, segment_id)
    assert job.geometrySource == "segmentation"
    assert np.allclose(job.grid.spacing, 1.5), f"refined on a {job.grid.spacing} mm grid, not the 1.5 mm one"
    refined = _slicer_export(segmentation, new_id, reference)
    assert np.array_equal(refined, fine_mask), "the refined segment lost the segmentation's fine detail"
    stored = segmentation.GetBinaryLabelmapInternalRepresentation(new_id)
    assert np.allclose(stored.GetSpacing(), 1.5)
    # the engine is told the CT's own voxel: its margin fit moves no boundary by less than 3 mm
    assert job.options["image_voxel_mm"] == pytest.approx(3.0)

    # the CT handed to the engine is the CT resampled (linearly) onto that fine grid, as SimpleITK does it
    ct = sitk.Cast(sitk.ReadImage(str(CT_PATH)), sitk.sitkFloat32)
    grid = job.grid
    target = sitk.Image([int(n) for n in grid.shape[::-1]], sitk.sitkFloat32)
    target.SetSpacing(grid.spacing)
    target.SetOrigin(grid.origin)
    target.SetDirection(grid.direction)
    expected = sitk.GetArrayFromImage(sitk.Resample(ct, target, sitk.Transform(), sitk.sitkLinear, 0.0))
    inside = expected != 0.0  # SimpleITK's default outside the CT; compare where both have values
    assert inside.mean() > 0.9
    assert np.max(np.abs(job.image[inside] - expected[inside])) < 1.0, "HU differ from SimpleITK's resampling"


def test_volume_geometry_can_be_forced(logic, ct_case, mrml_scene):
    volume, seg, labels = ct_case
    coarse = _slicer_export(seg, labels[LEFT_ADRENAL_LABEL], volume)
    segmentation, segment_id, _, _ = _oversampled_segmentation(volume, coarse)
    job = logic.prepareRefinement(volume, segmentation, segment_id, geometry="volume")
    assert job.geometrySource == "volume" and np.allclose(job.grid.spacing, 3.0)
