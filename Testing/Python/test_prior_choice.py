"""Prior choice: ``auto`` picks the adrenal prior for an adrenal gland, else the general anatomy prior."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from NeARSlicerLib import prior as P
from NeARSlicerLib.batch import structure_of
from NeARSlicerLib.cli import main
from NeARSlicerLib.errors import PriorError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import write_mask
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask

SLICER_TERMINOLOGY = ("Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical "
                      "Structure~SCT^23451007^Adrenal gland~SCT^7771000^Left~Anatomic codes - DICOM master list~^^~^^")


@pytest.mark.parametrize("name", ["Left adrenal gland", "adrenal_gland_left", "Adrenal gland R", "ADRENAL",
                                  "right adrenal", "Nebenniere links", "glande surrénale gauche",
                                  "Glandula suprarenalis", "suprarenal gland", SLICER_TERMINOLOGY,
                                  "SCT^23451007^Adrenal gland"])
def test_adrenal_names_are_recognised(name):
    assert P.is_adrenal_structure(name)


@pytest.mark.parametrize("name", [None, "", "spleen", "kidney_left", "Segment_1", "renal artery",
                                  "suprarenal aorta", "left adrenal adenoma", "Adrenal mass",
                                  "adrenal_tumor", "vertebrae_L1"])
def test_other_structures_and_adrenal_lesions_are_not(name):
    assert not P.is_adrenal_structure(name)


@pytest.fixture
def anatomy_missing(tmp_path, monkeypatch):
    """The general pair points at files that do not exist (as before the lead ships them)."""
    pair = P.PriorPair(tmp_path / "anatomy_v1.safetensors", tmp_path / "anatomy_sa_v1.safetensors")
    monkeypatch.setitem(P.PRIORS, "anatomy", pair)
    return pair


@pytest.fixture
def anatomy_installed(anatomy_missing):
    anatomy_missing.shape.write_bytes(b"x")  # choose_prior only looks for the files
    anatomy_missing.appearance.write_bytes(b"x")
    return anatomy_missing


def test_auto_uses_the_adrenal_pair_for_an_adrenal_gland(anatomy_installed):
    assert P.choose_prior("auto", "Left adrenal gland", with_image=False) == ("adrenal-s", P.DEFAULT_PRIOR, "")
    assert P.choose_prior(None, "adrenal_gland_right", with_image=True) == ("adrenal-sa", P.DEFAULT_SA_PRIOR, "")


def test_auto_uses_the_general_prior_otherwise(anatomy_installed):
    assert P.choose_prior(None, "spleen", with_image=False) == ("anatomy-s", anatomy_installed.shape, "")
    assert P.choose_prior("AUTO", "spleen", with_image=True) == ("anatomy-sa", anatomy_installed.appearance, "")
    assert P.choose_prior("", None, with_image=False) == ("anatomy-s", anatomy_installed.shape, "")
    assert P.choose_prior(None, "left adrenal adenoma", with_image=False)[0] == "anatomy-s"
    assert P.resolve_prior(None, with_image=False, structure="liver") == anatomy_installed.shape
    assert P.default_prior(False) == anatomy_installed.shape


def test_auto_falls_back_to_the_adrenal_pair_with_a_note_while_no_general_prior_exists(anatomy_missing):
    name, path, note = P.choose_prior(None, "spleen", with_image=False)
    assert (name, path) == ("adrenal-s", P.DEFAULT_PRIOR)
    assert "'spleen' is not named as an adrenal gland" in note and "anatomy_v1.safetensors" in note
    assert "not named" in P.choose_prior(None, None, with_image=False)[2]
    # no note where the adrenal prior is the right one anyway
    assert P.choose_prior(None, "adrenal_gland_left", with_image=False)[2] == ""


def test_forced_names_and_paths_ignore_the_structure(anatomy_installed, tmp_path):
    assert P.choose_prior("adrenal", "spleen", with_image=False) == ("adrenal-s", P.DEFAULT_PRIOR, "")
    assert P.choose_prior("anatomy-s", "Left adrenal gland", with_image=True) == ("anatomy-s",
                                                                                   anatomy_installed.shape, "")
    own = tmp_path / "mine.safetensors"
    own.write_bytes(b"x")
    assert P.choose_prior(str(own), "adrenal", with_image=True) == (None, own, "")


def test_a_forced_general_prior_that_is_not_installed_names_its_file(anatomy_missing):
    with pytest.raises(PriorError, match="anatomy_v1.safetensors"):
        P.choose_prior("anatomy", None, with_image=False)
    with pytest.raises(PriorError, match="anatomy_sa_v1.safetensors"):
        P.choose_prior("anatomy-sa", None, with_image=True)
    with pytest.raises(PriorError, match="unknown prior 'liver'.*auto, adrenal"):
        P.choose_prior("liver", None, with_image=False)


def test_registry_lists_auto_and_both_pairs():
    names = P.prior_names()
    assert names[0] == "auto"
    assert {"adrenal", "adrenal-s", "adrenal-sa", "anatomy", "anatomy-s", "anatomy-sa"} <= set(names)
    assert P.PRIORS["anatomy"].shape.name == "anatomy_v1.safetensors"
    assert P.PRIORS["anatomy"].appearance.name == "anatomy_sa_v1.safetensors"


def test_refine_passes_the_structure_to_the_choice(anatomy_missing):
    gland = adrenal_phantom(seed=3)
    grid = Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    other = refine_mask(gland, grid, None, RefineOptions(preset="fast", structure="spleen"))
    assert any("'spleen' is not named as an adrenal gland" in w for w in other.warnings)
    named = refine_mask(gland, grid, None, RefineOptions(preset="fast", structure="Left adrenal gland"))
    assert not any("adrenal gland" in w for w in named.warnings)
    assert named.info["prior_name"] == "adrenal-s"


def test_cli_structure_comes_from_the_option_the_segment_or_the_file_name():
    assert structure_of("/x/seg.seg.nrrd", None, {"segment": "Left adrenal gland", "labels": [1, 2]}) \
        == "Left adrenal gland"
    assert structure_of("/x/adrenal_gland_left.nii.gz", None, {"labels": [1]}) == "adrenal_gland_left"
    assert structure_of("/x/seg.nii.gz", None, {"labels": [1, 8, 9]}) is None  # a multilabel value: unnamed
    assert structure_of("/x/seg.nii.gz", "spleen", {"labels": [1, 8, 9]}) == "spleen"


def test_cli_refine_reports_the_prior_and_the_fallback(tmp_path, capsys, anatomy_missing):
    gland = adrenal_phantom(seed=4).astype(np.uint8)
    grid = Grid(shape=gland.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
    src = tmp_path / "spleen.nii.gz"
    write_mask(str(src), gland, grid)
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "a.nii.gz"), "--preset", "fast"]) == 0
    assert "'spleen' is not named as an adrenal gland" in capsys.readouterr().err
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "b.nii.gz"), "--preset", "fast",
                 "--structure", "right adrenal gland"]) == 0
    captured = capsys.readouterr()
    assert "not named as an adrenal gland" not in captured.err and "prior adrenal-s" in captured.out
    assert Path(tmp_path / "b.nii.gz").is_file()
