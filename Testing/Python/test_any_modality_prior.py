"""Images that are not CT (issue 13): an anatomy whose S+A prior reads CT through the HU window
sends other images to its any-modality S+A prior (``NAME-mr``, per-case intensity normalisation)
when installed, else refines by shape only; a CT is still read by the window prior. The shipped
adrenal S+A prior is itself per-case (it reads CT and MR). Training draws MR-like images only when
asked."""
import json
import shutil
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

import NeARSlicerLib.prior as prior_mod
from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.errors import PriorError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask
from NeARSlicerLib.training_data import DataSpec, make_sample

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from no_harm import mr_phantom  # noqa: E402  (the benchmark's held-out MR-like generator)

GLAND = "left adrenal gland"


@pytest.fixture
def case_prior(tmp_path):
    """An S+A prior whose card says it reads CT and MR through per-case normalisation (the shipped
    S+A weights under such a card: the routing, not the weights, is under test here)."""
    src = prior_mod.DEFAULT_SA_PRIOR
    path = tmp_path / "adrenal_case.safetensors"
    shutil.copyfile(src, path)
    card = json.loads(src.with_suffix(".json").read_text()) if src.with_suffix(".json").is_file() else {}
    card.setdefault("meta", {}).update({"appearance_norm": "case", "modalities": ["CT", "MR"]})
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


def _with_any_modality(monkeypatch, path):
    pair = prior_mod.PRIORS["adrenal"]
    monkeypatch.setitem(prior_mod.PRIORS, "adrenal", replace(pair, any_modality=Path(path)))


def _window_pair(monkeypatch, any_modality):
    """The adrenal pair as an anatomy whose S+A prior reads CT only (the CT-window adrenal_sa_v1)."""
    pair = prior_mod.PRIORS["adrenal"]
    monkeypatch.setitem(prior_mod.PRIORS, "adrenal", replace(pair, appearance=prior_mod.CT_WINDOW_SA_PRIOR,
                                                            any_modality=Path(any_modality)))


def _case(seed=3):
    truth = adrenal_phantom(seed=seed)
    return truth, corrupt(truth, (1.0, 1.0, 1.0), "slab", 7), Grid(truth.shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))


def test_mr_image_is_read_by_the_any_modality_prior(monkeypatch, case_prior):
    _window_pair(monkeypatch, case_prior)
    truth, noisy, grid = _case()
    res = refine_mask(noisy, grid, mr_phantom(truth, 11), RefineOptions(preset="fast", structure=GLAND))
    assert res.info["prior_name"] == "adrenal-mr" and res.info["appearance"] is True
    assert res.info["modality"] == "MR"
    assert any("read as MR" in w and "read by adrenal-mr" in w for w in res.warnings)
    assert not any("refined by shape only" in w for w in res.warnings)


def test_ct_is_still_read_by_the_window_prior(monkeypatch, case_prior):
    _window_pair(monkeypatch, case_prior)
    truth, noisy, grid = _case()
    res = refine_mask(noisy, grid, ct_phantom(truth, seed=11), RefineOptions(preset="fast", structure=GLAND))
    assert res.info["prior_name"] == "adrenal-sa" and res.info["appearance"] is True
    assert res.info["prior"] == str(prior_mod.CT_WINDOW_SA_PRIOR)
    assert not any("adrenal-mr" in w for w in res.warnings)


def test_shipped_adrenal_sa_prior_reads_ct_and_mr_itself():
    """The shipped adrenal S+A prior normalises per case: a CT and an MR image are both read by it,
    with no fallback and no warning about the modality."""
    assert prior_mod.resolve_prior_named("adrenal", with_image=True) == ("adrenal-sa", prior_mod.DEFAULT_SA_PRIOR)
    card = json.loads(prior_mod.DEFAULT_SA_PRIOR.with_suffix(".json").read_text())["meta"]
    assert card["appearance_norm"] == "case" and {"CT", "MR"} <= set(card["modalities"])
    truth, noisy, grid = _case()
    for image, modality in ((ct_phantom(truth, seed=11), "CT"), (mr_phantom(truth, 11), "MR")):
        res = refine_mask(noisy, grid, image, RefineOptions(preset="fast", structure=GLAND))
        assert res.info["prior_name"] == "adrenal-sa" and res.info["appearance"] is True
        assert res.info["modality"] == modality and not any("CT" in w for w in res.warnings)


