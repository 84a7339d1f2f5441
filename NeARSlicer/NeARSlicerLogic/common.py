"""Names, colors, tags and small helpers shared by the NeARSlicer logic modules. No Qt."""

from __future__ import annotations

import math
from typing import Callable, Optional

import numpy as np
import vtk

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

# Context kept around a segment (mm, each side): the engine's default margin (8 mm) plus its
# working field of view (64 mm) -- the engine never reads image or mask beyond that.
CONTEXT_MM = 72.0


def cancelFunction(cancel) -> Optional[Callable[[], bool]]:
    """Accept a callable, a ``threading.Event`` (or anything with ``is_set``), or None."""
    if cancel is None:
        return None
    if hasattr(cancel, "is_set"):
        return cancel.is_set
    if callable(cancel):
        return cancel
    raise TypeError("cancel must be a callable returning bool or a threading.Event")


def nodeIds(scene) -> set:
    return {scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes())}


def segmentTag(segment, name: str, default: str = "") -> str:
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
