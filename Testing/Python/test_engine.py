"""Model, prior files, coarse-to-fine decoding, latent fitting and refine_mask's contract."""
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from scipy import ndimage

from NeARSlicerLib.decode import decode_logits, model_query
from NeARSlicerLib.distort import distort
from NeARSlicerLib.errors import Cancelled, InputError, PriorError
from NeARSlicerLib.fit import FitConfig, fit_latent
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.model import ModelConfig, NeARModel, box_max, sample_voxels, voxel_centres
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.prior import DEFAULT_PRIOR, load_prior, save_prior
from NeARSlicerLib.refine import RefineOptions, refine_mask

EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def grid_for(mask, spacing=(1.0, 1.0, 1.0)):
    return Grid(shape=mask.shape, spacing=spacing, origin=(0.0, 0.0, 0.0), direction=EYE)


@pytest.fixture(scope="module")
def prior():
    return load_prior(None)


def test_shipped_prior_loads_with_card(prior):
    model, meta = prior
    assert DEFAULT_PRIOR.is_file()
    assert DEFAULT_PRIOR.with_suffix(".json").is_file(), "the shipped prior needs its JSON card"
    assert model.cfg.latent_dim == 256
    assert DEFAULT_PRIOR.stat().st_size < 30 * 2**20


def test_prior_roundtrip_and_errors(tmp_path):
    torch.manual_seed(0)
    m = NeARModel(ModelConfig(channels=(16, 8, 8, 4), encoder_channels=(4, 4, 8, 8), mlp_hidden=16, appearance=True))
    path = save_prior(tmp_path / "p.safetensors", m, {"note": "test"})
    m2, meta = load_prior(path)
    assert meta == {"note": "test"} and m2.cfg == m.cfg
    for (k, a), (_, b) in zip(m.state_dict().items(), m2.state_dict().items()):
        assert torch.equal(a, b), k
    with pytest.raises(PriorError, match="not found"):
        load_prior(tmp_path / "missing.safetensors")
    bad = tmp_path / "corrupt.safetensors"
    bad.write_bytes(b"\x00garbage" * 10)
    with pytest.raises(PriorError, match="not a readable safetensors"):
        load_prior(bad)


def test_coarse_to_fine_matches_dense(prior):
    model, _ = prior
    mask = torch.from_numpy(adrenal_phantom(seed=1).astype(np.float32))[None, None]
    with torch.no_grad():
        z = model.encoder(mask)
        context = model.context(mask)
        fast, evaluated = decode_logits(model_query(model, z, context), 64)
        # the reference: the model's point query (grid_sample) at every voxel centre
        maps = model.maps(z, context)
        dense = torch.cat([model.query(maps, p[None], context)[0]
                           for p in voxel_centres(64).view(-1, 3).split(65536)]).view(64, 64, 64)
    agree = ((fast > 0) == (dense > 0)).float().mean().item()
    assert agree > 0.9995
    assert evaluated < 0.5 * 64**3  # the point of coarse to fine


@pytest.mark.parametrize("s,n", [(4, 64), (32, 64), (64, 32), (16, 50), (64, 64)])
def test_voxel_sampling_equals_grid_sample(s, n):
    """Decoding reads maps at voxel centres without grid_sample: the same trilinear values, border
    padded, upsampled or downsampled, for every voxel or a subset."""
    gen = torch.Generator().manual_seed(s * 100 + n)
    volume = torch.randn(1, 5, s, s, s, generator=gen)
    centres = voxel_centres(n).view(1, -1, 3)
    ref = F.grid_sample(volume, centres[:, :, None, None, :], mode="bilinear", padding_mode="border",
                        align_corners=False)[0, :, :, 0, 0].T
    assert torch.allclose(sample_voxels(volume, n), ref, atol=1e-5)
    index = torch.randperm(n**3, generator=gen)[:999]
    assert torch.allclose(sample_voxels(volume, n, index), ref[index], atol=1e-5)


