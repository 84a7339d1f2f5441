"""Does ``image_resolution`` tell a resampled CT from one made at its own grid? (not a test): run with
the project's venv,

    .venv/bin/python benchmarks/image_resolution.py [--crops 10] [--json results/image_resolution.json]

Boxes of ``--sizes`` mm (the sizes of a refinement's box: a small gland's to an organ's) drawn at
random (fixed seed) from

* **resampled** images: the example CT (``../shared/data/totalseg_example``, 3 mm) resampled by SimpleITK
  to 0.7, 1.0 and 1.5 mm with nearest, linear, B-spline and Lanczos (windowed sinc) interpolation, stored as
  whole HU as a NIfTI file would be. The answer is 3 mm;
* **native** images, made at their own grid, where the answer is "not resampled": the example CT itself;
  a lobulated organ at 0.7 mm (0.8 mm blur) with white noise and with noise correlated over a
  Gaussian of 1.0, 1.5 and 2.5 mm FWHM (a reconstruction kernel), 12 and 4 HU; the project's adrenal
  phantom CTs and anatomy-context CTs at 0.7 and 1.0 mm.

Per set and box size: boxes read as resampled (``acquired_voxel_mm`` not None), the median voxel read,
and axes read with a period (``read_axis``). A native box read as resampled is a false reading: the
margin fit would then skip margins it could fit.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(ROOT / "NeARSlicer"))

import numpy as np  # noqa: E402
from scipy import ndimage  # noqa: E402

from bench_full_resolution import EXAMPLE  # noqa: E402
from NeARSlicerLib.image_resolution import acquired_voxel_mm, read_axis  # noqa: E402


def resampled_sets() -> dict:
    """name -> (image [k, j, i], spacing mm) of the example CT resampled from its 3 mm."""
    import SimpleITK as sitk

    ct = sitk.ReadImage(str(EXAMPLE / "ct.nii.gz"), sitk.sitkFloat32)
    out = {"native: example CT, 3 mm": (np.round(sitk.GetArrayFromImage(ct)), 3.0)}
    for fine in (0.7, 1.0, 1.5):
        size = [int(round(n * s / fine)) for n, s in zip(ct.GetSize(), ct.GetSpacing())]
        for name, interp in (("nearest", sitk.sitkNearestNeighbor), ("linear", sitk.sitkLinear),
                             ("B-spline", sitk.sitkBSpline), ("Lanczos", sitk.sitkLanczosWindowedSinc)):
            img = sitk.Resample(ct, size, sitk.Transform(), interp, ct.GetOrigin(), (fine,) * 3, ct.GetDirection(),
                                -1024.0, sitk.sitkFloat32)
            out[f"resampled 3 -> {fine} mm, {name}"] = (np.round(sitk.GetArrayFromImage(img)), fine)
    return out


def native_sets(rng: np.random.Generator) -> dict:
    """name -> (image, spacing mm) of images made at their own grid."""
    from large_structure_speed import organ_arrays

    from NeARSlicerLib import anatomy_context, phantom

    out = {}
    ct, organ = organ_arrays((100.0, 110.0, 120.0), 0.7, 15.0)
    out["native: organ 0.7 mm, white noise 12 HU"] = (np.round(ct), 0.7)
    base = ndimage.gaussian_filter(np.where(organ, 55.0, -100.0).astype(np.float32), 0.8 / 0.7)
    for fwhm in (1.0, 1.5, 2.5):
        for hu in (12.0, 4.0):
            noise = ndimage.gaussian_filter(rng.normal(size=base.shape).astype(np.float32), fwhm / 2.355 / 0.7)
            name = f"native: organ 0.7 mm, noise {fwhm} mm FWHM {hu:g} HU"
            out[name] = (np.round(base + hu * noise / noise.std()), 0.7)
    for sp in (0.7, 1.0):
        gland = phantom.adrenal_phantom(3, shape=(int(80 / sp),) * 3, spacing=sp)
        out[f"native: adrenal phantom CT {sp} mm"] = (np.round(phantom.ct_phantom(gland, seed=3, spacing=(sp,) * 3,
                                                                                  vary=True)), sp)
        ctx = anatomy_context.synthetic_context(gland, sp, np.random.default_rng(5))
        ctx = ctx[0] if isinstance(ctx, tuple) else ctx
        out[f"native: anatomy-context CT {sp} mm"] = (np.round(np.asarray(ctx, np.float32)), sp)
    return out


def boxes(image: np.ndarray, size_vox: int, n: int, rng: np.random.Generator) -> list:
    out = []
    for _ in range(n):
        lo = [int(rng.integers(0, max(1, d - size_vox + 1))) for d in image.shape]
        out.append(image[tuple(slice(a, a + size_vox) for a in lo)])
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--crops", type=int, default=10, help="boxes per set and size")
    ap.add_argument("--sizes", type=float, nargs="+", default=[30.0, 50.0, 80.0], help="box sides, mm")
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    rng = np.random.default_rng(0)
    t0 = time.time()
    sets = {**resampled_sets(), **native_sets(rng)}
    rows = []
    for name, (image, sp) in sets.items():
        for size in args.sizes:
            n_vox = int(round(size / sp))  # boxes are cut to the image (the 3 mm CT spans 90 mm along k)
            read, axes = [], 0
            for box in boxes(image, n_vox, args.crops, rng):
                read.append(acquired_voxel_mm(box, (sp,) * 3))
                axes += sum(read_axis(box, sp, a).period_mm is not None for a in range(3))
            found = [r for r in read if r is not None]
            row = {"set": name, "box_mm": size, "boxes": len(read), "read_as_resampled": len(found),
                   "median_voxel_read_mm": float(np.median(found)) if found else None,
                   "axes_with_a_period": axes, "axes": 3 * len(read)}
            rows.append(row)
            print(f"{name:48s} {size:4.0f} mm: {len(found):2d}/{len(read)} read as resampled "
                  f"(median {row['median_voxel_read_mm']}), axes with a period {axes}/{3 * len(read)}", flush=True)
    native = [r for r in rows if r["set"].startswith("native")]
    summary = {"native_boxes": sum(r["boxes"] for r in native),
               "native_boxes_read_as_resampled": sum(r["read_as_resampled"] for r in native),
               "native_axes_with_a_period": sum(r["axes_with_a_period"] for r in native),
               "native_axes": sum(r["axes"] for r in native)}
    for kind in ("nearest", "linear", "B-spline", "Lanczos"):
        for size in args.sizes:
            sel = [r for r in rows if r["set"].endswith(kind) and r["box_mm"] == size]
            summary[f"{kind} {size:g} mm boxes read"] = f"{sum(r['read_as_resampled'] for r in sel)}/" \
                                                      f"{sum(r['boxes'] for r in sel)}"
    print(json.dumps(summary, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps({"rows": rows, "summary": summary, "crops": args.crops,
                                               "seconds": round(time.time() - t0, 1)}, indent=1) + "\n")


if __name__ == "__main__":
    main()
