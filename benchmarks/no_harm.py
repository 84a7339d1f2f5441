"""Do no harm: near-correct inputs, confidence vs actual gain, MR-like images, structures of any size.

    PYTHONPATH=NeARSlicer python benchmarks/no_harm.py collect    # refine every case once (slow), rows -> jsonl
    PYTHONPATH=NeARSlicer python benchmarks/no_harm.py calibrate  # fit the confidence weights on the calibration rows
    PYTHONPATH=NeARSlicer python benchmarks/no_harm.py report     # -> benchmarks/results/no_harm.json
    PYTHONPATH=NeARSlicer python benchmarks/no_harm.py size       # time and peak RSS of the largest structures

Every case is refined once with ``keep_threshold=0`` (always refined) and its signals, confidence,
Dice(input, truth) and Dice(refined, truth) are recorded; the do-no-harm decision returns the
input unchanged when kept, so the outcome at any threshold follows exactly from these rows
(``report`` also re-runs a few cases with the default threshold to check that).

Case sets (truth = the clean shape):

* ``calib``: ALAN val shapes 0-11, each clean and with one of the families overpaint, slab, holes,
  leak, paper (the confidence is calibrated on these only);
* ``heldout_family``: ALAN val shapes 24-29 with the held-out families thick_slice, missing_part,
  oversmooth;
* ``alan_clean``: ALAN val shapes 48-59, clean (near-correct input: Dice 1.0);
* ``ct_mild``: every structure of the example CT with >= 300 voxels, mildly perturbed at its
  native 3 mm grid (1-voxel boundary noise or a 2-slice thick-slice staircase, alternately);
* ``ct_mixture``: every fourth one of those structures with the error library's mixture (held-out shapes);
* ``mr``: ALAN val shapes 0-3 in an MR-like phantom (no HU, arbitrary scale, fat bright or
  dark, bias field) with mixture errors, refined with the image and shape-only.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
ROWS = HERE / "results" / "no_harm_rows.jsonl"
OUT = HERE / "results" / "no_harm.json"
SHARED = ROOT.parent / "shared" / "data"
CALIB_FAMILIES = ("overpaint", "slab", "holes", "leak", "paper")
HELDOUT_FAMILIES = ("thick_slice", "missing_part", "oversmooth")
SEED = 31_000


def identity_grid(shape, spacing=1.0):
    from NeARSlicerLib.geometry import Grid

    return Grid(tuple(shape), (spacing,) * 3, (0.0, 0.0, 0.0))


def boundary_noise(mask: np.ndarray, rng: np.random.Generator, p: float = 0.3) -> np.ndarray:
    """1-voxel boundary noise: each voxel just outside (inside) the surface is added (removed) with prob p/2."""
    m = np.asarray(mask, bool)
    outer = ndimage.binary_dilation(m) & ~m
    inner = m & ~ndimage.binary_erosion(m)
    out = m.copy()
    out[outer & (rng.random(m.shape) < p / 2)] = True
    out[inner & (rng.random(m.shape) < p / 2)] = False
    return out


def staircase(mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A small thick-slice staircase: slices painted in pairs (each pair copies one of its two slices)."""
    m = np.asarray(mask, bool)
    out = m.copy()
    phase = int(rng.integers(0, 2))
    for k in range(phase, m.shape[0] - 1, 2):
        src = k if rng.random() < 0.5 else k + 1
        out[k] = out[k + 1] = m[src]
    return out


