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

import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np
import vtk

import slicer
from NeARSlicerLib.errors import Cancelled, InputError, NeARError

from . import io as nio
from .common import (
    ADDED_COLOR,
    ADDED_SUFFIX,
    CONTEXT_MM,
    ORIGINAL_REVIEW_COLOR,
    ORIGINAL_SUFFIX,
    PRESETS,
    PROBABILITY_SUFFIX,
    RAS_TO_LPS,
    REFINED_COLOR,
    REFINED_SUFFIX,
    REMOVED_COLOR,
    REMOVED_SUFFIX,
    TAG_ACCEPTED,
    TAG_ORIGINAL_COLOR,
    TAG_ROLE,
    TAG_SOURCE,
    TAG_STATS,
    _cancelFunction,
    _cropBox,
    _nodeIds,
    _tag,
    formatStats,
)
from .review import ReviewMixin
from .study import StudyMixin

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
    cropOffset: tuple = (0, 0, 0)  # [k, j, i] of the arrays' first voxel in the full grid
    fullShape: tuple = ()  # [k, j, i] shape of the full reference grid
    result: Any = None  # RefineResult once computed
    stats: dict = field(default_factory=dict)
    newSegmentId: Optional[str] = None


class RefinementWorker:
    """Runs ``logic.computeRefinement(job)`` in a Python thread; the caller polls it.

    The module's widget polls ``fraction``, ``message`` and ``done`` with a QTimer, so Slicer stays
    responsive, then calls ``logic.applyRefinement(job)`` in the main thread. ``cancel()`` sets the
    flag the engine checks between its steps. The thread touches no MRML node.
    """

    def __init__(self, logic, job: "RefinementJob"):
        self.logic, self.job = logic, job
        self.cancelEvent = threading.Event()
        self.fraction, self.message = 0.0, "starting"
        self.error: Optional[BaseException] = None
        self.done = False
        self._thread = threading.Thread(target=self._run, name="NeAR refinement", daemon=True)

    def start(self):
        self._thread.start()
        return self

    def cancel(self):
        self.cancelEvent.set()

    @property
    def cancelled(self) -> bool:
        return isinstance(self.error, Cancelled) or (self.done and self.error is None and self.cancelEvent.is_set())

    def join(self, timeout=None):
        self._thread.join(timeout)
        return self.done

    def _progress(self, fraction, message=""):
        self.fraction, self.message = float(fraction), str(message)

    def _run(self):
        try:
            self.logic.computeRefinement(self.job, progress=self._progress, cancel=self.cancelEvent)
        except BaseException as exc:  # handed to the main thread, which reports it
            self.error = exc
        finally:
            self.done = True


class NeARSlicerLogic(ReviewMixin, StudyMixin, ScriptedLoadableModuleLogic):
    """Refine segments with NeAR; usable from the Python console without the module's GUI.

    Example (Python console)::

        logic = slicer.util.getModuleLogic("NeARSlicer")
        newId = logic.refineSegment(volumeNode, segmentationNode, segmentId, preset="fast")
        logic.acceptRefinement(segmentationNode, newId)
    """

    def __init__(self, parent=None):
        ScriptedLoadableModuleLogic.__init__(self, parent)
        self.lastStats: dict = {}

    # ------------------------------------------------------------------------ inputs
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

        # Work on a box around the segment: the engine never looks further than its margin and
        # working field of view, and a whole-body CT would cost memory and resampling time.
        fullShape = mask.shape
        lo, hi = _cropBox(mask, self._gridOf(referenceNode, fullShape).spacing,
                          (CONTEXT_MM if marginMm is None else float(marginMm) + CONTEXT_MM - 8.0))
        crop = tuple(slice(a, b) for a, b in zip(lo, hi))
        mask = np.ascontiguousarray(mask[crop])
        cropNode = referenceNode if mask.shape == fullShape else self._croppedReference(referenceNode, lo, mask.shape)

        image = None
        if volumeNode is not None:
            voxels = slicer.util.arrayFromVolume(volumeNode)[crop]
            if voxels.dtype.kind == "f" and not np.isfinite(voxels).all():
                bad = int(np.count_nonzero(~np.isfinite(voxels)))
                raise InputError(f"volume '{volumeNode.GetName()}' contains {bad} NaN/Inf voxels around the "
                                 "segment; fix or replace the volume before refining")
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
            volumeNode=volumeNode, referenceNode=cropNode, mask=mask, image=image,
            grid=self._gridOf(cropNode, mask.shape), ijkToRas=self._ijkToRas(cropNode),
            options=options, probabilityVolume=bool(probabilityVolume), changeSegments=bool(changeSegments),
            cropOffset=tuple(int(v) for v in lo), fullShape=tuple(int(v) for v in fullShape))

    def _croppedReference(self, referenceNode, lo, shape):
        """A volume node (not in the scene) for the sub-grid starting at voxel ``lo`` ([k, j, i])."""
        ijkToRas = self._ijkToRas(referenceNode)
        ijkToRas[:3, 3] = ijkToRas[:3, :3] @ np.array(lo[::-1], float) + ijkToRas[:3, 3]
        node = slicer.vtkMRMLScalarVolumeNode()
        node.SetName(f"{referenceNode.GetName()} crop")
        node.SetIJKToRASMatrix(slicer.util.vtkMatrixFromArray(ijkToRas))
        image = vtk.vtkImageData()
        image.SetDimensions(int(shape[2]), int(shape[1]), int(shape[0]))
        image.AllocateScalars(vtk.VTK_UNSIGNED_CHAR, 1)
        image.GetPointData().GetScalars().Fill(0)
        node.SetAndObserveImageData(image)
        return node

    @staticmethod
    def setJobResult(job: RefinementJob, result, seconds: float) -> None:
        """Attach an engine result (``.mask`` on the job's grid, ``.warnings``) and its statistics to ``job``."""
        from NeARSlicerLib.metrics import dice

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
            "seconds": float(seconds),
            "preset": job.options.get("preset"),
            "appearance": job.image is not None,
            "warnings": list(getattr(result, "warnings", []) or []),
        }

    # ------------------------------------------------------------------------ compute
    def computeRefinement(self, job: RefinementJob, progress=None, cancel=None):
        """Run the engine on the prepared arrays. Touches no MRML node, so it may run in a thread."""
        from NeARSlicerLib.refine import RefineOptions, refine_mask

        cancelled = _cancelFunction(cancel)
        started = time.perf_counter()
        result = refine_mask(job.mask, job.grid, job.image, RefineOptions(**job.options),
                             progress=progress, cancel=cancelled)
        seconds = float(getattr(result, "seconds", 0.0) or (time.perf_counter() - started))
        self.setJobResult(job, result, seconds)
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
            if mask.any():  # an empty segment stays as AddEmptySegment made it
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
                    changeMask = (np.asarray(array) > 0).astype(np.uint8)
                    if changeMask.any():
                        slicer.util.updateSegmentBinaryLabelmapFromArray(changeMask, segmentationNode, changeId,
                                                                         job.referenceNode)
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
