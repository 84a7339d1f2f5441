"""NeARSlicerLogic.refineStudy: the console batch API, headless on slicer-core."""

import csv
import os

import pytest

from slicer_fixture import (  # noqa: F401  (pytest fixtures)
    logic,
    CT_PATH,
    SEG_PATH,
    TOTALSEG_DIR,
    fake_result,
    mrml_scene,
    require_engine,
    require_totalseg_data,
    scene_state,
    segment_name_of,
    slicer_app,
)

# the batch contract's columns (shared with nearslicer batch)
CSV_COLUMNS = ["case", "segment", "label", "mask", "image", "output", "voxels_before", "voxels_after", "dice",
               "confidence", "action", "prior", "modality", "warnings", "seconds", "host", "error", "painted_slices_mm",
               "slices_interpolated", "image_restored", "image_withdrawn", "image_margin_mm", "image_margin_sides",
               "image_trimmed", "specks_removed", "specks_filled", "settings"]


def _read_csv(path):
    with open(path, newline="") as stream:
        reader = csv.DictReader(stream)
        assert reader.fieldnames == CSV_COLUMNS
        return list(reader)


def test_refine_study_two_cases_and_a_failing_one(logic, mrml_scene, tmp_path):
    """Two real cases (left adrenal by label value, right adrenal by segment name) and one broken
    case: readable .seg.nrrd outputs, a CSV row each, the failure recorded, the scene left clean."""
    require_totalseg_data()
    require_engine()
    import NeARSlicerLogic as L

    before = scene_state(mrml_scene)
    cases = [
        (str(CT_PATH), str(SEG_PATH), 9),
        (str(CT_PATH), str(SEG_PATH), segment_name_of(8)),
        (str(CT_PATH), str(tmp_path / "no_such_file.nii.gz"), 9),
    ]
    out = tmp_path / "out"
    rows = logic.refineStudy(cases, out, preset="fast")
    assert scene_state(mrml_scene) == before, "refineStudy left nodes in the scene"

    assert [r["case"] for r in rows] == ["totalseg_example", "totalseg_example_2", "totalseg_example_3"]
    ok, ok2, failed = rows
    for row, label in ((ok, 9), (ok2, 8)):
        assert row["error"] == ""
        assert row["segment"] == segment_name_of(label)
        assert int(row["voxels_before"]) > 100 and int(row["voxels_after"]) > 0
        assert 0.0 <= float(row["dice"]) <= 1.0
        assert float(row["seconds"]) > 0.0
        assert row["output"].endswith(".seg.nrrd") and os.path.isfile(row["output"])
        # the batch contract's columns: absolute inputs, the prior used (S+A: a CT was given), the host
        assert row["mask"] == str(SEG_PATH.absolute()) and row["image"] == str(CT_PATH.absolute())
        assert row["modality"] == "CT" and row["host"]
        if segment_name_of(label) == f"Label_{label}":
            # --prior auto: segments named Label_N (the phantom's) are unnamed structures -> the general
            # prior (shape only: no general S+A prior is shipped), whose warning is in the row's cell
            assert row["prior"] == "anatomy-s" and "this prior is shape-only: the image was not used" in row["warnings"]
        else:
            # the real example's TotalSegmentator label table names them adrenal glands: the adrenal S+A prior
            assert row["prior"] == "adrenal-sa" and "shape-only" not in row["warnings"], row
    assert "FileNotFoundError" in failed["error"] and failed["output"] == ""

    # the CSV on disk says the same
    assert _read_csv(out / "summary.csv") == rows

    # each output is a segmentation holding the original and the refined segment, on the CT's grid
    for row in (ok, ok2):
        segmentation, _ = L.loadSegmentationFile(row["output"])
        names = sorted(segmentation.GetSegmentation().GetNthSegment(i).GetName()
                       for i in range(segmentation.GetSegmentation().GetNumberOfSegments()))
        assert names == sorted([row["segment"], row["segment"] + " (NeAR)"])
        volume = L.loadVolumeFile(str(CT_PATH))
        import slicer

        seg = segmentation.GetSegmentation()
        refined = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation, seg.GetSegmentIdBySegmentName(row["segment"] + " (NeAR)"), volume)
        assert int((refined > 0).sum()) == int(row["voxels_after"])
        original = slicer.util.arrayFromSegmentBinaryLabelmap(
            segmentation, seg.GetSegmentIdBySegmentName(row["segment"]), volume)
        assert int((original > 0).sum()) == int(row["voxels_before"])


