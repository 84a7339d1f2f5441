"""Shape + appearance (S+A): a(p) is sampled where the mask is, it moves the refined surface
toward the image's edges, a flat image carries no information, and the shipped S+A prior
beats the shape-only one when the image shows the true boundary."""
from __future__ import annotations

import os
import warnings

import numpy as np
import pytest
import torch

from NeARSlicerLib.bench import BENCH_SEED, identity_grid
from NeARSlicerLib.distort import distort
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.model import ModelConfig, NeARModel, sample_volume, voxel_centres, window_hu
from NeARSlicerLib.phantom import ct_phantom
from NeARSlicerLib.prior import DEFAULT_PRIOR, DEFAULT_SA_PRIOR, default_prior
from NeARSlicerLib.refine import RefineOptions, refine_mask

SA_PRIOR = os.environ.get("NEARSLICER_TEST_SA_PRIOR") or str(DEFAULT_SA_PRIOR)


def test_window_is_the_papers():
    hu = torch.tensor([-1000.0, -60.0, 40.0, 140.0, 3000.0])
    assert torch.allclose(window_hu(hu), torch.tensor([0.0, 0.0, 0.5, 1.0, 1.0]))
    # training data (numpy) and refinement (torch) read the CT through the same window
    from NeARSlicerLib.appearance import window_ct

    assert np.allclose(window_ct(hu.numpy()), window_hu(hu).numpy())


def test_appearance_is_read_at_the_query_point():
    """The MLP's a(p) input equals the image at p: sampled with the mask's own convention."""
    cfg = ModelConfig(channels=(8, 4, 4, 4), encoder_channels=(4, 4, 4, 4), mlp_hidden=8, appearance=True,
                      appearance_sigmas=(0.0,), appearance_gain=3.0)
    model = NeARModel(cfg)
    n = 16
    g = torch.Generator().manual_seed(0)
    image = torch.rand(1, 1, n, n, n, generator=g)
    mask = (image > 0.5).float()
    _, cond = model.encode(mask, image)
    centres = voxel_centres(n).view(1, -1, 3)
    # anywhere between the outer voxel centres (beyond them the volume is read with edge padding)
    pts = (centres + (torch.rand(centres.shape, generator=g) - 0.5) / n).clamp(-1 + 1 / n, 1 - 1 / n)
    seen = []
    model.mlp.forward = lambda feats: seen.append(feats) or feats[..., 0]  # capture the MLP's input
    model.query(model.maps(torch.zeros(1, cfg.latent_dim), cond), pts, cond)
    a_at_p = seen[0][0, :, -1] / cfg.appearance_gain + 0.5  # the MLP reads (a(p) - 0.5) * gain
    assert torch.allclose(a_at_p, sample_volume(image, pts)[0], atol=1e-5)
    # at voxel centres a(p) is exactly that voxel's value, where the mask's voxel is
    model.query(model.maps(torch.zeros(1, cfg.latent_dim), cond), centres, cond)
    assert torch.allclose(seen[1][0, :, -1] / cfg.appearance_gain + 0.5, image.flatten(), atol=1e-5)


@pytest.fixture(scope="module")
def sa_prior() -> str:
    if not os.path.isfile(SA_PRIOR):
        raise FileNotFoundError(f"the shipped S+A prior is missing: {SA_PRIOR}")
    return SA_PRIOR


@pytest.fixture(scope="module")
def val_shapes(shared_data):
    return np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"]


def _refine(mask, image, prior, preset="fast", appearance=True):  # the prior's own output: every change
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return refine_mask(mask.astype(np.uint8), identity_grid(mask.shape), image,
                           RefineOptions(prior=prior, preset=preset, appearance=appearance, change_policy="all"))


def test_shipped_sa_prior_has_its_cards():
    import json

    from NeARSlicerLib.prior import load_prior

    assert DEFAULT_SA_PRIOR.is_file() and DEFAULT_SA_PRIOR.stat().st_size < 30 * 2**20
    card = json.loads(DEFAULT_SA_PRIOR.with_suffix(".json").read_text())
    assert card["license_of_data"] == "CC BY 4.0" and any("MedMNIST" in c for c in card["citations"])
    assert DEFAULT_SA_PRIOR.with_suffix(".md").is_file()
    model, _ = load_prior(DEFAULT_SA_PRIOR)
    assert model.cfg.appearance and model.cfg.encoder_appearance


