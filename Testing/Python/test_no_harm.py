"""Do no harm (issue 13) and the size / domain / confidence parts of issue 9: near-correct real
structures are not made worse, a non-CT image is detected and not read through the CT window, a
real CT is not mistaken for MR, structures of any size refine within bounds, an internal failure
is one line with nothing written, the working cube follows the prior card's scale, the
out-of-domain warning fires only out of domain, and the confidence ranks a case made worse below
one made better."""
import json
import shutil
import subprocess
import sys
import textwrap
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch

import NeARSlicerLib.refine as refine_module
from NeARSlicerLib import modality
from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.cli import main
from NeARSlicerLib.fit import sample_fit_points
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import read_image, write_mask
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
from NeARSlicerLib.prior import DEFAULT_PRIOR
from NeARSlicerLib.refine import RefineOptions, refine_mask

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "benchmarks"))
from NeARSlicerLib.appearance import normalise_case  # noqa: E402
from NeARSlicerLib.confidence import DO_NO_HARM_THRESHOLD  # noqa: E402
from no_harm import boundary_noise, mr_phantom, staircase  # noqa: E402  (the benchmark's own perturbations)


def grid_for(shape, spacing=1.0):
    return Grid(tuple(shape), (spacing,) * 3, (0.0, 0.0, 0.0))


def ellipsoid(shape, spacing, radii_mm):
    """A clean ellipsoid centred in a volume ([k, j, i], isotropic ``spacing``, radii (k, j, i) mm)."""
    axes = [(np.arange(n) - (n - 1) / 2) * spacing for n in shape]
    kk, jj, ii = np.meshgrid(*axes, indexing="ij")
    return (kk / radii_mm[0]) ** 2 + (jj / radii_mm[1]) ** 2 + (ii / radii_mm[2]) ** 2 <= 1.0


@pytest.fixture(scope="module")
def example_ct(shared_data):
    folder = shared_data / "totalseg_example"
    ct, grid = read_image(str(folder / "ct.nii.gz"))
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "seg.nii.gz")))
    return ct, seg, grid


@pytest.fixture(scope="module")
def alan_val(shared_data):
    return np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"][:64].astype(bool)


# ------------------------------------------------------------------------------ do no harm
@pytest.mark.parametrize("label, perturb", [(2, "noise"), (3, "stair"), (11, "noise")])
def test_near_clean_real_structures_are_not_made_worse(example_ct, label, perturb):
    """Three real structures of the example CT (labels 2, 3, 11), mildly perturbed at 3 mm: with the
    default options (change policy ``gated``) and with the stricter keep threshold the result is never
    worse than the input by more than 1 DSC against the clean label (every change applied: up to -12.8)."""
    ct, seg, grid = example_ct
    clean = seg == label
    rng = np.random.default_rng(label)
    noisy = boundary_noise(clean, rng) if perturb == "noise" else staircase(clean, rng)
    for options in (RefineOptions(), RefineOptions(keep_threshold=DO_NO_HARM_THRESHOLD)):
        res = refine_mask(noisy, grid, ct, options=options)
        assert dice(res.mask, clean) >= dice(noisy, clean) - 0.01, res.info
        assert res.info["action"].startswith(("refined", "kept: "))
        assert 0.0 <= res.info["confidence"] <= 1.0


def test_kept_result_is_the_input_and_says_so(alan_val):
    """With the do-no-harm setting a clean ALAN shape is kept as it is (nothing to correct), with the
    action saying so; ``keep_threshold=0`` (the default) always refines."""
    clean = alan_val[48]
    kept = refine_mask(clean, grid_for(clean.shape), options=RefineOptions(keep_threshold=DO_NO_HARM_THRESHOLD))
    assert kept.info["action"].startswith("kept"), kept.info
    assert np.array_equal(kept.mask, clean.astype(np.uint8)) and not kept.added.any() and not kept.removed.any()
    forced = refine_mask(clean, grid_for(clean.shape), options=RefineOptions(keep_threshold=0.0, change_policy="all"))
    assert forced.info["action"] == "refined" and forced.info["confidence"] == kept.info["confidence"]
    assert not np.array_equal(forced.mask, clean.astype(np.uint8))  # the prior alone does reshape it


