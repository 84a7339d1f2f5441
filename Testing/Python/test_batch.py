"""nearslicer batch: the engine batch, its local process pool, resume, bad rows, output safety."""
from __future__ import annotations

import csv
import hashlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import nrrd
import numpy as np
import pytest

from batch_cases import make_cases, masks_of, read_summary, same_masks, stable_rows, write_manifest

from NeARSlicerLib import cli
from NeARSlicerLib.batch import SUMMARY_COLUMNS, cases_from_folder, read_manifest, run_batch
from NeARSlicerLib.batch_executor import LocalExecutor, SequentialExecutor
from NeARSlicerLib.errors import InputError

REPO = Path(__file__).resolve().parents[2]
FAST = {"preset": "fast", "seed": 0}


@pytest.fixture(scope="module")
def six(tmp_path_factory):
    """Six phantom cases (five CT + label map, one two-segment .seg.nrrd) and their sequential run."""
    root = tmp_path_factory.mktemp("six")
    rows = make_cases(root / "cases", 6)
    manifest = write_manifest(root / "cases.csv", rows)
    out = root / "sequential"
    outcome = run_batch(read_manifest(manifest), out, FAST, executor=SequentialExecutor(), progress_bar=False)
    assert outcome.failed == 0 and outcome.done == 6
    return root, manifest, out


def _label_map_rows(six, names) -> list:
    """Manifest rows naming the first of the six cases (CT + label map) ``names``."""
    cases = six[0] / "cases"
    return [{"case": n, "mask": str(cases / f"c{i}_seg.nii.gz"), "image": str(cases / f"c{i}.nii.gz"), "label": ""}
            for i, n in enumerate(names)]


def _digests(folder: Path) -> dict:
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted(folder.iterdir()) if p.is_file()}


def test_sequential_outputs_follow_the_contract(six):
    root, manifest, out = six
    rows = read_summary(out / "summary.csv")
    with open(out / "summary.csv") as f:
        assert f.readline().strip().split(",") == SUMMARY_COLUMNS
    # one row per case and segment: five label maps + the two segments of the .seg.nrrd
    assert sorted((r["case"], r["segment"]) for r in rows) == sorted(
        [(f"c{k}", "Label_1") for k in range(5)] + [("c5", "left"), ("c5", "right")])
    for r in rows:
        assert r["error"] == "" and Path(r["output"]).is_absolute() and Path(r["output"]).is_file()
        assert 0.85 < float(r["dice"]) <= 1.0 and len(r["dice"].split(".")[1]) == 4
        assert int(r["voxels_before"]) > 1000 and int(r["voxels_after"]) > 1000
        # --prior auto, as refine: these unnamed structures get the general prior (shape only: no
        # general S+A prior is shipped, so the CT is not read)
        assert r["prior"] == "anatomy-s"
        # ... and the CSV says so: the CT was read as CT, and the engine's warning is in the row
        if r["image"]:
            assert r["modality"] == "CT" and "this prior is shape-only: the image was not used" in r["warnings"]
        else:  # the .seg.nrrd case has no image
            assert r["modality"] == "" and "image" not in r["warnings"]
        # what the image check undid of the prior's change: counts where a refinement was checked
        # against the CT, empty where nothing was checked (no image, or the annotation kept)
        if r["image"] and r["action"].startswith("refined"):
            assert r["image_restored"].isdigit() and r["image_withdrawn"].isdigit(), r
        else:
            assert r["image_restored"] == r["image_withdrawn"] == "", r
    assert sorted(p.name for p in out.iterdir()) == sorted([f"c{k}.nii.gz" for k in range(5)]
                                                          + ["c5.seg.nrrd", "summary.csv"])
    written = masks_of(out)
    assert sorted(written["c5.seg.nrrd"]) == ["left", "left (NeAR)", "right", "right (NeAR)"]
    from NeARSlicerLib.io import read_segments

    originals = {s["name"]: s["mask"] for s in read_segments(str(root / "cases" / "c5.seg.nrrd"))[0]}
    assert np.array_equal(written["c5.seg.nrrd"]["left"], originals["left"])  # the originals are kept
    for r in rows:
        refined = written[Path(r["output"]).name]
        refined = refined["mask"] if "mask" in refined else refined[r["segment"] + " (NeAR)"]
        assert int(refined.sum()) == int(r["voxels_after"])


def test_batch_refines_like_nearslicer_refine(six, tmp_path):
    """The same case through `nearslicer refine` gives the same mask as through the batch."""
    root, _, out = six
    target = tmp_path / "c1.nii.gz"
    assert cli.main(["refine", "--mask", str(root / "cases" / "c1_seg.nii.gz"), "--image",
                     str(root / "cases" / "c1.nii.gz"), "--out", str(target), "--preset", "fast"]) == 0
    assert np.array_equal(masks_of(tmp_path)["c1.nii.gz"]["mask"], masks_of(out)["c1.nii.gz"]["mask"])


