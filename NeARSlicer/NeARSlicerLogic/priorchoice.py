"""Which prior refines a segment: the module panel's choice, the segment's own description for
``auto``, and a plain line saying which prior was used. No Qt."""

from __future__ import annotations

from typing import Optional

import vtk

from NeARSlicerLib.errors import InputError

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
    parts = [segment.GetName() or ""]
    if hasattr(segment, "GetTerminology"):  # Slicer 5.8+
        parts.append(segment.GetTerminology() or "")
    else:
        value = vtk.reference("")
        if segment.GetTag("TerminologyEntry", value):
            parts.append(str(value.get()))
    return " | ".join(p for p in parts if p)


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
