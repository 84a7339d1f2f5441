"""Does the CT's support mean anything on thick slices? (not a test; README "A CT of 6 mm slices")

    PYTHONPATH=NeARSlicer python benchmarks/thick_slice_gate.py STEP N OUT.json [START]

ALAN val glands START .. START+N-1 in their phantom CTs (``phantom.ct_phantom``, 1 mm), made into scans of
STEP-mm slices: the CT averaged over each slab of STEP 1 mm slices along k (a thick reconstruction), the
truth the slab's majority. Each gland is refined clean and with the error library's mixture (drawn on the
thick grid, seed ``BENCH_SEED + i``), with the CT, ``--prior auto``, ``default``, twice:

* ``open``: the shipped gate, which a CT supporting at least ``confidence.OPEN_SUPPORT`` of the prior's
  change opens;
* ``no_open``: that route out of reach (``OPEN_SUPPORT`` 2), everything else the same. This is what
  turning the CT's opening off on thick slices would give.

DSC against the truth, per case and summarised (means in %, cases worse than their input by > 1 DSC).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

ALAN = Path(__file__).resolve().parents[2] / "shared" / "data" / "alan64" / "alan64_trainval.npz"


def thick_case(clean: np.ndarray, seed: int, step: int):
    """(truth, CT, grid) of a 1 mm gland and its phantom CT kept on ``step``-mm slices."""
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.phantom import ct_phantom

    ct = ct_phantom(clean, seed=seed)
    k = clean.shape[0] // step * step
    image = ct[:k].reshape(k // step, step, *ct.shape[1:]).mean(1).astype(np.float32)
    truth = clean[:k].reshape(k // step, step, *clean.shape[1:]).mean(1) >= 0.5
    return truth, image, Grid(truth.shape, (1.0, 1.0, float(step)), (0.0, 0.0, 0.0), (1, 0, 0, 0, 1, 0, 0, 0, 1))


def main() -> None:
    from NeARSlicerLib import confidence
    from NeARSlicerLib.bench import BENCH_SEED, corrupt_case
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.output_safety import atomic_write_text
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    step, n, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    start = int(sys.argv[4]) if len(sys.argv) > 4 else 0
    shapes = np.load(ALAN)["val_shapes"][start:start + n]
    shipped = confidence.OPEN_SUPPORT
    rows, t0 = [], time.perf_counter()
    for i, clean in enumerate(shapes, start):
        truth, image, grid = thick_case(np.asarray(clean, bool), BENCH_SEED + i, step)
        if truth.sum() < 10:
            continue
        noisy = corrupt_case(truth, grid.spacing, "mixture", BENCH_SEED + i, image=image) > 0
        for kind, annotation in (("clean", truth), ("mixture", noisy)):
            row = {"case": f"val{i:03d}", "kind": kind, "voxels": int(truth.sum()),
                   "input": float(dice(annotation, truth))}
            for variant, support in (("open", shipped), ("no_open", 2.0)):
                confidence.OPEN_SUPPORT = support
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    result = refine_mask(annotation.astype(np.uint8), grid, image,
                                         RefineOptions(structure="adrenal gland"))
                row[variant] = float(dice(result.mask > 0, truth))
                if variant == "open":
                    row.update(support=result.info.get("image_support"),
                               opened=result.info.get("gate_opened_by_image"), action=result.info["action"])
            confidence.OPEN_SUPPORT = shipped
            rows.append(row)
            print(row, flush=True)
    summary = {}
    for kind in ("clean", "mixture"):
        rs = [r for r in rows if r["kind"] == kind]
        summary[kind] = {m: round(100 * float(np.mean([r[m] for r in rs])), 2) for m in ("input", "open", "no_open")}
        for m in ("open", "no_open"):
            summary[kind][f"worse_{m}"] = sum(r[m] < r["input"] - 0.01 for r in rs)
        summary[kind].update(opened=sum(bool(r["opened"]) for r in rs), n=len(rs))
    print(json.dumps(summary, indent=1))
    atomic_write_text(out, json.dumps({"step_mm": step, "cases": f"ALAN val {start}-{start + n - 1}",
                                     "seconds": round(time.perf_counter() - t0, 1), "summary": summary,
                                     "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
