"""NeARSlicerLogic: refine a segment with the NeAR engine, review it, accept it. No Qt.

The work of one refinement is split in three steps so that the GUI can run the slow middle step
in a worker thread while the scene is only touched from the main thread:

1. :meth:`NeARSlicerLogic.prepareRefinement` (main thread): check the inputs, take the segment
   as a 0/1 array on the volume's grid (or the segmentation's own grid), the image in HU, and the
   grid's geometry converted from Slicer's RAS to the engine's LPS.
2. :meth:`NeARSlicerLogic.computeRefinement` (any thread): run the engine; touches no MRML node.
3. :meth:`NeARSlicerLogic.applyRefinement` (main thread): add the result as a new segment,
   all or nothing.

:meth:`NeARSlicerLogic.refineSegment` does the three in a row for the Python console.
"""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import re
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Optional

import numpy as np
import vtk

import slicer
from NeARSlicerLib.errors import Cancelled, InputError, NeARError

from . import io as nio

try:  # inside Slicer: the real base class (its module imports Qt, which the application has)
    from slicer.ScriptedLoadableModule import ScriptedLoadableModuleLogic
except ImportError:  # headless (slicer-core): the same behaviour for what this logic uses

    class ScriptedLoadableModuleLogic:
        def __init__(self, parent=None):
            self.moduleName = type(self).__name__
            if self.moduleName.endswith("Logic"):
                self.moduleName = self.moduleName[:-5]
            self.isSingletonParameterNode = True

        def createParameterNode(self):
            node = slicer.mrmlScene.CreateNodeByClass("vtkMRMLScriptedModuleNode")
            node.UnRegister(None)
            node.SetName(slicer.mrmlScene.GenerateUniqueName(self.moduleName))
            node.SetAttribute("ModuleName", self.moduleName)
            node.SetSingletonTag(self.moduleName)
            return node

        def getParameterNode(self):
            node = slicer.mrmlScene.GetSingletonNode(self.moduleName, "vtkMRMLScriptedModuleNode")
            if node is None:
                node = slicer.mrmlScene.AddNode(self.createParameterNode())
            return node


__all__ = [
    "NeARSlicerLogic",
    "RefinementJob",
    "REFINED_SUFFIX",
    "ORIGINAL_SUFFIX",
    "REFINED_COLOR",
    "ORIGINAL_REVIEW_COLOR",
    "discoverCases",
    "formatStats",
]

REFINED_SUFFIX = " (NeAR)"
ORIGINAL_SUFFIX = " (original)"
ADDED_SUFFIX = " (NeAR added)"
REMOVED_SUFFIX = " (NeAR removed)"
PROBABILITY_SUFFIX = " (NeAR probability)"

REFINED_COLOR = (0.12, 0.45, 1.0)  # blue: the refined segment
ORIGINAL_REVIEW_COLOR = (1.0, 0.18, 0.12)  # red: how the original is shown during review
ADDED_COLOR = (0.2, 0.85, 0.25)  # green: voxels the refinement added
REMOVED_COLOR = (1.0, 0.75, 0.0)  # amber: voxels the refinement removed

# Segment tags (strings stored with the segment, saved in .seg.nrrd files).
TAG_ROLE = "NeARSlicer.Role"  # refined | added | removed | original
TAG_SOURCE = "NeARSlicer.SourceSegmentID"  # on NeAR outputs: the id of the segment they refine
TAG_STATS = "NeARSlicer.Stats"  # on the refined segment: JSON of formatStats' input
TAG_ACCEPTED = "NeARSlicer.Accepted"  # "true" once acceptRefinement made it the segment of record
TAG_ORIGINAL_COLOR = "NeARSlicer.OriginalColor"  # on the refined segment: the original's color

COMPARE_LAYOUT_ID = 63201  # custom layout: linked slice views beside the 3D view
COMPARE_LAYOUT_XML = """
<layout type="horizontal" split="true">
 <item splitSize="500">
  <layout type="vertical" split="true">
   <item>
    <view class="vtkMRMLSliceNode" singletontag="Red">
     <property name="orientation" action="default">Axial</property>
     <property name="viewlabel" action="default">R</property>
     <property name="viewcolor" action="default">#F34A33</property>
    </view>
   </item>
   <item>
    <view class="vtkMRMLSliceNode" singletontag="Green">
     <property name="orientation" action="default">Coronal</property>
     <property name="viewlabel" action="default">G</property>
     <property name="viewcolor" action="default">#6EB04B</property>
    </view>
   </item>
  </layout>
 </item>
 <item splitSize="500">
  <view class="vtkMRMLViewNode" singletontag="1">
   <property name="viewlabel" action="default">1</property>
  </view>
 </item>
</layout>
"""

PRESETS = ("fast", "default", "quality")
DEVICES = ("auto", "cpu", "cuda")

RAS_TO_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _cancelFunction(cancel) -> Optional[Callable[[], bool]]:
    """Accept a callable, a ``threading.Event`` (or anything with ``is_set``), or None."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError("cancel must be a callable returning bool or a threading.Event")


def _nodeIds(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def _tag(segment, name: str, default: str = "") -> str:
    """A segment tag's value (``vtkSegment.GetTag`` returns it through an output argument)."""
    value = vtk.reference("")
    return str(value.get()) if segment is not None and segment.GetTag(name, value) else default


def formatStats(stats: dict) -> str:
    """The review status line: volume change and Dice(original, refined)."""
    if not stats:
        return ""

    def number(key, fmt):
        value = stats.get(key)
        return format(value, fmt) if isinstance(value, (int, float)) and math.isfinite(value) else "?"

    text = (f"{stats.get('segmentName', 'segment')}: volume {number('volumeBeforeMl', '.2f')} -> "
            f"{number('volumeAfterMl', '.2f')} mL ({number('volumeChangePercent', '+.1f')} %), "
            f"Dice(original, refined) = {number('dice', '.3f')}")
    if isinstance(stats.get("seconds"), (int, float)):
        text += f", {stats['seconds']:.1f} s"
    return text


