"""Study mode (transductive NeAR over several cases): quality, bit-identical resume, CLI, errors."""
import csv
import json
import os

import numpy as np
import pytest
import SimpleITK as sitk
import torch

from NeARSlicerLib.batch import SUMMARY_COLUMNS
from NeARSlicerLib.checkpoint import load_checkpoint
from NeARSlicerLib.cli import main
from NeARSlicerLib.distort import distort
from NeARSlicerLib.errors import Cancelled, InputError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import read_image, read_mask, write_image, write_mask
from NeARSlicerLib import modality
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.model import ModelConfig, NeARModel
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.prior import DEFAULT_PRIOR, load_prior, save_prior
from NeARSlicerLib.study import StudyCase, StudyConfig, load_cases, run_study

# the quality test uses the shipped prior; NEARSLICER_TEST_PRIOR points it at another one while developing
SHIPPED = os.environ.get("NEARSLICER_TEST_PRIOR") or str(DEFAULT_PRIOR)
# distort's salt-and-pepper reaches the edge of these small volumes; that warning is expected here
pytestmark = [pytest.mark.filterwarnings("ignore:.*touches the border:UserWarning"),
              pytest.mark.filterwarnings("ignore:some cases have no image:UserWarning")]
TINY = ModelConfig(latent_dim=16, channels=(16, 8, 8, 4), mlp_hidden=16, mlp_layers=2, encoder_res=16,
                   encoder_channels=(4, 4, 8, 8))


def _grid(shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0)):
    return Grid(shape, spacing, origin)


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory):
    """A small random S+A model: fast enough for the mechanics tests (quality is not their point)."""
    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("prior") / "tiny.safetensors"
    cfg = ModelConfig.from_dict({**TINY.to_dict(), "appearance": True, "annotation_sigmas": (0.0, 1.0)})
    save_prior(path, NeARModel(cfg), {"fov_mm": 48.0})
    return str(path)


@pytest.fixture(scope="module")
def phantoms():
    """Four clean glands and their distorted annotations on a 1 mm grid."""
    clean = [adrenal_phantom(seed=30 + s) for s in range(4)]
    noisy = [distort(c, seed=7 + s) for s, c in enumerate(clean)]
    return clean, noisy


def test_study_improves_mean_dice(phantoms):
    clean, noisy = phantoms
    grid = _grid(clean[0].shape)
    cases = [StudyCase(f"case{i}", n.astype(np.uint8), grid) for i, n in enumerate(noisy)]
    res = run_study(cases, SHIPPED, StudyConfig(epochs=30, seed=0))
    before = np.mean([dice(n, c) for n, c in zip(noisy, clean)])
    after = np.mean([dice(m, c) for m, c in zip(res.masks, clean)])
    assert after > before + 0.02, f"study mode should improve the mean Dice: {before:.3f} -> {after:.3f}"
    assert all(m.shape == c.shape and m.dtype == np.uint8 for m, c in zip(res.masks, clean))
    assert res.losses[-1] < res.losses[0] and res.steps == res.epochs
    assert res.mlp_point_evals > res.steps * 4 * 4096 and res.decoder_passes == res.steps * 4 + 4
    # the decoder was trained on the study, the encoder (used only for the initial codes) was not
    prior, _ = load_prior(SHIPPED)
    assert not torch.equal(prior.decoder.fc.weight, res.model.decoder.fc.weight)
    assert torch.equal(prior.encoder.fc.weight, res.model.encoder.fc.weight)


def _small_cases(n=3, with_image=True):
    """Small glands on a 0.9 x 1.1 x 1.4 mm grid; the first one without an image."""
    grid = _grid((36, 52, 52), spacing=(1.1, 0.9, 1.4), origin=(-5.0, 3.0, 10.0))
    out = []
    for s in range(n):
        clean = adrenal_phantom(seed=s, shape=grid.shape, spacing=grid.spacing)
        image = ct_phantom(clean, seed=s, spacing=grid.spacing) if with_image and s > 0 else None
        out.append(StudyCase(f"s{s}", distort(clean, seed=s).astype(np.uint8), grid, image))
    return out