def mr_phantom(clean: np.ndarray, seed: int, spacing=(1.0, 1.0, 1.0)) -> np.ndarray:
    """An MR-like image around ``clean``: the CT phantom's tissue classes (fat, organ, gland) given
    arbitrary positive intensities (fat bright or dark, organ contrast permuted), a smooth
    multiplicative bias field, Rician-like noise, an arbitrary scale; no Hounsfield units."""
    from NeARSlicerLib.phantom import ct_phantom

    rng = np.random.default_rng(seed)
    hu = ct_phantom(clean, seed=seed, spacing=spacing, vary=True)
    smooth = ndimage.gaussian_filter(hu, 1.0)
    fat = smooth < -40
    gland = np.asarray(clean, bool)
    levels = {"fat": rng.choice([rng.uniform(700, 1000), rng.uniform(60, 200)]),
              "gland": rng.uniform(250, 600), "organ": rng.uniform(150, 800)}
    img = np.where(fat, levels["fat"], np.where(gland, levels["gland"], levels["organ"])).astype(np.float32)
    img = ndimage.gaussian_filter(img, 0.8)
    kk, jj, ii = np.meshgrid(*[np.linspace(-1, 1, n) for n in img.shape], indexing="ij")
    g = rng.normal(size=3)
    bias = np.exp(0.3 * (g[0] * kk + g[1] * jj + g[2] * ii) + 0.15 * rng.normal() * (kk ** 2 + ii ** 2))
    img = img * bias
    sigma = 0.04 * float(np.median(img))
    img = np.hypot(img + rng.normal(0, sigma, img.shape), rng.normal(0, sigma, img.shape))
    return (img * rng.uniform(0.01, 5.0)).astype(np.float32)


def real_structures(min_voxels: int = 300):
    """(label, mask bool, grid, ct HU) of every structure of the example CT with >= min_voxels voxels."""
    import SimpleITK as sitk

    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import read_image

    folder = SHARED / "totalseg_example"
    ct, grid = read_image(str(folder / "ct.nii.gz"))
    seg_img = sitk.ReadImage(str(folder / "seg.nii.gz"))
    seg, sgrid = sitk.GetArrayFromImage(seg_img), Grid.from_sitk(seg_img)
    labels, counts = np.unique(seg[seg > 0], return_counts=True)
    return [(int(l), seg == l, sgrid, ct) for l, c in zip(labels, counts) if c >= min_voxels]


def _refine_row(kind, name, truth, annotation, grid, image=None, **options):
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    t0 = time.perf_counter()
    res = refine_mask(annotation, grid, image, RefineOptions(keep_threshold=0.0, **options))
    info = res.info
    return {"set": kind, "case": name, "dice_in": round(dice(annotation, truth), 5),
            "dice_ref": round(dice(res.mask, truth), 5), "signals": info["signals"],
            "confidence": info["confidence"], "modality": info["modality"], "appearance": info["appearance"],
            "seconds": round(time.perf_counter() - t0, 2), "voxels": int(np.sum(truth)),
            "warnings": res.warnings, "options": {k: v for k, v in options.items()}}