def test_the_image_checks_counts_are_in_the_row(tmp_path):
    """A rough adrenal annotation with its CT (named as TotalSegmentator names it, so ``--prior auto``
    picks the adrenal pair): the batch row holds what the image check undid, the very counts of
    ``refine_mask``'s ``info['image_check']``; the same mask without its CT has them empty."""
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import write_image, write_mask
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    clean = adrenal_phantom(seed=5)
    ct = ct_phantom(clean, seed=5)
    rough = corrupt(clean, (1.0, 1.0, 1.0), "paper", 4005)
    grid = Grid(tuple(clean.shape), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    write_image(str(tmp_path / "ct.nii.gz"), ct, grid)
    mask_path = str(tmp_path / "adrenal_gland_left.nii.gz")
    write_mask(mask_path, rough, grid)
    manifest = write_manifest(tmp_path / "cases.csv", [
        {"case": "with_ct", "mask": mask_path, "image": str(tmp_path / "ct.nii.gz")},
        {"case": "shape_only", "mask": mask_path, "image": ""}])
    outcome = run_batch(read_manifest(manifest), tmp_path / "out", FAST, progress_bar=False)
    assert outcome.done == 2 and outcome.failed == 0
    rows = {r["case"]: r for r in read_summary(tmp_path / "out" / "summary.csv")}
    direct = refine_mask(rough, grid, ct, options=RefineOptions(structure="adrenal_gland_left", **FAST))
    check = direct.info["image_check"]
    assert direct.info["action"].startswith("refined") and check and check["judged"], direct.info
    assert (rows["with_ct"]["action"], rows["with_ct"]["prior"]) == (direct.info["action"], direct.info["prior_name"])
    assert (rows["with_ct"]["image_restored"], rows["with_ct"]["image_withdrawn"]) == (
        str(check["restored"]), str(check["withdrawn"]))
    assert rows["shape_only"]["image_restored"] == rows["shape_only"]["image_withdrawn"] == ""
    # the margin fit, the trim and the specks cleanup: the engine's counts, empty where not done (no image)
    margin, trim, specks = direct.info["image_margin_mm"], direct.info["image_trim"], direct.info["specks"]
    assert margin is not None and trim["judged"] and specks is not None, direct.info
    with_ct = rows["with_ct"]
    assert float(with_ct["image_margin_mm"]) == margin and with_ct["image_trimmed"] == str(trim["removed"])
    assert (with_ct["specks_removed"], with_ct["specks_filled"]) == (str(specks["removed"]), str(specks["filled"]))
    shape_only = rows["shape_only"]
    assert shape_only["image_margin_mm"] == shape_only["image_margin_sides"] == shape_only["image_trimmed"] == ""
    assert shape_only["specks_removed"].isdigit()  # cleaned with or without an image


def test_local_pool_gives_the_sequential_results(six, tmp_path):
    root, manifest, out = six
    pooled = tmp_path / "pool"
    outcome = run_batch(read_manifest(manifest), pooled, FAST, executor=LocalExecutor(2), progress_bar=False)
    assert outcome.done == 6 and outcome.failed == 0
    assert same_masks(masks_of(pooled), masks_of(out))
    assert stable_rows(read_summary(pooled / "summary.csv")) == stable_rows(read_summary(out / "summary.csv"))


def test_cases_folder_uses_the_slicer_discovery(six):
    root, _, _ = six
    found = {c.name: (Path(c.mask).name, c.image and Path(c.image).name) for c in cases_from_folder(root / "cases")}
    assert found == {**{f"c{k}": (f"c{k}_seg.nii.gz", f"c{k}.nii.gz") for k in range(5)}, "c5": ("c5.seg.nrrd", None)}


def test_a_folder_of_metaimage_and_detached_nrrd_files_is_refined_as_the_same_cases(six, tmp_path):
    """Case discovery lists .mha / .mhd / .nhdr / .seg.nhdr files, so the batch reads them: the same
    voxels saved as a MetaImage pair and as a Slicer segmentation with a detached header give the
    outputs the .nii.gz / .seg.nrrd cases gave (before, every such case failed: 'unsupported file type')."""
    import nrrd
    import SimpleITK as sitk

    root, _, out = six
    cases, folder = root / "cases", tmp_path / "cases"
    folder.mkdir()
    for source, target in (("c0.nii.gz", "c0.mha"), ("c0_seg.nii.gz", "c0_seg.mha"),
                           ("c1.nii.gz", "c1.nhdr"), ("c1_seg.nii.gz", "c1_seg.mhd")):
        sitk.WriteImage(sitk.ReadImage(str(cases / source)), str(folder / target))
    data, header = nrrd.read(str(cases / "c5.seg.nrrd"))
    nrrd.write(str(folder / "c5.seg.nhdr"), data, header, detached_header=True)
    found = {c.name: Path(c.mask).name for c in cases_from_folder(folder)}
    assert found == {"c0": "c0_seg.mha", "c1": "c1_seg.mhd", "c5": "c5.seg.nhdr"}
    assert cli.main(["batch", "--cases", str(folder), "--out", str(tmp_path / "out"), "--workers", "0",
                     "--preset", "fast", "--seed", "0"]) == 0
    written, expected = masks_of(tmp_path / "out"), masks_of(out)
    assert sorted(written) == ["c0.nii.gz", "c1.nii.gz", "c5.seg.nrrd"]
    assert same_masks(written, {name: expected[name] for name in written})


def test_bad_manifest_rows_are_recorded_and_the_batch_goes_on(six, tmp_path, capsys):
    root, _, out = six
    cases = root / "cases"
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import write_mask

    write_mask(str(tmp_path / "empty.nii.gz"), np.zeros((20, 20, 20), np.uint8), Grid((20, 20, 20), (1, 1, 1), (0, 0, 0)))
    manifest = write_manifest(tmp_path / "m.csv", [
        {"case": "good", "mask": str(cases / "c0_seg.nii.gz"), "image": str(cases / "c0.nii.gz"), "label": ""},
        {"case": "missing", "mask": str(cases / "nope_seg.nii.gz"), "image": "", "label": ""},
        {"case": "badlabel", "mask": str(cases / "c2_seg.nii.gz"), "image": "", "label": "7"},
        {"case": "badname", "mask": str(cases / "c5.seg.nrrd"), "image": "", "label": "middle"},
        {"case": "empty", "mask": "empty.nii.gz", "image": "", "label": ""},  # relative to the CSV
        {"case": "seg", "mask": str(cases / "c5.seg.nrrd"), "image": "", "label": "right"},
    ])
    code = cli.main(["batch", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--workers", "0",
                     "--preset", "fast"])
    assert code == 1
    assert "4 case(s) failed" in capsys.readouterr().err
    rows = {r["case"]: r for r in read_summary(tmp_path / "out" / "summary.csv")}
    assert set(rows) == {"good", "missing", "badlabel", "badname", "empty", "seg"}
    assert "file not found" in rows["missing"]["error"] and rows["missing"]["output"] == ""
    assert "label 7 not found in mask (labels present: [1])" in rows["badlabel"]["error"]
    assert "label 'middle' not found in c5.seg.nrrd" in rows["badname"]["error"]
    assert "mask is empty" in rows["empty"]["error"]
    assert rows["good"]["error"] == "" and rows["seg"]["error"] == "" and rows["seg"]["segment"] == "right"
    # failed cases leave no output; the good ones are the sequential run's masks
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["good.nii.gz", "seg.seg.nrrd", "summary.csv"]
    assert np.array_equal(masks_of(tmp_path / "out")["good.nii.gz"]["mask"], masks_of(out)["c0.nii.gz"]["mask"])
    assert sorted(masks_of(tmp_path / "out")["seg.seg.nrrd"]) == ["left", "right", "right (NeAR)"]


@pytest.mark.parametrize("delimiter, hint", [(";", ""), ("\t", ""), (";", "sep=;\r\n"), (",", "sep=,\n")])
def test_a_manifest_saved_by_a_spreadsheet_with_semicolons_or_tabs_is_read(six, tmp_path, delimiter, hint):
    """A spreadsheet set to a decimal comma saves its CSV with semicolons (and a byte-order mark):
    the same cases as the comma-separated manifest, for batch and study alike (before: 'needs the
    columns case and mask; found ['case;mask;image;label']')."""
    from NeARSlicerLib.study import read_manifest as study_manifest

    _, manifest, _ = six
    text = manifest.read_text()
    other = tmp_path / "cases.csv"
    with open(other, "w", newline="", encoding="utf-8-sig") as f:
        f.write(hint)  # the separator named on a line of its own, as a spreadsheet may write it
        csv.writer(f, delimiter=delimiter).writerows(csv.reader(text.splitlines()))
    # relative paths are relative to each manifest's folder: compare the absolute ones
    assert read_manifest(other) == read_manifest(manifest)
    assert study_manifest(str(other)) == study_manifest(str(manifest))


def test_a_label_column_written_as_decimals_is_read_and_resumed(six, tmp_path, capsys):
    """pandas writes an integer column with gaps as 1.0, 9.0...: such a label is the value it names,
    and a resume finds the rows it recorded (as 1) instead of refining the case again."""
    rows = _label_map_rows(six, ["a", "b"])
    rows[0]["label"] = "1.0"
    manifest = write_manifest(tmp_path / "m.csv", rows)
    args = ["batch", "--manifest", str(manifest), "--out", str(tmp_path / "out"), "--workers", "0", "--preset", "fast"]
    assert cli.main(args) == 0
    recorded = {r["case"]: r for r in read_summary(tmp_path / "out" / "summary.csv")}
    assert recorded["a"]["label"] == "1" and recorded["a"]["error"] == ""
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    assert "2 already done" in capsys.readouterr().out


def test_a_gpu_asked_for_where_there_is_none_is_said_once(six, tmp_path, capsys, monkeypatch):
    """--device cuda without a GPU (here: CUDA made unavailable) stops the batch before it starts, as
    refine does, where every case failed with that error in its row."""
    import torch

    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    _, manifest, _ = six
    out = tmp_path / "out"
    assert cli.main(["batch", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--device", "cuda"]) == 2
    assert "device 'cuda' was requested but no CUDA GPU is available" in capsys.readouterr().err
    assert not out.exists()


def test_manifest_without_its_columns_is_refused(tmp_path):
    (tmp_path / "m.csv").write_text("name,mask\na,b.nii.gz\n")
    with pytest.raises(InputError, match="needs the columns case and mask"):
        read_manifest(tmp_path / "m.csv")
    (tmp_path / "m.csv").write_text("case,mask\na,b.nii.gz\na,c.nii.gz\n../x,d.nii.gz\n")
    errors = [c.error for c in read_manifest(tmp_path / "m.csv")]
    assert "appears 2 times" in errors[0] and "appears 2 times" in errors[1]
    assert "not usable as a file name" in errors[2]


def _run_cli(args, env=None, **popen):
    env = {**os.environ, "PYTHONPATH": str(REPO / "NeARSlicer"), "OMP_NUM_THREADS": "1", **(env or {})}
    return subprocess.Popen([sys.executable, "-m", "NeARSlicerLib.cli", "batch", *args], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, **popen)


def _wait_for_cases(proc, out: Path, cases: int, seconds: float) -> None:
    """Until the running batch ``proc`` has recorded ``cases`` cases in ``out``'s summary."""
    deadline = time.time() + seconds
    while time.time() < deadline:
        if (out / "summary.csv").exists() and len({r["case"] for r in read_summary(out / "summary.csv")}) >= cases:
            return
        assert proc.poll() is None, proc.communicate()[1].decode()[-2000:]
        time.sleep(0.02)


def test_resume_after_a_killed_batch_gives_the_uninterrupted_results(six, tmp_path):
    root, manifest, reference = six
    out = tmp_path / "out"
    proc = _run_cli(["--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast"])
    try:
        _wait_for_cases(proc, out, 2, 120)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait()
    done_before = {r["case"] for r in read_summary(out / "summary.csv")}
    assert 2 <= len(done_before) < 6, "the batch was not interrupted part-way"
    # without --resume (or --overwrite) the folder of an earlier batch is refused, untouched
    digests = _digests(out)
    refused = _run_cli(["--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast"])
    _, err = refused.communicate()
    assert refused.returncode == 2 and b"pass --resume" in err and _digests(out) == digests
    resumed = _run_cli(["--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast",
                        "--resume"])
    stdout, err = resumed.communicate()
    assert resumed.returncode == 0, err.decode()[-2000:]
    assert f"{len(done_before)} already done" in stdout.decode()
    rows = read_summary(out / "summary.csv")
    assert stable_rows(rows) == stable_rows(read_summary(reference / "summary.csv"))  # none missing, none twice
    assert same_masks(masks_of(out), masks_of(reference))
    # a second resume with the same settings has nothing left to do and changes nothing
    again = _run_cli(["--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast",
                      "--resume"])
    assert again.wait() == 0 and read_summary(out / "summary.csv") == rows


@pytest.mark.parametrize("signum, code, said", [(signal.SIGINT, 130, b"interrupted"), (signal.SIGTERM, 143, b"terminated")])
def test_ctrl_c_stops_the_pool_at_once_and_leaves_no_output_without_its_row(six, tmp_path, signum, code, said):
    """Ctrl-C (SIGINT to the batch's process group, as a terminal sends it) during a pooled batch: the
    workers stop at once. Before, each worker ran on through the cases already queued to it, writing
    their outputs after the batch had stopped recording rows: files that the summary does not know.
    SIGTERM to the group (Slicer's Cancel, ``timeout``, a scheduler) is cleaned up the same way; before,
    it ended the batch on the spot (status -15), leaving what its workers were writing."""
    root, manifest, _ = six
    out = tmp_path / "out"
    args = ["--manifest", str(manifest), "--out", str(out), "--workers", "2", "--preset", "default"]
    # a session of its own, and SIGINT's default action (a background CI shell may pass it on ignored)
    proc = _run_cli(args, start_new_session=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        _wait_for_cases(proc, out, 2, 300)
        os.killpg(proc.pid, signum)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == code and said in err, err.decode()[-2000:]
    rows = read_summary(out / "summary.csv")
    assert 2 <= len({r["case"] for r in rows}) < 6, "the batch was not interrupted part-way"
    recorded = {Path(r["output"]).name for r in rows}
    assert sorted(p.name for p in out.iterdir()) == sorted(recorded | {"summary.csv"})  # no temporary file either
    resumed = _run_cli([*args, "--resume"])
    _, err = resumed.communicate()
    assert resumed.returncode == 0, err.decode()[-2000:]
    rows = read_summary(out / "summary.csv")
    assert sorted((r["case"], r["segment"]) for r in rows) == sorted(
        [(f"c{k}", "Label_1") for k in range(5)] + [("c5", "left"), ("c5", "right")])
    assert sorted(p.name for p in out.iterdir()) == sorted([f"c{k}.nii.gz" for k in range(5)] + ["c5.seg.nrrd",
                                                                                                 "summary.csv"])


def test_resume_of_a_moved_batch_folder_keeps_its_finished_cases(six, tmp_path, capsys):
    """A batch folder moved elsewhere (a bigger machine, a share) and resumed: its finished cases are
    done, their outputs beside the summary; before, every one was run again without a word."""
    import shutil

    manifest = write_manifest(tmp_path / "m.csv", _label_map_rows(six, ["a", "b"]))
    args = ["batch", "--manifest", str(manifest), "--workers", "0", "--preset", "fast"]
    assert cli.main(args + ["--out", str(tmp_path / "first")]) == 0
    shutil.move(tmp_path / "first", tmp_path / "moved")
    digests = _digests(tmp_path / "moved")
    capsys.readouterr()
    assert cli.main(args + ["--out", str(tmp_path / "moved"), "--resume"]) == 0
    assert "0 case(s) refined or recorded" in capsys.readouterr().out
    assert _digests(tmp_path / "moved") == digests
    # a case whose mask is now a .seg.nrrd: its earlier output (a.nii.gz) in the moved folder is replaced
    rows = _label_map_rows(six, ["a", "b"])
    rows[0].update(mask=str(six[0] / "cases" / "c5.seg.nrrd"), image="")
    write_manifest(manifest, rows)
    assert cli.main(args + ["--out", str(tmp_path / "moved"), "--resume"]) == 0
    assert sorted(p.name for p in (tmp_path / "moved").iterdir()) == ["a.seg.nrrd", "b.nii.gz", "summary.csv"]


def test_resume_runs_again_the_failed_cases_and_those_whose_inputs_changed(six, tmp_path, capsys):
    """A lead mends a missing file, or corrects a manifest's label, after a batch and resumes: those
    cases are refined again (not left as the earlier errors); an unchanged, finished one is not."""
    import shutil

    root, _, reference = six
    cases = root / "cases"
    mended = tmp_path / "a_seg.nii.gz"  # not there yet
    rows = [{"case": "a", "mask": str(mended), "image": str(cases / "c0.nii.gz"), "label": ""},
            {"case": "b", "mask": str(cases / "c1_seg.nii.gz"), "image": str(cases / "c1.nii.gz"), "label": "7"},
            {"case": "c", "mask": str(cases / "c2_seg.nii.gz"), "image": str(cases / "c2.nii.gz"), "label": ""}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast"]
    assert cli.main(args) == 1
    first = {r["case"]: r for r in read_summary(out / "summary.csv")}
    assert "file not found" in first["a"]["error"] and "label 7 not found" in first["b"]["error"]
    assert not first["c"]["error"]
    c_output = (out / "c.nii.gz").read_bytes()
    shutil.copyfile(cases / "c0_seg.nii.gz", mended)  # the file mended
    rows[1]["label"] = "1"  # the typo corrected
    write_manifest(manifest, rows)
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 case(s) failed before and were run again (a)" in captured.err
    assert "1 case(s) were run again: their mask, image or label is not the one of their rows (b)" in captured.err
    assert "2 case(s) refined or recorded" in captured.out and "1 already done" in captured.out
    second = {r["case"]: r for r in read_summary(out / "summary.csv")}
    assert len(read_summary(out / "summary.csv")) == 3 and not any(r["error"] for r in second.values())
    assert second["b"]["label"] == "1" and second["c"] == first["c"]
    assert (out / "c.nii.gz").read_bytes() == c_output  # the finished case was not run again
    # each redone case is the sequential run's mask of the same inputs
    got, ref = masks_of(out), masks_of(reference)
    assert np.array_equal(got["a.nii.gz"]["mask"], ref["c0.nii.gz"]["mask"])
    assert np.array_equal(got["b.nii.gz"]["mask"], ref["c1.nii.gz"]["mask"])
    # another scan for a finished case is run again too; then nothing is left to do
    rows[2].update(mask=str(cases / "c3_seg.nii.gz"), image=str(cases / "c3.nii.gz"))
    write_manifest(manifest, rows)
    assert cli.main(args + ["--resume"]) == 0 and "(c)" in capsys.readouterr().err
    assert np.array_equal(masks_of(out)["c.nii.gz"]["mask"], ref["c3.nii.gz"]["mask"])
    assert cli.main(args + ["--resume"]) == 0 and "0 case(s) refined" in capsys.readouterr().out


def test_resume_with_other_settings_runs_the_finished_cases_again(six, tmp_path, capsys):
    """A lead resumes a batch with another preset or structure: the cases finished with the earlier
    settings are refined again with the new ones (a study never mixes two sets of settings), the run
    says which and what differs, and each row records the settings it was made with. Where a case runs
    (the device) is not a setting: such a resume has nothing left to do."""
    from NeARSlicerLib.batch import settings_text

    rows = _label_map_rows(six, ("a", "b"))
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--seed", "0"]
    assert cli.main(args + ["--preset", "fast"]) == 0
    first = read_summary(out / "summary.csv")
    made_fast = {r["settings"] for r in first}
    assert len(made_fast) == 1 and '"preset":"fast"' in made_fast.pop()
    capsys.readouterr()
    assert cli.main(args + ["--preset", "fast", "--device", "cpu", "--resume"]) == 0
    assert "0 case(s) refined" in capsys.readouterr().out and read_summary(out / "summary.csv") == first
    assert cli.main(args + ["--preset", "default", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "2 case(s) were run again: their rows were made with other settings (preset: fast -> default; a, b)" \
        in captured.err
    assert "2 case(s) refined" in captured.out and "0 already done" in captured.out
    second = read_summary(out / "summary.csv")
    assert len(second) == 2 and all('"preset":"default"' in r["settings"] for r in second)
    # the manifest's structure is a setting of its case: only that case is run again
    rows[1]["structure"] = "left adrenal gland"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "mask", "image", "label", "structure"])
        w.writeheader()
        w.writerows([{**r, "structure": r.get("structure", "")} for r in rows])
    assert cli.main(args + ["--preset", "default", "--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 case(s) were run again: their rows were made with other settings (structure: default -> left " \
        "adrenal gland; b)" in captured.err and "1 already done" in captured.out
    third = {r["case"]: r for r in read_summary(out / "summary.csv")}
    assert third["a"] == {r["case"]: r for r in second}["a"]
    assert third["b"]["prior"] == "adrenal-sa" and third["b"]["settings"].endswith('"structure":"left adrenal gland"}')
    assert settings_text({"preset": "fast", "device": "cuda"}) == settings_text({"preset": "fast", "device": "cpu"})


def test_resume_keeps_and_names_the_cases_the_manifest_no_longer_lists(six, tmp_path, capsys):
    """A case renamed in the manifest (or left out of it) is another case to the batch: a resume refines
    the new name and keeps the old name's rows and output, which may be the only copy of a result, and
    says so. Before, it kept them without a word."""
    rows = _label_map_rows(six, ("a", "b"))
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast"]
    assert cli.main(args) == 0
    first = {r["case"]: r for r in read_summary(out / "summary.csv")}
    rows[1]["case"] = "b_left"
    write_manifest(manifest, rows)
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    captured = capsys.readouterr()
    assert "1 case(s) of the summary are not in this batch, their rows and outputs kept (b)" in captured.err
    assert "1 case(s) refined" in captured.out and "1 already done" in captured.out
    after = {r["case"]: r for r in read_summary(out / "summary.csv")}
    assert after["a"] == first["a"] and after["b"] == first["b"] and after["b_left"]["error"] == ""
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "b_left.nii.gz", "summary.csv"]


def test_review_decisions_survive_a_running_batch_and_the_resume_of_an_earlier_version(six, tmp_path):
    """A reviewer records decisions in summary.csv while the batch runs (Slicer's review queue) and
    before it is resumed; no commit of the batch may drop them. The summary here is of the version
    before the painted_slices_mm column (the oldest one still resumed): it is resumed, not refused, and gets
    today's columns."""
    import csv
    import shutil

    from NeARSlicerLib.batch import EARLIER_SUMMARY_COLUMNS
    from NeARSlicerLib.review_status import read_batch, set_review

    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.confidence import painted_slices
    from NeARSlicerLib.io import read_mask, write_mask

    root, manifest, reference = six
    # c4 comes painted on thick slices this time: its row must say how thick
    cases = read_summary(manifest)
    c4 = next(c for c in cases if c["case"] == "c4")
    mask, grid, _ = read_mask(c4["mask"] if Path(c4["mask"]).is_absolute() else str(manifest.parent / c4["mask"]))
    painted = corrupt(mask > 0, grid.spacing, "thick_slice", 3)
    found = painted_slices(painted, grid.spacing)
    assert found is not None
    c4["mask"] = str(tmp_path / "c4_painted.nii.gz")
    write_mask(c4["mask"], painted, grid)
    manifest = write_manifest(tmp_path / "cases.csv", [{**c, **{k: str(manifest.parent / c[k]) for k in ("mask", "image")
                                                               if c.get(k) and not Path(c[k]).is_absolute()}}
                                                       for c in cases])
    out = tmp_path / "out"
    shutil.copytree(reference, out)
    rows = [r for r in read_summary(out / "summary.csv") if r["case"] not in ("c3", "c4")]
    (out / "c3.nii.gz").unlink()  # c3 was interrupted after writing its output, c4 before
    (out / "c4.nii.gz").unlink()
    with open(out / "summary.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=EARLIER_SUMMARY_COLUMNS[0], extrasaction="ignore", lineterminator="\n")
        w.writeheader()
        w.writerows(rows)
    set_review(out, "c1", "Label_1", "rejected")

    def reviewer(name, _rows):  # decides on c0 while c4 is still to come
        if name == "c3":
            set_review(out, "c0", "Label_1", "accepted")

    outcome = run_batch(read_manifest(manifest), out, FAST, resume=True, on_case=reviewer, progress_bar=False)
    assert (outcome.done, outcome.skipped, outcome.failed) == (2, 4, 0)
    with open(out / "summary.csv") as f:
        assert f.readline().strip().split(",") == SUMMARY_COLUMNS + ["review"]
    _, batch_rows = read_batch(out)
    assert {r.key: r.review for r in batch_rows if r.review} == {("c0", "Label_1"): "accepted",
                                                                 ("c1", "Label_1"): "rejected"}
    got = read_summary(out / "summary.csv")
    assert [r["painted_slices_mm"] for r in got if r["case"] == "c4"] == [f"{found.thickness_mm:.1f}"]
    assert all(r["painted_slices_mm"] == "" for r in got if r["case"] != "c4")  # shapes on their own grid
    # the prior was given c4's painted slices interpolated (the default); nothing to say for the others
    assert [r["slices_interpolated"] for r in got if r["case"] == "c4"] == ["yes"]
    assert all(r["slices_interpolated"] == "" for r in got if r["case"] != "c4")
    unchanged = [r for r in got if r["case"] != "c4"]
    assert stable_rows(unchanged) == stable_rows([r for r in read_summary(reference / "summary.csv") if r["case"] != "c4"])
    assert same_masks({k: v for k, v in masks_of(out).items() if k != "c4.nii.gz"},
                      {k: v for k, v in masks_of(reference).items() if k != "c4.nii.gz"})
    assert not list(out.glob("*.lock"))


def test_a_case_folder_refined_into_itself_never_touches_an_input(tmp_path):
    """NAME.seg.nrrd in the output folder is an input: the result goes beside it (NAME.NeAR.seg.nrrd)
    and every input file stays byte-identical; a label-map case whose output would be its own CT is
    refused before anything is computed."""
    folder = tmp_path / "cases"
    make_cases(folder, 1)  # c0.seg.nrrd only
    before = _digests(folder)
    outcome = run_batch(cases_from_folder(folder), folder, FAST, progress_bar=False)
    assert outcome.failed == 0
    after = _digests(folder)
    assert {k: after[k] for k in before} == before
    assert set(after) == set(before) | {"c0.NeAR.seg.nrrd", "summary.csv"}
    # the next discovery of that folder does not take the result for a case
    assert [c.name for c in cases_from_folder(folder)] == ["c0"]

    pairs = tmp_path / "pairs"
    make_cases(pairs, 2, with_seg_nrrd=False)  # c0.nii.gz (CT) + c0_seg.nii.gz: the output c0.nii.gz is the CT
    before = _digests(pairs)
    from NeARSlicerLib.output_safety import OutputError

    with pytest.raises(OutputError, match=r"c0\.nii\.gz of case c0 is an input file"):
        run_batch(cases_from_folder(pairs), pairs, FAST, progress_bar=False)
    assert _digests(pairs) == before


def test_an_output_folder_among_the_cases_is_never_taken_for_a_case(tmp_path, capsys):
    """``--out cases/refined``: on the resume (and on any later batch or study of the folder) the
    output folder, which holds the summary, is not a case. Before, it was one, failing every time:
    'folder refined needs one segmentation and at most one image, found 2 image(s)'."""
    from NeARSlicerLib.study import find_cases

    folder = tmp_path / "cases"
    make_cases(folder, 2, with_seg_nrrd=False)
    args = ["batch", "--cases", str(folder), "--out", str(folder / "refined"), "--workers", "0", "--preset", "fast"]
    assert cli.main(args) == 0
    assert sorted(p.name for p in (folder / "refined").iterdir()) == ["c0.nii.gz", "c1.nii.gz", "summary.csv"]
    capsys.readouterr()
    assert cli.main(args + ["--resume"]) == 0
    assert "2 already done, 0 failed" in capsys.readouterr().out
    assert [c.name for c in cases_from_folder(folder)] == ["c0", "c1"]
    assert [name for name, _, _ in find_cases(str(folder))] == ["c0", "c1"]


def test_existing_outputs_need_overwrite(six, tmp_path):
    root, manifest, _ = six
    out = tmp_path / "out"
    out.mkdir()
    (out / "c1.nii.gz").write_bytes(b"someone else's file")
    with pytest.raises(InputError, match=r"c1\.nii\.gz exists; pass --overwrite"):
        run_batch(read_manifest(manifest), out, FAST, progress_bar=False)
    assert (out / "c1.nii.gz").read_bytes() == b"someone else's file" and not (out / "summary.csv").exists()
    with pytest.raises(InputError, match="not both"):
        run_batch(read_manifest(manifest), out, FAST, resume=True, overwrite=True, progress_bar=False)


def test_a_manifests_structure_column_chooses_each_rows_prior(tmp_path):
    """--prior auto per row: the manifest's structure column names what a mask file called
    ``cK_seg.nii.gz`` holds (an adrenal gland gets the adrenal prior, with its CT the S+A one); a
    row without it is unnamed and gets the general prior, as before."""
    rows = make_cases(tmp_path / "cases", 2, with_seg_nrrd=False)
    rows[0]["structure"], rows[1]["structure"] = "left adrenal gland", ""
    manifest = tmp_path / "cases.csv"
    with open(manifest, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "mask", "image", "label", "structure"])
        w.writeheader()
        w.writerows(rows)
    assert [c.structure for c in read_manifest(manifest)] == ["left adrenal gland", None]
    outcome = run_batch(read_manifest(manifest), tmp_path / "out", FAST, executor=SequentialExecutor(),
                        progress_bar=False)
    assert outcome.failed == 0
    prior = {r["case"]: r["prior"] for r in read_summary(tmp_path / "out" / "summary.csv")}
    assert prior == {"c0": "adrenal-sa", "c1": "anatomy-s"}, prior


def test_several_labels_of_a_label_map_make_one_segmentation_per_case(tmp_path, capsys):
    """A TotalSegmentator-like label map with both glands: one manifest row with ``8;adrenal_gland_left``
    (or ``all``) refines each label as a row of its own would, into one .seg.nrrd holding each original
    (red) beside its refined segment (blue), which the review report reads; resume then has nothing left."""
    from label_table_files import caret_xml, write_with_extension

    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import read_segments, write_image
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
    from NeARSlicerLib.review_report import load_case
    from NeARSlicerLib.review_status import read_batch
    from NeARSlicerLib.study import load_cases

    shape = (48, 48, 96)
    labels = np.zeros(shape, np.uint8)
    labels[:, :, :48][adrenal_phantom(seed=1, shape=(48, 48, 48))] = 8
    labels[:, :, 48:][adrenal_phantom(seed=2, shape=(48, 48, 48))] = 9
    seg = tmp_path / "seg.nii.gz"
    write_with_extension(seg, labels, caret_xml({8: "adrenal_gland_right", 9: "adrenal_gland_left", 10: "liver"}))
    ct = tmp_path / "ct.nii.gz"
    write_image(str(ct), ct_phantom(labels > 0, seed=3), Grid(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)))
    rows = [{"case": "both", "mask": str(seg), "image": str(ct), "label": "8;adrenal_gland_left"},
            {"case": "every", "mask": str(seg), "image": str(ct), "label": "all"},
            {"case": "right", "mask": str(seg), "image": str(ct), "label": "8"},
            {"case": "left", "mask": str(seg), "image": str(ct), "label": "adrenal_gland_left"},
            {"case": "twice", "mask": str(seg), "image": str(ct), "label": "8;adrenal_gland_right"}]
    manifest = write_manifest(tmp_path / "m.csv", rows)
    out = tmp_path / "out"
    args = ["batch", "--manifest", str(manifest), "--out", str(out), "--workers", "0", "--preset", "fast"]
    assert cli.main(args) == 1  # "twice" fails
    summary = read_summary(out / "summary.csv")
    by_case = {}
    for r in summary:
        by_case.setdefault(r["case"], []).append(r)
    assert "name 'adrenal_gland_right' more than once" in by_case["twice"][0]["error"]
    assert not (out / "twice.seg.nrrd").exists()
    assert sorted(p.name for p in out.iterdir() if p.name != "summary.csv") == [
        "both.seg.nrrd", "every.seg.nrrd", "left.nii.gz", "right.nii.gz"]
    singles = masks_of(out)
    for case in ("both", "every"):
        assert [(r["segment"], r["label"], r["error"]) for r in by_case[case]] == [
            ("adrenal_gland_right", "8", ""), ("adrenal_gland_left", "9", "")]
        segments, _ = read_segments(str(out / f"{case}.seg.nrrd"))
        got = {s["name"]: s for s in segments}
        assert sorted(got) == ["adrenal_gland_left", "adrenal_gland_left (NeAR)", "adrenal_gland_right",
                               "adrenal_gland_right (NeAR)"]
        for name, value, single in (("adrenal_gland_right", 8, "right.nii.gz"), ("adrenal_gland_left", 9, "left.nii.gz")):
            assert np.array_equal(got[name]["mask"] > 0, labels == value)  # the original, untouched
            assert np.array_equal(got[f"{name} (NeAR)"]["mask"] > 0, singles[single]["mask"] > 0)  # as its own row
            assert got[name]["color"][0] > 0.8 and got[f"{name} (NeAR)"]["color"][2] > 0.8  # red vs blue
    # the review report reads each label's pair from the case's segmentation
    folder, batch_rows = read_batch(out)
    row = next(r for r in batch_rows if r.case == "both" and r.segment == "adrenal_gland_left")
    _, original, refined, _ = load_case(row, folder)
    assert np.array_equal(original, labels == 9) and np.array_equal(refined, singles["left.nii.gz"]["mask"] > 0)
    # nothing left to do on resume (labels given by name and value match their rows); a study refuses several
    capsys.readouterr()
    write_manifest(manifest, rows[:4])
    assert cli.main(args + ["--resume"]) == 0 and "0 case(s) refined" in capsys.readouterr().out
    # a case that now names both labels is run again into a segmentation, and its earlier single-label
    # output goes with its rows (the folder is that of an uninterrupted run); the other cases' files stay
    rows[2]["label"] = "8;9"
    write_manifest(manifest, rows[:4])
    kept = {p.name: p.read_bytes() for p in out.iterdir() if p.name not in ("summary.csv", "right.nii.gz")}
    assert cli.main(args + ["--resume"]) == 0 and "1 case(s) refined" in capsys.readouterr().out
    assert sorted(p.name for p in out.iterdir() if p.name != "summary.csv") == [
        "both.seg.nrrd", "every.seg.nrrd", "left.nii.gz", "right.seg.nrrd"]
    assert all((out / name).read_bytes() == data for name, data in kept.items())
    assert [r["output"] for r in read_summary(out / "summary.csv") if r["case"] == "right"] == [
        str(out / "right.seg.nrrd")] * 2
    (tmp_path / "study.csv").write_text(f"name,mask,label\nglands,{seg},8;9\n")
    with pytest.raises(InputError, match="case glands: a study case is one structure: give one label per manifest row"):
        load_cases(manifest=str(tmp_path / "study.csv"))


def test_a_totalsegmentator_output_folder_is_one_case_of_its_structure_files(tmp_path, capsys):
    """TotalSegmentator's default output (the CT beside ``segmentations/``, one mask file per structure,
    an empty one for each structure it did not find) is one case: each file that is not empty a segment
    named by its file name, refined as that file alone is, into one .seg.nrrd; ``--label`` names files;
    a study says that a study case is one structure. Before, the folder was "0 segmentation(s)"."""
    from NeARSlicerLib.cases import discover_cases
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import read_mask, read_segments, write_image, write_mask
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    grid = Grid((48, 48, 96), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    right, left = np.zeros(grid.shape, np.uint8), np.zeros(grid.shape, np.uint8)
    right[:, :, :48][adrenal_phantom(seed=1, shape=(48, 48, 48))] = 1
    left[:, :, 48:][adrenal_phantom(seed=2, shape=(48, 48, 48))] = 1
    case = tmp_path / "cases" / "s01"
    structures = case / "segmentations"
    structures.mkdir(parents=True)
    write_image(str(case / "ct.nii.gz"), ct_phantom((right | left) > 0, seed=3), grid)
    for name, mask in (("adrenal_gland_right", right), ("adrenal_gland_left", left), ("liver", 0 * right)):
        write_mask(str(structures / f"{name}.nii.gz"), mask, grid)
    [found] = discover_cases(tmp_path / "cases")
    assert (found.segmentation, found.image, found.error) == (structures, case / "ct.nii.gz", "")
    batch = ["batch", "--cases", str(tmp_path / "cases"), "--workers", "0", "--preset", "fast"]
    assert cli.main(batch + ["--out", str(tmp_path / "out")]) == 0
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert [(r["segment"], r["prior"], r["error"]) for r in rows] == [
        ("adrenal_gland_left", "adrenal-sa", ""), ("adrenal_gland_right", "adrenal-sa", "")]
    segments = {s["name"]: s["mask"] > 0 for s in read_segments(str(tmp_path / "out" / "s01.seg.nrrd"))[0]}
    assert sorted(segments) == ["adrenal_gland_left", "adrenal_gland_left (NeAR)", "adrenal_gland_right",
                                "adrenal_gland_right (NeAR)"]
    for name, original in (("adrenal_gland_right", right), ("adrenal_gland_left", left)):
        assert np.array_equal(segments[name], original > 0)
        alone = tmp_path / f"{name}.nii.gz"
        assert cli.main(["refine", "--mask", str(structures / f"{name}.nii.gz"), "--image", str(case / "ct.nii.gz"),
                         "--out", str(alone), "--preset", "fast"]) == 0
        assert np.array_equal(segments[f"{name} (NeAR)"], read_mask(str(alone))[0] > 0)
    # on a pool of three, each part reads its own files (one part only the empty liver): the same output
    pooled = [a if a != "0" else "3" for a in batch]  # --workers 3
    assert cli.main(pooled + ["--out", str(tmp_path / "pool")]) == 0
    one, pool = nrrd.read(str(tmp_path / "out" / "s01.seg.nrrd")), nrrd.read(str(tmp_path / "pool" / "s01.seg.nrrd"))
    assert np.array_equal(one[0], pool[0]) and {k: str(v) for k, v in one[1].items()} == {
        k: str(v) for k, v in pool[1].items()}
    assert stable_rows(rows) == stable_rows(read_summary(tmp_path / "pool" / "summary.csv"))
    assert cli.main(batch + ["--out", str(tmp_path / "left"), "--label", "adrenal_gland_left"]) == 0
    assert [r["segment"] for r in read_summary(tmp_path / "left" / "summary.csv")] == ["adrenal_gland_left"]
    capsys.readouterr()
    assert cli.main(batch + ["--out", str(tmp_path / "spleen"), "--label", "spleen"]) == 1
    assert "no mask file 'spleen' in" in read_summary(tmp_path / "spleen" / "summary.csv")[0]["error"]
    assert "(it has: adrenal_gland_left, adrenal_gland_right, liver)" in \
        read_summary(tmp_path / "spleen" / "summary.csv")[0]["error"]
    assert cli.main(["study", "--masks", str(tmp_path / "cases"), "--out", str(tmp_path / "study")]) == 2
    assert "a study case is one structure, one file per manifest row" in capsys.readouterr().err


def test_several_segments_of_a_seg_nrrd_are_read_from_its_table(six, tmp_path):
    """``left;right`` of a .seg.nrrd: each segment named, read from the file's table once, refined as the
    whole-file row refines it; an unknown name fails the case with the segments listed."""
    root, _, reference = six
    seg = str(root / "cases" / "c5.seg.nrrd")
    manifest = write_manifest(tmp_path / "m.csv", [{"case": "both", "mask": seg, "image": "", "label": "right;left"},
                                                   {"case": "bad", "mask": seg, "image": "", "label": "left;middle"}])
    outcome = run_batch(read_manifest(manifest), tmp_path / "out", FAST, executor=SequentialExecutor(),
                        progress_bar=False)
    assert outcome.failed == 1
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert [(r["case"], r["segment"]) for r in rows if not r["error"]] == [("both", "right"), ("both", "left")]
    assert "label 'middle' not found in c5.seg.nrrd (segments: ['left', 'right'])" in \
        next(r["error"] for r in rows if r["case"] == "bad")
    got, ref = masks_of(tmp_path / "out")["both.seg.nrrd"], masks_of(reference)["c5.seg.nrrd"]
    assert sorted(got) == ["left", "left (NeAR)", "right", "right (NeAR)"]
    for name in got:
        assert np.array_equal(got[name], ref[name]), name
    # a segment given by its ID (as Slicer names it) is the row of its name: a resume has nothing left
    from NeARSlicerLib.io import segment_table

    right = next(s["id"] for s in segment_table(seg) if s["name"] == "right")
    assert right != "right"
    by_id = write_manifest(tmp_path / "id.csv", [{"case": "one", "mask": seg, "image": "", "label": right}])
    first = run_batch(read_manifest(by_id), tmp_path / "by_id", FAST, progress_bar=False)
    assert first.done == 1 and [r["segment"] for r in read_summary(tmp_path / "by_id" / "summary.csv")] == ["right"]
    again = run_batch(read_manifest(by_id), tmp_path / "by_id", FAST, resume=True, progress_bar=False)
    assert (again.done, again.skipped, again.changed) == (0, 1, [])


def test_several_labels_of_a_label_map_saved_as_seg_nrrd(tmp_path):
    """A plain label map saved under a .seg.nrrd name (no segment list): ``1;2`` reads each value as a
    label map's label, as one label of it is read (it was refused as 'not found' in an empty table), and
    the output holds each original (red) beside its refined segment (blue), as a label map's does."""
    import nrrd

    from NeARSlicerLib.phantom import adrenal_phantom

    labels = np.zeros((48, 48, 96), np.uint8)
    labels[:, :, :48][adrenal_phantom(seed=1, shape=(48, 48, 48))] = 1
    labels[:, :, 48:][adrenal_phantom(seed=2, shape=(48, 48, 48))] = 2
    seg = tmp_path / "plain.seg.nrrd"
    nrrd.write(str(seg), labels.transpose(2, 1, 0), {"space": "left-posterior-superior",
                                                     "space directions": np.eye(3), "space origin": np.zeros(3)})
    manifest = write_manifest(tmp_path / "m.csv", [{"case": "both", "mask": str(seg), "image": "", "label": "1;2"},
                                                   {"case": "one", "mask": str(seg), "image": "", "label": "2"}])
    outcome = run_batch(read_manifest(manifest), tmp_path / "out", FAST, executor=SequentialExecutor(),
                        progress_bar=False)
    rows = read_summary(tmp_path / "out" / "summary.csv")
    assert outcome.failed == 0, [r["error"] for r in rows]
    assert [(r["case"], r["label"]) for r in rows] == [("both", "1"), ("both", "2"), ("one", "2")]
    got = masks_of(tmp_path / "out")
    refined = [name for name in got["both.seg.nrrd"] if name.endswith(" (NeAR)")]
    assert len(refined) == 2
    assert np.array_equal(got["both.seg.nrrd"][refined[1]], got["one.seg.nrrd"][
        next(n for n in got["one.seg.nrrd"] if n.endswith(" (NeAR)"))])
    from NeARSlicerLib.io import read_segments

    segments, _ = read_segments(str(tmp_path / "out" / "both.seg.nrrd"))
    originals = [s for s in segments if not s["name"].endswith(" (NeAR)")]
    assert [s["name"] + " (NeAR)" for s in originals] == refined
    for s, value in zip(originals, (1, 2)):
        assert np.array_equal(s["mask"] > 0, labels == value) and s["color"][0] > 0.8  # untouched, red
