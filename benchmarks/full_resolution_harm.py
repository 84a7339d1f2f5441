"""Do no harm on a full-resolution CT (not a test): run with the project's venv,

    .venv/bin/python benchmarks/full_resolution_harm.py [--spacing 0.7] [--preset default] [--json out.json]

The example CT (``../shared/data/totalseg_example``, 3 mm) and 7 of its labels are resampled to
``--spacing`` mm (``bench_full_resolution.write_scan``): the truth ``smooth`` (each label's indicator
interpolated linearly, > 0.5: a surface without steps). Each label gives three kinds of annotation:

* ``clean``: the truth itself. The product must keep it (issue 8: Dice(clean, refined) >= 0.95;
  issue 9: >= 0.93 on every real structure).
* ``coarse``: the label's 3 mm voxels copied onto the fine grid (nearest): a near-correct automatic
  mask computed on a coarser grid and resampled to the CT's, steps of up to half a 3 mm voxel all round.
* ``mixture``: the truth distorted by the error library's mixture (``--seeds`` seeds), as
  ``nearslicer bench --real-ct --all-structures`` does.

Rows: the input, NeAR S and NeAR S+A (``--prior auto``, ``--preset``), each case's DSC, NSD at the fine
voxel, the do-no-harm default's action and confidence. Summaries per kind: mean DSC / NSD and the cases
made worse than their input by more than 1 DSC. ``PYTHONPATH`` picks the engine measured (an older
checkout's ``NeARSlicer`` for the before numbers).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))
if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(ROOT / "NeARSlicer"))

import numpy as np  # noqa: E402

from bench_full_resolution import EXAMPLE, LABELS, write_scan  # noqa: E402

KINDS = ("clean", "coarse", "mixture")


def scan_cases(smooth_dir: Path, nearest_dir: Path, seeds: int) -> list:
    """The ``ScanCase``s of every label and kind (names ``label{N}_{kind}``, ``label{N}_d{seed}``)."""
    import SimpleITK as sitk

    from NeARSlicerLib.bench import ScanCase, real_ct_structures
    from NeARSlicerLib.boxed_mask import BoxedMask
    from NeARSlicerLib.label_table import label_names

    mixture = real_ct_structures(smooth_dir / "ct.nii.gz", smooth_dir / "seg.nii.gz", per_label=seeds) if seeds else []
    smooth = sitk.GetArrayFromImage(sitk.ReadImage(str(smooth_dir / "seg.nii.gz")))
    coarse = sitk.GetArrayFromImage(sitk.ReadImage(str(nearest_dir / "seg.nii.gz")))
    names = label_names(str(EXAMPLE / "seg.nii.gz"))
    first = mixture[0] if mixture else None
    if first is None:
        from NeARSlicerLib.io import read_image
        from NeARSlicerLib.modality import ScanFacts

        image, grid = read_image(str(smooth_dir / "ct.nii.gz"))
        facts = ScanFacts.of(image)
    else:
        image, grid, facts = first.image, first.grid, first.scan
    cases = []
    for label in LABELS:
        truth = BoxedMask.of(smooth == label)
        structure = names.get(label) or f"label {label}"
        cases.append(ScanCase(f"label{label}_clean", truth, truth, grid, image, facts, structure=structure))
        cases.append(ScanCase(f"label{label}_coarse", truth, BoxedMask.of(coarse == label), grid, image, facts,
                              structure=structure))
    return cases + list(mixture)


def kind_of(name: str) -> str:
    return name.rsplit("_", 1)[1] if name.endswith(("_clean", "_coarse")) else "mixture"


def summary(per_case: dict) -> dict:
    """Per kind and row: cases, mean DSC / NSD (%) and the cases worse than their input by > 1 DSC."""
    out = {}
    for kind in KINDS:
        idx = [i for i, r in enumerate(per_case["input"]) if kind_of(r["case"]) == kind]
        if not idx:
            continue
        out[kind] = {}
        for row, rows in per_case.items():
            worse = [rows[i]["case"] for i in idx if rows[i]["dsc"] < per_case["input"][i]["dsc"] - 0.01]
            out[kind][row] = {"cases": len(idx), "dsc": round(100 * float(np.mean([rows[i]["dsc"] for i in idx])), 2),
                              "nsd": round(100 * float(np.mean([rows[i]["nsd"] for i in idx])), 2),
                              "worse_by_1_dsc": worse}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spacing", type=float, default=0.7, help="mm, every axis")
    ap.add_argument("--seeds", type=int, default=2, help="mixture cases per label")
    ap.add_argument("--preset", default="default")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--image-voxel-mm", type=float, default=None,
                    help="tell refine the CT's own voxel (3: the example CT was acquired at 3 mm and interpolated), "
                         "as Slicer does for a segmentation finer than its volume; default: none (a CT acquired "
                         "at --spacing)")
    args = ap.parse_args()

    import NeARSlicerLib
    from NeARSlicerLib.bench import run_bench
    from NeARSlicerLib.refine import RefineOptions

    t0 = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="full-resolution-harm-") as tmp:
        for truth in ("smooth", "nearest"):
            write_scan(Path(tmp) / truth, args.spacing, LABELS, truth)
        cases = scan_cases(Path(tmp) / "smooth", Path(tmp) / "nearest", args.seeds)
        if args.image_voxel_mm is not None:
            cases = [replace(c, image_voxel_mm=args.image_voxel_mm) for c in cases]
        variants = {"NeAR S": RefineOptions(preset=args.preset, appearance=False, seed=0),
                    "NeAR S+A": RefineOptions(preset=args.preset, seed=0)}
        result = run_bench(cases, variants=variants, baselines={}, tolerance_mm=args.spacing, log=lambda m: None)
    per = {row: [{k: r.get(k) for k in ("case", "dsc", "nsd", "prior", "action", "confidence")} for r in rows]
           for row, rows in result["per_case"].items()}
    out = {"engine": str(Path(NeARSlicerLib.__file__).parent), "spacing_mm": args.spacing, "preset": args.preset,
           "image_voxel_mm": args.image_voxel_mm,
           "labels": list(LABELS), "seeds": args.seeds, "seconds": round(time.perf_counter() - t0, 1),
           "summary": summary(result["per_case"]), "per_case": per}
    print(json.dumps(out["summary"], indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
