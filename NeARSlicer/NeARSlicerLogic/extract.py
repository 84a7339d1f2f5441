"""From the scene to the engine's inputs: check the nodes, pick the working grid, crop around the
segment, take mask and image as arrays and the grid's geometry (main thread). No Qt.

The working grid is the volume's grid, or the segmentation's own grid when that is finer than the
volume's (an oversampled segmentation keeps its resolution) or when no volume is given. Both are
expressed in the segmentation node's own coordinates (see ``grids``), so parent transforms on the
volume and on the segmentation are followed exactly.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import vtk

import slicer
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.modality import ScanFacts

from . import grids
from .common import CONTEXT_MM, PRESETS
from .job import RefinementJob
from .priorchoice import segmentStructure

GEOMETRIES = ("auto", "volume", "segmentation")


def checkVolume(volumeNode) -> None:
    """Raise ``InputError`` unless ``volumeNode`` is a single-component 3D scalar volume."""
    if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
        raise InputError(f"volume '{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; "
                         "choose a scalar volume (e.g. a CT)")
    if volumeNode.IsA("vtkMRMLLabelMapVolumeNode"):  # its "intensities" are labels: read as an image, an MR
        raise InputError(f"volume '{volumeNode.GetName()}' is a label map, not an image: choose the CT the "
                         "segmentation was drawn on (or none, to use the segmentation's own geometry)")
    image = volumeNode.GetImageData()
    if image is None:
        raise InputError(f"volume '{volumeNode.GetName()}' has no image data")
    if image.GetNumberOfScalarComponents() != 1:
        raise InputError(f"volume '{volumeNode.GetName()}' has {image.GetNumberOfScalarComponents()} "
                         "components per voxel; NeAR needs a single-component (grayscale) volume")
    dims = image.GetDimensions()
    if min(dims) < 2:
        raise InputError(f"volume '{volumeNode.GetName()}' is 2D ({dims[0]} x {dims[1]} x {dims[2]} "
                         "voxels); NeAR needs a 3D volume")


def checkSegment(segmentationNode, segmentId) -> str:
    """The segment's name; ``InputError`` listing the segments when the id is unknown."""
    if segmentationNode is None:
        raise InputError("no segmentation selected")
    segmentation = segmentationNode.GetSegmentation()
    if not segmentId or segmentation.GetSegment(segmentId) is None:
        names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
        raise InputError(f"segment id '{segmentId}' not found in segmentation '{segmentationNode.GetName()}'"
                         + (f" (its segments: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})"
                            if names else " (it has no segments)"))
    return segmentation.GetSegment(segmentId).GetName()


# what a segmentation may store its segments as for NeAR to add its result in the same form (Slicer
# converts voxels to these two; planar contours, as RT structure sets hold, have no conversion from voxels)
WRITABLE_REPRESENTATIONS = ("Binary labelmap", "Closed surface")


def checkSourceRepresentation(segmentationNode) -> None:
    """``InputError`` (before anything is computed) when the result could not be added to the
    segmentation in the form it stores its segments in."""
    source = segmentationNode.GetSegmentation().GetSourceRepresentationName()
    if source not in WRITABLE_REPRESENTATIONS:
        raise InputError(f"segmentation '{segmentationNode.GetName()}' stores its segments as {source} (e.g. a DICOM "
                         "RT structure set), in which NeAR cannot add its result: convert it first (Segmentations "
                         "module > Representations: make Binary labelmap the source), or export the segment to a "
                         "new segmentation")


def segmentStorageGeometry(segmentationNode, segmentId):
    """``(ijkToLocal, extent)`` of the labelmap the segment is stored on, or None (no labelmap)."""
    labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
    if labelmap is None:
        return None
    extent = labelmap.GetExtent()
    if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
        return None
    matrix = vtk.vtkMatrix4x4()
    labelmap.GetImageToWorldMatrix(matrix)
    return slicer.util.arrayFromVTKMatrix(matrix), tuple(labelmap.GetExtent())