def test_refine_study_folder_and_failures_are_recorded(logic, mrml_scene, tmp_path, monkeypatch):
    """A folder of cases (per-case sub-folders and flat pairs); an engine failure in one case is
    recorded and the batch goes on. The engine is replaced by a stand-in: this is about the batch."""
    require_totalseg_data()
    folder = tmp_path / "cases"
    (folder / "patientA").mkdir(parents=True)
    os.symlink(CT_PATH, folder / "patientA" / "ct.nii.gz")
    os.symlink(SEG_PATH, folder / "patientA" / "seg.nii.gz")
    os.symlink(CT_PATH, folder / "patientB.nii.gz")
    os.symlink(SEG_PATH, folder / "patientB_seg.nii.gz")
    (folder / "broken").mkdir()
    os.symlink(CT_PATH, folder / "broken" / "image.nii.gz")  # no segmentation
    (folder / "totalseg" / "segmentations").mkdir(parents=True)  # TotalSegmentator's default output
    os.symlink(CT_PATH, folder / "totalseg" / "ct.nii.gz")
    os.symlink(SEG_PATH, folder / "totalseg" / "segmentations" / "spleen.nii.gz")

    calls = []

    def compute(job, progress=None, cancel=None):
        calls.append(job.segmentName)
        if len(calls) == 1:
            raise RuntimeError("GPU out of memory")
        job.result = fake_result(job.mask, job.mask)
        job.stats = {"segmentName": job.segmentName, "voxelsBefore": int(job.mask.sum()),
                     "voxelsAfter": int(job.mask.sum()), "dice": 1.0, "seconds": 0.01}

    monkeypatch.setattr(logic, "computeRefinement", compute)
    before = scene_state(mrml_scene)
    rows = logic.refineStudy(folder, tmp_path / "out", preset="fast")
    assert scene_state(mrml_scene) == before
    by_case = {}
    for row in rows:
        by_case.setdefault(row["case"], []).append(row)
    assert set(by_case) == {"patientA", "patientB", "broken", "totalseg"}
    assert "needs one segmentation and at most one image" in by_case["broken"][0]["error"]
    # a folder of one mask per structure is the engine batch's (workers=): said, not read as a file
    assert "folder of one mask per structure" in by_case["totalseg"][0]["error"]
    assert "refineStudy(..., workers=N) refines it" in by_case["totalseg"][0]["error"]
    # no segment given: every segment of the multilabel map is refined
    assert len(by_case["patientA"]) == len(by_case["patientB"]) > 10
    assert "GPU out of memory" in by_case["patientA"][0]["error"]
    assert all(r["error"] == "" for r in by_case["patientA"][1:] + by_case["patientB"])
    assert os.path.isfile(tmp_path / "out" / "patientA.seg.nrrd")
    assert os.path.isfile(tmp_path / "out" / "patientB.seg.nrrd")


def test_refine_study_cancel_stops_the_batch(logic, mrml_scene, tmp_path, monkeypatch):
    require_totalseg_data()
    from NeARSlicerLib.errors import Cancelled

    def compute(job, progress=None, cancel=None):
        raise Cancelled("refinement cancelled")

    monkeypatch.setattr(logic, "computeRefinement", compute)
    before = scene_state(mrml_scene)
    with pytest.raises(Cancelled):
        logic.refineStudy([(str(CT_PATH), str(SEG_PATH), 9), (str(CT_PATH), str(SEG_PATH), 8)], tmp_path)
    assert scene_state(mrml_scene) == before
    # rows are appended as cases finish: cancelled before the first one, no summary was written
    assert not (tmp_path / "summary.csv").exists()


