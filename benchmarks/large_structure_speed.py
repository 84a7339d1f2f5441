"""Refining a large structure on a full-resolution CT (not a test): run with the project's venv,

    .venv/bin/python benchmarks/large_structure_speed.py [--baseline COMMIT] [--json out.json]

Issue 9 asks ``default`` <= 10 s per structure on this CPU for a structure up to 250 mm. Cases, each
refined with ``default`` (``--prior auto``), with its CT and shape only:

* ``organ250``: a synthetic lobulated organ drawn in a 250 x 190 x 160 mm ellipsoid on a 0.7 mm grid
  (300 x 343 x 429 voxels; its extent is recorded), 55 HU in fat of -100 HU, air in front, 0.8 mm blur
  and 12 HU noise (int16); ``clean`` (the truth itself) and ``over`` (painted 1.4 mm too thick all round);
* the example CT (``../shared/data/totalseg_example``, 3 mm) resampled to 0.7 mm
  (``bench_full_resolution.write_scan``), its liver and colon, clean.

Each engine runs in a child process of its own (``child_modes.run_modes``; the engine's folder first on
``sys.path``, warmed up on a small mask first, 2 torch threads): the working tree's, and with ``--baseline
COMMIT`` that commit's ``NeARSlicer`` (``git archive``), on the same files in the same run. Recorded per
case: seconds, the action, and a hash of the mask and probability, so that the JSON says whether the
engines gave the same voxels.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))

import numpy as np  # noqa: E402

from bench_full_resolution import write_scan  # noqa: E402
from child_modes import run_modes  # noqa: E402

EXAMPLE_LABELS = {5: "liver", 20: "colon"}


def organ_arrays(extent_mm=(160.0, 190.0, 250.0), spacing: float = 0.7, margin_mm: float = 25.0, seed: int = 0,
                 organ_hu: float = 55.0, around_hu: float = -100.0) -> tuple:
    """(CT in HU, float32; the organ, bool): a lobulated ellipsoid of ``extent_mm`` (k, j, i) of ``organ_hu``
    in tissue of ``around_hu`` on an isotropic ``spacing`` mm grid, air in front, 0.8 mm blur, 12 HU noise."""
    from scipy import ndimage

    rng = np.random.default_rng(seed)
    shape = tuple(int(round((e + 2 * margin_mm) / spacing)) for e in extent_mm)
    k, j, i = np.meshgrid(*[(np.arange(n) - (n - 1) / 2) * spacing for n in shape], indexing="ij", sparse=True)
    half = [e / 2 for e in extent_mm]
    coarse = ndimage.gaussian_filter(rng.normal(size=tuple(max(4, n // 16) for n in shape)).astype(np.float32), 1.5)
    lobes = ndimage.zoom(coarse / coarse.std(), [n / m for n, m in zip(shape, coarse.shape)], order=1)
    lobes = lobes[:shape[0], :shape[1], :shape[2]]
    organ = (k / half[0]) ** 2 + (j / half[1]) ** 2 + (i / half[2]) ** 2 + 0.08 * lobes < 0.92
    ct = np.where(organ, organ_hu, around_hu).astype(np.float32)
    ct[:, :8, :] = -1000.0  # air in front of the patient: the scan reads as CT
    ct = ndimage.gaussian_filter(ct, 0.8 / spacing) + rng.normal(0.0, 12.0, shape).astype(np.float32)
    return ct, organ


def organ_scan(out: Path, extent_mm=(160.0, 190.0, 250.0), spacing: float = 0.7, margin_mm: float = 25.0,
               seed: int = 0) -> None:
    """``out``/ct.nii.gz (int16 HU) and organ.nii.gz: ``organ_arrays``."""
    import SimpleITK as sitk

    ct, organ = organ_arrays(extent_mm, spacing, margin_mm, seed)
    out.mkdir(parents=True)
    for name, arr in (("ct", np.round(ct).astype(np.int16)), ("organ", organ.astype(np.uint8))):
        img = sitk.GetImageFromArray(arr)
        img.SetSpacing((spacing,) * 3)
        sitk.WriteImage(img, str(out / f"{name}.nii.gz"))


def child(data: Path, engine: Path) -> dict:
    """Every case refined by the engine under ``engine`` (a folder holding NeARSlicerLib): seconds, action,
    hashes."""
    import warnings

    import SimpleITK as sitk
    import torch
    from scipy import ndimage

    sys.path.insert(0, str(engine))
    import NeARSlicerLib
    from NeARSlicerLib.geometry import Grid, occupied_box
    from NeARSlicerLib.io import read_image
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    if not Path(NeARSlicerLib.__file__).resolve().is_relative_to(engine.resolve()):
        raise SystemExit(f"the engine imported is {NeARSlicerLib.__file__}, not the one under {engine}")
    torch.set_num_threads(2)
    warnings.simplefilter("ignore")
    small = np.zeros((40, 40, 40), np.uint8)
    small[10:30, 12:28, 14:26] = 1
    refine_mask(small, Grid(small.shape, (1.0,) * 3, (0.0,) * 3), None)  # imports and first allocations

    def read_mask(path: Path, label=None) -> np.ndarray:
        arr = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))
        return (arr > 0 if label is None else arr == label).astype(np.uint8)

    cases = []
    image, grid = read_image(str(data / "organ" / "ct.nii.gz"))
    organ = read_mask(data / "organ" / "organ.nii.gz")
    cases.append(("organ250_clean", organ, grid, image, "liver"))
    cases.append(("organ250_over", ndimage.binary_dilation(organ, iterations=2).astype(np.uint8), grid, image, "liver"))
    ex_image, ex_grid = read_image(str(data / "example" / "ct.nii.gz"))
    for label, name in EXAMPLE_LABELS.items():
        cases.append((f"example_{name}_clean", read_mask(data / "example" / "seg.nii.gz", label), ex_grid, ex_image,
                      name))
    rows = []
    for name, mask, g, img, structure in cases:
        lo, hi = occupied_box(mask)
        extent = [round(float(n), 1) for n in (hi - lo) * np.asarray(g.spacing)[::-1]]  # mm, k j i
        for with_ct in (True, False):
            t = time.perf_counter()
            r = refine_mask(mask, g, img if with_ct else None, RefineOptions(structure=structure))
            rows.append({"case": name, "image": with_ct, "extent_mm": extent,
                         "seconds": round(time.perf_counter() - t, 2), "action": r.info.get("action"),
                         "mask_sha1": hashlib.sha1(np.ascontiguousarray(r.mask).tobytes()).hexdigest(),
                         "probability_sha1": hashlib.sha1(np.ascontiguousarray(r.probability).tobytes()).hexdigest()})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    return {"rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--baseline", help="a commit whose engine runs beside the working tree's, on the same files")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=3, metavar=("NAME", "DATA", "ENGINE"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(Path(args.child[1]), Path(args.child[2]))))
        return
    with tempfile.TemporaryDirectory(prefix="large-structure-speed-") as tmp:
        data = Path(tmp)
        organ_scan(data / "organ")
        write_scan(data / "example", 0.7, tuple(EXAMPLE_LABELS))
        engines = {"now": ROOT / "NeARSlicer"}
        if args.baseline:
            archive = data / "baseline.tar"
            subprocess.run(["git", "-C", str(ROOT), "archive", "-o", str(archive), args.baseline, "NeARSlicer"],
                           check=True)
            with tarfile.open(archive) as tar:
                tar.extractall(data / "baseline", filter="data")
            engines = {"baseline": data / "baseline" / "NeARSlicer", **engines}
        found = run_modes(__file__, list(engines), lambda name: (data, engines[name]),
                          shown=lambda run: f"{len(run['rows'])} refinements")
        runs = {name: run["rows"] for name, run in found.items()}
    result = {"baseline_commit": args.baseline, "torch_threads": 2, "runs": runs}
    if args.baseline:
        now, base = runs["now"], runs["baseline"]
        result["same_outputs"] = all(a["mask_sha1"] == b["mask_sha1"] and a["probability_sha1"] == b["probability_sha1"]
                                     for a, b in zip(now, base))
        result["speedup"] = {f"{a['case']}|{'CT' if a['image'] else 'shape'}": round(b["seconds"] / a["seconds"], 2)
                             for a, b in zip(now, base)}
    print(json.dumps(result, indent=1))
    if args.json:
        from NeARSlicerLib.output_safety import atomic_write_text

        atomic_write_text(args.json, json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):
        sys.path.insert(0, str(ROOT / "NeARSlicer"))
    main()