def _latticeCovering(ijkToLocal: np.ndarray, cornersLocal: np.ndarray):
    """The sub-grid of lattice ``ijkToLocal`` that covers points ``cornersLocal`` (N x 3):
    ``(ijkToLocal of its first voxel, shape [k, j, i])``."""
    index = (np.linalg.inv(ijkToLocal) @ np.c_[cornersLocal, np.ones(len(cornersLocal))].T)[:3].T
    lo = np.floor(index.min(axis=0) + 1e-3).astype(int)  # (i, j, k)
    hi = np.ceil(index.max(axis=0) - 1e-3).astype(int)
    return grids.shiftedGrid(ijkToLocal, lo[::-1]), tuple(int(n) for n in (hi - lo + 1)[::-1])


def _voxelCentreCorners(ijkToRas: np.ndarray, shape) -> np.ndarray:
    """The 8 corner voxel centres of a grid, in the grid matrix's RAS frame (8 x 3)."""
    k, j, i = (int(n) - 1 for n in shape)
    corners = np.array([[a, b, c, 1.0] for a in (0, i) for b in (0, j) for c in (0, k)]).T
    return (np.asarray(ijkToRas, float) @ corners)[:3].T


def workingGrid(volumeNode, segmentationNode, segmentId, geometry: str = "auto"):
    """``(ijkToLocal, shape, source)`` of the full working grid in the segmentation's frame.

    ``source`` is "volume" or "segmentation". Raises ``InputError`` for non-linear transforms or
    when there is neither a volume nor a segmentation geometry.
    """
    if geometry not in GEOMETRIES:
        raise InputError(f"unknown geometry {geometry!r}: use one of {', '.join(GEOMETRIES)}")
    segToWorld = grids.toWorldMatrix(segmentationNode)
    if volumeNode is None:
        own = grids.segmentationGeometry(segmentationNode)
        if own is None:
            stored = segmentStorageGeometry(segmentationNode, segmentId)
            if stored is None:
                raise InputError(f"no volume given and segmentation '{segmentationNode.GetName()}' has no "
                                 "geometry of its own: select the volume the segmentation was drawn on")
            matrix, extent = stored
            own = (grids.shiftedGrid(matrix, extent[0::2][::-1]),
                   (extent[5] - extent[4] + 1, extent[3] - extent[2] + 1, extent[1] - extent[0] + 1))
        return own[0], own[1], "segmentation"

    volToWorld = grids.toWorldMatrix(volumeNode)
    volumeIjkToRas, volumeShape = grids.volumeGeometry(volumeNode)
    volumeInSeg = np.linalg.inv(segToWorld) @ volToWorld @ volumeIjkToRas
    stored = segmentStorageGeometry(segmentationNode, segmentId) if geometry != "volume" else None
    useOwn = stored is not None and (geometry == "segmentation"
                                     or grids.isFiner(segToWorld @ stored[0], volToWorld @ volumeIjkToRas))
    if not useOwn:
        if geometry == "segmentation":
            raise InputError(f"segment '{segmentId}' has no labelmap grid of its own")
        return volumeInSeg, volumeShape, "volume"
    # the segment's own lattice, over the region the volume covers (its image values exist there)
    ijkToLocal, shape = _latticeCovering(stored[0], _voxelCentreCorners(volumeInSeg, volumeShape))
    return ijkToLocal, shape, "segmentation"