def test_discover_cases(tmp_path):
    import NeARSlicerLogic as L

    (tmp_path / "c1").mkdir()
    for name in ("c1/ct.nii.gz", "c1/seg.nii.gz", "p2.nrrd", "p2.seg.nrrd", "p3.nii.gz", "p3_label.nii.gz",
                 "notes.txt"):
        (tmp_path / name).write_bytes(b"")
    cases = L.discoverCases(tmp_path)
    found = {c["name"]: (os.path.basename(c["volume"] or ""), os.path.basename(c["segmentation"])) for c in cases}
    assert found == {"c1": ("ct.nii.gz", "seg.nii.gz"), "p2": ("p2.nrrd", "p2.seg.nrrd"),
                     "p3": ("p3.nii.gz", "p3_label.nii.gz")}
    from NeARSlicerLib.errors import InputError

    with pytest.raises(InputError):
        L.discoverCases(tmp_path / "missing")


def test_bad_case_tuple_is_rejected(logic, tmp_path):
    from NeARSlicerLib.errors import InputError

    with pytest.raises(InputError, match="a case is"):
        logic.refineStudy([("only one path",)], tmp_path)


def test_refine_study_in_study_mode(logic, mrml_scene, tmp_path):
    """study=True trains one model on both adrenal glands jointly (the paper's transductive mode):
    both are written, the trained model is saved as a reusable prior, the scene is left clean."""
    require_totalseg_data()
    require_engine()
    import json

    from NeARSlicerLib.prior import load_prior

    before = scene_state(mrml_scene)
    cases = [(str(CT_PATH), str(SEG_PATH), [8, 9]), (str(CT_PATH), str(tmp_path / "missing.nii.gz"), 9)]
    out = tmp_path / "out"
    # labels 8 and 9 are the adrenal glands: the adrenal pair (S+A with the CT)
    rows = logic.refineStudy(cases, out, study=True, studyOptions={"epochs": 3}, prior="adrenal")
    assert scene_state(mrml_scene) == before, "study mode left nodes in the scene"
    ok = [r for r in rows if not r["error"]]
    assert sorted(r["segment"] for r in ok) == sorted([segment_name_of(8), segment_name_of(9)])
    for row in ok:
        assert int(row["voxels_after"]) > 0 and 0.3 < float(row["dice"]) <= 1.0
        assert os.path.isfile(row["output"])
        # every case is refined (denoise recipe): its confidence and action are reported as without study
        # mode, and the prior is named as the study's adaptation of the warm-start prior
        assert 0.0 <= float(row["confidence"]) <= 1.0 and row["action"], row
        assert row["prior"].startswith("study (adrenal"), row["prior"]
    assert any("FileNotFoundError" in r["error"] for r in rows)
    card = json.loads((out / "study_prior.json").read_text())
    assert card["cases"] == [f"totalseg_example/{segment_name_of(8)}", f"totalseg_example/{segment_name_of(9)}"]
    assert card["appearance"] is True and card["epochs"] == 3
    model, _ = load_prior(out / "study_prior.safetensors")  # reusable as a prior
    assert model.cfg.appearance
    assert _read_csv(out / "summary.csv") == rows


