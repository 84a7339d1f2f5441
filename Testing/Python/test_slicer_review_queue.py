"""The Slicer review queue (NeARSlicerLogic.review_queue) headless on slicer-core's real MRML:
order, next/previous, decisions persisted in the batch and read back, Reject keeps everything,
Accept is acceptRefinement."""

from __future__ import annotations

import hashlib
import shutil

import numpy as np
import pytest

from batch_folders import SEGMENT, batch_folder, phantom_cases  # noqa: F401  (pytest fixtures)
from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    CT_PATH,
    SEG_PATH,
    fake_result,
    logic,
    mrml_scene,
    require_totalseg_data,
    scene_state,
    segment_name_of,
    slicer_app,
)

# the example's adrenal glands as Slicer names them (the label table's names, or Label_N for the phantom)
RIGHT, LEFT = segment_name_of(8), segment_name_of(9)


def _digest(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _segments(node):
    """{name: (id, color, role/source/accepted tags)} of a segmentation node."""
    from NeARSlicerLogic.common import TAG_ACCEPTED, TAG_ROLE, TAG_SOURCE, segmentTag

    segmentation = node.GetSegmentation()
    out = {}
    for index in range(segmentation.GetNumberOfSegments()):
        segment = segmentation.GetNthSegment(index)
        out[segment.GetName()] = (segmentation.GetNthSegmentID(index), tuple(round(c, 4) for c in segment.GetColor()),
                                  tuple(segmentTag(segment, t) for t in (TAG_ROLE, TAG_SOURCE, TAG_ACCEPTED)), index)
    return out


def _array(node, segment_id, volume=None):
    """The segment on ``volume``'s grid, or on the segmentation's own geometry."""
    from NeARSlicerLogic.extract import segmentArray

    return np.asarray(segmentArray(node, segment_id, volume)) > 0


@pytest.fixture
def study_out(logic, mrml_scene, tmp_path, monkeypatch):
    """A real ``refineStudy`` output (nearslicer_summary.csv, tagged .seg.nrrd files): two cases of
    the example CT, the engine replaced by dilations of 1 and 2 voxels (different volume changes)."""
    require_totalseg_data()
    from scipy import ndimage as ndi

    grow = {LEFT: 1, RIGHT: 2}

    def compute(job, progress=None, cancel=None):
        logic.setJobResult(job, fake_result(job.mask, ndi.binary_dilation(job.mask, iterations=grow[job.segmentName])),
                           seconds=0.01)

    monkeypatch.setattr(logic, "computeRefinement", compute)
    out = tmp_path / "study"
    logic.refineStudy([(str(CT_PATH), str(SEG_PATH), 9), (str(CT_PATH), str(SEG_PATH), 8)], out)
    return out


def _queue():
    from NeARSlicerLogic.review_queue import ReviewQueue

    return ReviewQueue()


def test_queue_order_next_previous_and_what_is_shown(mrml_scene, batch_folder, phantom_cases):
    from NeARSlicerLib.review_status import read_batch

    from NeARSlicerLogic.common import ORIGINAL_REVIEW_COLOR, REFINED_COLOR

    before = scene_state(mrml_scene)
    _, rows = read_batch(batch_folder)
    expected = sorted((r for r in rows if not r.failed), key=lambda r: -abs(r.change_percent))
    queue = _queue()
    first = queue.open(batch_folder)
    assert [r.case for r in queue.rows] == [r.case for r in expected] + ["case99"], "largest change first, failed last"
    assert first.case == expected[0].case and queue.index == 0

    seen = [first.case]
    while (row := queue.next()) is not None:
        seen.append(row.case)
        # the CT, and the original (red) and refined (blue) of this case, with the right voxels
        case = next(c for c in phantom_cases if c["name"] == row.case)
        import slicer

        assert np.allclose(slicer.util.arrayFromVolume(queue.volumeNode), case["ct"], atol=0.01)
        assert np.array_equal(_array(queue.segmentationNode, queue.originalId, queue.volumeNode), case["rough"] > 0)
        assert np.array_equal(_array(queue.segmentationNode, queue.refinedId, queue.volumeNode), case["refined"] > 0)
        display = queue.segmentationNode.GetDisplayNode()
        for segment_id, color in ((queue.originalId, ORIGINAL_REVIEW_COLOR), (queue.refinedId, REFINED_COLOR)):
            override = display.GetSegmentOverrideColor(segment_id)
            assert np.allclose([override.GetX(), override.GetY(), override.GetZ()], color, atol=1e-3)
            assert display.GetSegmentVisibility(segment_id)
    assert seen == [r.case for r in expected], "next walks the queue and skips the failed case"
    assert queue.index == 3 and queue.next() is None and queue.index == 3, "after the last: stays"
    assert queue.previous().case == expected[2].case and queue.previous().case == expected[1].case
    assert queue.previous().case == expected[0].case and queue.previous() is None and queue.index == 0
    volumes = mrml_scene.GetNumberOfNodesByClass("vtkMRMLScalarVolumeNode")
    assert volumes == 1, "one case in the scene at a time"
    queue.close()
    assert scene_state(mrml_scene) == before, "closing the queue removes what it loaded"


def test_order_by_lowest_confidence_keeps_the_current_case(tmp_path, mrml_scene, batch_folder):
    from NeARSlicerLib.review_status import read_batch

    summary = batch_folder / "summary.csv"
    text = summary.read_text().splitlines()
    header = text[0].split(",")
    column = header.index("confidence")
    # the engine may not report a confidence yet: give the rows known values to sort on
    values = {"case01": "0.9", "case02": "0.2", "case03": "", "case04": "0.5"}
    lines = [text[0]]
    for line in text[1:]:
        cells = line.split(",")
        cells[column] = values.get(cells[0], "")
        lines.append(",".join(cells))
    summary.write_text("\n".join(lines) + "\n")
    assert read_batch(batch_folder)[1][1].confidence == 0.2
    queue = _queue()
    queue.open(batch_folder, order="confidence", load=False)
    assert [r.case for r in queue.rows] == ["case02", "case04", "case01", "case03", "case99"]
    queue.index = 2
    queue.setOrder("change")
    assert queue.current.case == "case01", "re-sorting keeps the case in view"


def test_decision_is_persisted_and_the_queue_resumes(mrml_scene, batch_folder):
    from NeARSlicerLib.review_report import build_report
    from NeARSlicerLib.review_status import read_batch

    queue = _queue()
    first = queue.open(batch_folder)
    queue.decide("needs_edit")
    second = queue.next()
    queue.decide("rejected")
    queue.close()
    reviews = {r.case: r.review for r in read_batch(batch_folder)[1]}
    assert reviews[first.case] == "needs_edit" and reviews[second.case] == "rejected"
    assert sum(bool(v) for v in reviews.values()) == 2

    again = _queue()
    resumed = again.open(batch_folder)
    assert again.index == 2 and resumed.case not in (first.case, second.case), "resumes at the first undecided case"
    assert again.counts() == {"total": 5, "failed": 1, "accepted": 0, "rejected": 1, "needs_edit": 1, "undecided": 2}
    again.close()
    # the HTML report reads the same status
    page = build_report(batch_folder, full_reports=False)
    text = page.read_text()
    assert f'data-case="{first.case}"' in text
    for case, status in ((first.case, "needs_edit"), (second.case, "rejected")):
        row = text.split(f'data-case="{case}"', 1)[1].split(">", 1)[0]
        assert f'data-review="{status}"' in row


def test_reject_keeps_both_segments_and_the_file(mrml_scene, batch_folder):
    queue = _queue()
    queue.open(batch_folder, load=False)
    index = next(i for i, r in enumerate(queue.rows) if r.case == "case04")  # the .seg.nrrd case
    queue.load(index)
    output = queue.current.path("output", batch_folder)
    digest = _digest(output)
    names_before = set(_segments(queue.segmentationNode))
    queue.decide("rejected")
    assert _digest(output) == digest, "Reject does not touch the output"
    assert set(_segments(queue.segmentationNode)) == names_before == {SEGMENT, SEGMENT + " (NeAR)"}
    # needs edit and accept on a mask output (.nii.gz): the CSV only
    queue.load(next(i for i, r in enumerate(queue.rows) if r.case == "case01"))
    mask_output = queue.current.path("output", batch_folder)
    mask_digest = _digest(mask_output)
    queue.decide("accepted")
    assert _digest(mask_output) == mask_digest
    queue.close()


def test_accept_equals_accept_refinement(logic, mrml_scene, study_out, tmp_path):
    """Accept in the queue writes the .seg.nrrd that acceptRefinement + save gives, and records it."""
    import NeARSlicerLogic as L

    from NeARSlicerLib.review_status import read_batch
    from NeARSlicerLogic.common import TAG_ROLE, segmentTag

    queue = _queue()
    row = queue.open(study_out)
    assert row.segment == RIGHT, "two-voxel dilation: the larger change comes first"
    output = row.path("output", study_out)
    copy = tmp_path / "by_hand.seg.nrrd"
    shutil.copyfile(output, copy)
    queue.decide("accepted")
    queue.close()
    assert [r.review for r in read_batch(study_out)[1]] == ["", "accepted"]

    by_hand, _ = L.loadSegmentationFile(str(copy))
    segmentation = by_hand.GetSegmentation()
    refined_id = next(segmentation.GetNthSegmentID(i) for i in range(segmentation.GetNumberOfSegments())
                      if segmentTag(segmentation.GetNthSegment(i), TAG_ROLE) == "refined")
    logic.acceptRefinement(by_hand, refined_id)
    written, _ = L.loadSegmentationFile(str(output))
    expected, got = _segments(by_hand), _segments(written)
    assert got == expected
    assert set(got) == {RIGHT, f"{RIGHT} (original)"} and got[RIGHT][2][2] == "true"
    for name, (segment_id, *_rest) in expected.items():
        assert np.array_equal(_array(written, got[name][0]), _array(by_hand, segment_id)), name
    L.removeNodes([by_hand, written])

    # accepting again (e.g. after reopening) does not accept twice; the file stays as it is
    digest = _digest(output)
    queue = _queue()
    queue.open(study_out, load=False)
    queue.load(next(i for i, r in enumerate(queue.rows) if r.segment == RIGHT))
    assert queue.segmentationNode.GetSegmentation().GetSegment(queue.refinedId).GetName() == RIGHT
    queue.decide("accepted")
    assert _digest(output) == digest
    queue.close()


def test_accept_on_an_engine_written_seg_nrrd(mrml_scene, batch_folder, phantom_cases):
    """nearslicer batch's .seg.nrrd has no Slicer tags: the pair is found by name and accepted the same way."""
    import NeARSlicerLogic as L

    case = phantom_cases[-1]
    queue = _queue()
    queue.open(batch_folder, load=False)
    queue.load(next(i for i, r in enumerate(queue.rows) if r.case == "case04"))
    queue.decide("accepted")
    output = queue.current.path("output", batch_folder)
    queue.close()
    node, _ = L.loadSegmentationFile(str(output))
    segments = _segments(node)
    assert set(segments) == {SEGMENT, SEGMENT + " (original)"}
    assert segments[SEGMENT][2][0] == "refined" and segments[SEGMENT][2][2] == "true"
    L.removeNodes([node])
    from NeARSlicerLib.io import read_segments  # the voxels, read back independently of Slicer

    import SimpleITK as sitk

    segments_read, grid = read_segments(str(output))
    full = case["grid"].to_sitk(np.zeros(case["grid"].shape, np.uint8))

    def on_case_grid(mask):  # Slicer may store the segments cropped to their extent: same voxels, placed in LPS
        moved = sitk.Resample(grid.to_sitk(mask.astype(np.uint8)), full, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
        return sitk.GetArrayFromImage(moved) > 0

    masks = {s["name"]: on_case_grid(s["mask"]) for s in segments_read}
    assert np.array_equal(masks[SEGMENT], case["refined"] > 0)
    assert np.array_equal(masks[SEGMENT + " (original)"], case["rough"] > 0)


def test_bad_use_is_refused_clearly(mrml_scene, batch_folder, tmp_path):
    from NeARSlicerLib.errors import InputError

    queue = _queue()
    with pytest.raises(InputError, match="no case loaded"):
        queue.decide("accepted")
    with pytest.raises(InputError, match="not a batch folder"):
        queue.open(tmp_path)
    queue.open(batch_folder, load=False)
    with pytest.raises(InputError, match=r"case case99 failed in the batch \(InputError: mask is empty\)"):
        queue.load(len(queue.rows) - 1)
    queue.load(0)
    with pytest.raises(InputError, match="a decision is one of accepted, rejected, needs_edit"):
        queue.decide("maybe")
    queue.close()


def test_report_reads_a_case_accepted_in_slicer(mrml_scene, batch_folder):
    """After Accept (names changed, file rewritten by Slicer) the HTML report still shows the case."""
    from NeARSlicerLib.review_report import build_report

    queue = _queue()
    queue.open(batch_folder, load=False)
    queue.load(next(i for i, r in enumerate(queue.rows) if r.case == "case04"))
    queue.decide("accepted")
    queue.close()
    text = build_report(batch_folder, full_reports=False).read_text()
    row = text.split('data-case="case04"', 1)[1].split("</tr>", 1)[0]
    assert 'data-review="accepted"' in row and "<img" in row and "not shown" not in row


def test_table_rows_and_status_line(mrml_scene, batch_folder):
    """What the module's table and status line show (the widget only copies these)."""
    queue = _queue()
    assert queue.describe() == "No batch open." and queue.tableRows() == []
    row = queue.open(batch_folder)
    table = queue.tableRows()
    assert len(table) == 5 and all(len(r) == 6 for r in table)  # the .ui's six columns
    assert table[0][:2] == (row.case, row.segment) and table[0][2] == f"{row.change_percent:+.1f}"
    assert table[0][3] == f"{row.dice:.3f}" and table[-1][5] == "failed"
    line = queue.describe()
    assert line.startswith(f"1/5: {row.case} / {row.segment}: volume {row.change_percent:+.1f} %")
    assert "4 of 4 cases left to review, 1 failed in the batch" in line
    queue.decide("accepted")
    assert queue.tableRows()[0][5] == "accepted" and "-- accepted" in queue.describe()
    assert "3 of 4 cases left" in queue.describe()
    queue.close()