def collect(only: set | None = None) -> None:
    import warnings

    from NeARSlicerLib.annotation_errors import corrupt

    warnings.simplefilter("ignore")
    done = set()
    if ROWS.is_file():
        done = {(r["set"], r["case"]) for r in map(json.loads, ROWS.read_text().splitlines())}
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"].astype(bool)

    def emit(kind, name, fn):
        if (only and kind not in only) or (kind, name) in done:
            return
        if ROWS.is_file() and any(json.loads(line)["case"] == name and json.loads(line)["set"] == kind
                                  for line in ROWS.read_text().splitlines() if line.strip()):
            return  # done meanwhile by another collecting process
        row = fn()
        with open(ROWS, "a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{kind:15s} {name:28s} in {row['dice_in']:.3f} ref {row['dice_ref']:.3f} "
              f"conf {row['confidence']:.3f} {row['seconds']:.1f}s", flush=True)

    g = identity_grid((64, 64, 64))
    structures = real_structures() if (not only or "ct_mild" in only or "ct_mixture" in only) else []
    for n, (label, truth, grid, ct) in enumerate(structures if (not only or "ct_mild" in only) else []):
        rng = np.random.default_rng(SEED + label)
        kind = ("noise", "stair")[n % 2]
        emit("ct_mild", f"label{label}_{kind}", lambda: _refine_row(
            "ct_mild", f"label{label}_{kind}", truth, (boundary_noise if kind == "noise" else staircase)(truth, rng),
            grid, ct))
    for i in range(48, 60):
        emit("alan_clean", f"val{i:02d}", lambda: _refine_row("alan_clean", f"val{i:02d}", val[i], val[i], g))
    for i in range(12):
        emit("calib", f"val{i:02d}_clean", lambda: _refine_row("calib", f"val{i:02d}_clean", val[i], val[i], g))
        f = CALIB_FAMILIES[i % len(CALIB_FAMILIES)]
        emit("calib", f"val{i:02d}_{f}", lambda: _refine_row(
            "calib", f"val{i:02d}_{f}", val[i], corrupt(val[i], (1, 1, 1), f, SEED + i), g))
    for i in range(24, 30):
        for f in HELDOUT_FAMILIES:
            emit("heldout_family", f"val{i:02d}_{f}", lambda f=f: _refine_row(
                "heldout_family", f"val{i:02d}_{f}", val[i], corrupt(val[i], (1, 1, 1), f, SEED + i), g))
    for n, (label, truth, grid, ct) in enumerate(structures if (not only or "ct_mixture" in only) else []):
        if n % 4:
            continue
        emit("ct_mixture", f"label{label}_mix", lambda: _refine_row(
            "ct_mixture", f"label{label}_mix", truth, corrupt(truth, grid.spacing, "mixture", SEED + label, image=ct),
            grid, ct))
    for i in range(4):
        if only and "mr" not in only:
            break
        image = mr_phantom(val[i], SEED + i)
        noisy = corrupt(val[i], (1, 1, 1), "mixture", SEED + 500 + i)
        emit("mr", f"val{i:02d}_image", lambda: _refine_row("mr", f"val{i:02d}_image", val[i], noisy, g, image))
        emit("mr", f"val{i:02d}_forced_ct", lambda: _refine_row(
            "mr", f"val{i:02d}_forced_ct", val[i], noisy, g, image, modality="CT"))
        emit("mr", f"val{i:02d}_shape", lambda: _refine_row("mr", f"val{i:02d}_shape", val[i], noisy, g, image,
                                                              appearance=False))


FEATURES = ("deep_change", "shell", "disagreement")


def load_rows() -> list[dict]:
    return [json.loads(line) for line in ROWS.read_text().splitlines() if line.strip()]


def features(row: dict, deep_mm: float) -> list[float]:
    sig = row["signals"]
    deep = dict((d, f) for d, f in sig["deep_profile"])[deep_mm]
    return [deep, max(sig["change"] - deep, 0.0), sig["disagreement"]]