@pytest.mark.parametrize("shape,width", [((2, 1, 17, 9, 33), 1), ((1, 1, 24, 24, 24), 2), ((1, 1, 5, 1, 7), 1)])
def test_box_max_equals_max_pool(shape, width):
    """The surface bands of fitting, decoding and training use shifted maxima instead of max_pool3d:
    the same values, edges included."""
    x = torch.randn(shape, generator=torch.Generator().manual_seed(width))
    assert torch.equal(box_max(x, width), F.max_pool3d(x, 2 * width + 1, 1, width))


def test_voxel_query_equals_point_query(prior):
    model, _ = prior
    mask = torch.from_numpy(adrenal_phantom(seed=1).astype(np.float32))[None, None]
    with torch.no_grad():
        z, context = model.encode(mask)
        maps = model.maps(z, context)
        index = torch.arange(0, 64**3, 37)
        points = voxel_centres(64).view(-1, 3)[index][None]
        assert torch.allclose(model.query_voxels(maps, 64, index, context), model.query(maps, points, context)[0],
                              atol=1e-4)
        assert torch.allclose(model.query_voxels(maps, 32, None, context),
                              model.query(maps, voxel_centres(32).view(1, -1, 3), context)[0], atol=1e-4)


def test_fit_lowers_loss_and_is_deterministic(prior):
    model, _ = prior
    noisy = distort(adrenal_phantom(seed=2), seed=5)
    target = torch.from_numpy(noisy.astype(np.float32))[None, None]
    with torch.no_grad():
        z0 = model.encoder(target)
    cfg = FitConfig(steps=12, points=2048)
    ctx = model.context(target)
    z1, m1, losses = fit_latent(model, target, z0, cfg, ctx, seed=3)
    z2, _, _ = fit_latent(model, target, z0, cfg, ctx, seed=3)
    assert m1 is model  # no decoder steps: the prior itself, unmodified
    assert np.mean(losses[-3:]) < np.mean(losses[:3])
    assert torch.equal(z1, z2)


def test_fit_with_decoder_steps_leaves_prior_untouched(prior):
    model, _ = prior
    before = {k: v.clone() for k, v in model.state_dict().items()}
    target = torch.from_numpy(adrenal_phantom(seed=4).astype(np.float32))[None, None]
    with torch.no_grad():
        z0 = model.encoder(target)
    cfg = FitConfig(steps=2, decoder_steps=2, points=1024, decoder_lr=1e-3)
    _, tuned, _ = fit_latent(model, target, z0, cfg, model.context(target))
    assert tuned is not model
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    assert any(not torch.equal(v, before[k]) for k, v in tuned.state_dict().items())


def test_refine_improves_phantom_and_keeps_geometry():
    truth = adrenal_phantom(seed=11)
    noisy = distort(truth, seed=12)
    before = noisy.copy()
    res = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", seed=1))
    assert np.array_equal(noisy, before), "refine must not modify its input"
    assert res.mask.shape == noisy.shape and res.mask.dtype == np.uint8
    assert set(np.unique(res.mask)) <= {0, 1}
    assert np.array_equal(res.added, (res.mask > 0) & ~noisy)
    assert np.array_equal(res.removed, noisy & (res.mask == 0))
    assert dice(res.mask, truth) > dice(noisy, truth)
    again = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", seed=1))
    assert np.array_equal(again.mask, res.mask), "same seed, same result"


def test_refine_progress_and_cancel():
    noisy = distort(adrenal_phantom(seed=13), seed=1)
    seen = []
    refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast"), progress=lambda f, m: seen.append(f))
    assert seen[0] == 0.0 and seen[-1] == 1.0 and seen == sorted(seen)
    calls = []

    def cancel():
        calls.append(1)
        return len(calls) > 3

    with pytest.raises(Cancelled):
        refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="default"), cancel=cancel)
    assert len(calls) == 4, "refinement stops at the first cancel request"


