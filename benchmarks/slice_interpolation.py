"""Thick-slice painting with and without the painted slices interpolated before refinement (not a test).

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/slice_interpolation.py [--json OUT]

Sets (the robustness benchmark's cases, same seeds): ALAN val 0-15 with the error library's
``thick_slice`` family and its ``mixture`` (shape-only adrenal prior), the real CT's two adrenal glands
(labels 8, 9; 8 seeds each, 1 mm cubes) with ``thick_slice`` and ``mixture`` (shape-only ``adrenal_v2``
and the CT-reading ``adrenal_mr_v1``). Columns: the input, the best of the smoothing baselines per case
(hindsight), the interpolation alone (``slice_interpolation``), and each prior's default output with
``interpolate_slices`` off (the staircase as painted, as before 2026-11-28) and on. A case that
``confidence.painted_slices`` does not find painted on thick slices is refined identically both ways,
so it is scored once. DSC / NSD (1 mm) in %. Then generated anatomy shapes of every class
(``--only-anatomy`` recomputes just these): the interpolation alone against the input.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from robustness import ALAN, REAL_CT  # noqa: E402

from NeARSlicerLib.baselines import BASELINES  # noqa: E402
from NeARSlicerLib.bench import alan_cases, real_ct_cases  # noqa: E402
from NeARSlicerLib.confidence import painted_slices  # noqa: E402
from NeARSlicerLib.metrics import dice, normalized_surface_dice  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402
from NeARSlicerLib.prior import PRIOR_DIR  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402
from NeARSlicerLib.slice_interpolation import interpolate_painted_slices  # noqa: E402

S = (str(PRIOR_DIR / "adrenal_v2.safetensors"), False)
SA = (str(PRIOR_DIR / "adrenal_mr_v1.safetensors"), True)


def sets():
    val = np.load(ALAN)["val_shapes"][:16]
    real = (REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9))
    for family in ("thick_slice", "mixture"):
        yield f"ALAN val / {family}", alan_cases(val, family=family), {"S adrenal_v2": S}
        yield (f"real CT adrenals / {family}", real_ct_cases(*real, per_label=8, family=family),
               {"S adrenal_v2": S, "S+A adrenal_mr_v1": SA})


def anatomy_shapes_alone() -> dict:
    """Generated anatomy shapes of every class (80, seed 7, at their working spacing) painted with the
    ``thick_slice`` family: the input against the interpolation alone (no prior), per class, DSC %."""
    from collections import defaultdict

    from NeARSlicerLib.anatomy_shapes import CLASSES, anatomy_study_cases
    from NeARSlicerLib.annotation_errors import corrupt

    per: dict = defaultdict(list)
    for i, c in enumerate(anatomy_study_cases(7, 80, classes=CLASSES, grid=64, extent_voxels=(32, 48))):
        spacing, truth = (float(c["spacing_mm"]),) * 3, np.asarray(c["mask"], bool)
        noisy = corrupt(truth, spacing, "thick_slice", 900 + i)
        found = painted_slices(noisy, spacing)
        if found is not None:
            per[c["cls"]].append([100 * dice(noisy, truth),
                                  100 * dice(interpolate_painted_slices(noisy, spacing, found.axis), truth)])
    rows = [v for vs in per.values() for v in vs]
    return {"classes": {k: {"n": len(v), "input": round(float(np.mean([a for a, _ in v])), 2),
                            "interpolation alone": round(float(np.mean([b for _, b in v])), 2)}
                        for k, v in sorted(per.items())},
            "found painted": len(rows), "of": 80,
            "input": round(float(np.mean([a for a, _ in rows])), 2),
            "interpolation alone": round(float(np.mean([b for _, b in rows])), 2),
            "better by > 1 DSC": sum(b > a + 1 for a, b in rows), "worse by > 1 DSC": sum(b < a - 1 for a, b in rows)}


def score(mask: np.ndarray, case) -> list[float]:
    return [100 * dice(mask, case.truth), 100 * normalized_surface_dice(mask, case.truth, case.grid.spacing, 1.0)]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", default=str(HERE / "results" / "slice_interpolation.json"))
    ap.add_argument("--only-anatomy", action="store_true",
                    help="only (re)compute the anatomy shapes' entry, keeping the rest of --json")
    args = ap.parse_args()
    torch.set_num_threads(2)
    out: dict = {}
    key = "anatomy shapes / thick_slice (interpolation alone, DSC)"
    if args.only_anatomy:
        out = json.loads(Path(args.json).read_text())
        out[key] = anatomy_shapes_alone()
        atomic_write_text(Path(args.json), json.dumps(out, indent=1))
        print(key, json.dumps(out[key]))
        return
    for key, cases, priors in sets():
        rows = []
        for case in cases:
            found = painted_slices(case.annotation, case.grid.spacing)
            row = {"case": case.name, "painted_slices_mm": None if found is None else round(found.thickness_mm, 1),
                   "input": score(case.annotation, case),
                   "best smoothing": max((score(fn(case.annotation, case.grid.spacing), case)
                                          for fn in BASELINES.values()), key=lambda v: v[0])}
            if found is not None:
                row["interpolation alone"] = score(interpolate_painted_slices(
                    case.annotation, case.grid.spacing, found.axis), case)
            for name, (prior, with_image) in priors.items():
                for interpolate in ((False, True) if found is not None else (False,)):
                    res = refine_mask(case.annotation.astype(np.uint8), case.grid,
                                      case.image if with_image else None,
                                      RefineOptions(prior=prior, appearance=with_image, seed=0,
                                                    interpolate_slices=interpolate))
                    row[f"{name}{', interpolated' if interpolate else ''}"] = score(res.mask > 0, case)
                if found is None:
                    row[f"{name}, interpolated"] = row[name]
            rows.append(row)
            print(key, case.name, {k: round(v[0], 1) for k, v in row.items() if isinstance(v, list)}, flush=True)
        columns = [k for k in rows[0] if isinstance(rows[0][k], list)]
        summary = {c: [round(float(np.mean([r[c][m] for r in rows if c in r])), 2) for m in (0, 1)]
                   for c in columns}
        summary["cases"] = len(rows)
        summary["painted on thick slices"] = sum(r["painted_slices_mm"] is not None for r in rows)
        out[key] = {"summary": summary, "rows": rows}
        print(key, json.dumps(summary), flush=True)
        atomic_write_text(Path(args.json), json.dumps(out, indent=1))
    out[key] = anatomy_shapes_alone()
    atomic_write_text(Path(args.json), json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