def test_without_the_any_modality_prior_mr_is_refined_by_shape_only(monkeypatch, tmp_path):
    _window_pair(monkeypatch, tmp_path / "not_installed.safetensors")
    truth, noisy, grid = _case()
    res = refine_mask(noisy, grid, mr_phantom(truth, 11), RefineOptions(preset="fast", structure=GLAND))
    assert res.info["prior_name"] == "adrenal-s" and res.info["appearance"] is False
    assert any("refined by shape only" in w for w in res.warnings)


def test_mr_prior_is_addressable_by_name(monkeypatch, case_prior, tmp_path):
    _with_any_modality(monkeypatch, case_prior)
    assert "adrenal-mr" in prior_mod.prior_names()
    assert prior_mod.resolve_prior_named("adrenal-mr", with_image=True) == ("adrenal-mr", case_prior)
    assert prior_mod.any_modality_prior("adrenal-sa") == ("adrenal-mr", case_prior)
    assert prior_mod.any_modality_prior("anatomy") is None
    _with_any_modality(monkeypatch, tmp_path / "missing.safetensors")
    with pytest.raises(PriorError, match="adrenal-mr.*not installed"):
        prior_mod.resolve_prior_named("adrenal-mr", with_image=True)


def test_training_draws_mr_like_images_only_with_case_normalisation():
    shapes = adrenal_phantom(seed=1)[None]
    window = DataSpec(appearance=True, appearance_norm="window", families=("slab",), p_mr=1.0)
    a = make_sample(shapes, window, np.random.default_rng(5))
    b = make_sample(shapes, replace(window, p_mr=0.0), np.random.default_rng(5))
    assert np.array_equal(a[2], b[2])  # the window (CT) stream ignores p_mr: shipped recipes unchanged
    case = replace(window, appearance_norm="case")
    clean, noisy, mr, _ = make_sample(shapes, case, np.random.default_rng(5))
    ct = make_sample(shapes, replace(case, p_mr=0.0), np.random.default_rng(5))[2]
    assert mr.shape == ct.shape and not np.allclose(mr, ct)
    # per-case normalised: the annotation reads ~0.75 inside whatever the modality's intensities
    assert 0.6 < float(np.median(mr[noisy > 0])) <= 0.85


def test_shipped_mr_prior_reads_held_out_mr_better_than_shape_only(shared_data):
    """On a fixed sample of val shapes in MR-like images of a generator it never saw, reading the
    image beats shape only on average (benchmarks/mr_appearance.py measures 24 cases)."""
    if not prior_mod.ADRENAL_MR_PRIOR.is_file():
        pytest.fail(f"the shipped any-modality prior is missing: {prior_mod.ADRENAL_MR_PRIOR}")
    from NeARSlicerLib.metrics import dice

    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"]
    grid = Grid((64, 64, 64), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    gains = []
    for i in (64, 65, 66, 68):
        truth = val[i].astype(bool)
        rough = corrupt(truth, (1.0, 1.0, 1.0), "mixture", 53_000 + 101 * i)
        opts = RefineOptions(preset="fast", structure=GLAND, change_policy="all")
        with_mr = refine_mask(rough, grid, mr_phantom(truth, 53_000 + 101 * i), opts)
        shape_only = refine_mask(rough, grid, None, opts)
        assert with_mr.info["prior_name"] == "adrenal-sa" and shape_only.info["prior_name"] == "adrenal-s"
        assert with_mr.info["prior"] == str(prior_mod.ADRENAL_MR_PRIOR)
        gains.append(dice(with_mr.mask, truth) - dice(shape_only.mask, truth))
    assert np.mean(gains) > 0.01, gains
    assert min(gains) > -0.02, gains