@dataclass
class RefinementJob:
    """Everything one refinement needs, taken from the scene in :meth:`prepareRefinement`."""

    segmentationNode: Any
    segmentId: str
    segmentName: str
    volumeNode: Any  # None: geometry from the segmentation itself
    referenceNode: Any  # the volume whose grid the arrays are on (a temporary one if no volume)
    mask: np.ndarray  # uint8 [k, j, i]
    image: Optional[np.ndarray]  # float32 HU [k, j, i] or None
    grid: Any  # NeARSlicerLib.geometry.Grid (LPS)
    ijkToRas: np.ndarray  # 4x4 of the reference grid
    options: dict  # keyword arguments of RefineOptions
    probabilityVolume: bool = False
    changeSegments: bool = False
    result: Any = None  # RefineResult once computed
    stats: dict = field(default_factory=dict)
    newSegmentId: Optional[str] = None


class NeARSlicerLogic(ScriptedLoadableModuleLogic):
    """Refine segments with NeAR; usable from the Python console without the module's GUI.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("NeARSlicer")
        newId = logic.refineSegment(volumeNode, segmentationNode, segmentId, preset="fast")
        logic.acceptRefinement(segmentationNode, newId)
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self.lastStats: dict = {}

    # ------------------------------------------------------------------ parameter defaults
    def setDefaultParameters(self, parameterNode):
        """Defaults for a raw parameter node (the widget wraps it with @parameterNodeWrapper)."""
        defaults = {"preset": "default", "device": "auto", "useAppearance": "true", "seed": "0"}
        for name, value in defaults.items():
            if not parameterNode.GetParameter(name):
                parameterNode.SetParameter(name, value)

    # ------------------------------------------------------------------------ inputs
    @staticmethod
    def _segmentLabel(segmentationNode, segmentId) -> str:
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        return f"'{segment.GetName()}'" if segment else f"'{segmentId}'"

    @staticmethod
    def _segmentVoxelCount(segmentationNode, segmentId) -> int:
        """Voxels of the segment in its own (internal) labelmap; -1 if it has no labelmap."""
        segment = segmentationNode.GetSegmentation().GetSegment(segmentId)
        labelmap = segmentationNode.GetBinaryLabelmapInternalRepresentation(segmentId)
        if labelmap is None:
            bounds = [1.0, -1.0, 1.0, -1.0, 1.0, -1.0]
            segment.GetBounds(bounds)
            return -1 if bounds[0] <= bounds[1] else 0
        extent = labelmap.GetExtent()
        if extent[0] > extent[1] or extent[2] > extent[3] or extent[4] > extent[5]:
            return 0
        scalars = labelmap.GetPointData().GetScalars()
        if scalars is None:
            return 0
        from vtk.util.numpy_support import vtk_to_numpy

        return int(np.count_nonzero(vtk_to_numpy(scalars) == segment.GetLabelValue()))

    @staticmethod
    def _geometryNodeFromSegmentation(segmentationNode):
        """A volume node (not in the scene) with the segmentation's reference geometry, or None."""
        segmentation = segmentationNode.GetSegmentation()
        name = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
        geometry = segmentation.GetConversionParameter(name)
        if not geometry:
            return None
        matrix = vtk.vtkMatrix4x4()
        extent = [0, -1, 0, -1, 0, -1]
        if not slicer.vtkSegmentationConverter.DeserializeImageGeometry(geometry, matrix, extent):
            return None
        dims = [extent[1] - extent[0] + 1, extent[3] - extent[2] + 1, extent[5] - extent[4] + 1]
        if min(dims) < 1:
            return None
        ijkToRas = slicer.util.arrayFromVTKMatrix(matrix)
        # move the origin to the first voxel of the extent, so that index (0, 0, 0) is that voxel
        ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array(extent[0::2], float) + ijkToRas[:3, 3]
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"{segmentationNode.GetName()} geometry")
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        image = vtk.vtkImageData()
        image.SetDimensions(dims)
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().Fill(0)
        node.SetAndObserveImageData(image)
        return node

    @staticmethod
    def _ijkToRas(volumeNode) -> np.ndarray:
        matrix = vtk.vtkMatrix4x4()
        volumeNode.GetIJKToRASMatrix(matrix)
        return slicer.util.arrayFromVTKMatrix(matrix)

    def _gridOf(self, referenceNode, shape):
        from NeARSlicerLib.geometry import Grid

        return Grid.from_ijk_to_lps(tuple(shape), RAS_TO_LPS @ self._ijkToRas(referenceNode))

    def _checkVolume(self, volumeNode):
        if not volumeNode.IsA("vtkMRMLScalarVolumeNode"):
            raise InputError(f"volume '{volumeNode.GetName()}' is a {volumeNode.GetClassName()}; "
                             "choose a scalar volume (e.g. a CT)")
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

    def prepareRefinement(self, volumeNode, segmentationNode, segmentId, *, prior=None, appearance=True,
                          preset="default", device="auto", seed=0, marginMm=None, spacingMm=None,
                          probabilityVolume=False, changeSegments=False) -> RefinementJob:
        """Check the inputs and take the arrays from the scene (main thread). See refineSegment."""
        if segmentationNode is None:
            raise InputError("no segmentation selected")
        segmentation = segmentationNode.GetSegmentation()
        if not segmentId or segmentation.GetSegment(segmentId) is None:
            names = [segmentation.GetNthSegment(i).GetName() for i in range(segmentation.GetNumberOfSegments())]
            raise InputError(f"segment id '{segmentId}' not found in segmentation '{segmentationNode.GetName()}'"
                             + (f" (its segments: {', '.join(names[:12])}{' ...' if len(names) > 12 else ''})"
                                if names else " (it has no segments)"))
        segmentName = segmentation.GetSegment(segmentId).GetName()
        if preset not in PRESETS:
            raise InputError(f"unknown preset {preset!r}: use one of {', '.join(PRESETS)}")

        if volumeNode is not None:
            self._checkVolume(volumeNode)
            referenceNode = volumeNode
        else:
            referenceNode = self._geometryNodeFromSegmentation(segmentationNode)
            if referenceNode is None:
                raise InputError(f"no volume given and segmentation '{segmentationNode.GetName()}' has no "
                                 "geometry of its own: select the volume the segmentation was drawn on")

        mask = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, segmentId, referenceNode)
        mask = (np.asarray(mask) > 0).astype(np.uint8)
        if not mask.any():
            ownVoxels = self._segmentVoxelCount(segmentationNode, segmentId)
            if ownVoxels == 0:
                raise InputError(f"segment '{segmentName}' is empty: paint it before refining")
            where = f"volume '{volumeNode.GetName()}'" if volumeNode is not None else "the segmentation's geometry"
            raise InputError(f"segment '{segmentName}' does not overlap {where}: the volume and the "
                             "segmentation do not cover the same region")

        image = None
        if volumeNode is not None:
            voxels = slicer.util.arrayFromVolume(volumeNode)
            if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
                bad = int(np.count_nonzero(~np.isfinite(voxels)))
                raise InputError(f"volume '{volumeNode.GetName()}' contains {bad} NaN/Inf voxels; "
                                 "fix or replace the volume before refining")
            if appearance:
                image = np.array(voxels, dtype=np.float32, copy=True)

        options = {"prior": prior or None, "appearance": bool(appearance), "preset": preset,
                   "device": device or "auto", "seed": int(seed)}
        if marginMm is not None:
            options["margin_mm"] = float(marginMm)
        if spacingMm is not None:
            options["spacing_mm"] = float(spacingMm)

        return RefinementJob(
            segmentationNode=segmentationNode, segmentId=segmentId, segmentName=segmentName,
            volumeNode=volumeNode, referenceNode=referenceNode, mask=mask, image=image,
            grid=self._gridOf(referenceNode, mask.shape), ijkToRas=self._ijkToRas(referenceNode),
            options=options, probabilityVolume=bool(probabilityVolume), changeSegments=bool(changeSegments))

    # ------------------------------------------------------------------------ compute
    def computeRefinement(self, job: RefinementJob, progress=None, cancel=None):
        """Run the engine on the prepared arrays. Touches no MRML node, so it may run in a thread."""
        from NeARSlicerLib.metrics import dice
        from NeARSlicerLib.refine import RefineOptions, refine_mask

        cancelled = _cancelFunction(cancel)
        started = time.perf_counter()
        result = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options),
                             progress=progress, cancel=cancelled)
        seconds = float(getattr(result, "seconds", 0.0) or (time.perf_counter() - started))
        refined = np.asarray(result.mask) > 0
        if refined.shape != job.mask.shape:
            raise NeARError(f"engine returned a mask of shape {refined.shape}, expected {job.mask.shape}")
        voxelMl = float(np.prod(job.grid.spacing)) / 1000.0
        before, after = int(job.mask.sum()), int(refined.sum())
        job.result = result
        job.stats = {
            "segmentName": job.segmentName,
            "segmentId": job.segmentId,
            "voxelsBefore": before,
            "voxelsAfter": after,
            "volumeBeforeMl": before * voxelMl,
            "volumeAfterMl": after * voxelMl,
            "volumeChangePercent": 100.0 * (after - before) / before if before else float("nan"),
            "dice": float(dice(job.mask, refined)),
            "seconds": seconds,
            "preset": job.options.get("preset"),
            "appearance": job.image is not None,
            "warnings": list(getattr(result, "warnings", []) or []),
        }
        if cancelled is not None and cancelled():
            raise Cancelled("refinement cancelled")
        return result

    # ------------------------------------------------------------------------ apply
    @staticmethod
    def _uniqueSegmentName(segmentation, name) -> str:
        if not segmentation.GetSegmentIdBySegmentName(name):
            return name
        base = name[:-1] if name.endswith(")") else name
        for n in range(2, 1000):
            candidate = f"{base} {n})" if name.endswith(")") else f"{name} {n}"
            if not segmentation.GetSegmentIdBySegmentName(candidate):
                return candidate
        return name

    @staticmethod
    def _displayNode(segmentationNode):
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is None:
            segmentationNode.CreateDefaultDisplayNodes()
            displayNode = segmentationNode.GetDisplayNode()
        return displayNode

    def applyRefinement(self, job: RefinementJob, showResult=True) -> str:
        """Add the computed result to the segmentation as ``"<name> (NeAR)"`` (main thread).

        All or nothing: on any error every segment and node added here is removed again and the
        original's display is restored, then the error is raised.
        """
        if job.result is None:
            raise NeARError("applyRefinement called before computeRefinement")
        segmentationNode = job.segmentationNode
        segmentation = segmentationNode.GetSegmentation()
        if segmentation.GetSegment(job.segmentId) is None:
            raise InputError(f"segment '{job.segmentName}' was removed while it was being refined")
        scene = slicer.mrmlScene
        nodesBefore = _nodeIds(scene)
        original = segmentation.GetSegment(job.segmentId)
        addedSegments, addedNodes = [], []
        displayNode = None
        previousOverride = None
        try:
            mask = (np.asarray(job.result.mask) > 0).astype(np.uint8)
            name = self._uniqueSegmentName(segmentation, job.segmentName + REFINED_SUFFIX)
            newId = segmentation.AddEmptySegment("", name, REFINED_COLOR)
            if not newId:
                raise NeARError(f"could not add segment '{name}'")
            addedSegments.append(newId)
            refined = segmentation.GetSegment(newId)
            refined.SetNameAutoGenerated(False)
            refined.SetColorAutoGenerated(False)
            refined.SetTag(TAG_ROLE, "refined")
            refined.SetTag(TAG_SOURCE, job.segmentId)
            refined.SetTag(TAG_ORIGINAL_COLOR, json.dumps(list(original.GetColor())))
            refined.SetTag(TAG_STATS, json.dumps(job.stats))
            slicer.util.updateSegmentBinaryLabelmapFromArray(mask, segmentationNode, newId, job.referenceNode)

            changeIds = []
            if job.changeSegments:
                added = getattr(job.result, "added", None)
                removed = getattr(job.result, "removed", None)
                if added is None:
                    added = (mask > 0) & (job.mask == 0)
                if removed is None:
                    removed = (mask == 0) & (job.mask > 0)
                for suffix, color, role, array in ((ADDED_SUFFIX, ADDED_COLOR, "added", added),
                                                   (REMOVED_SUFFIX, REMOVED_COLOR, "removed", removed)):
                    changeName = self._uniqueSegmentName(segmentation, job.segmentName + suffix)
                    changeId = segmentation.AddEmptySegment("", changeName, color)
                    addedSegments.append(changeId)
                    changeSegment = segmentation.GetSegment(changeId)
                    changeSegment.SetNameAutoGenerated(False)
                    changeSegment.SetColorAutoGenerated(False)
                    changeSegment.SetTag(TAG_ROLE, role)
                    changeSegment.SetTag(TAG_SOURCE, job.segmentId)
                    slicer.util.updateSegmentBinaryLabelmapFromArray(
                        (np.asarray(array) > 0).astype(np.uint8), segmentationNode, changeId, job.referenceNode)
                    changeIds.append(changeId)

            if job.probabilityVolume and getattr(job.result, "probability", None) is not None:
                probabilityNode = slicer.util.addVolumeFromArray(
                    np.asarray(job.result.probability, dtype=np.float32), job.ijkToRas,
                    name=scene.GenerateUniqueName(job.segmentName + PROBABILITY_SUFFIX))
                addedNodes.append(probabilityNode)
                probabilityNode.SetAttribute(TAG_SOURCE, job.segmentId)
                displayProbability = probabilityNode.GetDisplayNode()
                if displayProbability is not None:
                    displayProbability.SetAutoWindowLevel(False)
                    displayProbability.SetWindowLevelMinMax(0.0, 1.0)

            displayNode = self._displayNode(segmentationNode)
            overrideColor = displayNode.GetSegmentOverrideColor(job.segmentId)
            previousOverride = [overrideColor.GetX(), overrideColor.GetY(), overrideColor.GetZ()]
            if showResult:
                displayNode.SetSegmentOverrideColor(job.segmentId, *ORIGINAL_REVIEW_COLOR)
                displayNode.SetSegmentVisibility(newId, True)
                for changeId in changeIds:
                    displayNode.SetSegmentVisibility(changeId, False)
        except BaseException:
            for segmentId in addedSegments:
                if segmentation.GetSegment(segmentId) is not None:
                    segmentation.RemoveSegment(segmentId)
            nio.removeNodes(addedNodes)
            # anything else a helper added on the way (temporary label maps, their display nodes)
            nio.removeNodes([scene.GetNodeByID(i) for i in sorted(_nodeIds(scene) - nodesBefore, reverse=True)])
            if displayNode is not None and previousOverride is not None:
                self._restoreOverride(displayNode, job.segmentId, previousOverride)
            raise
        job.newSegmentId = newId
        self.lastStats = dict(job.stats, newSegmentId=newId)
        logging.info("NeAR: %s", formatStats(job.stats))
        return newId

    @staticmethod
    def _restoreOverride(displayNode, segmentId, color):
        if color is None or min(color) < 0:
            displayNode.UnsetSegmentOverrideColor(segmentId)
        else:
            displayNode.SetSegmentOverrideColor(segmentId, *color)

    # ------------------------------------------------------------------------ public API
    def refineSegment(self, volumeNode, segmentationNode, segmentId, *, prior=None, appearance=True,
                      preset="default", device="auto", seed=0, progress=None, cancel=None,
                      probabilityVolume=False, changeSegments=False, showResult=True,
                      marginMm=None, spacingMm=None) -> str:
        """Refine one segment with NeAR and add the result as a new segment; return its id.

        :param volumeNode: scalar volume (CT) whose grid and intensities are used; None to use the
          segmentation's own geometry (then no appearance).
        :param segmentationNode: the segmentation; the result ``"<name> (NeAR)"`` is added to it,
          blue, and the original is shown red. The original segment and the volume are never changed.
        :param segmentId: id of the segment to refine.
        :param prior: path of a prior (``.safetensors``); None for the shipped adrenal prior.
        :param appearance: use the volume's intensities (when the prior supports it).
        :param preset: ``"fast"``, ``"default"`` or ``"quality"``.
        :param device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        :param seed: random seed (results are reproducible for a seed).
        :param progress: ``progress(fraction, message)`` callback.
        :param cancel: ``cancel() -> bool`` or a ``threading.Event``; when set, ``Cancelled`` is raised
          and the scene is left as it was.
        :param probabilityVolume: also add the refined probability map as a volume.
        :param changeSegments: also add ``"<name> (NeAR added)"`` / ``"(NeAR removed)"`` segments (hidden).
        :raises InputError: (a ValueError) with a one-line reason for bad inputs.
        """
        job = self.prepareRefinement(volumeNode, segmentationNode, segmentId, prior=prior, appearance=appearance,
                                     preset=preset, device=device, seed=seed, marginMm=marginMm,
                                     spacingMm=spacingMm, probabilityVolume=probabilityVolume,
                                     changeSegments=changeSegments)
        self.computeRefinement(job, progress=progress, cancel=cancel)
        return self.applyRefinement(job, showResult=showResult)

    @staticmethod
    def isNeAROutput(segment) -> bool:
        return bool(_tag(segment, TAG_ROLE) if segment.HasTag(TAG_ROLE) else "")

    def refinableSegmentIds(self, segmentationNode) -> list:
        """Segments that are inputs (not NeAR outputs, not kept originals)."""
        segmentation = segmentationNode.GetSegmentation()
        ids = []
        for index in range(segmentation.GetNumberOfSegments()):
            segment = segmentation.GetNthSegment(index)
            if not self.isNeAROutput(segment):
                ids.append(segmentation.GetNthSegmentID(index))
        return ids

    def removeRefinement(self, segmentationNode, newSegmentId):
        """Remove a (not accepted) NeAR result and what came with it; restore the original's display."""
        segmentation = segmentationNode.GetSegmentation()
        segment = segmentation.GetSegment(newSegmentId)
        if segment is None or not segment.HasTag(TAG_SOURCE):
            raise InputError(f"segment '{newSegmentId}' is not a NeAR result")
        sourceId = _tag(segment, TAG_SOURCE)
        for index in reversed(range(segmentation.GetNumberOfSegments())):
            other = segmentation.GetNthSegment(index)
            otherId = segmentation.GetNthSegmentID(index)
            if otherId == newSegmentId:
                continue
            if other.HasTag(TAG_SOURCE) and _tag(other, TAG_SOURCE) == sourceId and \
                    _tag(other, TAG_ROLE) in ("added", "removed"):
                segmentation.RemoveSegment(otherId)
        segmentation.RemoveSegment(newSegmentId)
        displayNode = segmentationNode.GetDisplayNode()
        if displayNode is not None and segmentation.GetSegment(sourceId) is not None:
            displayNode.UnsetSegmentOverrideColor(sourceId)

    def refineSegments(self, volumeNode, segmentationNode, segmentIds=None, progress=None, cancel=None,
                       **options) -> dict:
        """Refine every listed segment (default: all that are not NeAR outputs).

        Returns ``{originalId: newSegmentId}``. All or nothing: if one fails or is cancelled, the
        results added by this call are removed again and the error is raised.
        """
        if segmentationNode is None:
            raise InputError("no segmentation selected")
        segmentIds = list(segmentIds) if segmentIds is not None else self.refinableSegmentIds(segmentationNode)
        if not segmentIds:
            raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments to refine")
        done = {}
        count = len(segmentIds)
        try:
            for index, segmentId in enumerate(segmentIds):
                def stepProgress(fraction, message="", _index=index):
                    if progress is not None:
                        progress((_index + float(fraction)) / count, f"[{_index + 1}/{count}] {message}")

                done[segmentId] = self.refineSegment(volumeNode, segmentationNode, segmentId,
                                                     progress=stepProgress, cancel=cancel, **options)
        except BaseException:
            for newId in done.values():
                if segmentationNode.GetSegmentation().GetSegment(newId) is not None:
                    self.removeRefinement(segmentationNode, newId)
            raise
        return done

    def sourceSegmentId(self, segmentationNode, newSegmentId) -> str:
        """The id of the segment a NeAR result was computed from."""
        segment = segmentationNode.GetSegmentation().GetSegment(newSegmentId)
        sourceId = _tag(segment, TAG_SOURCE)
        if not sourceId:
            raise InputError(f"segment '{newSegmentId}' is not a NeAR result")
        return sourceId

    def refinementStats(self, segmentationNode, newSegmentId) -> dict:
        """The numbers stored with a NeAR result (voxels, volumes, Dice, seconds)."""
        segment = segmentationNode.GetSegmentation().GetSegment(newSegmentId)
        if segment is None or not segment.HasTag(TAG_STATS):
            return {}
        return json.loads(_tag(segment, TAG_STATS))

    def acceptRefinement(self, segmentationNode, newSegmentId) -> str:
        """Make the refined segment the segment of record, after the user's review.

        The refined segment takes the original's name (and color); the original is kept, renamed
        ``"<name> (original)"`` and hidden. Nothing is deleted. Returns ``newSegmentId``.
        """
        if segmentationNode is None:
            raise InputError("no segmentation selected")
        segmentation = segmentationNode.GetSegmentation()
        refined = segmentation.GetSegment(newSegmentId)
        if refined is None:
            raise InputError(f"segment id '{newSegmentId}' not found in segmentation '{segmentationNode.GetName()}'")
        if not refined.HasTag(TAG_ROLE) or _tag(refined, TAG_ROLE) != "refined":
            raise InputError(f"segment '{refined.GetName()}' is not a NeAR refinement")
        if refined.HasTag(TAG_ACCEPTED) and _tag(refined, TAG_ACCEPTED) == "true":
            raise InputError(f"segment '{refined.GetName()}' was already accepted")
        originalId = _tag(refined, TAG_SOURCE)
        original = segmentation.GetSegment(originalId)
        if original is None:
            raise InputError(f"the original of '{refined.GetName()}' (id '{originalId}') no longer exists")

        name = original.GetName()
        originalIndex = segmentation.GetSegmentIndex(originalId)
        original.SetName(self._uniqueSegmentName(segmentation, name + ORIGINAL_SUFFIX))
        original.SetNameAutoGenerated(False)
        original.SetTag(TAG_ROLE, "original")
        refined.SetName(name)
        refined.SetColor(original.GetColor())
        if original.HasTerminology():
            refined.SetTerminology(original.GetTerminology())
        refined.SetNameAutoGenerated(False)
        refined.SetColorAutoGenerated(False)
        refined.SetTag(TAG_ACCEPTED, "true")
        segmentation.SetSegmentIndex(newSegmentId, originalIndex)  # take the original's place

        displayNode = self._displayNode(segmentationNode)
        displayNode.SetSegmentVisibility(originalId, False)
        displayNode.SetSegmentVisibility(newSegmentId, True)
        displayNode.UnsetSegmentOverrideColor(newSegmentId)
        for index in range(segmentation.GetNumberOfSegments()):
            other = segmentation.GetNthSegment(index)
            if other.HasTag(TAG_SOURCE) and _tag(other, TAG_SOURCE) == originalId and \
                    _tag(other, TAG_ROLE) in ("added", "removed"):
                displayNode.SetSegmentVisibility(segmentation.GetNthSegmentID(index), False)
        return newSegmentId

    # ------------------------------------------------------------------------ review
    def showComparison(self, volumeNode, segmentationNode, originalId, refinedId, isolate=True, setLayout=True):
        """Review display: original red vs refined blue outlines on linked slice views, both
        surfaces in 3D, in a side-by-side layout. Changes display settings only, never data."""
        segmentation = segmentationNode.GetSegmentation()
        for segmentId in (originalId, refinedId):
            if segmentation.GetSegment(segmentId) is None:
                raise InputError(f"segment id '{segmentId}' not found in segmentation '{segmentationNode.GetName()}'")
        displayNode = self._displayNode(segmentationNode)
        if isolate:
            for index in range(segmentation.GetNumberOfSegments()):
                displayNode.SetSegmentVisibility(segmentation.GetNthSegmentID(index), False)
        displayNode.SetVisibility(True)
        displayNode.SetVisibility2DFill(False)
        displayNode.SetVisibility2DOutline(True)
        displayNode.SetSliceIntersectionThickness(2)
        displayNode.SetVisibility3D(True)
        for segmentId in (originalId, refinedId):
            displayNode.SetSegmentVisibility(segmentId, True)
        displayNode.SetSegmentOverrideColor(originalId, *ORIGINAL_REVIEW_COLOR)
        displayNode.SetSegmentOverrideColor(refinedId, *REFINED_COLOR)
        displayNode.SetSegmentOpacity3D(originalId, 0.35)
        displayNode.SetSegmentOpacity3D(refinedId, 0.9)
        segmentationNode.CreateClosedSurfaceRepresentation()

        scene = slicer.mrmlScene
        if setLayout:
            layoutNode = scene.GetFirstNodeByClass("vtkMRMLLayoutNode")
            if layoutNode is not None:
                if not layoutNode.IsLayoutDescription(COMPARE_LAYOUT_ID):
                    layoutNode.AddLayoutDescription(COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML)
                layoutNode.SetViewArrangement(COMPARE_LAYOUT_ID)
        for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceCompositeNode")):
            compositeNode = scene.GetNthNodeByClass(index, "vtkMRMLSliceCompositeNode")
            if volumeNode is not None:
                compositeNode.SetBackgroundVolumeID(volumeNode.GetID())
            compositeNode.SetLinkedControl(True)
        center = [0.0, 0.0, 0.0]
        if segmentationNode.GetSegmentCenterRAS(refinedId) is not None:
            center = list(segmentationNode.GetSegmentCenterRAS(refinedId))
            for index in range(scene.GetNumberOfNodesByClass("vtkMRMLSliceNode")):
                scene.GetNthNodeByClass(index, "vtkMRMLSliceNode").JumpSliceByCentering(*center)
        return center

    def segmentArrays(self, segmentationNode, originalId, refinedId, volumeNode=None):
        """``(image or None, original mask, refined mask, spacing (i, j, k) mm)`` on one grid."""
        referenceNode = volumeNode or self._geometryNodeFromSegmentation(segmentationNode)
        if referenceNode is None:
            raise InputError("no volume given and the segmentation has no geometry of its own")
        original = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, originalId, referenceNode) > 0
        refined = slicer.util.arrayFromSegmentBinaryLabelmap(segmentationNode, refinedId, referenceNode) > 0
        image = np.array(slicer.util.arrayFromVolume(volumeNode), np.float32) if volumeNode is not None else None
        spacing = self._gridOf(referenceNode, original.shape).spacing
        return image, original.astype(np.uint8), refined.astype(np.uint8), spacing

    def saveReport(self, path, segmentationNode, refinedId, volumeNode=None, title=None) -> str:
        """Write the review picture (original red vs refined blue on an axial slice, 3D surfaces)
        as a PNG, rendered offscreen by the engine's report code. Returns the path."""
        from NeARSlicerLib.report import save_report_png

        segment = segmentationNode.GetSegmentation().GetSegment(refinedId)
        if segment is None or not segment.HasTag(TAG_SOURCE):
            raise InputError(f"segment '{refinedId}' is not a NeAR result")
        originalId = _tag(segment, TAG_SOURCE)
        image, original, refined, spacing = self.segmentArrays(segmentationNode, originalId, refinedId, volumeNode)
        stats = self.refinementStats(segmentationNode, refinedId)
        metrics = {key: stats[key] for key in ("dice", "volumeChangePercent", "voxelsBefore", "voxelsAfter")
                   if key in stats}
        if title is None:
            title = f"{stats.get('segmentName', segment.GetName())}: original (red) vs NeAR (blue)"
        save_report_png(str(path), image, original, refined, spacing, title=title, metrics=metrics)
        return str(path)

    # ------------------------------------------------------------------------ batch
    def refineStudy(self, cases, outputDir, progress=None, cancel=None, csvName="nearslicer_summary.csv",
                    **options) -> list:
        """Refine a list of cases from files, for the Python console.

        :param cases: a folder (see :func:`discoverCases`) or a list of
          ``(volumePath, segmentationPath)`` / ``(volumePath, segmentationPath, segment)`` tuples, where
          ``segment`` is a segment name, a label value (int) or a list of them; no segment: all segments.
          ``volumePath`` may be None (the segmentation's geometry is used, no appearance).
        :param outputDir: where ``<case>.seg.nrrd`` (original and refined segments) and the CSV go.
        :param options: refineSegment options (preset, device, prior, appearance, seed, ...).
        :returns: the CSV rows as dicts. A failing case or segment is recorded with its error and the
          batch goes on; a cancel stops the batch (rows so far are written) and raises ``Cancelled``.
        """
        outputDir = Path(outputDir)
        outputDir.mkdir(parents=True, exist_ok=True)
        caseList = discoverCases(cases) if isinstance(cases, (str, os.PathLike)) else [_normalizeCase(c) for c in cases]
        csvPath = outputDir / csvName
        columns = ["case", "segment", "voxels_before", "voxels_after", "dice", "seconds", "error", "output"]
        rows = []
        usedNames = set()
        cancelled = _cancelFunction(cancel)

        with open(csvPath, "w", newline="") as stream:
            writer = csv.DictWriter(stream, fieldnames=columns)
            writer.writeheader()

            def record(row):
                row = {key: row.get(key, "") for key in columns}
                rows.append(row)
                writer.writerow(row)
                stream.flush()

            for caseIndex, case in enumerate(caseList):
                caseName = _uniqueCaseName(case, usedNames)
                if cancelled is not None and cancelled():
                    raise Cancelled(f"batch cancelled before case {caseName}")
                if case.get("error"):
                    record({"case": caseName, "segment": case.get("segment") or "", "error": case["error"]})
                    continue

                def caseProgress(fraction, message="", _i=caseIndex):
                    if progress is not None:
                        progress((_i + float(fraction)) / len(caseList), f"{caseName}: {message}")

                self._refineCase(case, caseName, outputDir, record, caseProgress, cancel, options)
        logging.info("NeAR batch: %d rows written to %s", len(rows), csvPath)
        return rows

    def _refineCase(self, case, caseName, outputDir, record, progress, cancel, options):
        nodes = []
        started = time.perf_counter()
        try:
            volumeNode = None
            if case.get("volume"):
                volumeNode = nio.loadVolumeFile(case["volume"], name=f"{caseName} volume")
                nodes.append(volumeNode)
            segmentationNode, labelToId = nio.loadSegmentationFile(case["segmentation"], volumeNode,
                                                                   name=f"{caseName} segmentation")
            nodes.append(segmentationNode)
            segmentIds = _resolveSegments(segmentationNode, labelToId, case.get("segment"))
            outputNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{caseName} NeAR")
            nodes.append(outputNode)
            if volumeNode is not None:
                outputNode.SetReferenceImageGeometryParameterFromVolumeNode(volumeNode)
            else:
                geometryName = slicer.vtkSegmentationConverter.GetReferenceImageGeometryParameterName()
                outputNode.GetSegmentation().SetConversionParameter(
                    geometryName, segmentationNode.GetSegmentation().GetConversionParameter(geometryName))
            outputPath = outputDir / f"{caseName}.seg.nrrd"
            okCount = 0
            for index, segmentId in enumerate(segmentIds):
                segmentName = segmentationNode.GetSegmentation().GetSegment(segmentId).GetName()
                segmentStarted = time.perf_counter()
                try:
                    def segmentProgress(fraction, message="", _i=index):
                        progress((_i + float(fraction)) / len(segmentIds), f"{segmentName}: {message}")

                    newId = self.refineSegment(volumeNode, segmentationNode, segmentId, progress=segmentProgress,
                                               cancel=cancel, showResult=False, **options)
                except Cancelled:
                    raise
                except Exception as exc:  # recorded, the batch goes on
                    logging.warning("NeAR batch: %s / %s failed: %s", caseName, segmentName, exc)
                    record({"case": caseName, "segment": segmentName, "error": _oneLine(exc),
                            "seconds": f"{time.perf_counter() - segmentStarted:.2f}"})
                    continue
                stats = self.refinementStats(segmentationNode, newId)
                target = outputNode.GetSegmentation()
                source = segmentationNode.GetSegmentation()
                if not (target.CopySegmentFromSegmentation(source, segmentId)
                        and target.CopySegmentFromSegmentation(source, newId)):
                    record({"case": caseName, "segment": segmentName, "error": "could not copy the segments to the output"})
                    continue
                okCount += 1
                record({"case": caseName, "segment": segmentName, "voxels_before": stats["voxelsBefore"],
                        "voxels_after": stats["voxelsAfter"], "dice": f"{stats['dice']:.4f}",
                        "seconds": f"{stats['seconds']:.2f}", "output": str(outputPath)})
            if okCount:
                nio.saveSegmentationFile(outputNode, outputPath)
        except Cancelled:
            raise
        except Exception as exc:  # the case could not be read: recorded, the batch goes on
            logging.warning("NeAR batch: case %s failed: %s", caseName, exc)
            record({"case": caseName, "segment": _segmentSpecText(case.get("segment")), "error": _oneLine(exc),
                    "seconds": f"{time.perf_counter() - started:.2f}"})
        finally:
            nio.removeNodes(nodes)