def fit_logistic(x: np.ndarray, y: np.ndarray, l2: float = 1e-2, iters: int = 50) -> np.ndarray:
    """Weights (bias first) of an L2-regularised logistic regression, by Newton's method."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    reg = np.eye(len(w)) * l2
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1 / (1 + np.exp(-(xb @ w)))
        grad = xb.T @ (p - y) + reg @ w
        hess = xb.T @ (xb * (p * (1 - p))[:, None]) + reg + 1e-9 * np.eye(len(w))
        w -= np.linalg.solve(hess, grad)
    return w


def calibrate(deep_mm: float | None = None) -> dict:
    """Fit the confidence's logistic weights on the ``calib`` rows (gain > 0 is the label) and print
    them for ``confidence.WEIGHTS``; ``deep_mm`` (default ``confidence.DEEP_MM``) picks the depth."""
    from NeARSlicerLib import confidence as c

    deep_mm = c.DEEP_MM if deep_mm is None else deep_mm
    rows = [r for r in load_rows() if r["set"] == "calib"]
    x = np.array([features(r, deep_mm) for r in rows])
    y = np.array([r["dice_ref"] > r["dice_in"] for r in rows], float)
    # fitted on standardised signals (an L2 penalty of 1 per standardised weight: few cases), then
    # expressed on the raw signals for confidence.WEIGHTS
    mu, sd = x.mean(0), np.where(x.std(0) > 1e-9, x.std(0), 1.0)
    w = fit_logistic((x - mu) / sd, y, l2=1.0)
    raw = w[1:] / sd
    bias = w[0] - float(np.sum(raw * mu))
    weights = {"bias": round(float(bias), 3), **{k: round(float(v), 3) for k, v in zip(FEATURES, raw)}}
    print(f"calibrated on {len(rows)} rows ({int(y.sum())} improved), deep at {deep_mm} mm: {weights}")
    return weights


def _auc(scores: np.ndarray, labels: np.ndarray) -> float | None:
    pos, neg = scores[labels], scores[~labels]
    if not len(pos) or not len(neg):
        return None
    return float(np.mean([(p > n) + 0.5 * (p == n) for p in pos for n in neg]))


def summarise(rows: list[dict], threshold: float) -> dict:
    """Dice to the truth of the input, of always refining and of the do-no-harm output (kept when the
    confidence is below ``threshold``), and how well the confidence flags the cases made worse."""
    from NeARSlicerLib import confidence as c

    if not rows:
        return {}
    conf = np.array([c.confidence(c.Signals(**{k: v for k, v in r["signals"].items() if k != "deep_profile"}))
                     for r in rows])
    d_in = np.array([r["dice_in"] for r in rows])
    d_ref = np.array([r["dice_ref"] for r in rows])
    out = np.where(conf >= threshold, d_ref, d_in)
    gain = d_ref - d_in
    worse = gain < -0.01
    return {
        "cases": len(rows),
        "dice_input": round(100 * float(d_in.mean()), 2),
        "dice_always_refined": round(100 * float(d_ref.mean()), 2),
        "dice_do_no_harm": round(100 * float(out.mean()), 2),
        "worst_drop_always_refined": round(100 * float(np.min(d_ref - d_in)), 2),
        "worst_drop_do_no_harm": round(100 * float(np.min(out - d_in)), 2),
        "structures_worse_by_more_than_1_dsc": int(np.sum(out - d_in < -0.01)),
        "refined": int(np.sum(conf >= threshold)),
        "kept": int(np.sum(conf < threshold)),
        "made_worse_when_always_refined": int(worse.sum()),
        "made_worse_and_flagged_low_confidence": int(np.sum(worse & (conf < threshold))),
        "auc_confidence_vs_improved": _auc(conf, gain > 0),
        "rows": [{"case": r["case"], "dice_in": r["dice_in"], "dice_refined": r["dice_ref"],
                  "confidence": round(float(k), 4), "action": "refined" if k >= threshold else "kept",
                  "seconds": r["seconds"]} for r, k in zip(rows, conf)],
    }


def report() -> dict:
    from NeARSlicerLib import confidence as c

    rows = load_rows()
    by = lambda kind: [r for r in rows if r["set"] == kind]  # noqa: E731
    t = c.DEFAULT_KEEP_THRESHOLD
    result = {"keep_threshold": t, "weights": c.WEIGHTS, "deep_mm": c.DEEP_MM,
              "note": "each case refined once with keep_threshold=0; the do-no-harm output is the input when "
                      "the confidence is below the threshold (refine returns the input unchanged then)"}
    for kind in ("calib", "heldout_family", "alan_clean", "ct_mild", "ct_mixture"):
        result[kind] = summarise(by(kind), t)
    near = by("alan_clean") + by("ct_mild")
    result["near_correct_all"] = {k: v for k, v in summarise(near, t).items() if k != "rows"}
    mr = by("mr")
    if mr:
        pick = lambda suffix: {r["case"].rsplit("_", 1)[0] if suffix != "forced_ct" else r["case"][:-10]: r  # noqa: E731
                               for r in mr if r["case"].endswith(suffix)}
        image, forced, shape = pick("image"), pick("forced_ct"), pick("shape")
        names = sorted(set(image) & set(shape))
        result["mr"] = {
            "cases": len(names),
            "detected_not_ct": int(sum(image[n]["modality"] != "CT" for n in names)),
            "dice_input": round(100 * float(np.mean([shape[n]["dice_in"] for n in names])), 2),
            "dice_shape_only": round(100 * float(np.mean([shape[n]["dice_ref"] for n in names])), 2),
            "dice_with_image": round(100 * float(np.mean([image[n]["dice_ref"] for n in names])), 2),
            "dice_image_read_as_ct_unguarded": round(100 * float(np.mean([forced[n]["dice_ref"] for n in names
                                                                          if n in forced])), 2) if forced else None,
        }
    if (HERE / "results" / "no_harm_size.json").is_file():
        result["size"] = json.loads((HERE / "results" / "no_harm_size.json").read_text())
    OUT.write_text(json.dumps(result, indent=1) + "\n")
    print(json.dumps({k: ({kk: vv for kk, vv in v.items() if kk != "rows"} if isinstance(v, dict) else v)
                      for k, v in result.items()}, indent=1))
    return result


SIZE_CODE = """
import json, resource, sys, time, warnings
import numpy as np
warnings.simplefilter("ignore")
sys.path.insert(0, {lib!r}); sys.path.insert(0, {bench!r})
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.refine import RefineOptions, refine_mask
what = {what!r}
if what == "largest_ct":
    from no_harm import real_structures
    label, mask, grid, ct = max(real_structures(), key=lambda s: int(s[1].sum()))
    name = f"example CT label {{label}} ({{int(mask.sum())}} voxels at 3 mm)"