def test_default_keeps_a_clean_annotation_and_repairs_a_rough_one(alan_val):
    """The default (keep threshold 0, change policy ``gated``): a clean ALAN val shape comes back
    unchanged but for its specks (the prior proposed only a thin reshaping, so the annotation is kept;
    this shape holds a stray island under 10 mm^3, which the default's output loses: "refined: specks
    cleaned only"), while the same shape with blobs and cubes of the paper's error generator is refined
    closer to the truth."""
    from NeARSlicerLib.confidence import REFINED_SPECKS
    from NeARSlicerLib.refine import drop_islands

    clean = alan_val[50]
    g = grid_for(clean.shape)
    kept = refine_mask(clean, g)
    assert kept.info["change_policy"] == "gated" and kept.info["action"] == REFINED_SPECKS, kept.info
    assert 0 < kept.info["specks"]["removed"] <= 2 and kept.info["specks"]["filled"] == 0
    assert np.array_equal(kept.mask > 0, drop_islands(clean > 0, (1.0, 1.0, 1.0), 10.0))
    assert refine_mask(clean, g, options=RefineOptions(min_island_mm3=0)).info["action"] == "kept: already plausible"
    rough = corrupt(clean, (1, 1, 1), "paper", 4050)
    fixed = refine_mask(rough, g)
    assert fixed.info["action"].startswith("refined"), fixed.info
    assert dice(fixed.mask, clean) > dice(rough, clean) + 0.03


@pytest.mark.xfail(strict=True, reason="measured 2026-11-28 with adrenal_v2, every change applied (2048 fit points): "
                   "the calibrated confidence does not rank these cases (two clean cases made worse at 0.055 and "
                   "0.169, a paper-error case made worse at 0.291, the one improved at 0.155); see README 'Do no harm'")
def test_confidence_is_lower_on_a_case_made_worse(alan_val):
    """Fixed small set: clean shapes (refinement can only lose) and shapes with the errors of the
    paper's generator (cubes, blobs: what the prior was trained to remove), every change of the prior
    applied (the confidence rates the prior's proposal; the default would keep the clean ones). Every
    case made worse gets a lower confidence than every case made better."""
    g = grid_for((64, 64, 64))
    cases = [(alan_val[i], alan_val[i]) for i in (48, 50)]
    cases += [(alan_val[i], corrupt(alan_val[i], (1, 1, 1), "paper", 4000 + i)) for i in (52, 53)]
    rows = []
    for truth, annotation in cases:
        res = refine_mask(annotation, g, options=RefineOptions(keep_threshold=0.0, change_policy="all"))
        rows.append((dice(res.mask, truth) - dice(annotation, truth), res.info["confidence"]))
    worse = [c for gain, c in rows if gain < 0]
    better = [c for gain, c in rows if gain > 0]
    assert worse and better, rows
    assert max(worse) < min(better), rows


def test_with_the_image_the_confidence_is_lower_on_a_case_made_worse(alan_val):
    """The same fixed set as above, each shape in its synthetic CT (``ct_phantom``, seeded by the shape's
    index), refined with it (the adrenal S+A prior): the confidence is then the share of the prior's
    change that the image supports (``image_evidence.support``), and every case made worse gets a
    lower one than every case made better (measured: clean 0.87 and 0.59, paper-error case made worse
    0.53, improved 0.92; the mirrored views' estimate of the same proposals: 0.03, 0.03, 0.01 and 0.005)."""
    g = grid_for((64, 64, 64))
    cases = [(i, alan_val[i], alan_val[i]) for i in (48, 50)]
    cases += [(i, alan_val[i], corrupt(alan_val[i], (1, 1, 1), "paper", 4000 + i)) for i in (52, 53)]
    rows = []
    for i, truth, annotation in cases:
        # the prior's proposal from the annotation as painted (no margin fit first: its 1-voxel dilation
        # would be taken off by the image's margin before the prior, and the proposal rated is another)
        res = refine_mask(annotation, g, ct_phantom(truth, seed=i), options=RefineOptions(
            keep_threshold=0.0, change_policy="all", structure="adrenal gland", fit_margin=False))
        assert res.info["confidence_from"] == "image" and res.info["confidence"] == res.info["image_support"]
        rows.append((dice(res.mask, truth) - dice(annotation, truth), res.info["confidence"]))
    worse = [c for gain, c in rows if gain < 0]
    better = [c for gain, c in rows if gain > 0]
    assert worse and better, rows
    assert max(worse) < min(better), rows


