"""--prior auto for a study: the prior refine would give the cases' structure, one prior per study."""
import json
import re
import shutil

import numpy as np
import pytest

from NeARSlicerLib.cli import main
from NeARSlicerLib.errors import InputError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import write_mask
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.prior import resolve_prior
from NeARSlicerLib.study import StudyCase, StudyConfig, load_cases, run_study
from NeARSlicerLib.study_prior_choice import groups_by_prior, plan_by_prior, study_prior

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

GRID = Grid((28, 40, 40), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def _gland(seed: int) -> np.ndarray:
    return adrenal_phantom(seed=seed, shape=GRID.shape, spacing=GRID.spacing).astype(np.uint8)


def test_auto_gives_a_study_the_prior_refine_gives_its_structure():
    adrenal, general = resolve_prior("adrenal", with_image=False), resolve_prior("anatomy", with_image=False)
    assert study_prior(["a", "b"], ["adrenal gland", "Left adrenal gland"], "auto", False) == str(adrenal)
    assert study_prior(["a", "b"], [None, "spleen"], None, False) == str(general)
    # the S+A adrenal prior when images are read
    assert study_prior(["a"], ["adrenal_gland_left"], "auto", True) == str(resolve_prior("adrenal", True))
    # a named prior (or file) serves every case, whatever they are
    assert study_prior(["a", "b"], ["adrenal gland", "spleen"], "anatomy", False) == "anatomy"
    groups = groups_by_prior(["spleen", "adrenal gland", None, "adrenal_gland_right"], "auto", False)
    assert groups == {general: [0, 2], adrenal: [1, 3]}
    assert groups_by_prior(["spleen", "adrenal gland"], "adrenal", False) == {adrenal: [0, 1]}
    # each study's label names the prior it adapts: by structure with auto, the named one otherwise
    cases = [StudyCase("a", _gland(1), GRID, structure="adrenal gland"), StudyCase("b", _gland(2), GRID)]
    assert plan_by_prior(cases, "auto", False) == [("adrenal-s", adrenal, [0]), ("anatomy-s", general, [1])]
    assert plan_by_prior(cases, "anatomy", False) == [("anatomy-s", general, [0, 1])]


def test_a_study_mixing_adrenal_glands_with_other_structures_is_refused_before_anything_is_written(tmp_path):
    cases = [StudyCase("left", _gland(1), GRID, structure="adrenal_gland_left"),
             StudyCase("spleen1", _gland(2), GRID, structure="spleen"),
             StudyCase("spleen2", _gland(3), GRID, structure="spleen")]
    out = tmp_path / "out"
    with pytest.raises(InputError) as info:
        run_study(cases, None, StudyConfig.for_recipe("fast", epochs=0), out_dir=str(out))
    msg = str(info.value)
    assert "the adrenal-s prior for 1 case(s) (left)" in msg
    assert "the anatomy-s prior for 2 case(s) (spleen1, spleen2)" in msg
    assert "run one study per prior" in msg
    assert not out.exists()


def test_an_adrenal_study_adapts_the_adrenal_prior_and_an_unnamed_one_the_general_prior():
    cfg = StudyConfig.for_recipe("fast", epochs=0)
    named = run_study([StudyCase("g", _gland(4), GRID, structure="adrenal gland")], "auto", cfg)
    assert named.info["prior"] == str(resolve_prior("adrenal", with_image=False))
    unnamed = run_study([StudyCase("g", _gland(4), GRID)], None, cfg)
    assert unnamed.info["prior"] == str(resolve_prior("anatomy", with_image=False))


def test_cli_study_reads_structures_from_file_names_and_structure(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    write_mask(str(masks / "adrenal_gland_left.nii.gz"), _gland(5), GRID)
    write_mask(str(masks / "spleen.nii.gz"), _gland(6), GRID)
    assert [c.structure for c in load_cases(str(masks))] == ["adrenal_gland_left", "spleen"]
    assert {c.structure for c in load_cases(str(masks), structure="adrenal gland")} == {"adrenal gland"}
    out = tmp_path / "out"
    rc = main(["study", "--masks", str(masks), "--out", str(out), "--recipe", "fast", "--epochs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "different priors" in err and "adrenal_gland_left" in err, err
    assert not out.exists() or not any(out.iterdir())
    # every mask named an adrenal gland: one study of the adrenal prior
    rc = main(["study", "--masks", str(masks), "--out", str(out), "--recipe", "fast", "--epochs", "0",
               "--structure", "adrenal gland"])
    assert rc == 0, capsys.readouterr().err
    card = json.loads((out / "study_prior.json").read_text())
    assert card["warm_start"] == str(resolve_prior("adrenal", with_image=False))


def test_cli_split_by_prior_runs_one_study_per_prior_in_its_own_folder(tmp_path, capsys):
    masks = tmp_path / "masks"
    masks.mkdir()
    write_mask(str(masks / "adrenal_gland_left.nii.gz"), _gland(7), GRID)
    write_mask(str(masks / "spleen.nii.gz"), _gland(8), GRID)
    write_mask(str(masks / "liver.nii.gz"), _gland(9), GRID)
    out = tmp_path / "out"
    args = ["study", "--masks", str(masks), "--out", str(out), "--recipe", "fast", "--epochs", "0", "--split-by-prior"]
    assert main(args) == 0, capsys.readouterr().err
    text = capsys.readouterr().out
    assert text.count("study of ") == 2
    adrenal, general = out / "adrenal-s", out / "anatomy-s"
    assert sorted(p.name for p in adrenal.iterdir() if p.suffix == ".gz") == ["adrenal_gland_left.nii.gz"]
    assert sorted(p.name for p in general.iterdir() if p.suffix == ".gz") == ["liver.nii.gz", "spleen.nii.gz"]
    for folder, prior in ((adrenal, "adrenal"), (general, "anatomy")):
        card = json.loads((folder / "study_prior.json").read_text())
        assert card["warm_start"] == str(resolve_prior(prior, with_image=False))
    # run again: the second study's outputs are checked before the first one trains, so nothing is replaced
    shutil.rmtree(adrenal)  # the first study could run again, the second could not
    before = {p: p.stat().st_mtime_ns for p in general.iterdir()}
    assert main(args) == 2
    assert re.search(r"(liver|spleen)\.nii\.gz exists; pass --overwrite", capsys.readouterr().err)
    assert not adrenal.exists() or not any(adrenal.iterdir())
    assert {p: p.stat().st_mtime_ns for p in general.iterdir()} == before
    # nor into the inputs' folder, split or not
    rc = main(["study", "--masks", str(masks), "--out", str(masks), "--epochs", "0", "--split-by-prior"])
    assert rc == 2 and "holds the study's input" in capsys.readouterr().err
    assert sorted(p.name for p in masks.iterdir()) == ["adrenal_gland_left.nii.gz", "liver.nii.gz", "spleen.nii.gz"]


def test_a_manifests_structure_column_names_each_case_for_auto(tmp_path, capsys):
    """Files that say nothing of what they hold (``seg.nii.gz`` in every case's folder): the manifest's
    structure column names each case, and wins over --structure."""
    rows = []
    for k, what in enumerate(["left adrenal gland", "spleen", ""]):
        folder = tmp_path / f"case{k}"
        folder.mkdir()
        write_mask(str(folder / "seg.nii.gz"), _gland(10 + k), GRID)
        rows.append(f"c{k},case{k}/seg.nii.gz,,,{what}")
    man = tmp_path / "cases.csv"
    man.write_text("name,mask,image,label,structure\n" + "\n".join(rows) + "\n")
    assert [c.structure for c in load_cases(manifest=str(man))] == ["left adrenal gland", "spleen", "seg"]
    assert [c.structure for c in load_cases(manifest=str(man), structure="liver")] == [
        "left adrenal gland", "spleen", "liver"]
    out = tmp_path / "out"
    rc = main(["study", "--manifest", str(man), "--out", str(out), "--recipe", "fast", "--epochs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "the adrenal-s prior for 1 case(s) (c0)" in err and "2 case(s) (c1, c2)" in err, err
    assert not out.exists() or not any(out.iterdir())