@pytest.mark.parametrize("options,slice_mm,shrink", [
    (RefineOptions(structure="left adrenal gland"), 1, 1),  # the adrenal S+A prior (1 mm cube), every image check
    # 3 mm slices: the image checks read more slices beyond the structure than the cube spans
    (RefineOptions(structure="left adrenal gland"), 3, 1),
    # a 20 mm structure: the prior's 64 mm cube reaches far beyond it
    (RefineOptions(structure="left adrenal gland"), 1, 3),
    (RefineOptions(prior="anatomy", preset="fast"), 1, 1),  # the general prior's cube scales with the structure
], ids=["adrenal-with-ct", "adrenal-with-ct-3mm-slices", "small-structure", "anatomy-fast"])
def test_a_structure_of_a_large_scan_refines_on_a_box_exactly_as_on_the_whole_scan(options, slice_mm, shrink,
                                                                                     monkeypatch):
    """Refinement reads and writes only a box around the structure (a full-resolution CT made every
    structure pay for whole-volume filters); the result on the whole scan is, bit for bit, the one the
    whole scan gives (the working cube, the image checks' rings, the scan's darkest value beyond its
    face, its modality)."""
    import NeARSlicerLib.refine as refine_module
    from NeARSlicerLib.geometry import occupied_box, refine_box
    from NeARSlicerLib.phantom import ct_phantom

    gland = adrenal_phantom(seed=21)[::slice_mm * shrink, ::shrink, ::shrink]  # 1 mm voxels in-plane
    gland = ndimage.binary_dilation(gland) if shrink > 1 else gland
    gland = gland[occupied_box(gland)[0][0] - 1:]  # the gland starts on the scan's second slice
    truth = np.zeros((120, 170, 190), np.uint8)
    # near three faces of the scan: the box is cut there, and the working cube reaches beyond the first
    box = (slice(0, len(gland)), slice(90, 90 + gland.shape[1]), slice(20, 20 + gland.shape[2]))
    truth[box] = gland
    noisy = np.zeros_like(truth)
    noisy[box] = distort(gland, seed=22)
    spacing = (1.0, 1.0, float(slice_mm))
    image = ct_phantom(truth, seed=21, spacing=spacing)
    grid = grid_for(truth, spacing)

    lo, hi = refine_box(noisy, grid, refine_module.context_voxels(grid.spacing),
                        **refine_module.working_scale({"scale": {"mode": "fixed"}}, RefineOptions()))
    assert np.prod(hi - lo) < 0.5 * noisy.size, "the box must be a real crop for this test to mean anything"
    boxed = refine_mask(noisy, grid, image, options)
    monkeypatch.setattr(refine_module, "refine_box", lambda mask, grid, context, **scale: (
        np.zeros(3, int), np.asarray(mask.shape)))
    whole = refine_mask(noisy, grid, image, options)
    assert boxed.mask.shape == noisy.shape and boxed.info["action"] == whole.info["action"]
    assert boxed.info["confidence"] == whole.info["confidence"] and boxed.warnings == whole.warnings
    for name in ("mask", "probability", "added", "removed"):
        np.testing.assert_array_equal(getattr(boxed, name), getattr(whole, name), err_msg=name)
    assert (boxed.added | boxed.removed).any(), "a case the refinement changes, so that the changes are compared"


def test_refine_border_warning():
    truth = adrenal_phantom(seed=14)
    idx = np.argwhere(truth)
    cut = truth[idx[:, 0].min() + 3:]  # the gland now touches the first k slice
    res = refine_mask(cut, grid_for(cut), options=RefineOptions(preset="fast"))
    assert any("touches the border" in w for w in res.warnings)
    assert res.mask.shape == cut.shape


@pytest.mark.parametrize(
    "mask, image, message",
    [
        (np.zeros((20, 20, 20), bool), None, "mask is empty"),
        (np.ones((20, 20, 1), bool), None, "2D"),
        (np.ones((20, 20), bool), None, "2D"),
        (adrenal_phantom(seed=0), np.full((64, 64, 64), np.nan, np.float32), "NaN or Inf"),
        (adrenal_phantom(seed=0), np.zeros((32, 64, 64), np.float32), "different grids"),
    ],
)
def test_refine_bad_inputs(mask, image, message):
    g = Grid(shape=(mask.shape + (1, 1, 1))[:3], spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0), direction=EYE)
    with pytest.raises(InputError, match=message):
        refine_mask(mask, g, image)