def test_a_study_of_an_adrenal_gland_and_another_organ_runs_one_study_per_prior(logic, mrml_scene, tmp_path):
    """Slicer's study mode splits what ``--prior auto`` gives different priors (the left adrenal gland,
    the gallbladder) into one study per prior, instead of refusing: both segments are written, and each
    prior is saved beside the outputs under its name."""
    require_totalseg_data()
    require_engine()
    import json

    from NeARSlicerLib.io import read_mask, write_segmentation

    # two of the example's labels, as segments named by hand
    labels, grid, _ = read_mask(str(SEG_PATH), label=8)
    other, _, _ = read_mask(str(SEG_PATH), label=4)
    named = tmp_path / "named.seg.nrrd"
    write_segmentation(str(named), [("left adrenal gland", labels, (1, 0, 0)), ("gallbladder", other, (0, 1, 0))],
                       grid)
    before = scene_state(mrml_scene)
    out = tmp_path / "out"
    rows = logic.refineStudy([(str(CT_PATH), str(named))], out, study=True, studyOptions={"recipe": "fast", "epochs": 1})
    assert scene_state(mrml_scene) == before
    assert sorted(r["segment"] for r in rows) == ["gallbladder", "left adrenal gland"], rows
    assert not any(r["error"] for r in rows), rows
    assert all(int(r["voxels_after"]) > 0 for r in rows)
    assert not (out / "study_prior.safetensors").exists()
    cards = {p.name: json.loads(p.read_text()) for p in out.glob("study_prior-*.json")}
    assert sorted(cards) == ["study_prior-adrenal-sa.json", "study_prior-anatomy-s.json"], sorted(cards)
    assert cards["study_prior-adrenal-sa.json"]["cases"] == ["totalseg_example/left adrenal gland"]
    assert cards["study_prior-anatomy-s.json"]["cases"] == ["totalseg_example/gallbladder"]
    assert (out / "study_prior-adrenal-sa.safetensors").is_file() and (out / "study_prior-anatomy-s.safetensors").is_file()


def test_refine_study_gives_the_engine_each_segments_name_as_its_structure(logic, mrml_scene, tmp_path,
                                                                             monkeypatch):
    """study=True: the engine's --prior auto chooses the study's prior by the segments' names, so each
    study case carries its segment's name as its structure (and its CT's whole-scan facts); the study is the engine's default
    (denoise) recipe, refining every case with the batch's preset and do-no-harm settings."""
    import SimpleITK as sitk

    from NeARSlicerLib.modality import ScanFacts

    require_totalseg_data()
    seen, configs, scans = [], [], []

    def compute(cases, prior, config, **kwargs):
        # the structure refine reads: the segment's name, then its terminology
        seen.extend((c.name, c.structure.split(" | ")[0], prior) for c in cases)
        scans.extend(c.scan for c in cases)
        configs.append({**config, **kwargs})
        raise RuntimeError("stopped after the request")

    monkeypatch.setattr(logic, "computeStudy", compute)
    before = scene_state(mrml_scene)
    with pytest.raises(RuntimeError, match="stopped after the request"):
        logic.refineStudy([(str(CT_PATH), str(SEG_PATH), [8, 9])], tmp_path / "out", study=True, preset="fast",
                          changes="thick", imageOpensGate=False)
    assert seen == [(f"totalseg_example/{segment_name_of(n)}", segment_name_of(n), None) for n in (8, 9)]
    assert configs[0]["recipe"] == "denoise" and configs[0]["refine_preset"] == "fast"
    # the batch's do-no-harm settings reach every case's final refinement, as without study mode
    assert configs[0]["refine_options"] == {"change_policy": "thick", "image_opens_gate": False}
    # segments that --prior auto gives different priors run as one study per prior, not refused
    assert configs[0]["splitByPrior"] is True and configs[0]["overwrite"] is False
    # each case is a box of the CT: it carries the whole CT's facts (modality, darkest value), as the CLI reads them
    whole = ScanFacts.of(sitk.GetArrayFromImage(sitk.ReadImage(str(CT_PATH))))
    assert scans == [whole, whole]
    assert scene_state(mrml_scene) == before


