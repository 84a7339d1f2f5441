"""The rows of a batch folder and their review status: one reader and one writer for the HTML report
(``review_report``) and the Slicer review queue (``NeARSlicerLogic.review_queue``).

A batch folder holds ``summary.csv`` (``nearslicer batch``; columns of contract 1 in the README) or
``nearslicer_summary.csv`` (Slicer's ``refineStudy``: case, segment, voxels_before, voxels_after,
dice, seconds, error, output). Missing optional columns read as empty. The review decision lives in
a ``review`` column of that same CSV (empty | accepted | rejected | needs_edit), added on the first
decision; every other column and row is kept as it was, and the file is rewritten atomically.
"""

from __future__ import annotations

import csv
import io
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple, Union

from .errors import InputError
from .output_safety import atomic_write_text, locked

__all__ = ["SUMMARY_NAMES", "REVIEW_STATES", "REVIEW_COLUMN", "BatchRow", "find_summary", "read_batch",
           "set_review", "sort_rows", "first_unreviewed"]

SUMMARY_NAMES = ("summary.csv", "nearslicer_summary.csv")  # nearslicer batch, then Slicer's refineStudy
REVIEW_COLUMN = "review"
REVIEW_STATES = ("", "accepted", "rejected", "needs_edit")
ORDERS = ("change", "confidence")


@dataclass
class BatchRow:
    """One case and segment of a batch, as read from the summary CSV (text columns kept in ``raw``)."""

    case: str
    segment: str
    raw: Dict[str, str] = field(default_factory=dict)

    def text(self, column: str) -> str:
        return (self.raw.get(column) or "").strip()

    def number(self, column: str) -> Optional[float]:
        """The column as a float, or None when empty or not a finite number."""
        try:
            value = float(self.text(column))
        except ValueError:
            return None
        return value if math.isfinite(value) else None

    @property
    def key(self) -> Tuple[str, str]:
        return self.case, self.segment

    @property
    def error(self) -> str:
        return self.text("error")

    @property
    def failed(self) -> bool:
        return bool(self.error)

    @property
    def review(self) -> str:
        return self.text(REVIEW_COLUMN)

    @property
    def voxels_before(self) -> Optional[float]:
        return self.number("voxels_before")

    @property
    def voxels_after(self) -> Optional[float]:
        return self.number("voxels_after")

    @property
    def change_percent(self) -> Optional[float]:
        """Volume change refined vs original in % (None when unknown or the original is empty)."""
        before, after = self.voxels_before, self.voxels_after
        if before is None or after is None or before <= 0:
            return None
        return 100.0 * (after - before) / before

    @property
    def dice(self) -> Optional[float]:
        return self.number("dice")

    @property
    def confidence(self) -> Optional[float]:
        return self.number("confidence")

    def path(self, column: str, folder: Path) -> Optional[Path]:
        """A path column as an absolute Path (relative ones are taken from the batch ``folder``); the
        ``output`` as ``batch.recorded_output`` finds it (a folder copied or moved for review reads its
        own outputs, not, or no longer, those at the recorded place)."""
        value = self.text(column)
        if not value:
            return None
        if column == "output":
            from .batch import recorded_output

            return recorded_output(value, folder)
        path = Path(value)
        return path if path.is_absolute() else folder / path


def find_summary(batch: Union[str, os.PathLike]) -> Path:
    """The summary CSV of a batch folder (or the CSV itself when a file is given)."""
    batch = Path(os.path.abspath(os.fspath(batch)))
    if batch.is_file():
        return batch
    if not batch.is_dir():
        raise InputError(f"batch folder {batch} does not exist")
    for name in SUMMARY_NAMES:
        if (batch / name).is_file():
            return batch / name
    raise InputError(f"{batch} is not a batch folder: it has no {' or '.join(SUMMARY_NAMES)}")


def _read_table(path: Path) -> Tuple[List[str], List[Dict[str, str]]]:
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise InputError(f"cannot read batch summary {path} ({exc})") from None
    reader = csv.DictReader(io.StringIO(text))
    header = list(reader.fieldnames or [])
    for needed in ("case", "segment"):
        if needed not in header:
            raise InputError(f"batch summary {path} has no '{needed}' column (columns: {', '.join(header) or 'none'})")
    rows = [{k: (v if v is not None else "") for k, v in row.items() if k is not None} for row in reader]
    return header, rows


def read_batch(batch: Union[str, os.PathLike]) -> Tuple[Path, List[BatchRow]]:
    """``(summary path, rows in file order)`` of a batch folder. Unknown review values read as
    empty (never guessed)."""
    path = find_summary(batch)
    _, rows = _read_table(path)
    out = []
    for row in rows:
        if row.get(REVIEW_COLUMN, "").strip() not in REVIEW_STATES:
            row[REVIEW_COLUMN] = ""
        out.append(BatchRow(case=row.get("case", "").strip(), segment=row.get("segment", "").strip(), raw=row))
    return path, out


def set_review(summary: Union[str, os.PathLike], case: str, segment: str, status: str) -> int:
    """Record ``status`` for (``case``, ``segment``) in the summary's ``review`` column.

    The file is read and replaced atomically under ``output_safety.locked``, so rows that a running
    batch appends meanwhile are kept, and the batch keeps this decision. Returns the number of rows
    set (a case refined twice has two).
    """
    if status not in REVIEW_STATES:
        raise InputError(f"review status must be one of {', '.join(repr(s) for s in REVIEW_STATES)}, got {status!r}")
    path = find_summary(summary)
    with locked(path):  # a running batch may be appending to the same file
        header, rows = _read_table(path)
        matched = 0
        for row in rows:
            if row.get("case", "").strip() == case and row.get("segment", "").strip() == segment:
                row[REVIEW_COLUMN] = status
                matched += 1
        if not matched:
            raise InputError(f"case {case!r} / segment {segment!r} is not in {path}")
        if REVIEW_COLUMN not in header:
            header = header + [REVIEW_COLUMN]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=header, lineterminator="\n", extrasaction="ignore")
        writer.writeheader()
        for row in rows:
            writer.writerow({k: row.get(k, "") for k in header})
        atomic_write_text(path, buffer.getvalue())
    return matched


def sort_rows(rows: Sequence[BatchRow], order: str = "change") -> List[BatchRow]:
    """Rows to review first at the top: ``change`` = largest absolute volume change (then lowest
    Dice), ``confidence`` = lowest confidence first. Rows lacking the number and failed rows go last,
    in file order (the sort is stable)."""
    if order not in ORDERS:
        raise InputError(f"review order must be one of {', '.join(ORDERS)}, got {order!r}")

    def key(row: BatchRow):
        if order == "change":
            change, dice = row.change_percent, row.dice
            return (row.failed, change is None, -abs(change) if change is not None else 0.0,
                    dice if dice is not None else 1.0)
        confidence = row.confidence
        return (row.failed, confidence is None, confidence if confidence is not None else 0.0)

    return sorted(rows, key=key)


def first_unreviewed(rows: Sequence[BatchRow]) -> int:
    """Index of the first row without a decision that can be reviewed (no error); where the
    reviewer stopped. ``len(rows)`` when every row is done."""
    for index, row in enumerate(rows):
        if not row.failed and not row.review:
            return index
    return len(rows)