# ---------------------------------------------------------------------------- batch helpers
_IMAGE_SUFFIXES = (".seg.nrrd", ".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd")
_SEGMENTATION_WORD = re.compile(r"(^|[_\-.\s])(seg|segmentation|label|labels|labelmap|mask|annotation)s?([_\-.\s]|$)",
                                re.IGNORECASE)


def _oneLine(exc) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"


def _segmentSpecText(spec) -> str:
    if spec is None:
        return ""
    if isinstance(spec, (list, tuple)):
        return ";".join(str(s) for s in spec)
    return str(spec)


def _imageStem(name):
    lower = name.lower()
    for suffix in _IMAGE_SUFFIXES:
        if lower.endswith(suffix):
            return name[: -len(suffix)]
    return None


def _isSegmentationName(name) -> bool:
    return name.lower().endswith(nio.SEGMENTATION_SUFFIXES) or bool(_SEGMENTATION_WORD.search(_imageStem(name) or name))


def _normalizeCase(case) -> dict:
    if isinstance(case, dict):
        out = dict(case)
    elif isinstance(case, (list, tuple)) and len(case) in (2, 3):
        out = {"volume": case[0], "segmentation": case[1], "segment": case[2] if len(case) == 3 else None}
    else:
        raise InputError(f"a case is (volume path, segmentation path[, segment]), got {case!r}")
    if not out.get("segmentation"):
        raise InputError(f"case {case!r} has no segmentation path")
    out["volume"] = str(out["volume"]) if out.get("volume") else None
    out["segmentation"] = str(out["segmentation"])
    return out