def test_refine_bad_options(tmp_path):
    m = adrenal_phantom(seed=0)
    with pytest.raises(InputError, match="unknown preset"):
        refine_mask(m, grid_for(m), options=RefineOptions(preset="turbo"))
    with pytest.raises(PriorError, match="not found"):
        refine_mask(m, grid_for(m), options=RefineOptions(prior=str(tmp_path / "nope.safetensors")))
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA GPU"):
            refine_mask(m, grid_for(m), options=RefineOptions(device="cuda"))


def test_warm_start_adds_inputs_without_changing_the_output(tmp_path):
    """A prior warm-started into a model with annotation inputs and encoder skips starts out identical."""
    from NeARSlicerLib.train import warm_start

    small = dict(channels=(16, 8, 8, 4), encoder_channels=(4, 4, 8, 8), mlp_hidden=16)
    torch.manual_seed(0)
    src = NeARModel(ModelConfig(**small))
    for p in src.parameters():  # random but not tiny weights, so a mistake would show
        p.data.normal_(0, 0.3)
    path = save_prior(tmp_path / "src.safetensors", src)
    dst = NeARModel(ModelConfig(**small, annotation_sigmas=(0.0, 1.0), skips=True))
    warm_start(dst, str(path))
    mask = torch.from_numpy(adrenal_phantom(seed=3).astype(np.float32))[None, None]
    pts = torch.rand(1, 500, 3) * 2 - 1
    with torch.no_grad():
        a = src(src.encoder(mask), pts, src.context(mask))
        b = dst(dst.encoder(mask), pts, dst.context(mask))
        c = dst(dst.encoder(mask), pts, dst.context(torch.zeros_like(mask)))
    assert torch.allclose(a, b, atol=1e-5)
    assert torch.allclose(b, c, atol=1e-5)  # new inputs start with zero weight
    assert dst.context(mask).volume.shape[1] == 2 and len(dst.context(mask).skips) == 4


def test_flipped_views_agree_with_the_single_view():
    """Averaging mirrored views (default preset) changes little: the prior was trained on every flip."""
    truth = adrenal_phantom(seed=15)
    noisy = distort(truth, seed=2)
    # the prior's own output (every change applied), not the do-no-harm default's choice among its changes
    one = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="fast", change_policy="all"))
    four = refine_mask(noisy, grid_for(noisy), options=RefineOptions(preset="default", keep_threshold=0.0,
                                                                     change_policy="all"))
    assert four.info["flips"] == 4 and one.info["flips"] == 1
    assert dice(one.mask, four.mask) > 0.9
    assert dice(four.mask, truth) > dice(noisy, truth)


def test_drop_islands_is_physical_and_keeps_the_largest():
    from NeARSlicerLib.refine import drop_islands

    m = np.zeros((20, 20, 20), bool)
    m[2:8, 2:8, 2:8] = True          # 216 voxels: the structure
    m[15, 15, 15:18] = True          # a 3-voxel speck
    m[12:14, 2:7, 12:14] = True      # 20 voxels: a real second part
    out = drop_islands(m, (1.0, 1.0, 1.0), 10.0)
    assert not out[15, 15, 15:18].any() and out[2:8, 2:8, 2:8].all() and out[12:14, 2:7, 12:14].all()
    assert drop_islands(m, (3.0, 3.0, 3.0), 10.0).sum() == m.sum()  # 3 voxels of 27 mm^3 each are no speck
    tiny = np.zeros((9, 9, 9), bool)
    tiny[4, 4, 4] = True
    assert drop_islands(tiny, (1.0, 1.0, 1.0), 10.0).sum() == 1  # the largest part always stays
    assert drop_islands(m, (1.0, 1.0, 1.0), 0.0).sum() == m.sum()
