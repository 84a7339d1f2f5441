"""A case of several segments shared among idle workers (case_parts.py): the same output as one task."""
from __future__ import annotations

import nrrd
import numpy as np

from batch_cases import read_summary, stable_rows, three_glands

from NeARSlicerLib.batch import BatchCase, CaseTask, run_batch
from NeARSlicerLib.batch_executor import LocalExecutor, SequentialExecutor
from NeARSlicerLib.boxed_mask import BoxedMask
from NeARSlicerLib.case_parts import CaseParts, PartResult, split
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import write_segmentation

FAST = {"preset": "fast", "seed": 0}
GRID = Grid((40, 40, 120), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_split_shares_a_case_among_the_workers_it_leaves_idle(tmp_path):
    box = np.zeros(GRID.shape, np.uint8)
    box[5:15, 5:15, 5:15] = 1
    seg = tmp_path / "s.seg.nrrd"
    write_segmentation(str(seg), [("a", box, (1, 0, 0)), ("b", box, (0, 1, 0)), ("c", box, (0, 0, 1)),
                                  ("a (NeAR)", box, (0, 0, 1))], GRID)
    tasks = [CaseTask(BatchCase("every", "m.nii.gz", label="all"), "o1"),
             CaseTask(BatchCase("two", "m.nii.gz", label="8;9"), "o2"),
             CaseTask(BatchCase("one", "m.nii.gz", label="8"), "o3"),
             CaseTask(BatchCase("file", str(seg)), "o4")]
    # each case alone on 4 workers (the .seg.nrrd: 3 segments, its earlier NeAR result is not refined again)
    for alone, parts in zip(tasks, (4, 2, 1, 3)):
        got = split([alone], 4)
        assert [t.part for t in got] == ([None] if parts == 1 else [(i, parts) for i in range(parts)])
    assert [t.part for t in split(tasks, 4)] == [None] * 4  # the cases fill the workers
    assert [t.part for t in split(tasks[:2], 5)] == [(0, 3), (1, 3), (2, 3), (0, 2), (1, 2)]
    assert split(tasks[:1], 1) == tasks[:1] and split(tasks[:1], None) == tasks[:1]


def test_a_case_split_among_workers_writes_what_one_task_writes(tmp_path):
    """``--label all`` of one label map on a pool of 3: three parts, one .seg.nrrd, the same bytes of
    data and header and the same rows (in the labels' order) as the case refined by one task."""
    three_glands(tmp_path / "seg.nii.gz")
    cases = [BatchCase("scan", str(tmp_path / "seg.nii.gz"), label="all")]
    one = run_batch(cases, tmp_path / "one", FAST, executor=SequentialExecutor(), progress_bar=False)
    three = run_batch(cases, tmp_path / "three", FAST, executor=LocalExecutor(3), progress_bar=False)
    assert (one.done, one.failed, three.done, three.failed) == (1, 0, 1, 0)
    a, b = nrrd.read(str(tmp_path / "one" / "scan.seg.nrrd")), nrrd.read(str(tmp_path / "three" / "scan.seg.nrrd"))
    assert np.array_equal(a[0], b[0])
    assert {k: str(v) for k, v in a[1].items()} == {k: str(v) for k, v in b[1].items()}
    rows_one, rows_three = read_summary(tmp_path / "one" / "summary.csv"), read_summary(tmp_path / "three" / "summary.csv")
    assert [r["segment"] for r in rows_three] == ["Label_1", "Label_2", "Label_3"]
    assert stable_rows(rows_one) == stable_rows(rows_three)


def test_a_case_whose_part_failed_writes_nothing_and_records_the_error(tmp_path):
    task = CaseTask(BatchCase("scan", str(tmp_path / "seg.nii.gz"), label="all"), str(tmp_path / "scan.seg.nrrd"))
    box = np.zeros(GRID.shape, np.uint8)
    box[5:15, 5:15, 5:15] = 1
    done = PartResult([0], [{"case": "scan", "segment": "Label_1", "error": ""}], [("Label_1", BoxedMask.of(box))],
                      [{"name": "Label_1", "mask": BoxedMask.of(box), "color": (1, 0, 0)}], GRID)
    error = [{"case": "scan", "segment": "all", "error": "RefinementError: out of memory"}]
    parts = CaseParts()
    assert parts.add(CaseTask(task.case, task.output, part=(0, 2)), done) is None and len(parts) == 1
    assert parts.add(CaseTask(task.case, task.output, part=(1, 2)), error) == error and len(parts) == 0
    assert not (tmp_path / "scan.seg.nrrd").exists()
