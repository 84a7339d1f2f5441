"""Does study mode help? Input / best smoothing / un-adapted prior / old study mode ("fast") / new
study mode ("denoise") on (a) a synthetic study of shape classes no prior has seen and (b) structures
of the real example CT, each annotation distorted by the error library's mixture (fixed seeds).

DSC and NSD (tolerance: one working voxel, in mm) in percent, mean over cases, against the clean truth.
Every NeAR row runs with the same refine preset and the same working spacing: for the synthetic
study, whose structures range from 10 to 200 mm, per case its longest side / ``--extent`` (40), so
a structure spans about 40 voxels of the cube (``StudyConfig.extent_voxels``); for the real CT 1 mm,
or with ``--real-extent`` the same rule (the general prior's scale).

    PYTHONPATH=NeARSlicer python benchmarks/study_helps.py --cases 20 --prior adrenal
"""
from __future__ import annotations

import argparse
import json
import platform
import time
import warnings
from pathlib import Path

import numpy as np

from NeARSlicerLib.anatomy_shapes import HELD_OUT_CLASSES, anatomy_study_cases
from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.baselines import BASELINES
from NeARSlicerLib.bench import BENCH_SEED, identity_grid, real_ct_cases
from NeARSlicerLib.metrics import dice, normalized_surface_dice
from NeARSlicerLib.refine import RefineOptions, refine_mask
from NeARSlicerLib.study import StudyCase, StudyConfig, case_spacing, run_study

ROOT = Path(__file__).resolve().parents[1]


def _scores(masks, truths, grids, tol_mm):
    d = [dice(m, t) for m, t in zip(masks, truths)]
    s = [normalized_surface_dice(m, t, g.spacing, tol_mm) for m, t, g in zip(masks, truths, grids)]
    return {"dsc": round(100 * float(np.mean(d)), 2), "nsd": round(100 * float(np.mean(s)), 2),
            "dsc_per_case": [round(100 * x, 1) for x in d]}


def evaluate(cases, truths, prior, extent, preset, epochs_old, epochs_new, seed, tol_mm, targets="prior"):
    """Every row; NeAR rows on a per-case working spacing (longest side / ``extent`` voxels; None: 1 mm)."""
    grids = [c.grid for c in cases]
    rows = {"input": _scores([c.mask for c in cases], truths, grids, tol_mm)}
    best = None
    for name, fn in BASELINES.items():
        r = _scores([fn(c.mask, c.grid.spacing) for c in cases], truths, grids, tol_mm)
        if best is None or r["dsc"] > best[1]["dsc"]:
            best = (name, r)
    rows["best smoothing"] = {**best[1], "which": best[0]}
    t = time.perf_counter()
    base = StudyConfig(extent_voxels=extent)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        rows["prior (un-adapted)"] = _scores(
            [refine_mask(c.mask, c.grid, c.image, RefineOptions(prior=prior, preset=preset, seed=seed,
                                                                spacing_mm=case_spacing(base, c))).mask
             for c in cases], truths, grids, tol_mm)
        rows["prior (un-adapted)"]["seconds"] = round(time.perf_counter() - t, 1)
        for label, recipe, epochs in (("study old (fast)", "fast", epochs_old),
                                      ("study new (denoise)", "denoise", epochs_new)):
            t = time.perf_counter()
            cfg = StudyConfig.for_recipe(recipe, epochs=epochs, extent_voxels=extent, seed=seed,
                                         refine_preset=preset, margin_mm=4.0, denoise_targets=targets)
            res = run_study(cases, prior, cfg)
            rows[label] = {**_scores(res.masks, truths, grids, tol_mm), "epochs": res.epochs,
                           "seconds": round(time.perf_counter() - t, 1)}
    return rows


def synthetic(args):
    raw = anatomy_study_cases(args.seed, args.cases, classes=HELD_OUT_CLASSES)
    cases, truths = [], []
    for i, c in enumerate(raw):
        sp = float(c["spacing_mm"])
        noisy = corrupt(c["mask"], (sp,) * 3, "mixture", BENCH_SEED + i, image=c["image"])
        cases.append(StudyCase(f"{c['cls']}{i:02d}", noisy.astype(np.uint8), identity_grid(c["mask"].shape, sp),
                               c["image"].astype(np.float32)))
        truths.append(np.asarray(c["mask"], bool))
    rows = evaluate(cases, truths, args.prior, args.extent, args.preset, args.epochs_old, args.epochs_new, args.seed,
                    tol_mm=float(np.median([c["spacing_mm"] for c in raw])), targets=args.denoise_targets)
    return {"classes": sorted({c["cls"] for c in raw}), "cases": len(cases), "working_extent_voxels": args.extent,
            "rows": rows}


def real_ct(args):
    data = ROOT.parent / "shared" / "data" / "totalseg_example"
    bc = real_ct_cases(data / "ct.nii.gz", data / "seg.nii.gz", labels=args.labels, per_label=args.per_label,
                       family="mixture")
    cases = [StudyCase(b.name, b.annotation.astype(np.uint8), b.grid, b.image) for b in bc]
    rows = evaluate(cases, [b.truth for b in bc], args.prior, args.real_extent, args.preset, args.epochs_old,
                    args.epochs_new, args.seed, tol_mm=1.0, targets=args.denoise_targets)
    return {"labels": list(args.labels), "cases": len(cases), "working_spacing_mm": 1.0,
            "working_extent_voxels": args.real_extent, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior", default="adrenal")
    ap.add_argument("--cases", type=int, default=20)
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--extent", type=float, default=40.0,
                    help="synthetic study: each structure's longest side spans this many working voxels")
    ap.add_argument("--preset", default="fast", help="refine preset of the prior and denoise rows")
    ap.add_argument("--epochs-old", type=int, default=20)
    ap.add_argument("--epochs-new", type=int, default=6)
    ap.add_argument("--labels", type=int, nargs="*", default=[8, 9])
    ap.add_argument("--per-label", type=int, default=2)
    ap.add_argument("--real-extent", type=float, default=None,
                    help="real CT: each structure's longest side spans this many working voxels (default: 1 mm "
                    "cubes, the adrenal prior's scale; 40 for the general prior)")
    ap.add_argument("--key", help="result key (default: the prior's name)")
    ap.add_argument("--denoise-targets", default="prior", choices=["prior", "annotation"],
                    help="what the denoise recipe trains towards (StudyConfig.denoise_targets)")
    ap.add_argument("--skip-real", action="store_true")
    ap.add_argument("--skip-synthetic", action="store_true")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "study_helps.json"))
    args = ap.parse_args()
    out = Path(args.out)
    result = json.loads(out.read_text()) if out.is_file() else {}
    key = args.key or (Path(args.prior).stem if args.prior.endswith(".safetensors") else args.prior)
    if args.denoise_targets != "prior":
        key += f" (denoise towards the {args.denoise_targets})"
    entry = {"host": platform.node(), "preset": args.preset, "epochs_old": args.epochs_old,
             "epochs_new": args.epochs_new, "denoise_targets": args.denoise_targets}
    if not args.skip_synthetic:
        entry["synthetic_unseen_classes"] = synthetic(args)
        print(json.dumps(entry["synthetic_unseen_classes"]["rows"], indent=1))
        result[key] = entry  # written now: the real-CT part may be skipped or stopped
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(json.dumps(result, indent=1))
    if not args.skip_real:
        entry["real_ct"] = real_ct(args)
        print(json.dumps(entry["real_ct"]["rows"], indent=1))
    result[key] = entry
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))


if __name__ == "__main__":
    main()