@pytest.mark.parametrize("recipe", ["denoise", "fast", "paper"])
def test_resume_is_bit_identical(tmp_path, tiny_prior, recipe):
    cases = _small_cases()
    cfg = StudyConfig.for_recipe(recipe, epochs=3, batch_cases=2, points=512, dense_res=12, checkpoint_every=1,
                                 patience=0, refine_preset="fast")
    whole = run_study(cases, tiny_prior, cfg)
    calls = {"n": 0}

    def cancel_after_three_steps():
        calls["n"] += 1
        return calls["n"] > 3  # asked once before each step

    ck = tmp_path / "ck.safetensors"
    with pytest.raises(Cancelled):
        run_study(cases, tiny_prior, cfg, checkpoint=str(ck), cancel=cancel_after_three_steps)
    assert ck.is_file() and load_checkpoint(ck)[1]["step"] == 3  # mid-epoch (2 steps/epoch); no pickle
    assert os.listdir(tmp_path) == ["ck.safetensors"]  # no temp file left
    resumed = run_study(cases, tiny_prior, cfg, checkpoint=str(ck))
    assert resumed.info["resumed_from_step"] == 3
    assert resumed.losses == whole.losses and resumed.steps == whole.steps == 6
    assert torch.equal(resumed.latents, whole.latents)
    assert all(np.array_equal(a, b) for a, b in zip(resumed.masks, whole.masks))
    assert all(np.array_equal(a, b) for a, b in zip(resumed.probabilities, whole.probabilities))
    for (k, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), k
    # a checkpoint of other settings is refused, not silently mixed in
    with pytest.raises(InputError, match="other cases or settings"):
        run_study(cases, tiny_prior, StudyConfig.for_recipe(recipe, epochs=3, seed=1), checkpoint=str(ck))


def test_early_stopping_and_zero_epochs(tiny_prior):
    cases = _small_cases(2, with_image=False)
    res = run_study(cases, tiny_prior, StudyConfig(epochs=200, points=256, patience=2, tolerance=0.5))
    assert res.stopped_early and res.epochs < 200
    none = run_study(cases, tiny_prior, StudyConfig(epochs=0))
    assert none.steps == 0 and len(none.masks) == 2  # decoding straight from the encoder's codes


def _write_folders(tmp_path, n=2, images=True):
    masks, imgs = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    imgs.mkdir()
    grid = _grid((36, 52, 52), spacing=(1.0, 1.0, 1.5), origin=(10.0, -4.0, 2.0))
    for s in range(n):
        clean = adrenal_phantom(seed=40 + s, shape=grid.shape, spacing=grid.spacing)
        write_mask(str(masks / f"case{s}.nii.gz"), distort(clean, seed=s).astype(np.uint8), grid)
        if images:
            write_image(str(imgs / f"case{s}.nii.gz"), ct_phantom(clean, seed=s, spacing=grid.spacing), grid)
    return masks, imgs, grid


@pytest.mark.parametrize("with_images", [True, False])
def test_cli_study_end_to_end(tmp_path, tiny_prior, capsys, with_images):
    masks, imgs, grid = _write_folders(tmp_path, images=with_images)
    out = tmp_path / "out"
    args = ["study", "--masks", str(masks), "--out", str(out), "--prior", tiny_prior, "--epochs", "2",
            "--device", "cpu"] + (["--images", str(imgs)] if with_images else [])
    assert main(args) == 0
    for s in range(2):
        refined, rgrid, _ = read_mask(str(out / f"case{s}.nii.gz"))
        assert rgrid.same_as(grid), "each refined mask keeps its input's geometry"
    card = json.loads((out / "study_prior.json").read_text())
    assert card["cases"] == ["case0", "case1"] and card["recipe"] == "denoise" and card["steps"] == 2
    assert card["appearance"] is with_images
    model, meta = load_prior(out / "study_prior.safetensors")  # a reusable prior
    assert meta["cases"] == ["case0", "case1"] and model.cfg.latent_dim == TINY.latent_dim
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["case0", "case1"]
    # the batch contract: a study is reviewed as a batch is (nearslicer report, Slicer's review queue)
    assert list(rows[0]) == SUMMARY_COLUMNS
    for s, r in enumerate(rows):
        assert r["mask"] == str((masks / f"case{s}.nii.gz").absolute()) and r["output"] == str((out / f"case{s}.nii.gz"))
        assert r["image"] == (str((imgs / f"case{s}.nii.gz").absolute()) if with_images else "")
        assert r["segment"] == "Label_1" and r["label"] == "1" and r["error"] == "" and r["host"]
    # the denoise recipe refines every case: its confidence and action, as a batch reports them
    assert all(0.0 <= float(r["confidence"]) <= 1.0 and r["action"] for r in rows), rows
    assert all(r["prior"].startswith("study (") for r in rows), rows
    assert (out / "checkpoint.safetensors").is_file()
    assert "study of 2 cases" in capsys.readouterr().out
    # the outputs of a finished study are not replaced without --overwrite, and nothing is computed
    files = {p.name: p.read_bytes() for p in out.iterdir()}
    assert main(args + ["--resume"]) == 2
    assert "case0.nii.gz exists; pass --overwrite to replace it" in capsys.readouterr().err
    assert {p.name: p.read_bytes() for p in out.iterdir()} == files
    # resuming a finished study only decodes again, with the same result
    before = read_mask(str(out / "case0.nii.gz"))[0]
    assert main(args + ["--resume", "--overwrite"]) == 0
    assert np.array_equal(read_mask(str(out / "case0.nii.gz"))[0], before)
    assert json.loads((out / "study_prior.json").read_text())["steps"] == 2


