"""Review queue of a refined batch folder in the scene: one case after the other, red vs blue,
accept / reject / needs edit. No Qt.

The rows and the decisions are those of ``NeARSlicerLib.review_status`` (the same reader and writer
as the HTML report of ``nearslicer report``): a decision is written at once, atomically, into the
``review`` column of the batch's summary CSV. **Accept** also makes the refined segment the segment
of record in the case's ``.seg.nrrd`` (``apply.acceptRefinement``, then the file is rewritten
atomically). **Reject** and **Needs edit** change only the CSV: nothing is deleted. Reopening the
folder resumes at the first case without a decision.

Outputs of ``nearslicer batch`` written by the engine carry no NeARSlicer segment tags; the pair is
then found by name (``<name>`` and ``<name> (NeAR)``) and tagged when loaded, as Slicer's own batch
(``refineStudy``) tags it.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional

import numpy as np

import slicer
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.review_status import BatchRow, first_unreviewed, read_batch, set_review, sort_rows

from . import io as nio
from .apply import acceptRefinement
from .common import (
    ORIGINAL_REVIEW_COLOR,
    ORIGINAL_SUFFIX,
    REFINED_COLOR,
    REFINED_SUFFIX,
    TAG_ACCEPTED,
    TAG_ROLE,
    TAG_SOURCE,
    segmentTag,
)
from .review import showComparison

__all__ = ["ReviewQueue", "DECISIONS"]

DECISIONS = ("accepted", "rejected", "needs_edit")


class ReviewQueue:
    """The cases of a batch folder in review order, one loaded at a time.

    ``rows``: every row of the summary (failed ones too, listed last), sorted by ``order``
    (``change``: largest volume change first; ``confidence``: lowest first). ``index``: the current
    row. ``volumeNode``, ``segmentationNode``, ``originalId``, ``refinedId``: what is shown now.
    """

    def __init__(self):
        self.folder: Optional[Path] = None
        self.summaryPath: Optional[Path] = None
        self.rows: List[BatchRow] = []
        self.order = "change"
        self.index = -1
        self.volumeNode = None
        self.segmentationNode = None
        self.originalId = ""
        self.refinedId = ""
        self._nodes: list = []

    # ------------------------------------------------------------------ the list
    def open(self, folder, order: str = "change", load: bool = True) -> Optional[BatchRow]:
        """Read the batch folder; go to the first case without a decision (where the reviewer
        stopped), or the first case when all are decided. Loads it unless ``load`` is False."""
        summaryPath, rows = read_batch(folder)
        self.close()
        self.summaryPath, self.folder, self.order = summaryPath, summaryPath.parent, order
        self.rows = sort_rows(rows, order)
        index = first_unreviewed(self.rows)
        if index >= len(self.rows):
            index = next((i for i, row in enumerate(self.rows) if not row.failed), -1)
        self.index = index
        if load and index >= 0:
            return self.load(index)
        return self.current

    def setOrder(self, order: str) -> None:
        """Sort again (``change`` or ``confidence``), staying on the current row."""
        current = self.current
        self.rows = sort_rows(self.rows, order)
        self.order = order
        if current is not None:
            self.index = next(i for i, row in enumerate(self.rows) if row is current)

    @property
    def current(self) -> Optional[BatchRow]:
        return self.rows[self.index] if 0 <= self.index < len(self.rows) else None

    def reviewable(self, index: int) -> bool:
        return 0 <= index < len(self.rows) and not self.rows[index].failed

    def _step(self, direction: int) -> Optional[BatchRow]:
        index = self.index + direction
        while 0 <= index < len(self.rows) and not self.reviewable(index):
            index += direction
        if not self.reviewable(index):
            return None  # at the end: the current case stays
        return self.load(index)

    def next(self) -> Optional[BatchRow]:
        """Load the next reviewable case; None (nothing changed) after the last."""
        return self._step(+1)

    def previous(self) -> Optional[BatchRow]:
        """Load the previous reviewable case; None (nothing changed) before the first."""
        return self._step(-1)

    def counts(self) -> dict:
        """How many rows are decided, undecided and failed."""
        out = {"total": len(self.rows), "failed": sum(r.failed for r in self.rows)}
        for status in DECISIONS:
            out[status] = sum(r.review == status and not r.failed for r in self.rows)
        out["undecided"] = out["total"] - out["failed"] - sum(out[s] for s in DECISIONS)
        return out

    def tableRows(self) -> List[tuple]:
        """One text tuple per row for a table: case, segment, change %, Dice, confidence, review."""
        def number(value, fmt):
            return "" if value is None else format(value, fmt)

        return [(row.case, row.segment, number(row.change_percent, "+.1f"), number(row.dice, ".3f"),
                 number(row.confidence, ".2f"), "failed" if row.failed else row.review.replace("_", " "))
                for row in self.rows]

    def describe(self) -> str:
        """A status line: where the reviewer is, the shown case's numbers, what is left."""
        if self.summaryPath is None:
            return "No batch open."
        counts = self.counts()
        left = f"{counts['undecided']} of {counts['total'] - counts['failed']} cases left to review"
        if counts["failed"]:
            left += f", {counts['failed']} failed in the batch"
        row = self.current
        if row is None or self.segmentationNode is None:
            return f"{self.folder.name}: {left}."
        numbers = []
        if row.change_percent is not None:
            numbers.append(f"volume {row.change_percent:+.1f} %")
        if row.dice is not None:
            numbers.append(f"Dice(original, refined) {row.dice:.3f}")
        if row.confidence is not None:
            numbers.append(f"confidence {row.confidence:.2f}")
        decided = f" -- {row.review.replace('_', ' ')}" if row.review else ""
        shown = "" if self.volumeNode is not None else " (no CT recorded)"
        return (f"{self.index + 1}/{len(self.rows)}: {_label(row)}{shown}: {', '.join(numbers)}"
                f"{decided}. Red: original, blue: refined. {left}.")

    # ------------------------------------------------------------------ the scene
    def close(self) -> None:
        """Remove the nodes this queue added to the scene (never others)."""
        nio.removeNodes(self._nodes)
        self._nodes = []
        self.volumeNode = self.segmentationNode = None
        self.originalId = self.refinedId = ""

    def load(self, index: int) -> BatchRow:
        """Show row ``index``: its CT (when recorded) and the original (red) and refined (blue)
        segments, in the compare layout where there is a layout (linked slice views)."""
        if not 0 <= index < len(self.rows):
            raise InputError(f"no case {index} in the review queue ({len(self.rows)} rows)")
        row = self.rows[index]
        if row.failed:
            raise InputError(f"case {_label(row)} failed in the batch ({row.error}); nothing to review")
        self.close()
        nodes = []
        try:
            volumeNode = None
            imagePath = row.path("image", self.folder)
            if imagePath is not None and imagePath.is_file():
                volumeNode = nio.loadVolumeFile(str(imagePath), name=f"{row.case} CT")
                nodes.append(volumeNode)
            output = row.path("output", self.folder)
            if output is None or not output.is_file():
                raise InputError(f"output of {_label(row)} not found: {output}")
            if nio.isSegmentationFile(output):
                segmentationNode, _ = nio.loadSegmentationFile(str(output), name=f"{row.case} review")
                nodes.append(segmentationNode)
                originalId, refinedId = _segmentPair(segmentationNode, row.segment, output.name)
            else:
                segmentationNode, originalId, refinedId = _maskPair(row, self.folder, output, nodes)
            showComparison(volumeNode, segmentationNode, originalId, refinedId, isolate=True, setLayout=True)
        except BaseException:
            nio.removeNodes(nodes)
            raise
        self._nodes = nodes
        self.volumeNode, self.segmentationNode = volumeNode, segmentationNode
        self.originalId, self.refinedId = originalId, refinedId
        self.index = index
        return row

    # ------------------------------------------------------------------ decisions
    def decide(self, status: str) -> BatchRow:
        """Record ``status`` (accepted | rejected | needs_edit) for the loaded case.

        Accept on a ``.seg.nrrd`` output first makes the refined segment the segment of record
        (``acceptRefinement``: the original is kept, renamed "(original)") and rewrites the file
        atomically; then the CSV. Reject and needs edit write the CSV only.
        """
        if status not in DECISIONS:
            raise InputError(f"a decision is one of {', '.join(DECISIONS)}, got {status!r}")
        row = self.current
        if row is None or self.segmentationNode is None:
            raise InputError("no case loaded: open a batch folder first")
        output = row.path("output", self.folder)
        if status == "accepted" and nio.isSegmentationFile(output):
            segment = self.segmentationNode.GetSegmentation().GetSegment(self.refinedId)
            if segmentTag(segment, TAG_ACCEPTED) != "true":
                acceptRefinement(self.segmentationNode, self.refinedId)
                from NeARSlicerLib.output_safety import atomic_path

                with atomic_path(output) as tmp:
                    nio.saveSegmentationFile(self.segmentationNode, tmp)
        set_review(self.summaryPath, row.case, row.segment, status)
        row.raw["review"] = status
        logging.info("NeAR review: %s %s", _label(row), status)
        return row


