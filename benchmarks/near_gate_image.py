"""The near gate with an image: `refine`'s default with the adrenal S+A prior and the case's CT, the gate
of before 2026-12-06 (every change once the thick ones pass 2 %) against today's (``confidence.NEAR_MM``),
on the same cases. The image's own steps (margin fit, check, trim, the CT opening the gate) run in both;
only ``confidence.apply_changes``'s ``near_mm`` differs.

Cases: ALAN val 0-15 in phantom CTs with the error library's mixture (``bench.alan_cases``), and the
example CT's two adrenal glands on 1 mm cubes, mixture, 8 seeds each (``bench.real_ct_cases``).
DSC / NSD (1 mm) in %; results -> ``benchmarks/results/near_gate_image.json``.

    PYTHONPATH=NeARSlicer python benchmarks/near_gate_image.py
"""
from __future__ import annotations

import functools
import json
import sys
import warnings
from pathlib import Path
from unittest import mock

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))

from NeARSlicerLib import confidence  # noqa: E402
from NeARSlicerLib.bench import alan_cases, real_ct_cases  # noqa: E402
from NeARSlicerLib.metrics import dice, normalized_surface_dice  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402

SHARED = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "near_gate_image.json"


def main() -> None:
    warnings.simplefilter("ignore")
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"][:16]
    ct = SHARED / "totalseg_example"
    sets = {"ALAN val 0-15 in phantom CTs, mixture": alan_cases(val, appearance=True, family="mixture"),
            "example CT adrenal glands, 1 mm cubes, mixture": real_ct_cases(ct / "ct.nii.gz", ct / "seg.nii.gz",
                                                                            (8, 9), per_label=8, family="mixture")}
    gates = {"before (every change)": None, "now (within 3 mm)": confidence.NEAR_MM}
    table = {}
    for name, cases in sets.items():
        rows = []
        for c in cases:
            ann = c.annotation > 0
            row = {"case": c.name, "input": (dice(ann, c.truth), normalized_surface_dice(ann, c.truth, c.grid.spacing, 1.0))}
            for gate, near in gates.items():
                patched = functools.partial(confidence.apply_changes, near_mm=near)
                with mock.patch.object(confidence, "apply_changes", patched):
                    out = refine_mask(ann, c.grid, c.image, RefineOptions(structure="adrenal gland",
                                                                          image_voxel_mm=c.image_voxel_mm)).mask > 0
                row[gate] = (dice(out, c.truth), normalized_surface_dice(out, c.truth, c.grid.spacing, 1.0))
            rows.append(row)
        table[name] = {"cases": len(rows), **{
            col: {"dsc": round(100 * float(np.mean([r[col][0] for r in rows])), 2),
                  "nsd": round(100 * float(np.mean([r[col][1] for r in rows])), 2),
                  "worse_by_1_dsc": sum(r[col][0] < r["input"][0] - 0.01 for r in rows)}
            for col in ("input", *gates)},
            "cases_that_differ": sum(abs(r[list(gates)[0]][0] - r[list(gates)[1]][0]) > 1e-9 for r in rows)}
        print(name, table[name], flush=True)
    OUT.write_text(json.dumps({"script": "benchmarks/near_gate_image.py", "table": table}, indent=1) + "\n")


if __name__ == "__main__":
    main()