def test_a_label_map_of_one_structure_is_named_by_its_file_as_the_cli_batch_names_it(logic, mrml_scene, tmp_path,
                                                                                     monkeypatch):
    """TotalSegmentator writes one file per structure (``adrenal_gland_left.nii.gz``); Slicer calls its
    segment ``Label_1``, which names nothing, so --prior auto reads the file's name, as ``nearslicer
    batch`` does (the adrenal prior for an adrenal gland), in a batch and in study mode. A multi-label
    file's segments are named by its label table (TotalSegmentator's: ``adrenal_gland_right``, read as
    the CLI reads it) or, without one, ``Label_8`` (the general prior, as in the CLI)."""
    require_totalseg_data()
    from NeARSlicerLib.batch import structure_of
    from NeARSlicerLib.io import read_mask, write_mask

    gland, grid, _ = read_mask(str(SEG_PATH), label=8)
    single = tmp_path / "adrenal_gland_left.nii.gz"
    write_mask(str(single), gland, grid)
    seen = []

    def compute(job, progress=None, cancel=None):
        seen.append((job.segmentName, job.options.get("structure").split(" | ")[0]))  # name, then terminology
        logic.setJobResult(job, fake_result(job.mask, job.mask), seconds=0.01)

    monkeypatch.setattr(logic, "computeRefinement", compute)
    # "Label_8", Slicer's name for a label map's segment, still finds label 8 when the table names it
    logic.refineStudy([(str(CT_PATH), str(single)), (str(CT_PATH), str(SEG_PATH), "Label_8")], tmp_path / "out")
    assert seen == [("Label_1", "adrenal_gland_left"), (segment_name_of(8), segment_name_of(8))]
    # the engine's batch reads the same structure from the same file
    assert structure_of(str(single), None, read_mask(str(single))[2]) == "adrenal_gland_left"
    studied = []

    def study(cases, prior, config, **kwargs):
        studied.extend(c.structure for c in cases)
        raise RuntimeError("stopped after the request")

    monkeypatch.setattr(logic, "computeStudy", study)
    with pytest.raises(RuntimeError, match="stopped after the request"):
        logic.refineStudy([(str(CT_PATH), str(single))], tmp_path / "study", study=True)
    assert studied == ["adrenal_gland_left"]


# ------------------------------------------------------------------ output safety of the batch
def _digest(folder):
    import hashlib

    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def _stand_in_engine(logic, monkeypatch, calls):
    """The engine replaced by a dilation; statistics from the logic's own code (setJobResult)."""
    from scipy import ndimage as ndi

    def compute(job, progress=None, cancel=None):
        calls.append(job.segmentName)
        logic.setJobResult(job, fake_result(job.mask, ndi.binary_dilation(job.mask)), seconds=0.01)

    monkeypatch.setattr(logic, "computeRefinement", compute)


def _pair_folder(tmp_path, logic):
    """``case1.nii.gz`` + ``case1.seg.nrrd`` (real files, three segments) in one folder."""
    import shutil

    import NeARSlicerLogic as L

    folder = tmp_path / "pairs"
    folder.mkdir()
    shutil.copyfile(CT_PATH, folder / "case1.nii.gz")
    volume = L.loadVolumeFile(str(CT_PATH), name="ct")
    segmentation, labels = L.loadLabelmapAsSegmentation(str(SEG_PATH), volume, name="seg")
    keep = {labels[8], labels[9], labels[1]}
    for index in reversed(range(segmentation.GetSegmentation().GetNumberOfSegments())):
        segment_id = segmentation.GetSegmentation().GetNthSegmentID(index)
        if segment_id not in keep:
            segmentation.GetSegmentation().RemoveSegment(segment_id)
    L.saveSegmentationFile(segmentation, folder / "case1.seg.nrrd")
    L.removeNodes([segmentation, volume])
    return folder


