"""A/B of the margin fit's image-resolution guard (``RefineOptions.image_voxel_mm``) on the real CT.

The real CT's adrenal glands (3 mm) on 1 mm cubes, as Slicer hands them to the engine for a
segmentation oversampled on that CT: the CT resampled onto the segment's grid. Each case is refined
with the CT by the shipped default twice, told the CT's own voxel (3 mm, what Slicer now passes) and
not told (before), for the clean glands, two of the error library's families (thick slices, the
mixture) and every held-out process (``heldout_errors``). DSC / NSD 1 mm in %.

    python benchmarks/image_voxel_guard.py [--per-label 8] [--json benchmarks/results/image_voxel_guard.json]
"""
from __future__ import annotations

import argparse
import json
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np

from NeARSlicerLib.bench import real_ct_cases
from NeARSlicerLib.heldout_errors import HELD_OUT_ERRORS, HELD_OUT_MIXTURE
from NeARSlicerLib.metrics import dice, normalized_surface_dice
from NeARSlicerLib.output_safety import atomic_write_text
from NeARSlicerLib.refine import RefineOptions, refine_mask

ROOT = Path(__file__).resolve().parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "totalseg_example"
FAMILIES = ("clean", "thick_slice", "mixture", *HELD_OUT_ERRORS, HELD_OUT_MIXTURE)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-label", type=int, default=8)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "image_voxel_guard.json")
    args = p.parse_args()
    ct, seg = REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz"
    base = RefineOptions(structure="adrenal gland")
    out: dict = {"cases": "real CT labels 8 and 9 on 1 mm cubes, CT voxel 3 mm", "families": {}}
    for family in FAMILIES:
        cases = real_ct_cases(ct, seg, (8, 9), per_label=1 if family == "clean" else args.per_label,
                              family="shift" if family == "clean" else family)
        rows = []
        for case in cases:
            annotation = case.truth if family == "clean" else case.annotation
            row = {"case": case.name, "input": [dice(annotation, case.truth),
                                                normalized_surface_dice(annotation, case.truth, (1.0,) * 3, 1.0)]}
            for name, opts in (("told", replace(base, image_voxel_mm=case.image_voxel_mm)), ("not told", base)):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = refine_mask(annotation.astype(np.uint8), case.grid, case.image, options=opts)
                row[name] = [dice(res.mask > 0, case.truth),
                             normalized_surface_dice(res.mask > 0, case.truth, (1.0,) * 3, 1.0)]
            rows.append(row)
        mean = {k: [round(100 * float(np.mean([r[k][m] for r in rows])), 2) for m in (0, 1)]
                for k in ("input", "told", "not told")}
        worse = {k: sum(r[k][0] < r["input"][0] - 0.01 for r in rows) for k in ("told", "not told")}
        out["families"][family] = {"mean_dsc_nsd": mean, "worse_by_1_dsc": worse, "per_case": rows}
        print(f"{family}: input {mean['input']}, told {mean['told']} ({worse['told']} worse), "
              f"not told {mean['not told']} ({worse['not told']} worse)", flush=True)
    atomic_write_text(str(args.json), json.dumps(out, indent=1))
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