def test_a_cli_study_is_reviewed_as_a_batch_is(tmp_path, tiny_prior, capsys):
    """nearslicer report reads a study's output folder (the batch contract): one row and picture per
    case, red (the annotation, read again from its file) against blue (the study's mask), over the CT."""
    masks, imgs, _ = _write_folders(tmp_path)
    out = tmp_path / "out"
    assert main(["study", "--masks", str(masks), "--images", str(imgs), "--out", str(out), "--prior", tiny_prior,
                 "--epochs", "1"]) == 0
    assert main(["report", "--batch", str(out)]) == 0, capsys.readouterr().err
    page = (out / "report.html").read_text()
    assert "case0" in page and "case1" in page
    pictures = sorted(p.name for p in (out / "report_files").iterdir())
    assert len(pictures) >= 2 and all(name.endswith(".png") for name in pictures), pictures


def test_cli_study_takes_the_do_no_harm_flags_for_every_cases_refinement(tmp_path, tiny_prior, capsys):
    """--keep-threshold, --changes, --no-margin-fit, --no-image-trim, --no-image-gate mean for a study's
    cases what they mean for refine and batch (the card records them); --keep-staircase is not a study
    flag (a study prior refines its cases as painted)."""
    masks, imgs, _ = _write_folders(tmp_path)
    out = tmp_path / "out"
    args = ["study", "--masks", str(masks), "--images", str(imgs), "--out", str(out), "--prior", tiny_prior,
            "--epochs", "1", "--keep-threshold", "1", "--changes", "all", "--no-image-gate"]
    assert main(args) == 0, capsys.readouterr().err
    card = json.loads((out / "study_prior.json").read_text())
    assert card["config"]["refine_options"] == {"keep_threshold": 1.0, "change_policy": "all",
                                                "image_opens_gate": False}
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert all(r["action"].startswith("kept") or float(r["confidence"]) >= 1.0 for r in rows), rows
    with pytest.raises(SystemExit):
        main(["study", "--masks", str(masks), "--out", str(tmp_path / "o2"), "--keep-staircase"])
    assert "unrecognized arguments: --keep-staircase" in capsys.readouterr().err


def test_manifest_and_label(tmp_path, tiny_prior):
    masks, imgs, grid = _write_folders(tmp_path, images=True)
    # a multilabel file: the gland as label 3 next to an unrelated label 5
    lab, _, _ = read_mask(str(masks / "case1.nii.gz"))
    multi = lab.astype(np.uint8) * 3
    multi[:2, :2, :2] = 5
    sitk.WriteImage(grid.to_sitk(multi), str(tmp_path / "multi.nii.gz"))
    man = tmp_path / "cases.csv"
    man.write_text("name,mask,image,label\n"
                   f"a,masks/case0.nii.gz,images/case0.nii.gz,\n"
                   f"b,{tmp_path / 'multi.nii.gz'},,3\n")
    cases = load_cases(manifest=str(man))
    assert [c.name for c in cases] == ["a", "b"] and cases[0].image is not None and cases[1].image is None
    assert np.array_equal(cases[1].mask, lab)
    # nearslicer batch's manifest (a case column), saved by a spreadsheet (a byte-order mark): the same cases
    batch_manifest = tmp_path / "batch.csv"
    batch_manifest.write_bytes(b"\xef\xbb\xbf" + man.read_bytes().replace(b"name,", b"case,", 1))
    again = load_cases(manifest=str(batch_manifest))
    assert [(c.name, c.label) for c in again] == [(c.name, c.label) for c in cases]
    assert np.array_equal(again[1].mask, lab)
    out = tmp_path / "out"
    assert main(["study", "--manifest", str(man), "--out", str(out), "--prior", tiny_prior, "--epochs", "1"]) == 0
    assert (out / "a.nii.gz").is_file() and (out / "b.nii.gz").is_file()


