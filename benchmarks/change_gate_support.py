"""Should a large change open the gate when the CT barely supports it? (``confidence.CHANGE_SUPPORT``; not a test)

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/change_gate_support.py [--sets chosen|held-out|voxel|full|fresh] [--json OUT]

The do-no-harm gate applies every change of the prior when 1 - Dice(annotation, refined) exceeds
``confidence.GATE_CHANGE`` (0.15), whatever the CT says of that change. The candidate: a floor on
``image_evidence.support`` (the share of the change the CT agrees with, ``info["image_support"]``) below
which such a change does not open the gate by its size (its thick part is then weighed as for any change).
The floor's effect on a case is all or nothing (the support does not depend on it), so each case is
refined twice with the product's default (``--prior auto``, ``default`` preset, the case's image): with
the size rule ("open": the gate before the floor, ``CHANGE_SUPPORT`` 0) and without it (``apply_changes``
given ``gate_change`` infinity: "closed").
The output for a floor F is the closed one where a CT was read and its support is under F, else the
open one.

Case sets (none in any prior's training data; truth = the clean shape):

* ``chosen``: ``image_confidence.py``'s 210 (the example CT's structures clean, near-correct and with the
  error library's mixture; ALAN val in synthetic CTs; the example CT's adrenal glands on 1 mm cubes;
  the held-out shape classes). The shipped floor, 0.4, was chosen on these before the others were run.
* ``held-out``: the same sets' mixtures distorted by the held-out processes (``heldout_errors``).
* ``voxel``: the example CT's structures with the mixture's sizes in voxels (``bench --all-structures
  --error-units voxel``).
* ``full``: ``full_resolution_harm.py``'s 28 cases (the example CT at 0.7 mm: clean, coarse 3 mm masks,
  mixture).
* ``fresh``: cases none of the sets above holds, drawn after they were run: ALAN val 32-97 in phantom CTs
  (``alan_mixture`` took 0-31), the example CT's structures with two seeds of another base
  (``FRESH_SEED``), and 40 held-out-class shapes of another seed; all with the mixture.

Per case: input, open and closed DSC and NSD (at the case's coarsest voxel side), the support, the change.
Summaries for each floor of ``FLOORS``: mean DSC / NSD per set and the cases worse than input by > 1 DSC.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(HERE.parent / "NeARSlicer"))

import numpy as np  # noqa: E402

FLOORS = (0.0, 0.3, 0.4, 0.5, 0.55, 0.6, 0.7, 0.8)
FRESH_SEED = 70_000  # the fresh set's seeds (the other sets' are bench.BENCH_SEED's)


def image_confidence_cases(errors: str):
    from image_confidence import case_sets

    yield from case_sets(errors)


def full_resolution_cases(tmp: Path):
    from bench_full_resolution import LABELS, write_scan
    from full_resolution_harm import kind_of, scan_cases
    from NeARSlicerLib.bench import bench_box
    from NeARSlicerLib.refine import RefineOptions

    for truth in ("smooth", "nearest"):
        write_scan(tmp / truth, 0.7, LABELS, truth)
    for c in scan_cases(tmp / "smooth", tmp / "nearest", 2):
        lo, hi = bench_box(c, [RefineOptions()])  # what refine reads: results on it are the whole scan's
        b = c.on_box(lo, hi)
        yield f"full_{kind_of(c.name)}", c.name, b.truth, b.annotation, b.grid, b.image, c.structure, None, c.scan


def voxel_cases():
    from NeARSlicerLib.bench import real_ct_structures

    ct = HERE.parent.parent / "shared" / "data" / "totalseg_example"
    for c in real_ct_structures(ct / "ct.nii.gz", ct / "seg.nii.gz", error_units="voxel"):
        yield "ct_voxel", c.name, c.truth, c.annotation, c.grid, c.image, c.structure, None, c.scan


def fresh_cases():
    from NeARSlicerLib.bench import alan_cases, real_ct_structures, unseen_class_cases

    data = HERE.parent.parent / "shared" / "data"
    val = np.load(data / "alan64" / "alan64_trainval.npz")["val_shapes"][32:].astype(bool)
    for c in alan_cases(val, appearance=True, family="mixture"):
        yield "alan_fresh", f"val{32 + int(c.name[3:]):03d}", c.truth, c.annotation, c.grid, c.image, \
            "adrenal gland", None, None
    ct = data / "totalseg_example"
    for c in real_ct_structures(ct / "ct.nii.gz", ct / "seg.nii.gz", per_label=2, seed=FRESH_SEED):
        # named _f (fresh) for the d of the bench's own seeds
        yield "ct_fresh", c.name.replace("_d", "_f"), c.truth, c.annotation, c.grid, c.image, c.structure, \
            None, c.scan
    for c in unseen_class_cases(40, seed=FRESH_SEED):
        yield "unseen_fresh", c.name, c.truth, c.annotation, c.grid, c.image, None, None, None


def refine_twice(annotation, grid, image, structure, voxel, scan=None) -> tuple:
    """(open result, closed result or None where a floor cannot matter)."""
    from NeARSlicerLib import confidence
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    options = RefineOptions(structure=structure, image_voxel_mm=voxel)
    ann = np.asarray(annotation, np.uint8)
    floor = confidence.CHANGE_SUPPORT
    confidence.CHANGE_SUPPORT = 0.0  # the gate as before the floor: opened by the size alone
    try:
        opened = refine_mask(ann, grid, image, options, scan=scan)
    finally:
        confidence.CHANGE_SUPPORT = floor
    info = opened.info
    change = (info.get("signals") or {}).get("change")
    if info.get("image_support") is None or info.get("modality") != "CT" or info.get("painted_slices_mm") \
            or change is None or change <= 0.1:
        return opened, None  # no CT read (or a painting, which opens the gate itself), or far below the size

    shipped = confidence.apply_changes

    def size_rule_off(*args, **kwargs):
        kwargs["gate_change"] = float("inf")
        return shipped(*args, **kwargs)

    confidence.apply_changes = size_rule_off  # refine calls it through the module
    try:
        return opened, refine_mask(ann, grid, image, options, scan=scan)
    finally:
        confidence.apply_changes = shipped


def summarise(rows: list) -> dict:
    out = {}
    for name in list(dict.fromkeys(r["set"] for r in rows)) + ["all"]:
        rs = [r for r in rows if name in ("all", r["set"])]
        entry = {"cases": len(rs), "input": [round(100 * float(np.mean([r["input_dsc"] for r in rs])), 2),
                                              round(100 * float(np.mean([r["input_nsd"] for r in rs])), 2)]}
        for floor in FLOORS:
            pick = ["closed" if r["support"] is not None and r["support"] < floor else "open" for r in rs]
            dsc = [r[f"{p}_dsc"] for r, p in zip(rs, pick)]
            nsd = [r[f"{p}_nsd"] for r, p in zip(rs, pick)]
            entry[f"floor {floor}"] = {
                "dsc": round(100 * float(np.mean(dsc)), 2), "nsd": round(100 * float(np.mean(nsd)), 2),
                "worse_by_1_dsc": [r["case"] for r, d in zip(rs, dsc) if d < r["input_dsc"] - 0.01],
                "closed": sum(p == "closed" and r["closed_dsc"] != r["open_dsc"] for r, p in zip(rs, pick))}
        out[name] = entry
    return out


def main() -> int:
    from NeARSlicerLib.metrics import dice, normalized_surface_dice

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sets", default="chosen", choices=["chosen", "held-out", "voxel", "full", "fresh"])
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()
    t0 = time.perf_counter()
    rows = []
    with tempfile.TemporaryDirectory(prefix="change-gate-support-") as tmp:
        if args.sets == "full":
            cases = full_resolution_cases(Path(tmp))
        elif args.sets == "voxel":
            cases = voxel_cases()
        elif args.sets == "fresh":
            cases = fresh_cases()
        else:
            cases = (c + (None,) for c in image_confidence_cases("mixture" if args.sets == "chosen"
                                                                  else "heldout_mixture"))
        for st, name, truth, annotation, grid, image, structure, voxel, scan in cases:
            truth = np.asarray(truth, bool)
            tol = float(max(grid.spacing))
            opened, closed = refine_twice(annotation, grid, image, structure, voxel, scan)
            closed = closed or opened
            score = {k: (dice(m, truth), normalized_surface_dice(m > 0, truth, grid.spacing, tol))
                     for k, m in (("input", np.asarray(annotation, bool)), ("open", opened.mask),
                                  ("closed", closed.mask))}
            row = {"set": st, "case": name, "prior": opened.info.get("prior_name"),
                   "support": opened.info.get("image_support"),
                   "change": (opened.info.get("signals") or {}).get("change"),
                   "open_action": opened.info.get("action"), "closed_action": closed.info.get("action")}
            for k, (d, n) in score.items():
                row[f"{k}_dsc"], row[f"{k}_nsd"] = d, n
            rows.append(row)
            print(f"{len(rows):4d} {st:13s} {name:18s} support {row['support']} change {row['change']} "
                  f"in {row['input_dsc']:.3f} open {row['open_dsc']:.3f} closed {row['closed_dsc']:.3f}", flush=True)
    import NeARSlicerLib

    result = {"sets": args.sets, "engine": str(Path(NeARSlicerLib.__file__).parent),
              "seconds": round(time.perf_counter() - t0, 1), "summary": summarise(rows), "rows": rows}
    print(json.dumps(result["summary"], indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
