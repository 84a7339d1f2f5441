"""Voxel grids in the scene: parent transforms, a segment or a volume sampled onto a grid, an array
written into a segment. No Qt.

Every grid here is given as ``ijkToLocal`` (4x4, voxel index (i, j, k) -> RAS mm) in the
*segmentation node's own coordinates*, i.e. before its parent transform; world (RAS) is
``segmentationToWorld @ ijkToLocal``. Working in the segmentation's frame lets the refined segment
be written back in the frame its segments are stored in, so a parent transform stays a transform
(it is never hardened) and the result lands where the original is shown.

Segments are sampled and written through ``vtkOrientedImageData`` geometry
(``vtkOrientedImageDataResample``, ``vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment``)
rather than through temporary labelmap nodes: those are placed in the scene without the
segmentation's transform and so shift the result.
"""

from __future__ import annotations

from typing import Optional, Tuple

import numpy as np
import vtk
from vtk.util.numpy_support import numpy_to_vtk, vtk_to_numpy

import slicer
from NeARSlicerLib.errors import InputError

from .common import RAS_TO_LPS


def toWorldMatrix(node) -> np.ndarray:
    """4x4 RAS matrix from ``node``'s coordinates to world; identity without a parent transform.

    :raises InputError: the node is under a non-linear (grid, B-spline, thin-plate) transform,
      which a voxel grid cannot follow; the message names the node and the transform.
    """
    if node is None:
        return np.eye(4)
    transformNode = node.GetParentTransformNode()
    if transformNode is None:
        return np.eye(4)
    if not transformNode.IsTransformToWorldLinear():
        raise InputError(
            f"'{node.GetName()}' is under the non-linear transform '{transformNode.GetName()}': NeAR works on "
            "voxel grids and can follow only linear transforms. Harden the transform on it first "
            "(Data module: right-click > Harden transform) or remove it, then refine again")
    matrix = vtk.vtkMatrix4x4()
    transformNode.GetMatrixTransformToWorld(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix)


def volumeGeometry(volumeNode) -> Tuple[np.ndarray, tuple]:
    """``(ijkToRas, shape [k, j, i])`` of a volume in its own (untransformed) coordinates."""
    matrix = vtk.vtkMatrix4x4()
    volumeNode.GetIJKToRASMatrix(matrix)
    dims = volumeNode.GetImageData().GetDimensions()
    return slicer.util.arrayFromVTKMatrix(matrix), (int(dims[2]), int(dims[1]), int(dims[0]))


def segmentationGeometry(segmentationNode) -> Optional[Tuple[np.ndarray, tuple]]:
    """``(ijkToLocal, shape [k, j, i])`` of the segmentation's reference image geometry (the grid its
    labelmaps are stored on), index (0, 0, 0) at the first voxel of its extent; None if it has none."""
    segmentation = segmentationNode.GetSegmentation()
    name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
    serialized = segmentation.GetConversionParameter(name)
    if not serialized:
        return None
    matrix = vtk.vtkMatrix4x4()
    extent = [0, -1, 0, -1, 0, -1]
    if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(serialized, matrix, extent):
        return None
    dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
    if min(dims) < 1:
        return None
    ijkToLocal = slicer.util.arrayFromVTKMatrix(matrix)
    ijkToLocal[:3, 3] = ijkToLocal[:3, :3] @ np.array(extent[0::2], float) + ijkToLocal[:3, 3]
    return ijkToLocal, (dims[2], dims[1], dims[0])


def spacingOf(ijkToRas: np.ndarray) -> np.ndarray:
    """Voxel size (i, j, k) in mm: the lengths of the matrix's columns."""
    return np.linalg.norm(np.asarray(ijkToRas, float)[:3, :3], axis=0)