def test_batch_into_the_input_folder_never_touches_user_files(logic, mrml_scene, tmp_path, monkeypatch):
    """NAME.nii.gz + NAME.seg.nrrd refined into their own folder: the user's files stay byte-identical,
    the result goes beside them as NAME.NeAR.seg.nrrd with every refined segment and its tags."""
    require_totalseg_data()
    slicerio = pytest.importorskip("slicerio")
    folder = _pair_folder(tmp_path, logic)
    inputs = _digest(folder)
    calls = []
    _stand_in_engine(logic, monkeypatch, calls)
    before = scene_state(mrml_scene)
    rows = logic.refineStudy(folder, folder)
    assert scene_state(mrml_scene) == before
    assert len(calls) == 3 and all(r["error"] == "" for r in rows), rows
    after = _digest(folder)
    assert {k: after[k] for k in inputs} == inputs, "an input file was modified"
    assert set(after) == set(inputs) | {"case1.NeAR.seg.nrrd", "summary.csv"}
    assert {r["output"] for r in rows} == {str(folder / "case1.NeAR.seg.nrrd")}
    # read back by slicerio (not Slicer): originals and refined segments, names and NeAR tags kept
    written = slicerio.read_segmentation(str(folder / "case1.NeAR.seg.nrrd"))
    names = sorted(s["name"] for s in written["segments"])
    assert names == sorted([segment_name_of(n) for n in (1, 8, 9)] + [f"{segment_name_of(n)} (NeAR)" for n in (1, 8, 9)])
    refined = [s for s in written["segments"] if s["name"].endswith(" (NeAR)")]
    assert all(s.get("tags", {}).get("NeARSlicer.Role") == "refined" for s in refined), refined
    assert all(s.get("tags", {}).get("NeARSlicer.SourceSegmentID") for s in refined)
    # the CSV on disk holds exactly the returned rows
    assert _read_csv(folder / "summary.csv") == rows


def test_batch_refuses_to_replace_an_output_before_computing(logic, mrml_scene, tmp_path, monkeypatch):
    require_totalseg_data()
    from NeARSlicerLib.errors import InputError

    folder = _pair_folder(tmp_path, logic)
    calls = []
    _stand_in_engine(logic, monkeypatch, calls)
    logic.refineStudy(folder, folder)
    first = _digest(folder)
    calls.clear()
    with pytest.raises(InputError, match=r"case1\.NeAR\.seg\.nrrd exists"):
        logic.refineStudy(folder, folder)
    assert calls == [], "nothing may be computed before the outputs are known to be writable"
    assert _digest(folder) == first
    # with overwrite the NeAR output is replaced, the user's files still are not; rows are appended
    logic.refineStudy(folder, folder, overwrite=True)
    second = _digest(folder)
    assert second["case1.nii.gz"] == first["case1.nii.gz"] and second["case1.seg.nrrd"] == first["case1.seg.nrrd"]
    assert len(_read_csv(folder / "summary.csv")) == 3


def test_batch_summary_rows_are_appended_as_cases_finish(logic, mrml_scene, tmp_path, monkeypatch):
    """A cancel in the second case keeps the first case's rows on disk (no truncation up front)."""
    require_totalseg_data()
    from NeARSlicerLib.errors import Cancelled

    calls = []

    def compute(job, progress=None, cancel=None):
        calls.append(job.segmentName)
        if len(calls) > 1:
            raise Cancelled("refinement cancelled")
        logic.setJobResult(job, fake_result(job.mask, job.mask), seconds=0.01)

    monkeypatch.setattr(logic, "computeRefinement", compute)
    out = tmp_path / "out"
    with pytest.raises(Cancelled):
        logic.refineStudy([(str(CT_PATH), str(SEG_PATH), 9), (str(CT_PATH), str(SEG_PATH), 8)], out)
    rows = _read_csv(out / "summary.csv")
    assert [(r["case"], r["segment"], r["error"]) for r in rows] == [("totalseg_example", segment_name_of(9), "")]


def _mixed_folder(root):
    """Sub-folder cases, flat pairs in three naming styles, and a lone segmentation (shape only)."""
    for name in ("a/ct.nii.gz", "a/seg.nii.gz", "b/image.nrrd", "b/b.seg.nrrd", "p1.nii.gz", "p1.seg.nrrd",
                 "p10.nii.gz", "p10_seg.nii.gz", "p2.nrrd", "p2-label.nrrd", "lonely_mask.nii.gz", "notes.txt"):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(b"")
    return root


