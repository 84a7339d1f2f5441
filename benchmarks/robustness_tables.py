"""Re-score the robustness study's saved predictions and print the README tables.

``robustness.py`` keeps every predicted mask (``<work>/pred_<tag>.npz``); this script rebuilds each
case's truth and input with the same seeds and scores every method with both NSD definitions
(area-weighted surface elements, as DeepMind's surface-distance and the NeAR paper; and the
older voxel count), 1 mm tolerance. Writes ``benchmarks/results/robustness_tables.json``.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from NeARSlicerLib.annotation_errors import FAMILIES
from NeARSlicerLib.bench import BenchCase, alan_cases, identity_grid, real_ct_cases
from NeARSlicerLib.metrics import dice, normalized_surface_dice, normalized_surface_dice_voxels

ROOT = Path(__file__).resolve().parents[1]
ALAN = ROOT.parent / "shared" / "data" / "alan64" / "alan64_trainval.npz"
REAL_CT = ROOT.parent / "shared" / "data" / "totalseg_example"


def cases_for(tag: str, val: np.ndarray) -> list[BenchCase]:
    if tag in FAMILIES or tag == "mixture":
        return alan_cases(val, family=tag)
    if tag == "sa_mixture":
        return alan_cases(val, appearance=True, family="mixture")
    if tag == "clean":
        return [BenchCase(f"val{i:03d}", v.astype(bool), v.astype(bool), identity_grid(v.shape)) for i, v in enumerate(val)]
    if tag == "realct_thick":
        return real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9), per_label=8, family="thick_slice")
    raise ValueError(tag)


def score(work: Path, tag: str, val: np.ndarray) -> dict:
    preds = np.load(work / f"pred_{tag}.npz")
    cases = cases_for(tag, val)
    methods = sorted({k.split("|")[0] for k in preds.files})
    rows: dict[str, dict] = {}
    for name in ["input"] + methods:
        d, a, v = [], [], []
        for c in cases:
            if name == "input":
                m = c.annotation
            else:
                m = np.unpackbits(preds[f"{name}|{c.name}"])[: c.truth.size].reshape(c.truth.shape).astype(bool)
            d.append(dice(m, c.truth))
            a.append(normalized_surface_dice(m, c.truth, c.grid.spacing, 1.0))
            v.append(normalized_surface_dice_voxels(m, c.truth, c.grid.spacing, 1.0))
        rows[name] = {"dsc": 100 * float(np.mean(d)), "nsd": 100 * float(np.mean(a)),
                      "nsd_voxels": 100 * float(np.mean(v)), "cases": len(cases)}
    return rows


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--work", default=str(ROOT / "benchmarks" / "work"))
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "robustness_tables.json"))
    args = ap.parse_args()
    work = Path(args.work)
    val = np.load(ALAN)["val_shapes"][: args.cases]
    out = {}
    for tag in list(FAMILIES) + ["mixture", "clean", "sa_mixture", "realct_thick"]:
        if (work / f"pred_{tag}.npz").is_file():
            out[tag] = score(work, tag, val)
            print(f"\n{tag}")
            for name, r in out[tag].items():
                print(f"  {name:28s} DSC {r['dsc']:6.2f}  NSD {r['nsd']:6.2f}  (voxel NSD {r['nsd_voxels']:6.2f})")
    Path(args.out).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
