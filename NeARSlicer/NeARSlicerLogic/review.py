"""Review of a NeAR result: the compare display and layout, offscreen report with 3D surfaces. No Qt."""

from __future__ import annotations

import logging

import numpy as np
import vtk

import slicer
from NeARSlicerLib.errors import InputError

from . import grids
from .apply import displayNodeOf, refinementStats, sourceSegmentId
from .common import COMPARE_LAYOUT_ID, COMPARE_LAYOUT_XML, ORIGINAL_REVIEW_COLOR, REFINED_COLOR
from .extract import segmentArray

def showComparison(volumeNode, segmentationNode, originalId, refinedId, isolate=True, setLayout=True):
    """Review display: original red vs refined blue outlines on linked slice views, both
    surfaces in 3D, in a side-by-side layout. Changes display settings only, never data."""
    segmentation = segmentationNode.GetSegmentation()
    for segmentId in (originalId, refinedId):
        if segmentation.GetSegment(segmentId) is None:
            raise InputError(f"segment id '{segmentId}' not found in segmentation '{segmentationNode.GetName()}'")
    displayNode = displayNodeOf(segmentationNode)
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

def segmentArrays(segmentationNode, originalId, refinedId, volumeNode=None):
    """``(image or None, original mask, refined mask, spacing (i, j, k) mm)`` on one grid."""
    original = segmentArray(segmentationNode, originalId, volumeNode)
    if original is None:
        raise InputError("no volume given and the segmentation has no geometry of its own")
    refined = segmentArray(segmentationNode, refinedId, volumeNode)
    if volumeNode is not None:
        image = np.array(slicer.util.arrayFromVolume(volumeNode), np.float32)
        ijkToRas = grids.toWorldMatrix(volumeNode) @ grids.volumeGeometry(volumeNode)[0]
    else:
        image = None
        ijkToRas = grids.toWorldMatrix(segmentationNode) @ grids.segmentationGeometry(segmentationNode)[0]
    return image, original, refined, tuple(float(s) for s in grids.spacingOf(ijkToRas))

def renderSurfaces(segmentationNode, segmentIds, colors, opacities, size=(360, 360)):
    """Render the closed surfaces of segments offscreen (VTK, no Qt) as an RGB uint8 array.

    Seen from anterior with superior up (patient right on the left), as Slicer's 3D view.
    """
    segmentationNode.CreateClosedSurfaceRepresentation()
    renderer = vtk.vtkRenderer()
    renderer.SetBackground(1.0, 1.0, 1.0)
    renderer.SetUseDepthPeeling(True)
    bounds = vtk.vtkBoundingBox()
    for segmentId, color, opacity in zip(segmentIds, colors, opacities):
        surface = vtk.vtkPolyData()
        segmentationNode.GetClosedSurfaceRepresentation(segmentId, surface)
        if surface.GetNumberOfPoints() == 0:
            continue
        normals = vtk.vtkPolyDataNormals()
        normals.SetInputData(surface)
        mapper = vtk.vtkPolyDataMapper()
        mapper.SetInputConnection(normals.GetOutputPort())
        actor = vtk.vtkActor()
        actor.SetMapper(mapper)
        actor.GetProperty().SetColor(*color)
        actor.GetProperty().SetOpacity(opacity)
        renderer.AddActor(actor)
        bounds.AddBounds(surface.GetBounds())
    if not bounds.IsValid():
        raise InputError("the segments have no surface to render")
    center = [0.0, 0.0, 0.0]
    bounds.GetCenter(center)
    camera = renderer.GetActiveCamera()
    camera.SetFocalPoint(center)
    camera.SetPosition(center[0], center[1] + 500.0, center[2])  # anterior
    camera.SetViewUp(0.0, 0.0, 1.0)
    renderer.ResetCamera()
    camera.Elevation(15)
    camera.Azimuth(20)
    renderer.ResetCameraClippingRange()
    window = vtk.vtkRenderWindow()
    window.SetOffScreenRendering(True)
    window.SetMultiSamples(0)
    window.SetSize(int(size[0]), int(size[1]))
    window.AddRenderer(renderer)
    window.Render()
    grabber = vtk.vtkWindowToImageFilter()
    grabber.SetInput(window)
    grabber.SetInputBufferTypeToRGB()
    grabber.ReadFrontBufferOff()
    grabber.Update()
    from vtk.util.numpy_support import vtk_to_numpy

    image = grabber.GetOutput()
    width, height, _ = image.GetDimensions()
    pixels = vtk_to_numpy(image.GetPointData().GetScalars()).reshape(height, width, -1)[::-1, :, :3]
    window.Finalize()
    return np.ascontiguousarray(pixels)

def saveReport(path, segmentationNode, refinedId, volumeNode=None, title=None, surfaces=True) -> str:
    """Write the review picture as a PNG: original (red) vs refined (blue) outlines on orthogonal
    slices through the CT with the numbers (the engine's report), and, when offscreen rendering
    works, both surfaces in 3D beside it. Returns the path."""
    from NeARSlicerLib.output_safety import atomic_path, check_outputs
    from NeARSlicerLib.report import append_panel_png, save_report_png

    segment = segmentationNode.GetSegmentation().GetSegment(refinedId)
    originalId = sourceSegmentId(segmentationNode, refinedId)
    image, original, refined, spacing = segmentArrays(segmentationNode, originalId, refinedId, volumeNode)
    stats = refinementStats(segmentationNode, refinedId)
    metrics = {}
    if "dice" in stats:
        metrics["Dice(original, refined)"] = round(float(stats["dice"]), 3)
    if "volumeBeforeMl" in stats and "volumeAfterMl" in stats:
        metrics["volume (mL)"] = f"{stats['volumeBeforeMl']:.2f} -> {stats['volumeAfterMl']:.2f}"
    if isinstance(stats.get("volumeChangePercent"), (int, float)):
        metrics["volume change"] = f"{stats['volumeChangePercent']:+.1f} %"
    if "seconds" in stats:
        metrics["time (s)"] = round(float(stats["seconds"]), 1)
    if title is None:
        title = f"{stats.get('segmentName', segment.GetName())}: original (red) vs NeAR (blue)"
    path = str(path)
    check_outputs([path], overwrite=True)  # folder there and writable, before rendering anything
    # slices and 3D panel go into one temporary file, renamed onto ``path`` when whole
    with atomic_path(path) as tmp:
        save_report_png(tmp, image, original, refined, spacing, title=title, metrics=metrics)
        if surfaces:
            try:
                render = renderSurfaces(segmentationNode, [originalId, refinedId],
                                        [ORIGINAL_REVIEW_COLOR, REFINED_COLOR], [0.3, 1.0])
                append_panel_png(tmp, render, "3D: original (red), NeAR (blue)")
            except Exception as exc:  # no offscreen OpenGL here: the slice report alone is still useful
                logging.warning("NeAR report: 3D surfaces not rendered (%s)", exc)
    return path