# ------------------------------------------------------------------------------ modality
def test_real_and_phantom_ct_are_ct(example_ct):
    ct, seg, _ = example_ct
    assert modality.detect(ct).modality == "CT"
    k, j, i = np.argwhere(seg == 8).mean(0).astype(int)  # a 72 mm crop around the right adrenal, as Slicer sends
    crop = ct[max(k - 12, 0):k + 12, max(j - 12, 0):j + 12, max(i - 12, 0):i + 12]
    assert modality.detect(crop).modality == "CT"
    for seed in range(4):
        assert modality.detect(ct_phantom(adrenal_phantom(seed=seed), seed=seed, vary=True)).modality == "CT"


def test_mr_like_images_are_not_ct():
    shape = adrenal_phantom(seed=3)
    for seed in range(6):
        mr = mr_phantom(shape, seed)
        assert modality.detect(mr).modality != "CT", seed
        z = (mr - mr.mean()) / mr.std()  # a z-scored MR has negative values but no HU spread
        assert modality.detect(z).modality != "CT", seed
    assert modality.guess(mr_phantom(shape, 0), "CT").modality == "CT"  # a declared modality wins
    assert modality.guess(ct_phantom(shape, seed=0), "MR").modality == "MR"


def test_mr_image_falls_back_to_shape_only_with_a_warning(alan_val, monkeypatch, tmp_path):
    import NeARSlicerLib.prior as prior_mod
    from dataclasses import replace

    # an S+A prior that reads CT only (the CT-window adrenal_sa_v1) and no any-modality prior installed
    # (test_any_modality_prior covers the case with one; the shipped adrenal S+A prior reads MR itself)
    monkeypatch.setitem(prior_mod.PRIORS, "adrenal", replace(prior_mod.PRIORS["adrenal"],
                                                             appearance=prior_mod.CT_WINDOW_SA_PRIOR,
                                                             any_modality=tmp_path / "missing.safetensors"))
    truth = alan_val[0]
    noisy = corrupt(truth, (1, 1, 1), "slab", 7)
    mr = mr_phantom(truth, 11)
    g = grid_for(truth.shape)
    gland = "left adrenal gland"  # the adrenal pair, here with an S+A prior that reads CT only
    with_mr = refine_mask(noisy, g, mr, RefineOptions(preset="fast", keep_threshold=0.0, structure=gland))
    shape_only = refine_mask(noisy, g, None, RefineOptions(preset="fast", keep_threshold=0.0, structure=gland))
    assert with_mr.info["modality"] == "MR" and with_mr.info["appearance"] is False
    assert with_mr.info["prior_name"] == "adrenal-s"
    assert any("does not look like CT" in w and "refined by shape only" in w for w in with_mr.warnings)
    assert np.array_equal(with_mr.mask, shape_only.mask)
    # a real CT-like phantom is read with the S+A prior and no such warning
    ct = ct_phantom(truth, seed=11)
    with_ct = refine_mask(noisy, g, ct, RefineOptions(preset="fast", keep_threshold=0.0, structure=gland))
    assert with_ct.info["modality"] == "CT" and with_ct.info["appearance"] is True
    assert not any("does not look like CT" in w for w in with_ct.warnings)


def test_case_normalisation_is_scale_free():
    gland = adrenal_phantom(seed=2)
    img = mr_phantom(gland, 5)
    a = normalise_case(img, gland, (1.0, 1.0, 1.0))
    b = normalise_case(img * 37.0 + 5.0, gland, (1.0, 1.0, 1.0))
    c = normalise_case(-img, gland, (1.0, 1.0, 1.0))  # either polarity: the gland still reads ~0.75
    assert a.min() >= 0 and a.max() <= 1 and np.allclose(a, b, atol=1e-4)
    assert abs(np.median(a[gland]) - 0.75) < 0.05 and abs(np.median(c[gland]) - 0.75) < 0.05
    assert modality.accepts({"appearance_norm": "case"}, "MR")
    assert not modality.accepts({}, "MR") and modality.accepts({}, "CT")
    assert not modality.accepts({"appearance_norm": "case", "modalities": ["CT"]}, "MR")