def isFiner(candidate: np.ndarray, reference: np.ndarray, tolerance: float = 0.01) -> bool:
    """True when grid ``candidate`` resolves every axis at least as finely as ``reference`` and one
    clearly more finely (by more than ``tolerance``, relative): an oversampled segmentation."""
    a, b = np.sort(spacingOf(candidate)), np.sort(spacingOf(reference))
    return bool(np.all(a <= b * (1.0 + tolerance)) and np.any(a < b * (1.0 - tolerance)))


def shiftedGrid(ijkToLocal: np.ndarray, offsetKji) -> np.ndarray:
    """The matrix of the sub-grid whose voxel (0, 0, 0) is voxel ``offsetKji`` of ``ijkToLocal``."""
    out = np.array(ijkToLocal, float, copy=True)
    out[:3, 3] = out[:3, :3] @ np.asarray(offsetKji, float)[::-1] + out[:3, 3]
    return out


def engineGrid(ijkToWorldRas: np.ndarray, shape):
    """The engine's ``Grid`` (LPS) of a grid given in world RAS."""
    from NeARSlicerLib.geometry import Grid

    return Grid.from_ijk_to_lps(tuple(int(n) for n in shape), RAS_TO_LPS @ np.asarray(ijkToWorldRas, float))


def orientedImage(ijkToLocal: np.ndarray, shape, array: Optional[np.ndarray] = None,
                  scalarType=vtk.VTK_UNSIGNED_CHAR):
    """A ``vtkOrientedImageData`` of the grid, zero-filled or holding ``array`` ([k, j, i])."""
    image = slicer.vtkOrientedImageData()
    image.SetDimensions(int(shape[2]), int(shape[1]), int(shape[0]))
    image.SetImageToWorldMatrix(slicer.util.vtkMatrixFromArray(np.asarray(ijkToLocal, float)))
    if array is None:
        image.AllocateScalars(scalarType, 1)
        image.GetPointData().GetScalars().Fill(0)
    else:
        flat = np.ascontiguousarray(array).ravel()
        image.GetPointData().SetScalars(numpy_to_vtk(flat, deep=True))
    return image


def _resampled(source, ijkToLocal: np.ndarray, shape, linear: bool, dtype) -> np.ndarray:
    """``source`` (a vtkOrientedImageData in the same frame as ``ijkToLocal``) on the grid, [k, j, i]."""
    reference = orientedImage(ijkToLocal, shape)
    output = slicer.vtkOrientedImageData()
    if not slicer.vtkOrientedImageDataResample.ResampleOrientedImageToReferenceOrientedImage(
            source, reference, output, linear):
        raise RuntimeError("resampling onto the working grid failed")
    result = np.zeros(tuple(int(n) for n in shape), dtype)
    extent = output.GetExtent()
    if extent[0] > extent[1] or output.GetPointData().GetScalars() is None:
        return result
    values = vtk_to_numpy(output.GetPointData().GetScalars())
    size = (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1)
    values = values.reshape(size)
    # the output may cover only part of the reference extent (a labelmap cropped to its segment)
    lo = np.array([extent[4], extent[2], extent[0]])
    hi = lo + np.array(size)
    clo, chi = np.maximum(lo, 0), np.minimum(hi, result.shape)
    if np.any(chi <= clo):
        return result
    result[tuple(slice(a, b) for a, b in zip(clo, chi))] = \
        values[tuple(slice(a - l, b - l) for a, b, l in zip(clo, chi, lo))]
    return result


def segmentLabelmap(segmentationNode, segmentId: str):
    """The segment's binary labelmap (``vtkOrientedImageData``, the segmentation's frame). A segmentation
    stored as surfaces (a model imported into Segmentations, a ``.seg.vtm``) has none: a copy of the
    segment is converted as Slicer would show it in a slice view, and the node itself is not touched."""
    segmentation = segmentationNode.GetSegmentation()
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    labelmap = slicer.vtkOrientedImageData()
    if segmentation.ContainsRepresentation(binary):
        segmentationNode.GetBinaryLabelmapRepresentation(segmentId, labelmap)
        return labelmap
    copy = slicer.vtkSegmentation()
    copy.SetSourceRepresentationName(segmentation.GetSourceRepresentationName())
    copy.CopyConversionParameters(segmentation)
    copy.CopySegmentFromSegmentation(segmentation, segmentId)
    if copy.CreateRepresentation(binary):
        converted = copy.GetSegment(segmentId).GetRepresentation(binary)
        if converted is not None:
            labelmap.DeepCopy(converted)
    return labelmap