def _label(row: BatchRow) -> str:
    """'case / segment' (the case alone when the row names no segment)."""
    return f"{row.case} / {row.segment}" if row.segment else row.case


def _segmentPair(segmentationNode, name: str, fileName: str):
    """(original id, refined id) of segment ``name`` in a loaded batch ``.seg.nrrd``."""
    segmentation = segmentationNode.GetSegmentation()
    ids = [segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())]
    names = {segmentation.GetSegment(i).GetName(): i for i in ids}
    # tagged by Slicer (refineStudy, or an earlier Accept here)
    for segmentId in ids:
        segment = segmentation.GetSegment(segmentId)
        if segmentTag(segment, TAG_ROLE) != "refined":
            continue
        sourceId = segmentTag(segment, TAG_SOURCE)
        source = segmentation.GetSegment(sourceId) if sourceId else None
        if source is None:
            continue
        accepted = segmentTag(segment, TAG_ACCEPTED) == "true"
        if (accepted and segment.GetName() == name) or (not accepted and source.GetName() == name):
            return sourceId, segmentId
    # written by the engine (nearslicer batch): by name, tagged now so that Accept works as in Slicer
    if name in names and name + REFINED_SUFFIX in names:
        originalId, refinedId = names[name], names[name + REFINED_SUFFIX]
        refined = segmentation.GetSegment(refinedId)
        refined.SetTag(TAG_ROLE, "refined")
        refined.SetTag(TAG_SOURCE, originalId)
        return originalId, refinedId
    if name in names and name + ORIGINAL_SUFFIX in names:  # accepted elsewhere, tags lost
        originalId, refinedId = names[name + ORIGINAL_SUFFIX], names[name]
        refined = segmentation.GetSegment(refinedId)
        for tag, value in ((TAG_ROLE, "refined"), (TAG_SOURCE, originalId), (TAG_ACCEPTED, "true")):
            refined.SetTag(tag, value)
        return originalId, refinedId
    raise InputError(f"{fileName} has no segments '{name}' and '{name}{REFINED_SUFFIX}' "
                     f"(it has: {', '.join(sorted(names)) or 'none'})")


