"""refineStudy(..., workers=N): Slicer's console batch run by the engine's own batch in a child process."""
from __future__ import annotations

import hashlib
import threading

import numpy as np
import pytest

from batch_cases import make_cases, masks_of, read_summary, same_masks, stable_rows, write_manifest
from slicer_fixture import logic, mrml_scene, require_engine, scene_state, slicer_app  # noqa: F401

from NeARSlicerLib.batch import SUMMARY_COLUMNS, read_manifest, run_batch


def _digests(folder):
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_refine_study_with_workers_is_the_engine_batch(logic, mrml_scene, tmp_path):
    """Cases as (volume, segmentation, segment) tuples on a pool of two workers: the contract's folder,
    the same masks and rows as `nearslicer batch` in-process, a bad case recorded, the scene untouched."""
    require_engine()
    rows = make_cases(tmp_path / "cases", 3)
    cases = [(r["image"] or None, r["mask"], None) for r in rows]
    cases[2] = (None, rows[2]["mask"], "right")  # one segment of the .seg.nrrd, by name
    cases.append((None, str(tmp_path / "cases" / "gone_seg.nii.gz")))
    before = scene_state(mrml_scene)
    seen = []
    out = tmp_path / "out"
    result = logic.refineStudy(cases, out, workers=2, preset="fast",
                               progress=lambda fraction, message="": seen.append(fraction))
    assert scene_state(mrml_scene) == before
    assert seen and seen[-1] == 1.0 and seen == sorted(seen)
    assert read_summary(out / "summary.csv") == result
    with open(out / "summary.csv") as f:
        assert f.readline().strip().split(",") == SUMMARY_COLUMNS
    by_case = {r["case"]: r for r in result}
    assert set(by_case) == {"c0", "c1", "c2", "gone_seg"}  # named after the volume, as before
    assert "file not found" in by_case["gone_seg"]["error"]
    assert by_case["c2"]["segment"] == "right" and by_case["c2"]["output"] == str(out / "c2.seg.nrrd")
    assert by_case["c0"]["output"] == str(out / "c0.nii.gz")

    # the same cases through the engine batch in this process give the same masks and rows
    manifest = write_manifest(tmp_path / "m.csv", [
        {"case": "c0", "mask": rows[0]["mask"], "image": rows[0]["image"], "label": ""},
        {"case": "c1", "mask": rows[1]["mask"], "image": rows[1]["image"], "label": ""},
        {"case": "c2", "mask": rows[2]["mask"], "image": "", "label": "right"},
        {"case": "gone_seg", "mask": str(tmp_path / "cases" / "gone_seg.nii.gz"), "image": "", "label": ""}])
    direct = tmp_path / "direct"
    run_batch(read_manifest(manifest), direct, {"preset": "fast", "seed": 0}, progress_bar=False)
    assert same_masks(masks_of(out), masks_of(direct))
    assert stable_rows(result) == stable_rows(read_summary(direct / "summary.csv"))


def test_engine_batch_into_the_input_folder_keeps_the_inputs_byte_identical(logic, tmp_path):
    """A folder holding <case>.seg.nrrd refined into itself: the input stays byte-identical, the result
    is <case>.NeAR.seg.nrrd; a second run without overwrite is refused before computing, with it the
    input is still untouched."""
    require_engine()
    from NeARSlicerLib.errors import InputError

    folder = tmp_path / "cases"
    make_cases(folder, 1)
    inputs = _digests(folder)
    rows = logic.refineStudy(folder, folder, workers=1, preset="fast")
    assert [r["error"] for r in rows] == ["", ""]  # two segments
    after = _digests(folder)
    assert {k: after[k] for k in inputs} == inputs
    assert set(after) == set(inputs) | {"c0.NeAR.seg.nrrd", "summary.csv"}
    with pytest.raises(InputError, match="pass --resume to continue"):
        logic.refineStudy(folder, folder, workers=1, preset="fast")
    assert _digests(folder) == after
    logic.refineStudy(folder, folder, workers=1, preset="fast", overwrite=True)
    final = _digests(folder)
    assert {k: final[k] for k in inputs} == inputs
    assert masks_of(folder).keys() == {"c0.NeAR.seg.nrrd", "c0.seg.nrrd"}


def test_engine_batch_cancel_stops_the_child_and_keeps_finished_rows(logic, tmp_path):
    require_engine()
    from NeARSlicerLib.errors import Cancelled

    make_cases(tmp_path / "cases", 4, with_seg_nrrd=False)
    stop = threading.Event()

    def progress(fraction, message=""):
        if fraction > 0:  # the first case is done: cancel the rest
            stop.set()

    with pytest.raises(Cancelled):
        logic.refineStudy(tmp_path / "cases", tmp_path / "out", workers=1, preset="fast", progress=progress,
                          cancel=stop)
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert 1 <= len(rows) < 4 and all(r["error"] == "" for r in rows)
    # resume finishes the batch: every case once
    done = logic.refineStudy(tmp_path / "cases", tmp_path / "out", workers=1, preset="fast", resume=True)
    assert sorted(r["case"] for r in done) == ["c0", "c1", "c2", "c3"]


def test_unsupported_option_is_refused(logic, tmp_path):
    from NeARSlicerLib.errors import InputError

    make_cases(tmp_path / "cases", 1)
    with pytest.raises(InputError, match=r"\['margin_mm'\] are not supported"):
        logic.refineStudy(tmp_path / "cases", tmp_path / "out", workers=1, margin_mm=8.0)
    assert not (tmp_path / "out" / "summary.csv").exists()


def test_a_console_batch_records_the_settings_that_a_resume_with_workers_compares(logic, tmp_path):
    """refineStudy in Slicer's process writes the settings cell that the engine's batch writes for the same
    options, so a resume through the engine's batch (workers=) keeps its cases under those settings and
    runs them again under others. Before, the cell was empty, and any settings passed as the same."""
    require_engine()
    from NeARSlicerLib.batch import plan_batch, read_manifest
    from NeARSlicerLib.cli import _option_fields, build_parser
    from NeARSlicerLogic.batch_engine import command, writeManifest

    rows = make_cases(tmp_path / "cases", 1)  # c0.seg.nrrd, two segments, no image
    case = {"volume": None, "segmentation": rows[0]["mask"], "segment": None}
    out = tmp_path / "out"
    written = logic.refineStudy([case], out, preset="fast")
    assert [r["error"] for r in written] == ["", ""]
    manifest = tmp_path / "manifest.csv"
    writeManifest(manifest, [("c0", case)])

    def engine_options(**options):
        """The refine options of the engine's batch that refineStudy(..., workers=1, **options) starts."""
        return _option_fields(build_parser().parse_args(command("python", ["--manifest", str(manifest)], out,
                                                                workers=1, options=options)[3:]))

    same, other = engine_options(preset="fast"), engine_options(preset="default")
    plan = plan_batch(read_manifest(manifest), out, same, resume=True)
    assert plan.skipped == ["c0"] and plan.tasks == [] and plan.other_settings == {}
    plan = plan_batch(read_manifest(manifest), out, other, resume=True)
    assert plan.other_settings == {"c0": "preset: fast -> default"} and [t.case.name for t in plan.tasks] == ["c0"]
