"""Reading and writing volumes and segmentations the way Slicer does, with or without its GUI.

Inside the Slicer application the file readers/writers of ``slicer.app.coreIOManager()`` are used
(``slicer.util.loadVolume`` / ``loadLabelVolume`` / ``loadSegmentation`` / ``saveNode``). In a
headless session (``slicer-core``: MRML and module logics but no application) the same module
logics and storage nodes those readers call are used directly. Nothing here imports Qt.
"""

from __future__ import annotations

import os
from pathlib import Path

import slicer
from NeARSlicerLib.label_table import label_names

__all__ = [
    "hasApplicationIO",
    "loadVolumeFile",
    "loadLabelmapAsSegmentation",
    "loadSegmentationFile",
    "saveSegmentationFile",
    "removeNodes",
    "isSegmentationFile",
]

# File names Slicer reads as a segmentation node (everything else is read as a labelmap volume).
SEGMENTATION_SUFFIXES = (".seg.nrrd", ".seg.nhdr", ".seg.nii", ".seg.nii.gz")


def hasApplicationIO() -> bool:
    """True inside the Slicer application (it has an IO manager), False headless."""
    app = getattr(slicer, "app", None)
    return app is not None and hasattr(app, "coreIOManager")


def isSegmentationFile(path) -> bool:
    return str(path).lower().endswith(SEGMENTATION_SUFFIXES)


def _stem(path) -> str:
    name = Path(path).name
    for suffix in SEGMENTATION_SUFFIXES + (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return Path(name).stem


def _checkReadable(path):
    path = str(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    return path


def loadVolumeFile(path, name=None, labelmap=False):
    """Load a scalar (or labelmap) volume node from ``path``; raises IOError on failure."""
    path = _checkReadable(path)
    name = name or _stem(path)
    if hasApplicationIO():
        properties = {"name": name, "show": False, "singleFile": True}
        if labelmap:
            properties["labelmap"] = True
        try:
            node = slicer.util.loadVolume(path, properties)
        except RuntimeError as exc:
            raise OSError(f"could not read volume {path}: {exc}") from None
    else:
        node = slicer.modules.volumes.logic().AddArchetypeVolume(path, name, 1 if labelmap else 0)
    if node is None or node.GetImageData() is None:
        raise OSError(f"could not read volume {path}")
    return node


def loadLabelmapAsSegmentation(path, referenceVolumeNode=None, name=None):
    """Load a (multi)label image as a segmentation node: one segment per label value.

    Segments are named by the file's label table (a NIfTI from TotalSegmentator's multi-label output:
    ``adrenal_gland_left``), else ``Label_<value>``. The segmentation's
    reference geometry is ``referenceVolumeNode`` when given, else the labelmap's own grid.
    Returns ``(segmentationNode, {labelValue: segmentId})``.
    """
    name = name or _stem(path)
    labelmapNode = loadVolumeFile(path, name=f"{name}__labelmap", labelmap=True)
    segmentationNode = None
    try:
        segmentationNode = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", name)
        segmentationNode.CreateDefaultDisplayNodes()
        segmentationNode.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode or labelmapNode)
        if not slicer.modules.segmentations.logic().ImportLabelmapToSegmentationNode(labelmapNode, segmentationNode):
            raise OSError(f"could not import labels of {path} into a segmentation")
    except BaseException:
        if segmentationNode is not None:
            removeNodes([segmentationNode])
        raise
    finally:
        removeNodes([labelmapNode])
    segmentation = segmentationNode.GetSegmentation()
    labelToSegmentId = {}
    # Slicer's reader ignores a NIfTI label table; the name says what the structure is (--prior auto reads it)
    names = label_names(path)
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        value = int(segment.GetLabelValue())
        labelToSegmentId[value] = segmentation.GetNthSegmentID(index)
        if value in names:
            segment.SetName(names[value])
        elif segment.GetName() == labelmapNode.GetName():
            # a single label is named after the temporary labelmap node: Label_<value>, as with several
            segment.SetName(f"Label_{value}")
    return segmentationNode, labelToSegmentId


def loadSegmentationFile(path, referenceVolumeNode=None, name=None):
    """Load ``path`` as a segmentation node: ``.seg.nrrd`` (and ``.seg.nii.gz``) files are read as
    segmentations, any other image as a label map. Returns ``(segmentationNode, labelToSegmentId)``
    (the dict is empty for ``.seg.*`` files, whose segments have names of their own).
    """
    path = _checkReadable(path)
    if not isSegmentationFile(path):
        return loadLabelmapAsSegmentation(path, referenceVolumeNode, name)
    name = name or _stem(path)
    if hasApplicationIO():
        try:
            node = slicer.util.loadSegmentation(path, {"name": name})
        except RuntimeError as exc:
            raise OSError(f"could not read segmentation {path}: {exc}") from None
    else:
        node = slicer.modules.segmentations.logic().LoadSegmentationFromFile(path, True, name)
    if node is None:
        raise OSError(f"could not read segmentation {path}")
    if referenceVolumeNode is not None:
        node.SetReferenceImageGeometryParameterFromVolumeNode(referenceVolumeNode)
    return node, {}


def saveSegmentationFile(segmentationNode, path) -> str:
    """Write ``segmentationNode`` to ``path`` (``.seg.nrrd``); raises IOError on failure."""
    path = str(path)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    if hasApplicationIO():
        ok = slicer.util.saveNode(segmentationNode, path)
    else:
        storageNode = slicer.vtkMRMLSegmentationStorageNode()
        storageNode.SetFileName(path)
        ok = storageNode.WriteData(segmentationNode)
    if not ok or not os.path.isfile(path):
        raise OSError(f"could not write segmentation {path}")
    return path


def removeNodes(nodes):
    """Remove nodes and their display and storage nodes from the scene (missing ones are skipped)."""
    scene = slicer.mrmlScene
    for node in nodes:
        if node is None or node.GetScene() is None:
            continue
        extra = []
        for getter in ("GetNumberOfDisplayNodes", "GetNumberOfStorageNodes"):
            if hasattr(node, getter):
                count = getattr(node, getter)()
                nth = "GetNthDisplayNode" if "Display" in getter else "GetNthStorageNode"
                extra.extend(getattr(node, nth)(i) for i in range(count))
        scene.RemoveNode(node)
        for other in extra:
            if other is not None and other.GetScene() is not None:
                scene.RemoveNode(other)