def _maskPair(row: BatchRow, folder: Path, output: Path, nodes: list):
    """A segmentation node with the row's input mask (original) and its refined mask file
    (``<case>.nii.gz``), both on the refined file's grid. Returns (node, original id, refined id)."""
    from NeARSlicerLib.io import read_mask

    maskPath = row.path("mask", folder)
    if maskPath is None or not maskPath.is_file():
        raise InputError(f"input mask of {_label(row)} not found: {maskPath}")
    original, _, _ = read_mask(str(maskPath), label=row.text("label") or None)
    reference = nio.loadVolumeFile(str(output), name=f"{row.case} refined__labelmap", labelmap=True)
    try:
        refined = np.asarray(slicer.util.arrayFromVolume(reference)) != 0
        if refined.shape != original.shape:
            raise InputError(f"input mask {maskPath.name} {original.shape} and output {output.name} "
                             f"{refined.shape} are not on one grid")
        node = slicer.mrmlScene.AddNewNodeByClass("vtkMRMLSegmentationNode", f"{row.case} review")
        nodes.append(node)
        node.CreateDefaultDisplayNodes()
        node.SetReferenceImageGeometryParameterFromVolumeNode(reference)
        segmentation = node.GetSegmentation()
        originalId = segmentation.AddEmptySegment("", row.segment, ORIGINAL_REVIEW_COLOR)
        slicer.util.updateSegmentBinaryLabelmapFromArray(np.asarray(original, np.uint8), node, originalId, reference)
        refinedId = segmentation.AddEmptySegment("", row.segment + REFINED_SUFFIX, REFINED_COLOR)
        slicer.util.updateSegmentBinaryLabelmapFromArray(refined.astype(np.uint8), node, refinedId, reference)
        refinedSegment = segmentation.GetSegment(refinedId)
        refinedSegment.SetTag(TAG_ROLE, "refined")
        refinedSegment.SetTag(TAG_SOURCE, originalId)
    finally:
        nio.removeNodes([reference])
    return node, originalId, refinedId
