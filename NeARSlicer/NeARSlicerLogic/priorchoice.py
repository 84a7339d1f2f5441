"""Which prior refines a segment: the module panel's choice, the segment's own description for
``auto``, and a plain line saying which prior was used. No Qt."""

from __future__ import annotations

import re
from typing import Optional

import vtk

from NeARSlicerLib.errors import InputError
from NeARSlicerLib.label_table import label_names

# the names Slicer gives the segments of a label map it reads (its segmentation reader: Segment_8; a
# label map volume imported: Label_8), and bare values: they say nothing of the structure
_DEFAULT_SEGMENT_NAME = re.compile(r"(?:Segment_|Label_)?(\d+)")

# The module panel's prior choices (the parameter node's ``priorChoice``), and the engine name each
# stands for; "file" uses the panel's prior path.
PRIOR_CHOICES = ("auto", "adrenal", "general", "file")
_ENGINE_NAMES = {"auto": "auto", "adrenal": "adrenal", "general": "anatomy"}
_VARIANTS = {"s": "shape only", "sa": "shape + image"}


def segmentStructure(segmentationNode, segmentId) -> str:
    """The segment's name and its terminology text (e.g. ``...SCT^23451007^Adrenal gland...``),
    joined by `` | ``: what ``auto`` reads to pick the adrenal or the general prior."""
    segment = segmentationNode.GetSegmentation().GetSegment(segmentId) if segmentationNode else None
    if segment is None:
        return ""
    parts = [_tableName(segmentationNode, segment) or segment.GetName() or ""]
    if hasattr(segment, "GetTerminology"):  # Slicer 5.8+
        parts.append(segment.GetTerminology() or "")
    else:
        value = vtk.reference("")
        if segment.GetTag("TerminologyEntry", value):
            parts.append(str(value.get()))
    return " | ".join(p for p in parts if p)


def _tableName(segmentationNode, segment) -> str:
    """The label-table name of a segment that Slicer named by its value when it read a NIfTI label map
    (TotalSegmentator's multi-label output loaded as a segmentation: ``Segment_8`` is
    ``adrenal_gland_right``); empty when the segment has a name of its own or the file has no table."""
    matched = _DEFAULT_SEGMENT_NAME.fullmatch((segment.GetName() or "").strip())
    storage = segmentationNode.GetStorageNode()
    path = storage.GetFileName() if storage is not None else ""
    if not matched or not path:
        return ""
    value = int(matched.group(1))
    # a segment the user added later is also called Segment_N, but its label value is not N
    if hasattr(segment, "GetLabelValue") and int(segment.GetLabelValue()) != value:
        return ""
    return label_names(path).get(value, "")


def priorFromChoice(choice: str, path: str = "") -> str:
    """The engine's prior (name or file) for a panel choice; "file" needs ``path``."""
    key = (choice or "auto").strip().lower()
    if key == "file":
        path = str(path or "").strip()
        if path in ("", "."):
            raise InputError("prior choice 'file' needs a prior file (.safetensors): choose one, or use Auto")
        return path
    if key not in _ENGINE_NAMES:
        raise InputError(f"unknown prior choice {choice!r}: use one of {', '.join(PRIOR_CHOICES)}")
    return _ENGINE_NAMES[key]


def describePrior(info: Optional[dict]) -> str:
    """``"Prior: adrenal (shape + image)"`` from an engine result's ``info`` (its ``prior_name``,
    or the file of a prior given by path); empty when unknown."""
    info = info or {}
    name = info.get("prior_name")
    if name:
        base, _, variant = str(name).rpartition("-")
        if base and variant in _VARIANTS:
            label = "general anatomy" if base == "anatomy" else base
            return f"Prior: {label} ({_VARIANTS[variant]})"
        return f"Prior: {name}"
    path = info.get("prior")
    return f"Prior: file {str(path).replace(chr(92), '/').rsplit('/', 1)[-1]}" if path else ""
