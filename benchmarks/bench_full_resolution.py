"""`nearslicer bench --real-ct --all-structures` on a full-resolution CT (not a test): run with the
project's venv,

    .venv/bin/python benchmarks/bench_full_resolution.py [--spacing 0.7] [--preset fast] [--json out.json]

The bench distorted each case on the whole scan, held its truth and distorted annotation as whole-scan
arrays and smoothed and scored them on the whole scan: one structure of a 200 x 512 x 512 CT took 55 s
and 1.8 GB, so TotalSegmentator's labels at 3 seeds needed hours and tens of GB. ``real_ct_structures``
now holds each case as the boxes of its masks (``bench.ScanCase``), ``run_bench`` scores it on the boxes
its methods read (``bench_box``), and the error library distorts it on the box each family reaches
(``annotation_errors.FAMILY_REACH_MM``).

The example CT (``../shared/data/totalseg_example``, 3 mm) and its labels are resampled to ``--spacing``
mm (the CT linearly; the labels by ``--truth``, ``write_scan``), keeping ``LABELS`` (large and small
structures: the boxes of a liver and of an adrenal gland). Each child process (``--modes``) runs the
bench of the CLI's any-structure rows (NeAR S and S+A, ``--prior auto``, ``--preset``, no study) on the
same cases: ``whole`` (each case distorted on the whole scan and turned back into whole-scan arrays: the
bench before) and ``boxes`` (the bench now). Reports seconds (the cases' drawing among them) and peak RSS
of each, whether every case's scores are the same, and each case's scores, prior, action and confidence.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):  # PYTHONPATH may name another engine
    sys.path.insert(0, str(ROOT / "NeARSlicer"))

from child_modes import peak_rss_gb, run_modes  # noqa: E402
EXAMPLE = ROOT.parent / "shared" / "data" / "totalseg_example"
# spleen, liver, the adrenal glands, colon, left autochthon (a long muscle), L1
LABELS = (1, 5, 8, 9, 20, 86, 31)


def write_scan(out: Path, spacing: float, labels, truth: str = "smooth") -> None:
    """The example CT and its chosen labels resampled to ``spacing`` mm, as ``out``/ct.nii.gz and seg.nii.gz.

    ``truth``: ``smooth``, each label's indicator interpolated linearly and kept above 0.5 (the larger
    value where two meet): a surface without steps, as a structure drawn on the fine grid would have;
    ``nearest``: each label's 3 mm voxels copied to every fine voxel inside them. Nearest makes every
    label a staircase repeating each slice about 4 times along all three axes: the prior's smooth
    surface then differs from a truth that is itself the staircase (and until 2026-12-07 ``refine``'s
    do-no-harm gate read such a mask as painted on 3 mm slices and applied every change)."""
    import numpy as np
    import SimpleITK as sitk

    if truth not in ("smooth", "nearest"):
        raise ValueError(f"truth must be smooth or nearest, got {truth!r}")
    out.mkdir(parents=True)
    ct = sitk.ReadImage(str(EXAMPLE / "ct.nii.gz"), sitk.sitkFloat32)
    seg = sitk.ReadImage(str(EXAMPLE / "seg.nii.gz"))
    size = [int(round(n * s / spacing)) for n, s in zip(ct.GetSize(), ct.GetSpacing())]

    def resampled(image, interp, default, pixel=None):
        return sitk.Resample(image, size, sitk.Transform(), interp, image.GetOrigin(), (spacing,) * 3,
                             image.GetDirection(), default, image.GetPixelID() if pixel is None else pixel)

    sitk.WriteImage(resampled(ct, sitk.sitkLinear, -1024.0), str(out / "ct.nii.gz"))
    coarse = sitk.GetArrayFromImage(seg)
    if truth == "nearest":
        arr = sitk.GetArrayFromImage(resampled(seg, sitk.sitkNearestNeighbor, 0))
        arr = np.where(np.isin(arr, labels), arr, 0).astype(coarse.dtype)
    else:
        arr = np.zeros(size[::-1], coarse.dtype)
        best = np.full(size[::-1], 0.5, np.float32)
        for label in labels:
            indicator = sitk.GetImageFromArray((coarse == label).astype(np.float32))
            indicator.CopyInformation(seg)
            value = sitk.GetArrayFromImage(resampled(indicator, sitk.sitkLinear, 0.0, sitk.sitkFloat32))
            wins = value > best
            arr[wins], best[wins] = label, value[wins]
    kept = sitk.GetImageFromArray(arr)
    kept.SetOrigin(seg.GetOrigin())
    kept.SetSpacing((spacing,) * 3)
    kept.SetDirection(seg.GetDirection())
    sitk.WriteImage(kept, str(out / "seg.nii.gz"))


def child(mode: str, data: Path, per_label: int, preset: str) -> dict:
    """The bench in this process: ``whole`` (the cases as whole-scan arrays) or ``boxes``."""
    import NeARSlicerLib.annotation_errors as errors_library
    from NeARSlicerLib.bench import BenchCase, real_ct_structures, run_bench
    from NeARSlicerLib.refine import RefineOptions

    if mode == "whole":  # the error library on the whole scan too, as before (the same voxels)
        errors_library.FAMILY_REACH_MM = 1e6  # mm: beyond any scan
    t0 = time.perf_counter()
    cases = real_ct_structures(data / "ct.nii.gz", data / "seg.nii.gz", per_label=per_label)
    shape = list(cases[0].grid.shape)
    if mode == "whole":
        cases = [BenchCase(c.name, c.truth, c.annotation, c.grid, c.image, c.structure) for c in cases]
    drawn = time.perf_counter() - t0
    variants = {"NeAR S": RefineOptions(preset=preset, appearance=False, seed=0),
                "NeAR S+A": RefineOptions(preset=preset, seed=0)}
    result = run_bench(cases, variants=variants, tolerance_mm=max(cases[0].grid.spacing), log=lambda m: None)
    rows = {m: [(r["case"], r["dsc"], r["nsd"], r.get("prior"), r.get("action"), r.get("confidence")) for r in per]
            for m, per in result["per_case"].items()}
    return {"scan": shape, "cases": len(cases), "seconds_drawing_cases": round(drawn, 1),
            "seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": peak_rss_gb(), "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--spacing", type=float, default=0.7, help="mm, every axis")
    ap.add_argument("--per-label", type=int, default=2)
    ap.add_argument("--preset", default="fast", help="the NeAR rows' preset")
    ap.add_argument("--truth", choices=("smooth", "nearest"), default="smooth",
                    help="how the 3 mm labels become the fine grid's truth (write_scan)")
    ap.add_argument("--modes", default="whole,boxes", help="the children to run, of whole,boxes")
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=4, metavar=("MODE", "DATA", "PER_LABEL", "PRESET"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), int(args.child[2]), args.child[3])))
        return
    with tempfile.TemporaryDirectory(prefix="bench-full-resolution-") as tmp:
        data = Path(tmp) / "scan"
        write_scan(data, args.spacing, LABELS, args.truth)
        modes = tuple(args.modes.split(","))
        if not set(modes) <= {"whole", "boxes"} or "boxes" not in modes:
            ap.error("--modes: boxes, optionally with whole")
        runs = run_modes(__file__, modes, lambda mode: (data, args.per_label, args.preset),
                         shown=lambda run: {k: v for k, v in run.items() if k != "rows"})
    result = {"spacing_mm": args.spacing, "labels": list(LABELS), "per_label": args.per_label, "preset": args.preset,
              "truth": args.truth, "scan": runs["boxes"]["scan"], "cases": runs["boxes"]["cases"],
              **{mode: {k: v for k, v in run.items() if k not in ("rows", "scan", "cases")}
                 for mode, run in runs.items()},
              "rows": runs["boxes"]["rows"]}
    if "whole" in runs:
        result["same_scores"] = runs["whole"]["rows"] == runs["boxes"]["rows"]
    print(json.dumps({k: v for k, v in result.items() if k != "rows"}, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
