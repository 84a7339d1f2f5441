"""refine_mask's contract beyond quality: priors addressed by name, a bounded and releasable
prior cache, no global RNG use, and internal failures reported as one clear RefinementError."""
import os

import numpy as np
import pytest
import torch

import NeARSlicerLib.refine as refine_module
from NeARSlicerLib.cli import main
from NeARSlicerLib.distort import distort
from NeARSlicerLib.errors import PriorError, RefinementError
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import write_mask
from NeARSlicerLib.model import ModelConfig, NeARModel
from NeARSlicerLib import prior as prior_module
from NeARSlicerLib.prior import (DEFAULT_PRIOR, DEFAULT_SA_PRIOR, PriorPair, load_prior, prior_names,
                                 resolve_prior, resolve_prior_named, save_prior)
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.refine import PRIOR_CACHE, PriorCache, RefineOptions, get_prior, refine_mask, release_priors

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def grid_for(mask):
    return Grid(shape=mask.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=EYE)


@pytest.fixture(scope="module")
def noisy():
    return distort(adrenal_phantom(seed=31), seed=4)


def _tiny_prior(path, seed):
    torch.manual_seed(seed)  # test-only: the weights of a throw-away model
    m = NeARModel(ModelConfig(channels=(16, 8, 8, 4), encoder_channels=(4, 4, 8, 8), mlp_hidden=16))
    return save_prior(path, m, {"seed": seed})


# ------------------------------------------------------------------------------------- names
def test_prior_names_resolve_to_the_shipped_pair(tmp_path):
    assert DEFAULT_SA_PRIOR.is_file(), "the S+A prior is shipped"
    assert prior_names()[:4] == ["auto", "adrenal", "adrenal-s", "adrenal-sa"]
    # the default (auto) for an adrenal gland; other structures: test_prior_choice
    assert resolve_prior(None, with_image=False, structure="left adrenal gland") == DEFAULT_PRIOR
    assert resolve_prior(None, with_image=True, structure="adrenal_gland_right") == DEFAULT_SA_PRIOR
    assert resolve_prior_named("adrenal", with_image=True) == ("adrenal-sa", DEFAULT_SA_PRIOR)
    assert resolve_prior_named("Adrenal", with_image=False) == ("adrenal-s", DEFAULT_PRIOR)
    assert resolve_prior("adrenal-s", with_image=True) == DEFAULT_PRIOR  # forced S despite the image
    assert resolve_prior("adrenal-sa", with_image=False) == DEFAULT_SA_PRIOR  # forced S+A
    own = _tiny_prior(tmp_path / "mine.safetensors", 0)
    assert resolve_prior_named(str(own), with_image=True) == (None, own)


def test_prior_name_errors(tmp_path, monkeypatch):
    with pytest.raises(PriorError, match=r"unknown prior 'liver': use one of auto, adrenal, adrenal-s, adrenal-sa"):
        resolve_prior("liver", with_image=False)
    with pytest.raises(PriorError, match="prior file not found"):
        resolve_prior(str(tmp_path / "gone.safetensors"), with_image=False)
    # an anatomy whose S+A prior is not installed: the pair name falls back to S, forcing S+A is refused
    s = _tiny_prior(tmp_path / "s.safetensors", 0)
    monkeypatch.setitem(prior_module.PRIORS, "kidney", PriorPair(s, tmp_path / "kidney_sa.safetensors"))
    assert resolve_prior("kidney", with_image=True) == s
    with pytest.raises(PriorError, match=r"prior 'kidney-sa' is not installed"):
        resolve_prior("kidney-sa", with_image=True)


def test_load_prior_accepts_names():
    a, meta_a = load_prior("adrenal-s")
    b, meta_b = load_prior(None)  # auto without a structure name: the general prior
    g, meta_g = load_prior("anatomy-s")
    assert meta_g == meta_b and g.cfg == b.cfg and not a.cfg.appearance
    assert meta_a["scale"]["mode"] == "fixed" and meta_b["scale"]["mode"] == "extent"
    sa, _ = load_prior("adrenal", with_image=True)
    assert sa.cfg.appearance