# ------------------------------------------------------------------------------ size
def test_fit_point_sampling_beyond_the_multinomial_limit():
    """More than 2^24 voxels in the cube (torch.multinomial's limit): points still come from the band."""
    n = 260
    target = torch.zeros(1, 1, n, n, n)
    target[..., 100:160, 100:160, 100:160] = 1.0
    pts = sample_fit_points(target, 4096, torch.Generator().manual_seed(0))
    ijk = ((pts[0, :2457] + 1) * n / 2).floor()
    assert ((ijk >= 98) & (ijk <= 161)).all(), "band points lie at the cube's surface"


def test_whole_scan_length_structure_within_the_memory_bound(tmp_path):
    """A 400 mm structure of ~10^7 voxels refines without error, in a fresh process peaking below 4 GB RSS
    (every change applied: by default a segment this far outside the prior's domain is kept unfitted)."""
    code = textwrap.dedent(f"""
        import resource, sys, warnings
        import numpy as np
        sys.path.insert(0, {str(REPO / 'NeARSlicer')!r})
        warnings.simplefilter("ignore")
        from NeARSlicerLib.geometry import Grid
        from NeARSlicerLib.refine import RefineOptions, refine_mask
        shape = (400, 260, 200)
        kk, jj, ii = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) for n in shape], indexing="ij", sparse=True)
        mask = ((kk / 199.0) ** 2 + (jj / 125.0) ** 2 + (ii / 96.0) ** 2 <= 1.0).astype(np.uint8)
        res = refine_mask(mask, Grid(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), None,
                          RefineOptions(preset="fast", keep_threshold=0.0, change_policy="all"))
        # VmHWM is this process's own peak; ru_maxrss keeps the forking parent's peak across exec on
        # Linux, so a large test process would count against the child
        try:
            with open("/proc/self/status") as f:
                rss = next(int(l.split()[1]) for l in f if l.startswith("VmHWM:")) / 1024
        except (OSError, StopIteration):
            rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(int(mask.sum()), int(res.mask.sum()), res.info["working_shape"][0], res.info["working_spacing_mm"], rss)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600,
                         env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    assert out.returncode == 0, out.stderr[-2000:]
    voxels, refined, side, spacing, rss_mb = out.stdout.split()
    assert int(voxels) > 1e7 and int(refined) > 0.9e7
    assert int(side) <= refine_module.MAX_WORKING_SIDE and float(spacing) > 3.0
    assert float(rss_mb) < 4096, f"peak RSS {rss_mb} MB"


def test_internal_failure_is_one_line_and_writes_nothing(tmp_path, monkeypatch, capsys):
    mask = adrenal_phantom(seed=5).astype(np.uint8)
    src, out = tmp_path / "in.nii.gz", tmp_path / "out.nii.gz"
    write_mask(src, mask, grid_for(mask.shape))

    def broken(*args, **kwargs):
        raise RuntimeError("number of categories cannot exceed 2^24\nmore torch detail")

    monkeypatch.setattr(refine_module, "fit_latent", broken)
    assert main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["nearslicer: error: refinement failed inside the engine: RuntimeError: "
                   "number of categories cannot exceed 2^24"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.nii.gz"]


# ------------------------------------------------------------------------------ scale
@pytest.fixture(scope="module")
def extent_prior(tmp_path_factory):
    """The adrenal weights under a card that asks for the extent scale (40 voxels of a 64 cube)."""
    folder = tmp_path_factory.mktemp("extent_prior")
    path = folder / "extent.safetensors"
    shutil.copyfile(DEFAULT_PRIOR, path)
    card = json.loads(DEFAULT_PRIOR.with_suffix(".json").read_text())
    card["meta"]["scale"] = {"mode": "extent", "extent_voxels": 40}
    card["meta"].pop("domain", None)
    path.with_suffix(".json").write_text(json.dumps(card))
    return path


@pytest.mark.parametrize("shape, spacing, radii", [((90, 120, 150), 1.5, (55.0, 70.0, 100.0)),  # spleen-sized
                                                   ((40, 40, 40), 0.4, (5.0, 3.5, 3.0))])  # 10 mm
def test_scale_round_trip_with_an_extent_card(extent_prior, shape, spacing, radii):
    clean = ellipsoid(shape, spacing, radii)
    res = refine_mask(clean, grid_for(shape, spacing), options=RefineOptions(prior=str(extent_prior),
                                                                             keep_threshold=0.0))
    assert res.info["working_shape"][0] == 64
    assert abs(res.info["working_spacing_mm"] - 2 * max(radii) / 40) < 0.1 * 2 * max(radii) / 40
    assert dice(res.mask, clean) >= 0.95


# ------------------------------------------------------------------------------ domain
def test_out_of_domain_warning(alan_val):
    g = grid_for((64, 64, 64))
    adrenal = RefineOptions(preset="fast", prior="adrenal")  # its card's domain: ALAN glands, 28-59 mm
    inside = refine_mask(alan_val[10], g, options=adrenal)
    assert not any(w.startswith("out of the prior's domain") for w in inside.warnings)
    assert inside.info["out_of_domain"] is False
    tube = np.zeros((40, 40, 160), bool)
    tube[15:25, 15:25, 5:155] = True  # a 150 mm rod: far longer and thinner than any adrenal gland
    outside = refine_mask(tube, grid_for(tube.shape), options=adrenal)
    assert outside.info["out_of_domain"] is True
    assert any(w.startswith("out of the prior's domain: this segment is 150 mm long") for w in outside.warnings)
    # kept without being fitted (the default change policy); --changes all still refines it
    assert outside.info["action"] == "kept: outside the prior's domain" and outside.info["working_shape"] is None
    assert np.array_equal(outside.mask > 0, tube) and not outside.added.any() and not outside.removed.any()
    forced = refine_mask(tube, grid_for(tube.shape), options=replace(adrenal, change_policy="all"))
    assert forced.info["out_of_domain"] is True and forced.info["action"] == "refined"
    assert forced.info["working_shape"] is not None and not np.array_equal(forced.mask > 0, tube)


def test_parts_split_by_a_painting_gap_are_one_structure():
    """A gland painted with missed thick slices falls apart into pieces a few mm apart: an annotation
    error for the prior to repair, not a shape outside its domain. Parts far apart still count."""
    from scipy import ndimage

    from NeARSlicerLib.domain import GAP_MM, check, shape_facts

    domain = {"components": 1, "what": "test glands"}
    spacing = (0.8, 0.8, 1.0)  # (i, j, k) mm
    gland = ellipsoid((70, 40, 40), 1.0, (30.0, 10.0, 10.0))  # 60 voxels (60 mm) along k
    cut = gland.copy()
    cut[20:24] = False  # two missed 4 mm slices: three pieces
    cut[44:48] = False
    assert ndimage.label(cut)[1] == 3
    assert shape_facts(cut, spacing).components == 1 and not check(shape_facts(cut, spacing), domain)
    apart = np.zeros((100, 40, 40), bool)  # three balls 25 mm apart (gaps of 13 mm > GAP_MM)
    for k in (15, 40, 65):
        apart[k - 6:k + 6] |= ellipsoid((12, 40, 40), 1.0, (6.0, 7.0, 7.0))
    assert GAP_MM < 13.0 and shape_facts(apart, spacing).components == 3
    assert any("3 separate parts" in w for w in check(shape_facts(apart, spacing), domain))
    # a scan-sized mask (48 M voxels, measured on blocks): two lungs 28 mm apart stay two parts, and
    # one of them cut by a 3.5 mm gap stays one
    lungs = np.zeros((300, 400, 400), bool)
    lungs[20:280, 20:180, 30:370] = True
    lungs[20:280, 220:380, 30:370] = True
    assert shape_facts(lungs, (0.7, 0.7, 0.7)).components == 2
    lungs[140:145] = False
    assert ndimage.label(lungs)[1] == 4 and shape_facts(lungs, (0.7, 0.7, 0.7)).components == 2


def test_cli_json_and_keep_threshold(tmp_path, alan_val, capsys):
    src = tmp_path / "clean.nii.gz"
    write_mask(src, alan_val[48].astype(np.uint8), grid_for((64, 64, 64)))
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "a.nii.gz"), "--json",
                 "--keep-threshold", str(DO_NO_HARM_THRESHOLD)]) == 0
    facts = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert facts["action"].startswith("kept") and 0 <= facts["confidence"] < facts["keep_threshold"]
    assert facts["dice_input_refined"] == 1.0
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "b.nii.gz"), "--changes", "all"]) == 0
    assert capsys.readouterr().out.startswith("refined clean.nii.gz")  # threshold 0, every change: refined
    assert main(["refine", "--mask", str(src), "--out", str(tmp_path / "d.nii.gz")]) == 0  # the default
    assert capsys.readouterr().out.startswith("kept: already plausible clean.nii.gz (every change the prior proposed "
                                              "was thinner than its own boundary error, --changes gated)")
    with pytest.raises(SystemExit):
        main(["refine", "--mask", str(src), "--out", str(tmp_path / "c.nii.gz"), "--keep-threshold", "2"])


def test_a_study_does_not_let_in_a_many_part_structure(example_ct, recwarn):
    """The example CT's costal cartilages (label 117: six thin parts over 294 mm) are outside the
    general prior's domain. A study widens the domain to its own cases' sizes and elongations but
    not to their number of parts, so it returns the cartilages unchanged, as refine does, instead of
    a wrecked copy (0.61 Dice when the widened domain let them in); a vertebra of the same study is
    refined as usual."""
    from NeARSlicerLib.confidence import KEPT_OUT_OF_DOMAIN
    from NeARSlicerLib.study import StudyCase, StudyConfig, run_study

    ct, seg, grid = example_ct
    cartilage, vertebra = (seg == 117).astype(np.uint8), (seg == 30).astype(np.uint8)
    res = run_study([StudyCase("cartilage", cartilage, grid), StudyCase("vertebra", vertebra, grid)], "anatomy",
                    StudyConfig.for_recipe("denoise", epochs=1, refine_preset="fast"))
    assert np.array_equal(res.masks[0], cartilage)
    assert any(w.startswith("case cartilage: out of the prior's domain") and "separate parts" in w
               for w in res.warnings), res.warnings
    assert not any(w.startswith("case vertebra: out of the prior's domain") for w in res.warnings)
    assert res.info["prior_meta"]["domain"]["components"] == 1  # the general prior's own
    # refine_mask on its own keeps them too; the prior's whole proposal (--changes all) would lose parts
    opts = RefineOptions(prior="anatomy", preset="fast", structure="costal cartilages")
    assert refine_mask(cartilage, grid, None, opts).info["action"] == KEPT_OUT_OF_DOMAIN
    assert dice(refine_mask(cartilage, grid, None, replace(opts, change_policy="all")).mask, cartilage) < 0.9


def test_the_change_s_depth_is_read_only_where_it_can_pass_the_profile():
    """``confidence._depth_beyond`` (the gate's depth profile, read only around voxels that can lie
    deeper than its first threshold) counts the same voxels past every threshold as the whole box's
    distance transform, on random masks, shells and nearly full boxes of random grids."""
    from scipy import ndimage

    from NeARSlicerLib.confidence import PROFILE_MM, _depth_beyond

    rng = np.random.default_rng(0)
    for trial in range(120):
        shape = tuple(int(n) for n in rng.integers(3, 36, 3))
        sp = rng.uniform(0.4, 3.5, 3)
        if trial % 3 == 0:
            mask = ndimage.gaussian_filter(rng.normal(size=shape), rng.uniform(0.5, 4)) > rng.uniform(-0.3, 0.3)
        elif trial % 3 == 1:
            mask = rng.random(shape) < 0.9
        else:
            blob = ndimage.gaussian_filter(rng.normal(size=shape), 3) > 0
            mask = blob ^ ndimage.binary_erosion(blob, iterations=int(rng.integers(1, 4)))
        if mask.all() or not mask.any():
            continue
        half = 0.5 * float(sp.max())
        whole = ndimage.distance_transform_edt(mask, sampling=sp)
        got = _depth_beyond(mask, sp, PROFILE_MM[0] + half, PROFILE_MM[-1] + half)
        for d in PROFILE_MM:
            assert int((got > d + half).sum()) == int((whole > d + half).sum()), (trial, d)