else:
    shape = (400, 260, 200)
    kk, jj, ii = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) for n in shape], indexing="ij", sparse=True)
    mask = ((kk / 199.0) ** 2 + (jj / 125.0) ** 2 + (ii / 96.0) ** 2 <= 1.0).astype(np.uint8)
    grid, ct, name = Grid(shape, (1.0, 1.0, 1.0), (0.0, 0.0, 0.0)), None, "synthetic 400 mm ellipsoid, 1 mm grid"
t0 = time.perf_counter()
res = refine_mask(mask, grid, ct, RefineOptions())
print(json.dumps({{"structure": name, "voxels": int(np.sum(mask)), "seconds": round(time.perf_counter() - t0, 1),
                  "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
                  "working_shape": res.info["working_shape"], "working_spacing_mm": res.info["working_spacing_mm"],
                  "action": res.info["action"], "preset": "default"}}))
"""


ALL_CODE = """
import json, sys, time, warnings
warnings.simplefilter("ignore")
sys.path.insert(0, {lib!r}); sys.path.insert(0, {bench!r})
from NeARSlicerLib.refine import RefineOptions, refine_mask
from no_harm import real_structures
rows = []
for label, mask, grid, ct in real_structures():
    t0 = time.perf_counter()
    try:
        res = refine_mask(mask, grid, ct, RefineOptions(preset="fast"))
        rows.append({{"label": label, "voxels": int(mask.sum()), "error": "", "action": res.info["action"],
                     "seconds": round(time.perf_counter() - t0, 2), "size_mm": res.info["size_mm"]}})
    except Exception as exc:
        rows.append({{"label": label, "voxels": int(mask.sum()), "error": str(exc)}})
print(json.dumps(rows))
"""


def size() -> None:
    """Every example-CT structure (>= 300 voxels) refined once without an internal error (``fast``),
    then time and peak RSS (fresh process each, ``default``) of the largest one and of a 400 mm,
    10^7-voxel structure."""
    out = {"threads": os.environ.get("OMP_NUM_THREADS", "default"),
           "note": "2-core CPU shared with other jobs while measured"}
    proc = subprocess.run([sys.executable, "-c", ALL_CODE.format(lib=str(ROOT / "NeARSlicer"), bench=str(HERE))],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(proc.stderr[-3000:])
    out["all_structures_fast"] = json.loads(proc.stdout.strip().splitlines()[-1])
    print("all structures:", [(r["label"], r["error"] or "ok") for r in out["all_structures_fast"]], flush=True)
    for what in ("largest_ct", "scan_length"):
        code = SIZE_CODE.format(lib=str(ROOT / "NeARSlicer"), bench=str(HERE), what=what)
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        if proc.returncode != 0:
            raise SystemExit(proc.stderr[-3000:])
        out[what] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(what, out[what], flush=True)
    (HERE / "results" / "no_harm_size.json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "collect"
    if what == "collect":
        collect(set(sys.argv[2:]) or None)
    elif what == "calibrate":
        calibrate(float(sys.argv[2]) if len(sys.argv) > 2 else None)
    elif what == "report":
        report()
    elif what == "size":
        size()
    else:
        raise SystemExit(f"unknown command {what!r}: collect, calibrate, report or size")