def segmentBox(segmentationNode, segmentId, ijkToLocal: np.ndarray, shape, padMm: float):
    """``(lo, hi)`` [k, j, i] of the segment's voxels on the grid, grown by ``padMm`` and clipped to it;
    None when the segment has no voxels; an empty box when it lies outside the grid."""
    source = grids.segmentLabelmap(segmentationNode, segmentId)
    if source.GetPointData().GetScalars() is None:
        return None
    effective = [0, -1, 0, -1, 0, -1]
    if not slicer.vtkOrientedImageDataResample.CalculateEffectiveExtent(source, effective) \
            or effective[0] > effective[1] or effective[2] > effective[3] or effective[4] > effective[5]:
        return None
    matrix = vtk.vtkMatrix4x4()
    source.GetImageToWorldMatrix(matrix)
    sourceToLocal = slicer.util.arrayFromVTKMatrix(matrix)
    # the voxel boxes' outer corners (half a voxel beyond the centres) of the effective extent
    corners = np.array([[i, j, k, 1.0] for i in (effective[0] - 0.5, effective[1] + 0.5)
                        for j in (effective[2] - 0.5, effective[3] + 0.5)
                        for k in (effective[4] - 0.5, effective[5] + 0.5)]).T
    index = (np.linalg.inv(ijkToLocal) @ sourceToLocal @ corners)[:3].T[:, ::-1]  # [k, j, i]
    pad = np.ceil(float(padMm) / grids.spacingOf(ijkToLocal)[::-1]).astype(int) + 1
    lo = np.maximum(np.floor(index.min(axis=0)).astype(int) - pad, 0)
    hi = np.minimum(np.ceil(index.max(axis=0)).astype(int) + 1 + pad, np.asarray(shape))
    return lo, np.maximum(hi, lo)


# job options that prepareJob (and the batch) read off the case itself, not asked by the user: a batch's
# settings (its summary's ``settings`` cell, NeARSlicerLib.batch.settings_text) leave them out, as
# ``nearslicer batch`` does
CASE_FACTS = ("structure", "image_voxel_mm")


def askedOptions(job: RefinementJob) -> dict:
    """The job's RefineOptions fields that the user asked for (``CASE_FACTS`` left out)."""
    return {key: value for key, value in job.options.items() if key not in CASE_FACTS}