def _uniqueCaseName(case, usedNames) -> str:
    name = case.get("name")
    if not name:
        source = case.get("volume") or case.get("segmentation")
        path = Path(source)
        name = _imageStem(path.name) or path.stem
        # a generic file name ("ct", "image") in a per-case folder: use the folder's name
        if case.get("folderCase") or name.lower() in ("ct", "image", "img", "volume", "mr", "t1", "t2"):
            name = path.parent.name or name
    name = re.sub(r"[^A-Za-z0-9_.\-]+", "_", str(name)).strip("_") or "case"
    unique, n = name, 2
    while unique in usedNames:
        unique, n = f"{name}_{n}", n + 1
    usedNames.add(unique)
    return unique


def discoverCases(folder) -> list:
    """Cases in a folder, as dicts with ``volume``, ``segmentation`` (and ``error`` when unusable).

    * one sub-folder per case, holding one image and one segmentation (a ``.seg.nrrd`` file or an
      image whose name contains seg/label/mask, e.g. ``ct.nii.gz`` + ``seg.nii.gz``); or
    * flat files: ``NAME.nii.gz`` with ``NAME.seg.nrrd`` / ``NAME_seg.nii.gz`` / ``NAME_label.nrrd``.
    """
    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"case folder not found: {folder}")
    cases = []
    for sub in sorted(p for p in folder.iterdir() if p.is_dir()):
        images = sorted(p for p in sub.iterdir() if p.is_file() and _imageStem(p.name) is not None)
        segs = [p for p in images if _isSegmentationName(p.name)]
        vols = [p for p in images if p not in segs]
        if not images:
            continue
        if len(segs) == 1 and len(vols) <= 1:
            cases.append({"volume": str(vols[0]) if vols else None, "segmentation": str(segs[0]),
                          "name": sub.name, "folderCase": True})
        else:
            cases.append({"volume": None, "segmentation": "", "name": sub.name,
                          "error": f"folder {sub.name} needs one image and one segmentation, found "
                                   f"{len(vols)} image(s) and {len(segs)} segmentation(s)"})
    files = sorted(p for p in folder.iterdir() if p.is_file() and _imageStem(p.name) is not None)
    segs = [p for p in files if _isSegmentationName(p.name)]
    for volume in (p for p in files if p not in segs):
        stem = _imageStem(volume.name)
        matches = [s for s in segs if (_imageStem(s.name) or "").startswith(stem) and s != volume]
        if len(matches) == 1:
            cases.append({"volume": str(volume), "segmentation": str(matches[0]), "name": stem})
        else:
            cases.append({"volume": str(volume), "segmentation": "", "name": stem,
                          "error": f"{volume.name}: found {len(matches)} matching segmentation files"})
    if not cases:
        raise InputError(f"no cases found in {folder}")
    return cases


def _resolveSegments(segmentationNode, labelToId, spec) -> list:
    """Segment ids for a segment spec: None (all), a name, a label value, or a list of those."""
    segmentation = segmentationNode.GetSegmentation()
    if spec is None or spec == "":
        ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
        if not ids:
            raise InputError(f"segmentation '{segmentationNode.GetName()}' has no segments")
        return ids
    specs = list(spec) if isinstance(spec, (list, tuple)) else [spec]
    ids = []
    for item in specs:
        segmentId = None
        if isinstance(item, (int, np.integer)) or (isinstance(item, str) and item.isdigit()
                                                    and not segmentation.GetSegmentIdBySegmentName(item)):
            segmentId = labelToId.get(int(item)) or segmentation.GetSegmentIdBySegmentName(f"Label_{int(item)}")
        else:
            segmentId = segmentation.GetSegmentIdBySegmentName(str(item))
            if not segmentId and segmentation.GetSegment(str(item)) is not None:
                segmentId = str(item)
        if not segmentId:
            raise InputError(f"segment {item!r} not found in {segmentationNode.GetName()}")
        ids.append(segmentId)
    return ids