def test_refine_records_the_resolved_prior(noisy, tmp_path):
    res = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", prior="adrenal"))
    assert res.info["prior_name"] == "adrenal-s" and res.info["prior"] == str(DEFAULT_PRIOR)
    named = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", structure="left adrenal gland"))
    assert named.info["prior_name"] == "adrenal-s" and np.array_equal(named.mask, res.mask)
    unnamed = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast"))
    assert unnamed.info["prior_name"] == "anatomy-s"  # auto: an unnamed structure gets the general prior
    by_path = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", prior=str(DEFAULT_PRIOR)))
    assert by_path.info["prior_name"] is None and np.array_equal(by_path.mask, res.mask)
    with pytest.raises(PriorError, match="unknown prior"):
        refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", prior="spleen"))


def test_cli_prior_by_name(tmp_path, noisy, capsys):
    src, out = tmp_path / "m.nii.gz", tmp_path / "o.nii.gz"
    write_mask(str(src), noisy.astype(np.uint8), grid_for(noisy))
    assert main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast", "--prior", "adrenal"]) == 0
    assert out.is_file()
    capsys.readouterr()
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "p.nii.gz"), "--prior", "nope"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "unknown prior 'nope'" in err[0] and "adrenal-sa" in err[0]
    assert not (tmp_path / "p.nii.gz").exists()


# ------------------------------------------------------------------------------------- cache
def test_prior_cache_is_bounded_releasable_and_sees_rewritten_files(tmp_path):
    cache = PriorCache(capacity=1)
    a = _tiny_prior(tmp_path / "a.safetensors", 1)
    b = _tiny_prior(tmp_path / "b.safetensors", 2)
    first, _ = cache.get(a, "cpu")
    assert cache.get(a, "cpu")[0] is first and len(cache) == 1
    cache.get(b, "cpu")
    assert len(cache) == 1, "the least recently used prior is dropped"
    second, _ = cache.get(a, "cpu")
    assert second is not first
    # the same file rewritten with other weights is loaded anew
    _tiny_prior(a, 3)
    st = os.stat(a)
    os.utime(a, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    reloaded, meta = cache.get(a, "cpu")
    assert reloaded is not second and meta == {"seed": 3}
    assert cache.release() == 1 and len(cache) == 0
    assert cache.release() == 0


def test_module_cache_release():
    model, _ = get_prior("anatomy", "cpu")
    assert get_prior(None, "cpu")[0] is model  # the same file by name or by default (auto, unnamed)
    assert len(PRIOR_CACHE) >= 1
    assert release_priors() >= 1 and len(PRIOR_CACHE) == 0
    assert get_prior(None, "cpu")[0] is not model


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_release_returns_gpu_memory():
    cache = PriorCache()
    base = torch.cuda.memory_allocated()
    cache.get(DEFAULT_PRIOR, "cuda")
    assert torch.cuda.memory_allocated() > base
    assert cache.release() == 1
    assert torch.cuda.memory_allocated() == base


# ------------------------------------------------------------------------------------- RNG
def test_refine_leaves_the_global_rng_alone_and_is_seeded(noisy):
    opts = RefineOptions(preset="fast", steps=3, seed=7, change_policy="all")  # latent steps sample random points
    torch_state, numpy_state = torch.random.get_rng_state(), np.random.get_state()
    first = refine_mask(noisy, grid_for(noisy), options=opts)
    assert torch.equal(torch.random.get_rng_state(), torch_state), "refine_mask must not touch torch's global RNG"
    after = np.random.get_state()
    assert after[0] == numpy_state[0] and np.array_equal(after[1], numpy_state[1]) and after[2:] == numpy_state[2:]
    torch.manual_seed(12345)  # whatever the application does with the global RNG...
    torch.rand(100)
    again = refine_mask(noisy, grid_for(noisy), options=opts)
    assert np.array_equal(again.probability, first.probability)  # ...the result depends only on the seed
    other = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", steps=3, seed=8,
                                                                      change_policy="all"))
    assert not np.array_equal(other.probability, first.probability), "the seed drives the fitting"