def prepareJob(volumeNode, segmentationNode, segmentId, *, prior=None, appearance=True, preset="default",
               device="auto", seed=0, marginMm=None, spacingMm=None, probabilityVolume=False,
               changeSegments=False, geometry="auto", changes=None, fitMargin=True,
               trimToImage=True, imageOpensGate=True) -> RefinementJob:
    """Check the inputs and take the arrays from the scene (main thread). See ``refineSegment``."""
    segmentName = checkSegment(segmentationNode, segmentId)
    checkSourceRepresentation(segmentationNode)
    if preset not in PRESETS:
        raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")
    if volumeNode is not None:
        checkVolume(volumeNode)
    fullToLocal, fullShape, source = workingGrid(volumeNode, segmentationNode, segmentId, geometry)

    # Work on a box around the segment: the engine never looks further than its margin and working
    # field of view, and a whole-body CT would cost memory and resampling time.
    padMm = CONTEXT_MM if marginMm is None else float(marginMm) + CONTEXT_MM - 8.0
    box = segmentBox(segmentationNode, segmentId, fullToLocal, fullShape, padMm)
    if box is None:
        raise InputError(f"segment '{segmentName}' is empty: paint it before refining")
    lo, hi = box
    ijkToLocal = grids.shiftedGrid(fullToLocal, lo)
    shape = tuple(int(n) for n in hi - lo)
    mask = grids.segmentOnGrid(segmentationNode, segmentId, ijkToLocal, shape) if min(shape) > 0 else None
    if mask is None or not mask.any():
        where = f"volume '{volumeNode.GetName()}'" if volumeNode is not None else "the segmentation's geometry"
        raise InputError(f"segment '{segmentName}' does not overlap {where}: the volume and the "
                         "segmentation do not cover the same region")

    image = scan = None
    if volumeNode is not None:
        whole = slicer.util.arrayFromVolume(volumeNode)
        if source == "volume":  # the volume's own voxels, untouched
            crop = tuple(slice(a, b) for a, b in zip(lo, hi))
            voxels = whole[crop]
        else:
            voxels = grids.volumeOnGrid(volumeNode, segmentationNode, ijkToLocal, shape)
        if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
            bad = int(np.count_nonzero(~np.isfinite(voxels)))
            raise InputError(f"volume '{volumeNode.GetName()}' contains {bad} NaN/Inf voxels around the "
                             "segment; fix or replace the volume before refining")
        if appearance:
            image = np.array(voxels, dtype=np.float32, copy=True)
            scan = wholeScanFacts(whole)

    options = {"prior": prior or None, "appearance": bool(appearance), "preset": preset,
               "device": device or "auto", "seed": int(seed),
               "structure": segmentStructure(segmentationNode, segmentId) or None}  # for the auto prior
    if marginMm is not None:
        options["margin_mm"] = float(marginMm)
    if spacingMm is not None:
        options["spacing_mm"] = float(spacingMm)
    if changes is not None:
        from NeARSlicerLib.confidence import CHANGE_POLICIES

        if changes not in CHANGE_POLICIES:
            raise InputError(f"changes must be one of {', '.join(CHANGE_POLICIES)}, got {changes!r}")
        options["change_policy"] = changes
    if not fitMargin:
        options["fit_margin"] = False
    if not trimToImage:
        options["trim_to_image"] = False
    if not imageOpensGate:
        options["image_opens_gate"] = False

    segToWorld = grids.toWorldMatrix(segmentationNode)
    if image is not None and source == "segmentation":
        # the CT was resampled onto the segment's finer lattice: its edges are no finer than its own voxels
        volumeIjkToRas, _ = grids.volumeGeometry(volumeNode)
        imageVoxel = float(grids.spacingOf(grids.toWorldMatrix(volumeNode) @ volumeIjkToRas).min())
        if imageVoxel > float(grids.spacingOf(segToWorld @ ijkToLocal).min()) * 1.001:
            options["image_voxel_mm"] = round(imageVoxel, 4)
    return RefinementJob(
        segmentationNode=segmentationNode, segmentId=segmentId, segmentName=segmentName, volumeNode=volumeNode,
        mask=np.ascontiguousarray(mask), image=image, grid=grids.engineGrid(segToWorld @ ijkToLocal, shape),
        ijkToLocal=ijkToLocal, options=options, geometrySource=source,
        probabilityVolume=bool(probabilityVolume), changeSegments=bool(changeSegments),
        cropOffset=tuple(int(v) for v in lo), fullShape=tuple(int(v) for v in fullShape), scan=scan)


def wholeScanFacts(voxels: np.ndarray) -> ScanFacts:
    """``ScanFacts`` of a whole volume's voxels (NaN/Inf far from the segment left out): what the crop
    around a segment may not show, e.g. the air and fat that tell a CT from an MR, and the scan's darkest
    value, which fills the engine's cube beyond the scan. The CLI reads them off the whole file too."""
    if voxels.dtype.kind == "f":
        finite = np.isfinite(voxels)
        if not finite.all():
            voxels = voxels[finite]
    return ScanFacts.of(voxels)


def segmentArray(segmentationNode, segmentId, volumeNode=None) -> Optional[np.ndarray]:
    """A segment as 0/1 uint8 [k, j, i] on the volume's grid (or the segmentation's own geometry),
    following both parent transforms; None when there is no grid to put it on."""
    if volumeNode is not None:
        segToWorld = grids.toWorldMatrix(segmentationNode)
        matrix, shape = grids.volumeGeometry(volumeNode)
        ijkToLocal = np.linalg.inv(segToWorld) @ grids.toWorldMatrix(volumeNode) @ matrix
    else:
        own = grids.segmentationGeometry(segmentationNode)
        if own is None:
            return None
        ijkToLocal, shape = own
    return grids.segmentOnGrid(segmentationNode, segmentId, ijkToLocal, shape)
