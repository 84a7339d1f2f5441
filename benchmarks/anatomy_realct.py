"""Every labelled structure of the real example CT (>= 300 voxels), distorted at its native 3 mm grid by
the error library's mixture (2 seeds), refined on that grid by the general and the adrenal priors.

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/anatomy_realct.py --preset fast \
        --prior anatomy-s=PATH --prior anatomy-sa=PATH --prior adrenal-s=adrenal-s

Results: ``benchmarks/results/anatomy_realct.json`` (per structure and mean; DSC and NSD at 3 mm).
"""
from __future__ import annotations

import argparse
import json
import time
import warnings
from pathlib import Path

import numpy as np

from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.baselines import BASELINES
from NeARSlicerLib.io import read_image, read_mask
from NeARSlicerLib.metrics import dice, normalized_surface_dice
from NeARSlicerLib.output_safety import atomic_write_text
from NeARSlicerLib.refine import RefineOptions, refine_mask

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT.parent / "shared" / "data" / "totalseg_example"


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="fast")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--prior", action="append", default=[], help="NAME=PRIOR (a registry name or a path); NAME "
                    "ending in -sa reads the CT")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "anatomy_realct.json"))
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    ct, _ = read_image(str(DATA / "ct.nii.gz"))
    import SimpleITK as sitk

    labels_img = sitk.ReadImage(str(DATA / "seg.nii.gz"))
    labels = sitk.GetArrayFromImage(labels_img)
    values, counts = np.unique(labels[labels > 0], return_counts=True)
    methods = dict(p.split("=", 1) for p in args.prior)
    rows = []
    for value in values[counts >= 300]:
        truth, grid, _ = read_mask(str(DATA / "seg.nii.gz"), label=int(value))
        for seed in range(args.seeds):
            rough = corrupt(truth, grid.spacing, "mixture", 1000 * int(value) + seed)
            row = {"label": int(value), "seed": seed, "voxels": int(truth.sum())}

            def score(name, m, secs=0.0):
                row[name] = {"dsc": dice(m, truth), "nsd": normalized_surface_dice(m, truth, grid.spacing, 3.0),
                             "seconds": secs}

            score("input", rough)
            for bname, fn in BASELINES.items():
                score(bname, fn(rough, grid.spacing))
            for name, prior in methods.items():
                t0 = time.perf_counter()
                res = refine_mask(rough.astype(np.uint8), grid, ct if name.endswith("-sa") else None,
                                  RefineOptions(prior=prior, preset=args.preset, appearance=name.endswith("-sa")))
                score(name, res.mask > 0, time.perf_counter() - t0)
            rows.append(row)
            print(json.dumps({k: (round(v["dsc"] * 100, 1) if isinstance(v, dict) else v) for k, v in row.items()
                              if not (isinstance(v, dict) and k in BASELINES)}), flush=True)
    names = ["input", *BASELINES, *methods]
    mean = {n: {"dsc": 100 * float(np.mean([r[n]["dsc"] for r in rows])),
                "nsd": 100 * float(np.mean([r[n]["nsd"] for r in rows]))} for n in names}
    best = max(BASELINES, key=lambda n: mean[n]["dsc"])
    mean["best smoothing"] = {**mean[best], "which": best}
    per_structure = {}
    for n in names:
        for r in rows:
            per_structure.setdefault(str(r["label"]), {}).setdefault(n, []).append(100 * r[n]["dsc"])
    worse = {n: sorted(lab for lab, d in per_structure.items()
                       if np.mean(d[n]) < np.mean(d["input"]) - 1.0) for n in methods}
    atomic_write_text(Path(args.out), json.dumps({"preset": args.preset, "seeds": args.seeds, "mean": mean,
                                                  "structures_worse_than_input_by_1_dsc": worse,
                                                  "rows": rows}, indent=1))
    print(json.dumps({n: (round(v["dsc"], 1), round(v["nsd"], 1)) for n, v in mean.items()}))
    print("worse by > 1 DSC:", worse)


if __name__ == "__main__":
    main()