# ------------------------------------------------------------------------------------- failures
def test_internal_failure_is_one_clear_refinement_error(noisy, monkeypatch):
    before = noisy.copy()

    def broken(*args, **kwargs):
        raise RuntimeError("CUDA error: an illegal memory access was encountered\nCUDA kernel errors might be ...")

    monkeypatch.setattr(refine_module, "decode_probability", broken)
    with pytest.raises(RefinementError) as info:
        refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast"))
    msg = str(info.value)
    assert msg == "refinement failed inside the engine: RuntimeError: CUDA error: an illegal memory access was encountered"
    assert isinstance(info.value.__cause__, RuntimeError)
    assert np.array_equal(noisy, before)

    def oom(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(refine_module, "decode_probability", oom)
    with pytest.raises(RefinementError, match=r"OutOfMemoryError: CUDA out of memory.*try the 'fast' preset"):
        refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast"))


def test_refine_reports_the_latent_codes_it_fitted(noisy):
    """info's latent_rms (the fitted codes' size) and latent_shift (how far the fit moved them from the
    encoder's codes): no fitting steps leave the encoder's codes as they are."""
    grid = grid_for(noisy)
    encoded = refine_mask(noisy, grid, None, RefineOptions(steps=0))  # "fast" fits no steps either
    fitted = refine_mask(noisy, grid, None, RefineOptions())
    assert encoded.info["latent_shift"] == 0.0 and fitted.info["latent_shift"] > 0.0
    assert 0.0 < encoded.info["latent_rms"] < 10.0 and 0.0 < fitted.info["latent_rms"] < 10.0


@pytest.mark.parametrize("voxels", [1, 2])
def test_a_segment_of_one_or_two_voxels_is_kept_with_the_domain_warning(voxels):
    """A stray click painted one voxel: the input is kept, out of the prior's domain (too small), with
    its warning. Before, one voxel failed inside the engine ("LinAlgError: Eigenvalues did not converge":
    the spread of one point is NaN)."""
    mask = np.zeros((20, 20, 20), np.uint8)
    mask[10, 10, 10:10 + voxels] = 1
    grid = Grid(shape=mask.shape, spacing=(3.0, 3.0, 3.0), origin=(0.0, 0.0, 0.0), direction=EYE)
    result = refine_mask(mask, grid, None, RefineOptions(preset="fast", prior="anatomy"))
    assert np.array_equal(result.mask, mask) and result.info["out_of_domain"]
    assert any(f"this segment is {3 * voxels} mm long" in w for w in result.warnings), result.warnings


def test_an_empty_output_of_the_prior_keeps_the_annotation_unless_every_change_is_asked_for(monkeypatch):
    """A prior that finds no shape in an annotation (seen: a study prior on a one-voxel-thick painted line)
    would delete the structure whole; the do-no-harm policies keep the annotation and say why, and only
    --changes all returns the empty mask. Before, gated returned it empty as "refined"."""
    from NeARSlicerLib.confidence import KEPT_NO_SHAPE, apply_changes

    clean = adrenal_phantom(seed=31)  # no specks: the kept annotation comes back exactly, not cleaned
    real = refine_module.decode_probability
    monkeypatch.setattr(refine_module, "decode_probability", lambda *a, **k: real(*a, **k) * 0.0)
    for policy in ("gated", "thick"):
        result = refine_mask(clean, grid_for(clean), options=RefineOptions(preset="fast", change_policy=policy))
        assert np.array_equal(result.mask, clean) and result.info["action"] == KEPT_NO_SHAPE, policy
        assert any("found no plausible shape" in w and "annotation was kept" in w for w in result.warnings)
    # the shared mechanism says the same (the benchmarks score the default with it)
    for policy in ("gated", "thick"):
        kept = apply_changes(clean, np.zeros_like(clean), (1.0, 1.0, 1.0), policy, supported=True)
        assert np.array_equal(kept, clean > 0), policy
    result = refine_mask(clean, grid_for(clean), options=RefineOptions(preset="fast", change_policy="all"))
    assert not result.mask.any() and result.info["action"] == "refined"
    assert any("the refined mask is empty" in w for w in result.warnings)
