"""A case of many segments refined on several workers at once.

A case is one task, and so one worker: a TotalSegmentator label map refined with ``--label all`` (41
structures of the example CT, 117 of a full scan) kept one core busy while the others idled. When a
batch has fewer cases than workers, ``split`` makes each case of several segments into part tasks,
each refining every n-th segment (``CaseTask.part``) and writing nothing; ``CaseParts`` collects a
case's parts as they finish and, once all are in, writes its output exactly as one task would have
(whole or absent: nothing is written when any part failed) and gives its rows in the case's order.
"""
from __future__ import annotations

import os
import time
from dataclasses import dataclass, replace
from typing import Dict, List, Optional, Sequence

from .batch import CaseTask, empty_structures, failed_rows, named_labels, write_case_output
from .errors import InputError


@dataclass
class PartResult:
    """What a part task returns: its segments' positions in the case, their rows and refined masks
    (``BoxedMask``), and (part 0 only) the case's segment table for the output, with its grid."""

    positions: List[int]
    rows: List[dict]
    refined: List[tuple]
    table: Optional[list]
    grid: object  # None: a part whose structure files were all empty
    own_originals: bool = False  # ``table`` holds this part's originals only, one per position (a folder)


def segment_count(task: CaseTask) -> Optional[int]:
    """How many segments a case refines when that is known without reading its masks: the labels it
    names, a folder's mask files, or a .seg.nrrd's segments (its header) less earlier results; None
    when it may be several but the count is unknown (``all`` of a label map); 1 when it is one."""
    from .cases import structure_files
    from .io import is_segmentation_file, segment_table

    case = task.case
    if case.error:
        return 1
    named = named_labels(case.label)
    if named:
        return len(named)
    if os.path.isdir(case.mask):  # at most one segment per mask file (empty ones are skipped)
        return len(structure_files(case.mask))
    if case.label is not None:  # "all": the values present in the map
        return None
    if is_segmentation_file(case.mask):
        try:
            return sum(1 for s in segment_table(case.mask) if not s["name"].endswith(" (NeAR)"))
        except Exception:  # noqa: BLE001 - unreadable: the task itself reports it
            return 1
    return 1


def split(tasks: Sequence[CaseTask], workers: Optional[int]) -> List[CaseTask]:
    """``tasks`` with each case of several segments made into as many part tasks as the workers the
    cases leave idle (at most one per segment); unchanged when the cases fill the workers."""
    if not workers or workers <= 1 or len(tasks) >= workers:
        return list(tasks)
    per_case = -(-int(workers) // max(1, len(tasks)))
    out: List[CaseTask] = []
    for task in tasks:
        count = segment_count(task)
        parts = per_case if count is None else min(per_case, count)
        if parts < 2:
            out.append(task)
        else:
            out += [replace(task, part=(index, parts)) for index in range(parts)]
    return out


class CaseParts:
    """The parts of split cases, kept until each case is whole."""

    def __init__(self) -> None:
        self._got: Dict[str, Dict[int, object]] = {}

    def add(self, task: CaseTask, result) -> Optional[List[dict]]:
        """The case's rows once ``result`` completes its parts (its output then written), else None.
        ``result``: a ``PartResult``, or the error rows of a part that failed."""
        got = self._got.setdefault(task.case.name, {})
        got[task.part[0]] = result
        if len(got) < task.part[1]:
            return None
        del self._got[task.case.name]
        return _whole(task, [got[index] for index in range(task.part[1])])

    def __len__(self) -> int:
        return len(self._got)


def _whole(task: CaseTask, results: Sequence[object]) -> List[dict]:
    """A case's rows from all its parts' results, its output written when every part refined."""
    failed = [r for r in results if not isinstance(r, PartResult)]
    if failed:
        return failed[0]  # the case's error, as one task would have recorded its first
    started = time.perf_counter()
    done = sorted(((p, row, refined) for r in results for p, row, refined in zip(r.positions, r.rows, r.refined)),
                  key=lambda item: item[0])
    grids = [r.grid for r in results if r.grid is not None]
    try:
        if not done:
            raise InputError(empty_structures(task.case))
        if any(not g.same_as(grids[0]) for g in grids):
            from .geometry import grid_difference

            other = next(g for g in grids if not g.same_as(grids[0]))
            raise InputError(f"the mask files of {task.case.mask} are on different grids "
                             f"({grid_difference(other, grids[0])})")
        if results[0].own_originals:  # each part's originals, in the case's order
            table = [t for _, t in sorted(((p, t) for r in results for p, t in zip(r.positions, r.table)),
                                          key=lambda item: item[0])]
        else:
            table = results[0].table
        write_case_output(task.output, table, [refined for _, _, refined in done], grids[0])
    except Exception as exc:  # noqa: BLE001 - recorded; the batch goes on
        return failed_rows(task, exc, time.perf_counter() - started)
    return [row for _, row, _ in done]