def test_cli_and_slicer_find_the_same_cases(tmp_path):
    """The CLI (nearslicer study --masks DIR) and Slicer (refineStudy(DIR) / discoverCases) read one
    folder the same way. Before, the CLI took every file (CTs too) as a mask and ignored sub-folders,
    and Slicer matched p1 to p10_seg by prefix."""
    import NeARSlicerLogic as L
    from NeARSlicerLib.study import find_cases

    folder = _mixed_folder(tmp_path / "mixed")
    slicer_cases = [(c["name"], c["volume"] and os.path.basename(c["volume"]), os.path.basename(c["segmentation"]))
                    for c in L.discoverCases(folder)]
    cli_cases = [(name, image and image.name, mask.name) for name, mask, image in find_cases(str(folder))]
    assert slicer_cases == cli_cases
    assert sorted(cli_cases, key=str) == sorted([
        ("a", "ct.nii.gz", "seg.nii.gz"), ("b", "image.nrrd", "b.seg.nrrd"), ("p1", "p1.nii.gz", "p1.seg.nrrd"),
        ("p10", "p10.nii.gz", "p10_seg.nii.gz"), ("p2", "p2.nrrd", "p2-label.nrrd"),
        ("lonely", None, "lonely_mask.nii.gz")], key=str)


def test_unusable_entries_are_listed_by_slicer_and_refused_by_the_cli(tmp_path):
    import NeARSlicerLogic as L
    from NeARSlicerLib.errors import InputError
    from NeARSlicerLib.study import find_cases

    folder = _mixed_folder(tmp_path / "mixed")
    (folder / "p3.nii.gz").write_bytes(b"")  # an image without a segmentation
    errors = [c for c in L.discoverCases(folder) if c.get("error")]
    assert [c["name"] for c in errors] == ["p3"] and "no segmentation file" in errors[0]["error"]
    with pytest.raises(InputError, match="p3.nii.gz: no segmentation file"):
        find_cases(str(folder))


def test_a_study_of_an_oversampled_segmentation_tells_each_case_its_ct_s_voxel(logic, mrml_scene, tmp_path,
                                                                              monkeypatch):
    """study=True on a label map twice as fine as its CT (an oversampled segmentation): the CT is resampled
    onto the segment's grid, so each study case carries the CT's own voxel (image_voxel_mm) for its
    final refinement, as refineSegment does; never as a study-wide option."""
    import SimpleITK as sitk

    require_totalseg_data()
    labels = sitk.ReadImage(str(SEG_PATH))
    fine = sitk.Image([2 * n for n in labels.GetSize()], labels.GetPixelID())
    fine.SetDirection(labels.GetDirection())
    fine.SetSpacing([s / 2 for s in labels.GetSpacing()])
    # fine voxel (0, 0, 0) centred inside coarse voxel (0, 0, 0)
    offset = [-0.25 * s for s in labels.GetSpacing()]
    direction = [labels.GetDirection()[3 * r:3 * r + 3] for r in range(3)]
    fine.SetOrigin([o + sum(direction[r][c] * offset[c] for c in range(3))
                    for r, o in enumerate(labels.GetOrigin())])
    fine = sitk.Resample(labels, fine, sitk.Transform(), sitk.sitkNearestNeighbor, 0)
    fine_path = tmp_path / "fine_labels.nii.gz"
    sitk.WriteImage(fine, str(fine_path))
    ct_voxel = min(sitk.ReadImage(str(CT_PATH)).GetSpacing())
    seen, configs = [], []

    def compute(cases, prior, config, **kwargs):
        seen.extend((c.name, c.image_voxel_mm, tuple(c.grid.spacing)) for c in cases)
        configs.append(config)
        raise RuntimeError("stopped after the request")

    monkeypatch.setattr(logic, "computeStudy", compute)
    with pytest.raises(RuntimeError, match="stopped after the request"):
        logic.refineStudy([(str(CT_PATH), str(fine_path), [8, 9])], tmp_path / "out", study=True, preset="fast")
    # (SimpleITK wrote the resampled copy without the label table: Slicer's names)
    assert [name for name, _, _ in seen] == ["totalseg_example/Label_8", "totalseg_example/Label_9"]
    for _, voxel, spacing in seen:
        assert max(spacing) < ct_voxel and voxel == pytest.approx(ct_voxel)
    assert "image_voxel_mm" not in configs[0].get("refine_options", {})