def test_study_bad_inputs(tmp_path, tiny_prior, capsys):
    empty = tmp_path / "empty"
    empty.mkdir()
    out = str(tmp_path / "out")

    def err(args):
        assert main(args) == 2
        stderr = capsys.readouterr().err
        e = stderr.replace("\r", "\n").strip().splitlines()[-1]  # the progress bar may have drawn before
        assert e.startswith("nearslicer: error:") and "Traceback" not in stderr
        return e

    assert "holds no" in err(["study", "--masks", str(empty), "--out", out])
    assert "not found" in err(["study", "--masks", str(tmp_path / "nope"), "--out", out])
    masks, imgs, _ = _write_folders(tmp_path)
    (imgs / "case1.nii.gz").rename(imgs / "other.nii.gz")
    e = err(["study", "--masks", str(masks), "--images", str(imgs), "--out", out])
    assert "no image" in e and "case1" in e
    assert "--masks" in err(["study", "--out", out])
    bad = tmp_path / "bad.csv"
    bad.write_text("case,file\nx,y\n")
    assert "needs the columns name (or case) and mask" in err(["study", "--manifest", str(bad), "--out", out])
    assert "--epochs" in err(["study", "--masks", str(masks), "--out", out, "--epochs", "-1"])
    assert "prior" in err(["study", "--masks", str(masks), "--out", out, "--prior", str(tmp_path / "none.safetensors")])
    # API: empty masks, duplicate names, unknown recipe
    grid = _grid((20, 20, 20))
    ok = np.zeros(grid.shape, np.uint8)
    ok[8:12, 8:12, 8:12] = 1
    with pytest.raises(InputError, match="case e: mask is empty"):
        run_study([StudyCase("e", np.zeros(grid.shape, np.uint8), grid)], tiny_prior)
    with pytest.raises(InputError, match="duplicate case name"):
        run_study([StudyCase("d", ok, grid), StudyCase("d", ok, grid)], tiny_prior)
    with pytest.raises(InputError, match="recipe"):
        StudyConfig.for_recipe("slow")
    with pytest.raises(InputError, match="at least one case"):
        run_study([], tiny_prior)


