"""The nearslicer command line, end to end on temporary files."""
import errno
import os
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from NeARSlicerLib.cli import main
from NeARSlicerLib.distort import distort
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import read_mask, write_mask
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.report import read_report_facts

REPO = Path(__file__).resolve().parents[2]


def _oblique_grid(shape):
    a = np.deg2rad(25)
    rot = np.array([[np.cos(a), -np.sin(a), 0], [np.sin(a), np.cos(a), 0], [0, 0, 1]])
    return Grid(shape=shape, spacing=(0.8, 0.8, 1.5), origin=(-20.0, 13.5, 101.0), direction=tuple(rot.ravel()))


def _lps_centroid(img: sitk.Image) -> np.ndarray:
    """Centre of the set voxels in LPS mm, by SimpleITK's own index-to-physical mapping."""
    kji = np.argwhere(sitk.GetArrayFromImage(img) > 0).mean(0)
    return np.array(img.TransformContinuousIndexToPhysicalPoint([float(v) for v in kji[::-1]]))


def test_refine_nifti_oblique_anisotropic(tmp_path, capsys):
    truth = adrenal_phantom(seed=21, shape=(48, 80, 80), spacing=(0.8, 0.8, 1.5))
    noisy = distort(truth, seed=3)
    grid = _oblique_grid(truth.shape)
    src = tmp_path / "mask.nii.gz"
    write_mask(str(src), noisy.astype(np.uint8), grid)
    out, rep = tmp_path / "refined.nii.gz", tmp_path / "report.png"
    assert main(["refine", "--mask", str(src), "--out", str(out), "--report", str(rep), "--preset", "fast",
                 "--changes", "all"]) == 0  # every change of the prior: the placement of a whole new surface
    refined, rgrid, _ = read_mask(str(out))
    assert rgrid.same_as(grid), "output must have the input's exact geometry"
    assert refined.shape == noisy.shape and set(np.unique(refined)) <= {0, 1}
    # placement, not only the header: the result lies on the truth (a mirrored or shifted array
    # would not; mirroring this one moves its centre by 20 mm), centres in LPS from SimpleITK
    assert dice(refined, truth) > dice(noisy, truth) + 0.03
    truth_img = grid.to_sitk(truth.astype(np.uint8))
    assert np.linalg.norm(_lps_centroid(sitk.ReadImage(str(out))) - _lps_centroid(truth_img)) < 0.5 * 1.5

    # the same voxels on an axis-aligned grid (same spacing, other origin): mapped by SimpleITK with
    # the known rigid transform, the two results coincide
    plain = Grid(shape=truth.shape, spacing=grid.spacing, origin=(0.0, 0.0, 0.0))
    src_plain, out_plain = tmp_path / "plain.nii.gz", tmp_path / "plain_refined.nii.gz"
    write_mask(str(src_plain), noisy.astype(np.uint8), plain)
    assert main(["refine", "--mask", str(src_plain), "--out", str(out_plain), "--preset", "fast",
                 "--changes", "all"]) == 0
    ref_plain = sitk.ReadImage(str(out_plain))
    to_oblique = sitk.AffineTransform(3)  # LPS of the plain grid -> LPS of the oblique grid
    to_oblique.SetMatrix(grid.direction)
    to_oblique.SetTranslation(grid.origin)
    mapped = sitk.Resample(sitk.ReadImage(str(out)), ref_plain, to_oblique, sitk.sitkNearestNeighbor, 0)
    assert dice(sitk.GetArrayFromImage(mapped), sitk.GetArrayFromImage(ref_plain)) >= 0.95
    assert np.all(np.abs(_lps_centroid(mapped) - _lps_centroid(ref_plain)) < 0.5 * np.array(grid.spacing))
    # the report shows the numbers of the files written, computed by the real code path
    facts = read_report_facts(str(rep))
    source, _, _ = read_mask(str(src))
    assert facts["title"] == "mask.nii.gz"
    assert facts["original_voxels"] == int(source.sum()) and facts["refined_voxels"] == int(refined.sum())
    assert facts["metrics"]["Dice(input, refined)"] == pytest.approx(dice(source, refined), abs=1e-12)
    assert np.allclose(facts["spacing"], grid.spacing)
    text = capsys.readouterr().out
    assert "refined mask.nii.gz" in text and f"Dice(input, refined) {dice(source, refined):.3f}" in text