def segmentOnGrid(segmentationNode, segmentId: str, ijkToLocal: np.ndarray, shape) -> np.ndarray:
    """The segment as a 0/1 uint8 array [k, j, i] on the grid (nearest neighbour)."""
    source = segmentLabelmap(segmentationNode, segmentId)
    extent = source.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5] \
            or source.GetPointData().GetScalars() is None:
        return np.zeros(tuple(int(n) for n in shape), np.uint8)
    return (_resampled(source, ijkToLocal, shape, False, np.uint8) > 0).astype(np.uint8)


def volumeOnGrid(volumeNode, segmentationNode, ijkToLocal: np.ndarray, shape) -> np.ndarray:
    """The volume's voxels (float32, linear interpolation) on a grid in the segmentation's frame.

    Slicer places the volume in the segmentation's frame through both parent transforms
    (``CreateOrientedImageDataFromVolumeNode`` with the segmentation's transform node)."""
    source = slicer.vtkSlicerSegmentationsModuleLogic.CreateOrientedImageDataFromVolumeNode(
        volumeNode, segmentationNode.GetParentTransformNode())
    source.UnRegister(None)  # a Create... method: the caller owns the new object
    return _resampled(source, ijkToLocal, shape, True, np.float32)


def writeSegment(segmentationNode, segmentId: str, mask: np.ndarray, ijkToLocal: np.ndarray) -> None:
    """Replace the segment's voxels by ``mask`` ([k, j, i], 0/1) on the grid; other segments are kept.

    The segment is first given a labelmap layer of its own: in a shared layer a voxel holds one
    segment only, so writing a result that overlaps its original there would erase the original. A
    segmentation stored as closed surfaces gets the voxels' surface instead.
    """
    segmentation = segmentationNode.GetSegmentation()
    image = orientedImage(ijkToLocal, mask.shape, (np.asarray(mask) > 0).astype(np.uint8))
    binary = slicer.vtkSegmentationConverter.GetBinaryLabelmapRepresentationName()
    sourceName = segmentation.GetSourceRepresentationName()
    if sourceName != binary:
        # a segmentation stored as surfaces keeps its kind: the voxels are converted with the segmentation's
        # own conversion parameters, but unsmoothed (NeAR's surface is smooth already, and a smoothed contour
        # of its voxels would shrink a small structure); the other segments are untouched
        converter = slicer.vtkSegmentation()
        converter.SetSourceRepresentationName(binary)
        converter.CopyConversionParameters(segmentation)
        converter.SetConversionParameter("Smoothing factor", "0")
        painted = slicer.vtkSegment()
        painted.AddRepresentation(binary, image)
        converter.AddSegment(painted, segmentId)
        if not converter.CreateRepresentation(sourceName):
            raise RuntimeError(f"could not convert the voxels of segment '{segmentId}' to a {sourceName}")
        segmentation.GetSegment(segmentId).AddRepresentation(
            sourceName, converter.GetSegment(segmentId).GetRepresentation(sourceName))
        return
    if segmentation.GetNumberOfSegments() > 1:
        segmentation.SeparateSegmentLabelmap(segmentId)
    if not slicer.vtkSlicerSegmentationsModuleLogic.SetBinaryLabelmapToSegment(
            image, segmentationNode, segmentId, slicer.vtkSlicerSegmentationsModuleLogic.MODE_REPLACE):
        raise RuntimeError(f"could not write the voxels of segment '{segmentId}'")