def test_default_prior_follows_the_image(sa_prior):
    from NeARSlicerLib.prior import ANATOMY_PRIOR, ANATOMY_SA_PRIOR, resolve_prior

    # an adrenal gland: the adrenal pair, S+A with an image
    assert resolve_prior("adrenal", with_image=False) == DEFAULT_PRIOR
    if sa_prior == str(DEFAULT_SA_PRIOR):
        assert resolve_prior("adrenal", with_image=True) == DEFAULT_SA_PRIOR
    # an unnamed structure (auto): the general pair, whose S+A prior is not shipped -> S either way
    assert default_prior(False) == ANATOMY_PRIOR
    assert default_prior(True) == (ANATOMY_SA_PRIOR if ANATOMY_SA_PRIOR.is_file() else ANATOMY_PRIOR)


def test_shifted_image_moves_the_surface(val_shapes, sa_prior):
    """The same annotation with its CT shifted by 3 mm along i: the result follows the image."""
    cases = [2, 17, 40, 61]
    better, moved = [], []
    for idx in cases:
        clean = np.asarray(val_shapes[idx], bool)
        noisy = distort(clean, seed=BENCH_SEED + idx)
        ct = ct_phantom(clean, seed=idx)
        shifted = np.roll(ct, 3, axis=2)
        aligned_mask = _refine(noisy, ct, sa_prior).mask > 0
        shifted_mask = _refine(noisy, shifted, sa_prior).mask > 0
        better.append(dice(aligned_mask, clean) - dice(shifted_mask, clean))
        i_mean = lambda m: np.nonzero(m)[2].mean()  # noqa: E731
        moved.append(i_mean(shifted_mask) - i_mean(aligned_mask))
    assert np.mean(better) > 0.02, better  # the aligned image helps more than a misaligned one
    assert all(m > 0.2 for m in moved), moved  # and the surface moves toward the shifted edges (+i)


def test_constant_image_is_shape_only(val_shapes, sa_prior):
    """A flat image (any HU) carries no boundary: the result is the S+A prior's shape-only one."""
    scores = []
    for idx in (5, 33, 70):
        clean = np.asarray(val_shapes[idx], bool)
        noisy = distort(clean, seed=BENCH_SEED + idx)
        shape_only = _refine(noisy, None, sa_prior).mask
        for hu in (40.0, -20.0):
            flat = _refine(noisy, np.full(noisy.shape, hu, np.float32), sa_prior).mask
            scores.append(dice(flat, shape_only))
    assert min(scores) >= 0.95, scores


def test_appearance_beats_shape_only_on_phantom_ct(val_shapes, sa_prior):
    """When the CT shows the true boundary, S+A is closer to the truth than the shipped S prior."""
    idx = np.linspace(1, len(val_shapes) - 2, 8).astype(int)
    s, sa = [], []
    for i in idx:
        clean = np.asarray(val_shapes[i], bool)
        noisy = distort(clean, seed=BENCH_SEED + int(i))
        ct = ct_phantom(clean, seed=BENCH_SEED + int(i))
        s.append(dice(_refine(noisy, None, str(DEFAULT_PRIOR)).mask, clean))
        res = _refine(noisy, ct, sa_prior)
        assert res.info["appearance"] is True
        sa.append(dice(res.mask, clean))
    assert np.mean(sa) > np.mean(s) + 0.01, (np.mean(s), np.mean(sa))


def test_clean_annotation_with_its_ct_is_left_nearly_alone(val_shapes, sa_prior):
    """S+A does no harm to an already clean annotation: mean Dice(refined, truth) >= 0.93."""
    scores = []
    for idx in np.linspace(3, len(val_shapes) - 4, 6).astype(int):
        clean = np.asarray(val_shapes[idx], bool)
        scores.append(dice(_refine(clean, ct_phantom(clean, seed=int(idx)), sa_prior).mask, clean))
    assert np.mean(scores) >= 0.93, scores