def test_refine_real_ct_multilabel(tmp_path, shared_data):
    seg = shared_data / "totalseg_example" / "seg.nii.gz"
    ct = shared_data / "totalseg_example" / "ct.nii.gz"
    out = tmp_path / "left.nrrd"
    rc = main(["refine", "--mask", str(seg), "--label", "9", "--image", str(ct), "--out", str(out), "--preset", "fast"])
    assert rc == 0
    ref_img, src_img = sitk.ReadImage(str(out)), sitk.ReadImage(str(seg))
    assert ref_img.GetSize() == src_img.GetSize()
    assert np.allclose(ref_img.GetSpacing(), src_img.GetSpacing()) and np.allclose(ref_img.GetOrigin(), src_img.GetOrigin())
    assert np.allclose(ref_img.GetDirection(), src_img.GetDirection())
    refined = sitk.GetArrayFromImage(ref_img)
    label = sitk.GetArrayFromImage(src_img) == 9
    assert dice(refined, label) > 0.5  # a clean label stays where it was


def test_refine_seg_nrrd_roundtrip(tmp_path):
    truth = adrenal_phantom(seed=5)
    grid = Grid(truth.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    src, out = tmp_path / "in.seg.nrrd", tmp_path / "out.seg.nrrd"
    write_mask(str(src), distort(truth, seed=2).astype(np.uint8), grid, name="left gland")
    assert main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast"]) == 0
    refined, rgrid, info = read_mask(str(out))
    assert rgrid.same_as(grid) and refined.any()
    # the refined segment is named as the product names it beside its original (before: "Segment_1")
    assert info["segments"] == ["left gland (NeAR)"]


def test_cli_errors_are_one_line(tmp_path, capsys):
    grid = Grid((20, 20, 20), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    multi = np.zeros((20, 20, 20), np.uint8)
    multi[2:6, 2:6, 2:6] = 1
    multi[10:15, 10:15, 10:15] = 2
    path = tmp_path / "multi.nii.gz"
    sitk.WriteImage(grid.to_sitk(multi), str(path))
    out = tmp_path / "o.nii.gz"
    cases = [
        (["--mask", str(path)], "pass --label"),
        (["--mask", str(path), "--label", "7"], "7"),
        (["--mask", str(tmp_path / "missing.nii.gz")], "missing.nii.gz"),
        (["--mask", str(path), "--label", "1", "--prior", str(tmp_path / "no.safetensors")], "prior file not found"),
        (["--mask", str(path), "--label", "1;2"], "refine writes one structure: give one --label, not '1;2'"),
        (["--mask", str(path), "--label", "all"], "nearslicer batch refines several labels"),
    ]
    for extra, needle in cases:
        rc = main(["refine", "--out", str(out), *extra])
        err = capsys.readouterr().err.strip()
        assert rc != 0
        assert needle in err and len(err.splitlines()) == 1, err
        assert not out.exists(), "no output on failure"


def test_cli_image_on_other_grid(tmp_path, capsys):
    truth = adrenal_phantom(seed=6)
    grid = Grid(truth.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    other = Grid(truth.shape, (1.0, 1.0, 1.0), (5.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    m, im = tmp_path / "m.nii.gz", tmp_path / "im.nii.gz"
    write_mask(str(m), truth.astype(np.uint8), grid)
    sitk.WriteImage(other.to_sitk(np.zeros(truth.shape, np.float32)), str(im))
    rc = main(["refine", "--mask", str(m), "--image", str(im), "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "different grids" in capsys.readouterr().err


def test_cli_image_of_the_same_voxels_stored_otherwise_is_read_on_the_mask(tmp_path, capsys):
    """A CT of the mask's own voxels, stored flipped, with its axes in another order and around more than
    the mask (what another converter writes), gives the result the CT on the mask's grid gives. A CT a
    part of a voxel off is refused, saying what differs. Before, both were "different grids"."""
    from NeARSlicerLib.phantom import ct_phantom

    truth = adrenal_phantom(seed=6)
    grid = Grid(truth.shape, (0.9, 1.0, 1.2), (4.0, -2.0, 7.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    m, same, other, off = (tmp_path / f"{n}.nii.gz" for n in ("m", "same", "other", "off"))
    write_mask(str(m), distort(truth, seed=3).astype(np.uint8), grid)
    ct = grid.to_sitk(ct_phantom(truth, seed=6).astype(np.float32))
    sitk.WriteImage(ct, str(same))
    stored = sitk.Flip(sitk.PermuteAxes(sitk.ConstantPad(ct, (3, 0, 5), (2, 4, 0), -1000.0), (2, 0, 1)),
                       (True, False, True))
    sitk.WriteImage(stored, str(other))
    shifted = sitk.Image(ct)
    shifted.SetOrigin((4.45, -2.0, 7.0))  # half a voxel along i
    sitk.WriteImage(shifted, str(off))
    outputs = []
    for image in (same, other):
        outputs.append(tmp_path / f"o_{len(outputs)}.nii.gz")
        assert main(["refine", "--mask", str(m), "--image", str(image), "--out", str(outputs[-1]), "--preset", "fast"]) == 0
    assert np.array_equal(read_mask(str(outputs[0]))[0], read_mask(str(outputs[1]))[0])
    capsys.readouterr()
    rc = main(["refine", "--mask", str(m), "--image", str(off), "--out", str(tmp_path / "o.nii.gz")])
    err = capsys.readouterr().err
    assert rc == 2 and "are on different grids (origin (4.45, -2.0, 7.0) vs (4.0, -2.0, 7.0) mm)" in err, err
    assert "resample the image onto the mask" in err


def test_demo(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--preset", "fast"]) == 0
    text = capsys.readouterr().out
    assert "input " in text and "refined, S " in text and "refined, S+A (CT)" in text
    for name in ("ct.nii.gz", "input.nii.gz", "refined.nii.gz", "refined_shape_only.nii.gz", "truth.nii.gz",
                 "report.png"):
        assert (tmp_path / name).is_file(), name
    truth, _, _ = read_mask(str(tmp_path / "truth.nii.gz"))
    noisy, _, _ = read_mask(str(tmp_path / "input.nii.gz"))
    refined, _, _ = read_mask(str(tmp_path / "refined.nii.gz"))
    assert dice(refined, truth) > dice(noisy, truth)
    # the report's numbers are those of the files written
    facts = read_report_facts(str(tmp_path / "report.png"))
    assert facts["metrics"]["DSC before"] == pytest.approx(dice(noisy, truth), abs=1e-12)
    assert facts["metrics"]["DSC after"] == pytest.approx(dice(refined, truth), abs=1e-12)
    # a second demo into the same folder does not replace the first one's files without --overwrite
    files = {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)}
    assert main(["demo", "--out", str(tmp_path), "--preset", "fast"]) == 2
    assert "exists; pass --overwrite" in capsys.readouterr().err
    assert {p: (tmp_path / p).read_bytes() for p in os.listdir(tmp_path)} == files
    assert main(["demo", "--out", str(tmp_path), "--preset", "fast", "--overwrite", "--shape-only"]) == 0
    assert "refined (shape only)" in capsys.readouterr().out  # what refined.nii.gz now holds


def test_the_demo_script_runs_again_into_its_own_folder_only(tmp_path):
    """``bash scripts/demo.sh`` (the README's main job) failed when run a second time ("output exists"):
    its own folder is now replaced; a folder the user names is not, unless --overwrite is given."""
    import shutil
    import subprocess

    root = tmp_path / "repo"
    (root / "scripts").mkdir(parents=True)
    shutil.copy(REPO / "scripts" / "demo.sh", root / "scripts" / "demo.sh")
    (root / "scripts" / "setup.sh").write_text("true\n")  # the real one installs .venv
    (root / ".venv" / "bin").mkdir(parents=True)
    stub = root / ".venv" / "bin" / "nearslicer"
    stub.write_text('#!/usr/bin/env bash\necho "$PWD" "$@"\n')  # records how the demo is started
    stub.chmod(0o755)

    def demo(*args):
        return subprocess.run(["bash", str(root / "scripts" / "demo.sh"), *args], capture_output=True, text=True,
                              cwd=tmp_path, check=True).stdout.strip()

    assert demo() == f"{root} demo --out nearslicer-demo --overwrite"
    # a folder the user names is where the user is, not in the repository the script moves to
    assert demo("mine") == f"{root} demo --out {tmp_path}/mine"
    assert demo("mine", "--overwrite", "--preset", "fast") == \
        f"{root} demo --out {tmp_path}/mine --overwrite --preset fast"
    assert demo(str(tmp_path / "abs")) == f"{root} demo --out {tmp_path}/abs"


def test_bench_appearance_and_real_ct(tmp_path, shared_data, capsys):
    """bench --appearance (synthetic CT) and --real-ct compare S with S+A on the same cases."""
    import json

    out = tmp_path / "b.json"
    alan = shared_data / "alan64" / "alan64_trainval.npz"
    assert main(["bench", "--data", str(alan), "--appearance", "--cases", "2", "--preset", "fast",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert {"input", "NeAR S", "NeAR S+A"} <= set(result["table"])
    assert result["settings"]["methods"]["NeAR S+A"]["appearance"] is True
    assert result["settings"]["methods"]["NeAR S"]["appearance"] is False
    assert all(r["cases"] == 2 for r in result["table"].values())

    assert main(["bench", "--real-ct", str(shared_data / "totalseg_example"), "--per-label", "1", "--preset", "fast",
                 "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    assert [r["case"] for r in result["per_case"]["NeAR S+A"]] == ["label8_d0", "label9_d0"]
    assert "| NeAR S+A |" in capsys.readouterr().out


def test_bench_all_structures_scores_each_structure_with_its_prior(tmp_path, shared_data, capsys):
    """bench --real-ct --all-structures: each large label (and the adrenal glands, whatever their size)
    distorted on the CT's 3 mm grid, refined with the prior ``auto`` picks for it, NSD at 3 mm, and a
    per-structure table with the structures made worse than their input."""
    import json

    out = tmp_path / "b.json"
    assert main(["bench", "--real-ct", str(shared_data / "totalseg_example"), "--all-structures", "--min-voxels",
                 "9000", "--per-label", "1", "--errors", "mix", "--preset", "fast", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    # labels 1 (9452 voxels), 5 (38634) and 20 (12993) are the only ones >= 9000; 8 and 9 (~150) are adrenal
    assert [r["case"] for r in result["per_case"]["input"]] == [
        "label1_d0", "label5_d0", "label8_d0", "label9_d0", "label20_d0"]
    priors = {r["case"]: r["prior"] for r in result["per_case"]["NeAR S+A"]}
    assert priors["label8_d0"].startswith("adrenal") and priors["label9_d0"].startswith("adrenal")
    assert all(priors[c].startswith("anatomy") for c in ("label1_d0", "label5_d0", "label20_d0"))
    assert result["settings"]["nsd_tolerance_mm"] == 3.0 and result["settings"]["error_units"] == "mm"
    assert all(r["dsc"] < 1.0 for r in result["per_case"]["input"]), "every case is distorted"
    summary = result["by_structure"]
    assert list(summary["structures"]) == ["label1", "label5", "label8", "label9", "label20"]
    assert set(summary["worse"]) == set(result["table"]) - {"input"}
    # each structure is named by the label map's TotalSegmentator table (what --prior auto read)
    assert summary["names"] == {"label1": "spleen", "label5": "liver", "label8": "adrenal_gland_right",
                                "label9": "adrenal_gland_left", "label20": "colon"}
    printed = capsys.readouterr().out
    assert "| NSD 3 mm (%) |" in printed and "| label8 (adrenal_gland_right) |" in printed
    assert "NeAR S+A: DSC " in printed and "worse than the input by more than 1 DSC" in printed


def test_bench_unseen_classes_use_the_general_prior(tmp_path, capsys):
    """bench --unseen-classes: generated shapes of the classes the general prior never trained on, each
    in a synthetic CT, distorted by the mixture, refined with what --prior auto gives an unnamed
    segment (the general prior), NSD at each case's own voxel."""
    import json

    from NeARSlicerLib.anatomy_shapes import HELD_OUT_CLASSES

    out = tmp_path / "b.json"
    assert main(["bench", "--unseen-classes", "2", "--preset", "fast", "--json", str(out)]) == 0
    result = json.loads(out.read_text())
    names = [r["case"] for r in result["per_case"]["input"]]
    assert len(names) == 2 and all(n.split("_")[0] in HELD_OUT_CLASSES for n in names)
    assert all(r["prior"].startswith("anatomy") for r in result["per_case"]["NeAR S+A"])
    assert all(r["dsc"] < 1.0 for r in result["per_case"]["input"]), "every case is distorted"
    assert result["settings"]["nsd_tolerance_mm"] is None
    printed = capsys.readouterr().out
    assert "| NSD 1 voxel (%) |" in printed and "cases worse than the input by more than 1 DSC" in printed
    assert result["settings"]["seed_base"] == 20_000
    # --unseen-seed: a fresh sample of the same classes (other shapes and errors), recorded in the settings
    fresh = tmp_path / "fresh.json"
    assert main(["bench", "--unseen-classes", "1", "--unseen-seed", "31000", "--preset", "fast", "--json", str(fresh)]) == 0
    other = json.loads(fresh.read_text())
    assert other["settings"]["seed_base"] == 31_000
    assert other["per_case"]["input"][0]["dsc"] != result["per_case"]["input"][0]["dsc"]
    assert main(["bench", "--unseen-seed", "5", "--json", str(tmp_path / "x.json")]) == 2
    assert "--unseen-seed draws the cases of --unseen-classes" in capsys.readouterr().err


def test_by_structure_averages_each_structure_over_its_seeds():
    """A structure counts as made worse by its seeds' mean DSC, not by one bad seed."""
    from NeARSlicerLib.bench import by_structure

    def rows(values):
        return [{"case": c, "dsc": d, "nsd": 0.9} for c, d in values]

    cases = ["a_d0", "a_d1", "b_d0", "b_d1"]
    result = {"per_case": {"input": rows(zip(cases, [0.90, 0.90, 0.90, 0.90])),
                           "m": rows(zip(cases, [0.87, 0.89, 0.87, 0.92]))}}  # a: -2 on average, b: -0.5
    summary = by_structure(result)
    assert summary["worse"] == {"m": ["a"]}
    assert summary["structures"]["a"]["m"]["dsc"] == pytest.approx(88.0)
    assert summary["structures"]["b"]["m"]["dsc"] == pytest.approx(89.5)
    assert summary["structures"]["b"]["input"]["nsd"] == pytest.approx(90.0)


def test_bench_all_structures_needs_a_real_ct_and_library_errors(tmp_path, shared_data, capsys):
    assert main(["bench", "--all-structures"]) == 2
    assert "--all-structures needs --real-ct" in capsys.readouterr().err
    assert main(["bench", "--real-ct", str(shared_data / "totalseg_example"), "--all-structures",
                 "--errors", "paper"]) == 2
    assert "distort with the error library" in capsys.readouterr().err
    assert main(["bench", "--unseen-classes", "2", "--real-ct", str(shared_data / "totalseg_example")]) == 2
    assert "--unseen-classes makes its own cases" in capsys.readouterr().err


def test_bench_real_ct_folder_must_hold_ct_and_seg(tmp_path, capsys):
    assert main(["bench", "--real-ct", str(tmp_path)]) == 2
    assert "needs ct.nii.gz and seg.nii.gz" in capsys.readouterr().err


# ------------------------------------------------------------------------- output safety (issue 10)
def _case(tmp_path):
    truth = adrenal_phantom(seed=5)
    grid = Grid(truth.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0), (1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0))
    src = tmp_path / "in.nii.gz"
    write_mask(str(src), distort(truth, seed=2).astype(np.uint8), grid)
    return src


@pytest.fixture
def no_compute(monkeypatch):
    """Fails the test if refinement starts: these refusals must come before any computation."""
    import NeARSlicerLib.refine as refine

    def refuse(*args, **kwargs):
        raise AssertionError("refine_mask was called although an output was refused")

    monkeypatch.setattr(refine, "refine_mask", refuse)


def _err(capsys):
    """The one-line error (a progress bar may have drawn before it when the machine is slow)."""
    stderr = capsys.readouterr().err
    last = stderr.replace("\r", "\n").strip().splitlines()[-1]
    assert last.startswith("nearslicer: error:") and "Traceback" not in stderr, stderr
    return last


def test_refine_out_equal_to_mask_is_refused(tmp_path, capsys, no_compute):
    src = _case(tmp_path)
    before = src.read_bytes()
    (tmp_path / "sub").mkdir()
    (tmp_path / "link.nii.gz").symlink_to(src)
    for out in (src, tmp_path / "sub" / ".." / "in.nii.gz", tmp_path / "link.nii.gz"):
        rc = main(["refine", "--mask", str(src), "--out", str(out), "--overwrite"])
        assert rc == 2 and "is the input" in _err(capsys)
    rc = main(["refine", "--mask", str(src), "--out", str(tmp_path / "o.nii.gz"), "--report", str(src)])
    assert rc == 2 and "is the input" in _err(capsys)
    rc = main(["refine", "--mask", str(src), "--out", str(tmp_path / "o.nii.gz"),
               "--probability", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "two outputs are the same file" in _err(capsys)
    prior = tmp_path / "prior.safetensors"
    prior.write_bytes(b"weights")
    rc = main(["refine", "--mask", str(src), "--out", str(tmp_path / "o.nii.gz"), "--prior", str(prior),
               "--probability", str(prior), "--overwrite"])
    assert rc == 2 and "is the input" in _err(capsys) and prior.read_bytes() == b"weights"
    assert src.read_bytes() == before
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "link.nii.gz", "prior.safetensors", "sub"]


def test_refine_missing_report_folder_fails_before_writing_anything(tmp_path, capsys, no_compute):
    src = _case(tmp_path)
    out, prob = tmp_path / "o.nii.gz", tmp_path / "p.nii.gz"
    rc = main(["refine", "--mask", str(src), "--out", str(out), "--probability", str(prob),
               "--report", str(tmp_path / "missing" / "dir" / "r.png")])
    err = _err(capsys)
    assert rc == 2 and "output folder" in err and "missing" in err and "does not exist" in err
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz"]  # neither --out nor --probability


def test_refine_output_of_a_type_it_cannot_write_is_refused_before_computing(tmp_path, capsys, no_compute):
    """Before, --out x.png ran the whole refinement and then failed, naming its temporary file."""
    src = _case(tmp_path)
    for extra, expected in (
            (["--out", str(tmp_path / "o.png")], "--out: unsupported file type: o.png (use .nii, .nii.gz, .nrrd"),
            (["--out", str(tmp_path / "o.Nii.gz")], "--out: o.Nii.gz: ITK reads and writes a NIfTI file only"),
            (["--out", str(tmp_path / "o.nii.gz"), "--probability", str(tmp_path / "p.seg.nrrd")],
             "--probability p.seg.nrrd: give a file name ending in .nii.gz or .nii or .nrrd"),
            (["--out", str(tmp_path / "o.nii.gz"), "--report", str(tmp_path / "r.txt")],
             "--report r.txt: the report is a PNG image; give a file name ending in .png")):
        rc = main(["refine", "--mask", str(src), *extra])
        assert rc == 2 and expected in _err(capsys), extra
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz"]


def test_refine_unwritable_folder_is_refused_before_computing(tmp_path, capsys, no_compute, monkeypatch):
    import NeARSlicerLib.output_safety as osafe

    src = _case(tmp_path)

    def refuse(*args, **kwargs):  # what a read-only mount answers (root ignores folder modes)
        raise PermissionError(errno.EROFS, "Read-only file system")

    monkeypatch.setattr(osafe.tempfile, "mkstemp", refuse)
    rc = main(["refine", "--mask", str(src), "--out", str(tmp_path / "o.nii.gz")])
    assert rc == 2 and "cannot write to output folder" in _err(capsys)
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz"]


def test_refine_existing_output_needs_overwrite(tmp_path, capsys):
    src = _case(tmp_path)
    out = tmp_path / "o.nii.gz"
    out.write_bytes(b"an earlier result")
    rc = main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast"])
    assert rc == 2 and f"output {out} exists; pass --overwrite to replace it" in _err(capsys)
    assert out.read_bytes() == b"an earlier result"
    assert main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast", "--overwrite"]) == 0
    refined, _, _ = read_mask(str(out))
    assert refined.any() and sorted(os.listdir(tmp_path)) == ["in.nii.gz", "o.nii.gz"]


def test_refine_disk_full_half_way_writes_nothing(tmp_path, capsys, monkeypatch):
    """The report (written last) fails half-way: --out and --probability are not created / changed."""
    import NeARSlicerLib.report as report

    src = _case(tmp_path)
    out, prob, rep = tmp_path / "o.nii.gz", tmp_path / "p.nrrd", tmp_path / "r.png"
    out.write_bytes(b"previous result")

    def disk_full(path, *args, **kwargs):
        with open(path, "wb") as f:
            f.write(b"\x89PNG half")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(report, "save_report_png", disk_full)
    rc = main(["refine", "--mask", str(src), "--out", str(out), "--probability", str(prob), "--report", str(rep),
               "--preset", "fast", "--overwrite"])
    assert rc == 1 and "No space left on device" in _err(capsys)
    assert out.read_bytes() == b"previous result"
    assert sorted(os.listdir(tmp_path)) == ["in.nii.gz", "o.nii.gz"]  # no probability, report or temp file


def test_train_prior_refuses_to_write_over_its_data(tmp_path, capsys):
    data = tmp_path / "shapes.npz"
    np.savez(data, train_shapes=np.zeros((2, 8, 8, 8), np.uint8), val_shapes=np.zeros((1, 8, 8, 8), np.uint8))
    before = data.read_bytes()
    for extra in (["--out", str(data)], ["--out", str(tmp_path / "p.safetensors"), "--resume", str(data)]):
        assert main(["train-prior", "--data", str(data), "--max-steps", "1", *extra]) == 2
        assert "is the input" in _err(capsys)
    assert data.read_bytes() == before and sorted(os.listdir(tmp_path)) == ["shapes.npz"]


def test_train_prior_keeps_an_earlier_runs_prior(tmp_path, capsys):
    """A prior at --out before the run (an earlier run's hours of training; the default --out is the
    same name every time) is refused unless --overwrite; before, it was replaced without a word."""
    data = tmp_path / "shapes.npz"
    np.savez(data, train_shapes=np.zeros((2, 8, 8, 8), np.uint8), val_shapes=np.zeros((1, 8, 8, 8), np.uint8))
    prior = tmp_path / "p.safetensors"
    prior.write_bytes(b"an earlier run's prior")
    assert main(["train-prior", "--data", str(data), "--out", str(prior), "--max-steps", "1"]) == 2
    assert f"output {prior} exists; pass --overwrite" in _err(capsys)
    assert prior.read_bytes() == b"an earlier run's prior" and sorted(os.listdir(tmp_path)) == ["p.safetensors",
                                                                                                 "shapes.npz"]
