"""What reading a label table changes for a user: the real CT's adrenal glands refined from the
TotalSegmentator multi-label file itself (``nearslicer refine --mask seg.nii.gz --label 9 --image
ct.nii.gz``), with the structure ``--prior auto`` finds now (the table's name: the adrenal prior) and
before (no name in a multi-label file: the general prior). Each gland on the CT's own 3 mm grid,
distorted by the error library's mixture and by the held-out mixture, ``--per-label`` seeds each;
the CT given; ``default`` preset. DSC / NSD 3 mm in %.

    python benchmarks/label_table_prior.py [--per-label 3] [--json benchmarks/results/label_table_prior.json]
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from NeARSlicerLib.batch import structure_of
from NeARSlicerLib.bench import real_ct_structures
from NeARSlicerLib.heldout_errors import HELD_OUT_MIXTURE
from NeARSlicerLib.io import read_mask
from NeARSlicerLib.metrics import dice, normalized_surface_dice
from NeARSlicerLib.output_safety import atomic_write_text
from NeARSlicerLib.refine import RefineOptions, refine_mask

ROOT = Path(__file__).resolve().parents[1]
REAL_CT = ROOT.parent / "shared" / "data" / "totalseg_example"
FAMILIES = ("mixture", HELD_OUT_MIXTURE)


def _score(mask: np.ndarray, truth: np.ndarray, spacing) -> tuple[float, float]:
    return (100 * dice(mask, truth), 100 * normalized_surface_dice(mask, truth, spacing, 3.0))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--per-label", type=int, default=3)
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "label_table_prior.json")
    args = p.parse_args()
    ct, seg = REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz"
    structures = {}
    for label in (8, 9):
        info = read_mask(str(seg), label=label)[2]
        unnamed = {k: v for k, v in info.items() if k not in ("label_name", "label_names")}
        structures[label] = {"now": structure_of(str(seg), None, info), "before": structure_of(str(seg), None, unnamed)}
    out: dict = {"cases": "real CT labels 8 and 9 at 3 mm, refined from the multi-label file", "structures":
                 {str(k): v for k, v in structures.items()}, "families": {}}
    for family in FAMILIES:
        # only the adrenal glands: no other label has a billion voxels
        cases = real_ct_structures(ct, seg, min_voxels=10 ** 9, per_label=args.per_label, family=family)
        rows: dict = {"input": [], "before": [], "now": []}
        priors: dict = {"before": set(), "now": set()}
        for case in cases:
            label = int(case.name.split("_")[0][len("label"):])
            rows["input"].append(_score(case.annotation, case.truth, case.grid.spacing))
            for when in ("before", "now"):
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = refine_mask(case.annotation.astype(np.uint8), case.grid, case.image,
                                      RefineOptions(structure=structures[label][when]))
                rows[when].append(_score(res.mask, case.truth, case.grid.spacing))
                priors[when].add(res.info["prior"])
            print(case.name, family, {k: [round(x, 2) for x in v[-1]] for k, v in rows.items()}, flush=True)
        out["families"][family] = {
            "cases": [c.name for c in cases],
            "mean": {k: [round(float(np.mean([r[i] for r in v])), 2) for i in (0, 1)] for k, v in rows.items()},
            "per_case": {k: [[round(x, 2) for x in r] for r in v] for k, v in rows.items()},
            "priors": {k: sorted(v) for k, v in priors.items()},
        }
        print(family, out["families"][family]["mean"], out["families"][family]["priors"], flush=True)
    atomic_write_text(str(args.json), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