def _snapshot(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def test_study_out_equal_to_an_input_folder_is_refused(tmp_path, tiny_prior, capsys):
    masks, imgs, _ = _write_folders(tmp_path)
    before_m, before_i = _snapshot(masks), _snapshot(imgs)
    for out, inputs in ((masks, ["--masks", str(masks)]), (imgs, ["--masks", str(masks), "--images", str(imgs)]),
                        (tmp_path / "images" / ".." / "masks", ["--masks", str(masks)])):
        rc = main(["study", *inputs, "--out", str(out), "--prior", tiny_prior, "--epochs", "1", "--overwrite"])
        err = capsys.readouterr().err
        assert rc == 2 and "holds the study's input case0.nii.gz" in err and "choose another output folder" in err
    # a manifest naming a mask inside the output folder: the same rule
    man = tmp_path / "cases.csv"
    man.write_text("name,mask\nx,masks/case0.nii.gz\n")
    assert main(["study", "--manifest", str(man), "--out", str(masks), "--prior", tiny_prior]) == 2
    assert "holds the study's input" in capsys.readouterr().err
    assert _snapshot(masks) == before_m and _snapshot(imgs) == before_i


def test_study_checks_outputs_before_training(tmp_path, tiny_prior, capsys):
    masks, _, _ = _write_folders(tmp_path, images=False)
    out = tmp_path / "out"
    out.mkdir()
    (out / "case1.nii.gz").write_bytes(b"an earlier result")
    rc = main(["study", "--masks", str(masks), "--out", str(out), "--prior", tiny_prior, "--epochs", "1"])
    assert rc == 2 and "case1.nii.gz exists; pass --overwrite" in capsys.readouterr().err
    assert _snapshot(out) == {"case1.nii.gz": b"an earlier result"}  # no checkpoint: training never started
    # warm-starting from the prior an earlier study left in --out must not replace it
    prior = out / "study_prior.safetensors"
    prior.write_bytes(open(tiny_prior, "rb").read())
    rc = main(["study", "--masks", str(masks), "--out", str(out), "--prior", str(prior), "--overwrite"])
    assert rc == 2 and "study_prior.safetensors is the input" in capsys.readouterr().err
    assert prior.read_bytes() == open(tiny_prior, "rb").read()
    prior.unlink()
    # an unreadable folder: refused before training too (the probe fails as on a read-only mount)
    import NeARSlicerLib.output_safety as osafe

    real = osafe.tempfile.mkstemp
    osafe.tempfile.mkstemp = lambda *a, **k: (_ for _ in ()).throw(PermissionError(13, "Permission denied"))
    try:
        rc = main(["study", "--masks", str(masks), "--out", str(tmp_path / "ro"), "--prior", tiny_prior])
    finally:
        osafe.tempfile.mkstemp = real
    assert rc == 2 and "cannot write to output folder" in capsys.readouterr().err


def test_study_summary_rows_are_written_as_cases_finish(tmp_path, tiny_prior):
    cases = _small_cases(3)
    out = tmp_path / "out"
    calls = {"n": 0}

    def cancel_at_second_case():
        calls["n"] += 1
        return calls["n"] > 1  # epochs=0: asked only before decoding each case

    with pytest.raises(Cancelled):
        run_study(cases, tiny_prior, StudyConfig(epochs=0), out_dir=str(out), cancel=cancel_at_second_case)
    rows = list(csv.DictReader(open(out / "summary.csv")))
    assert [r["case"] for r in rows] == ["s0"]  # the finished case is kept; nothing half-written
    refined = read_mask(str(out / "s0.nii.gz"))[0]
    assert int(rows[0]["voxels_after"]) == int(refined.sum())
    assert float(rows[0]["dice"]) == round(dice(cases[0].mask, refined), 4)
    assert sorted(p.name for p in out.iterdir()) == ["s0.nii.gz", "summary.csv"]


@pytest.mark.parametrize("kind", ["pickle", "corrupt"])
def test_study_refuses_pickled_or_corrupt_checkpoint(tmp_path, tiny_prior, capsys, kind):
    masks, _, _ = _write_folders(tmp_path, images=False)
    out = tmp_path / "out"
    out.mkdir()
    ck = out / "checkpoint.safetensors"
    if kind == "pickle":
        torch.save({"format": "nearslicer-study-1", "state": {"step": 1}}, ck)  # the old resume format
    else:
        ck.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{\"a\": truncated")
    before = ck.read_bytes()
    rc = main(["study", "--masks", str(masks), "--out", str(out), "--prior", tiny_prior, "--epochs", "1",
               "--resume"])
    err = capsys.readouterr().err
    assert rc == 2
    if kind == "pickle":
        assert "is a torch.save (zip + pickle) file; NeARSlicer never loads pickle" in err
    else:
        assert "checkpoint.safetensors is corrupt or truncated" in err
    assert ck.read_bytes() == before and _snapshot(out) == {"checkpoint.safetensors": before}


@pytest.fixture(scope="module")
def case_norm_prior(tmp_path_factory):
    """A small random S+A model whose card says it reads images relative to the annotation (as the
    shipped adrenal S+A prior does) and whose domain is a narrow size range (20-30 mm)."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("prior") / "tiny_case_norm.safetensors"
    cfg = ModelConfig.from_dict({**TINY.to_dict(), "appearance": True, "annotation_sigmas": (0.0, 1.0)})
    save_prior(path, NeARModel(cfg), {"fov_mm": 48.0})
    path.with_suffix(".json").write_text(json.dumps({"meta": {
        "appearance_norm": "case", "domain": {"size_mm": [20.0, 30.0], "elongation": [1.0, 20.0], "components": 1}}}))
    return str(path)


def test_study_reads_images_as_its_prior_does(case_norm_prior):
    """A prior that normalises each image relative to the annotation does not care about the
    intensities' scale and offset: a study of the same cases with the image x 3 + 500 gives the same
    probabilities (a HU window would read a different image), and its study prior keeps that normalisation."""
    cases = _small_cases(3)
    cfg = StudyConfig(epochs=1, points=256, batch_cases=3, seed=0)
    res = run_study(cases, case_norm_prior, cfg)
    rescaled = [StudyCase(c.name, c.mask, c.grid, None if c.image is None else c.image * 3.0 + 500.0) for c in cases]
    res2 = run_study(rescaled, case_norm_prior, cfg)
    assert res.info["appearance"] and res.info["prior_meta"]["appearance_norm"] == "case"
    for a, b in zip(res.probabilities, res2.probabilities):
        assert np.allclose(a, b, atol=1e-5)


def test_study_cases_are_inside_the_adapted_priors_domain(case_norm_prior):
    """Study mode is for structures the warm-start prior does not know: its cases widen the
    adapted prior's domain, so they are refined rather than kept as out of domain."""
    from NeARSlicerLib.domain import check, shape_facts

    cases = [StudyCase(c.name, c.mask, c.grid) for c in _small_cases(2)]
    assert any(check(shape_facts(c.mask > 0, c.grid.spacing), {"size_mm": [20.0, 30.0]}) for c in cases)
    res = run_study(cases, case_norm_prior, StudyConfig.for_recipe("denoise", epochs=0, refine_preset="fast"))
    domain = res.info["prior_meta"]["domain"]
    assert "2 cases of this study" in domain["what"]
    for c in cases:
        assert check(shape_facts(c.mask > 0, c.grid.spacing), domain) == []
    assert not any("out of the prior's domain" in w for w in res.warnings), res.warnings


def test_denoise_targets_are_part_of_the_recipe(tmp_path, tiny_prior):
    """The denoise recipe trains towards the prior's reconstruction of each annotation by default;
    a checkpoint of the annotation-target recipe is not continued under it, and an unknown choice
    is a clear error."""
    cases = _small_cases(2)
    ck = tmp_path / "study.ckpt.safetensors"
    old = StudyConfig.for_recipe("denoise", epochs=1, points=256, refine_preset="fast", denoise_targets="annotation")
    assert StudyConfig.for_recipe("denoise").denoise_targets == "prior"
    run_study(cases, tiny_prior, old, checkpoint=str(ck))
    with pytest.raises(InputError, match="differs in: denoise_targets"):
        run_study(cases, tiny_prior, StudyConfig.for_recipe("denoise", epochs=2, points=256, refine_preset="fast"),
                  checkpoint=str(ck))
    with pytest.raises(InputError, match="unknown denoise targets 'truth'"):
        run_study(cases, tiny_prior, StudyConfig.for_recipe("denoise", denoise_targets="truth"))


def test_clean_pairs_are_part_of_the_recipe(tmp_path, tiny_prior):
    """A checkpoint of the denoise recipe without clean pairs (before 2026-12-06) is not continued by
    the recipe with them; a share outside [0, 1) is a clear error."""
    cases = _small_cases(2)
    ck = tmp_path / "study.ckpt.safetensors"
    run_study(cases, tiny_prior, StudyConfig.for_recipe("denoise", epochs=1, points=256, refine_preset="fast",
                                                        clean_share=0.0), checkpoint=str(ck))
    with pytest.raises(InputError, match="differs in: clean_share"):
        run_study(cases, tiny_prior, StudyConfig.for_recipe("denoise", epochs=2, points=256, refine_preset="fast"),
                  checkpoint=str(ck))
    with pytest.raises(InputError, match=r"clean_share 1.0 \(a share in \[0, 1\)\)"):
        run_study(cases, tiny_prior, StudyConfig.for_recipe("denoise", clean_share=1.0))


def test_study_does_not_read_mr_through_a_ct_window(tiny_prior):
    """A CT-window S+A prior does not read an MR-like image (positive intensities, no fat or air in
    HU): that case is fitted by shape only, as ``refine`` does, and the study says so."""
    cases = _small_cases(3)
    rng = np.random.default_rng(0)
    mr = [StudyCase(c.name, c.mask, c.grid, None if c.image is None else
                    (300.0 + 400.0 * (c.mask > 0) + rng.normal(0, 20, c.mask.shape)).astype(np.float32)) for c in cases]
    cfg = StudyConfig(epochs=1, points=256, batch_cases=3, seed=0)
    with pytest.warns(UserWarning, match="case s1: the image does not look like CT"):
        res = run_study(mr, tiny_prior, cfg)
    blind = run_study([StudyCase(c.name, c.mask, c.grid) for c in cases], tiny_prior, cfg)
    for a, b in zip(res.probabilities, blind.probabilities):
        assert np.allclose(a, b, atol=1e-5)


def test_refine_refuses_a_paper_recipe_study_prior(tmp_path):
    """A paper-recipe study prior has an untrained encoder (its card says so): refine says why it
    cannot use it instead of returning the random shape a few latent steps give from a random code."""
    from NeARSlicerLib.bench import identity_grid
    from NeARSlicerLib.errors import InputError
    from NeARSlicerLib.model import NeARModel
    from NeARSlicerLib.phantom import adrenal_phantom
    from NeARSlicerLib.prior import save_prior
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    path = save_prior(tmp_path / "study_prior.safetensors", NeARModel(), {"recipe": "paper", "encoder_trained": False})
    mask = adrenal_phantom(seed=2).astype(np.uint8)
    before = mask.copy()
    with pytest.raises(InputError, match=r"study_prior.safetensors was made by a study of the paper's recipe, whose "
                                         r"encoder is untrained"):
        refine_mask(mask, identity_grid(mask.shape), None, RefineOptions(prior=str(path), preset="fast"))
    assert np.array_equal(mask, before)


def test_a_sigterm_stops_a_study_at_a_step_with_its_checkpoint(tmp_path):
    """The SIGTERM a cluster's scheduler sends before it kills stops the study at the next step boundary
    with its checkpoint saved, for --resume, as a first Ctrl-C does (the same handler,
    ``cli._stop_at_a_step``); before, SIGTERM ended it on the spot and whatever had been trained since the
    last checkpoint was lost."""
    import signal
    import subprocess
    import sys
    import time
    from pathlib import Path

    masks = tmp_path / "masks"
    masks.mkdir()
    for k in range(3):
        shape = adrenal_phantom(seed=k)
        write_mask(str(masks / f"c{k}.nii.gz"), distort(shape, seed=k).astype(np.uint8), _grid(shape.shape))
    out = tmp_path / "out"
    repo = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(repo / "NeARSlicer"), "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    # the paper's recipe never stops early (patience 0): the run is still training when the signal comes
    proc = subprocess.Popen([sys.executable, "-m", "NeARSlicerLib.cli", "study", "--masks", str(masks), "--out",
                             str(out), "--recipe", "paper", "--epochs", "100000", "--preset", "fast"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    try:
        assert proc.stdout.readline().startswith(b"study: 3 cases"), proc.stderr.read().decode()[-2000:]
        time.sleep(3)  # into the training
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 2 and b"study cancelled at step" in err and b"resume from it" in err, err.decode()[-2000:]
    assert (out / "checkpoint.safetensors").is_file()


def _full_resolution_cases(tmp_path, n=2):
    """Glands in CTs much larger than a study reads (masks/ and images/ folders), each near the low-k
    face, so that the working cube reaches beyond the volume. Only the far high-k end holds fat and air:
    a box around a gland holds neither the scan's darkest value nor anything that tells CT (soft tissue
    alone reads as MR, ``modality.detect``)."""
    masks, imgs = tmp_path / "masks", tmp_path / "images"
    masks.mkdir()
    imgs.mkdir()
    grid = _grid((150, 220, 220), spacing=(1.0, 1.0, 1.0), origin=(-20.0, 7.0, 3.0))
    rng = np.random.default_rng(3)
    for s in range(n):
        small = adrenal_phantom(seed=60 + s, shape=(48, 48, 48))
        clean = np.zeros(grid.shape, bool)
        clean[2:50, 40 + 30 * s:88 + 30 * s, 60:108] = small
        image = (40.0 + 10.0 * rng.standard_normal(grid.shape) + 45.0 * clean).astype(np.float32)
        image[-20:-10], image[-10:] = -100.0, -1000.0
        write_mask(str(masks / f"case{s}.nii.gz"), distort(clean, seed=s).astype(np.uint8), grid)
        write_image(str(imgs / f"case{s}.nii.gz"), image, grid)
    return masks, imgs, grid


def _whole_cases(masks, imgs):
    """The same cases as whole volumes (as a caller builds them)."""
    out = []
    for path in sorted(masks.iterdir()):
        mask, grid, _ = read_mask(str(path))
        image, _ = read_image(str(imgs / path.name))
        out.append(StudyCase(path.name.split(".")[0], mask, grid, image))
    return out


@pytest.fixture(scope="module")
def blurred_prior(tmp_path_factory):
    """A small random S+A model that also reads a(p) blurred by 2 voxels: a voxel near the volume's face
    then reads the image beyond it (the scan's darkest value), as a real prior's image context does."""
    torch.manual_seed(1)
    path = tmp_path_factory.mktemp("prior") / "blurred.safetensors"
    cfg = ModelConfig.from_dict({**TINY.to_dict(), "appearance": True, "annotation_sigmas": (0.0, 1.0),
                                 "appearance_sigmas": (0.0, 2.0)})
    save_prior(path, NeARModel(cfg), {"fov_mm": 48.0})
    return str(path)


@pytest.mark.filterwarnings("ignore::UserWarning")  # the random prior's cases' notes, not under test here
@pytest.mark.parametrize("recipe", ["denoise", "fast"])
def test_a_study_holds_boxes_of_full_resolution_scans_and_refines_as_the_whole(tmp_path, blurred_prior, recipe):
    """load_cases keeps each case as the box of its volume the study reads (case_crop): the study's
    masks, placed on the whole volume, its probabilities and the files it writes are the whole
    volumes' study's, though the box holds neither the scan's darkest value nor its far side."""
    masks, imgs, grid = _full_resolution_cases(tmp_path)
    # the prior's whole output (not kept by the do-no-harm gate): it reads the image beyond the volume
    cfg = StudyConfig.for_recipe(recipe, epochs=1, refine_preset="fast", refine_options={"change_policy": "all"}
                                 if recipe == "denoise" else {})
    read = []  # the CLI's progress while full-resolution cases are read
    boxed = load_cases(str(masks), str(imgs), prior=blurred_prior, cfg=cfg, on_read=lambda *a: read.append(a))
    assert read == [(1, 2, "case0"), (2, 2, "case1")]
    assert all(c.mask.size < 0.5 * np.prod(grid.shape) and c.image.shape == c.mask.shape for c in boxed)
    assert all(c.image.min() > -100 and c.source.scan.outside == -1000 for c in boxed)
    assert {modality.detect(c.image).modality for c in boxed} == {"MR"}
    assert {c.source.scan.detected.modality for c in boxed} == {"CT"}
    whole = _whole_cases(masks, imgs)
    a = run_study(boxed, blurred_prior, cfg, out_dir=str(tmp_path / "boxed"))
    b = run_study(whole, blurred_prior, cfg, out_dir=str(tmp_path / "whole"))
    for c, m, p, wm, wp in zip(a.cases, a.masks, a.probabilities, b.masks, b.probabilities):
        assert c.source is not None and np.array_equal(c.source.place(m), wm)
        placed = np.zeros_like(wp)
        placed[c.source.slices] = p
        assert np.array_equal(placed, wp)
    for c in whole:  # the files written: on the whole volume's grid, the whole volumes' study's voxels
        written, expected = (sitk.ReadImage(str(tmp_path / side / f"{c.name}.nii.gz")) for side in ("boxed", "whole"))
        assert written.GetSize() == expected.GetSize() == grid.shape[::-1]
        assert written.GetOrigin() == expected.GetOrigin() and written.GetSpacing() == expected.GetSpacing()
        assert np.array_equal(sitk.GetArrayFromImage(written), sitk.GetArrayFromImage(expected))


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_study_reads_a_case_again_when_it_needs_a_larger_box(tmp_path, blurred_prior):
    """Cases loaded for one scale, studied at another (a wider margin): run_study reads each again with
    the box it needs, and the study equals the whole volumes'."""
    masks, imgs, grid = _full_resolution_cases(tmp_path)
    boxed = load_cases(str(masks), str(imgs), prior=blurred_prior, cfg=StudyConfig.for_recipe("denoise", epochs=1))
    wide = StudyConfig.for_recipe("denoise", epochs=1, refine_preset="fast", margin_mm=16.0)
    a = run_study(boxed, blurred_prior, wide)
    b = run_study(_whole_cases(masks, imgs), blurred_prior, wide)
    assert a.info["working_shapes"] == b.info["working_shapes"]
    assert all(np.prod(s.source.shape) > np.prod(c.source.shape) for s, c in zip(a.cases, boxed))
    for c, m, wm in zip(a.cases, a.masks, b.masks):
        assert np.array_equal(c.source.place(m), wm)
