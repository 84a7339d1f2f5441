"""The image's trim after NeAR: what it gains on rough annotations and whether it touches correct ones.

    PYTHONPATH=NeARSlicer python benchmarks/image_trim.py   # -> benchmarks/results/image_trim.json

``refine_mask`` removes last the pieces of its output that the image shows as the structure's
surroundings (``image_trim.trim``; an image read as CT, a mask not painted on thick slices). It is the
last step, so the default's output with it is ``trim`` of the output without it: every case is refined
once with ``RefineOptions(trim_to_image=False)`` (the product's default otherwise: ``--prior auto``,
``default`` preset, the margin fit, the case's image), trimmed, and each case the trim moved is refined
again with the trim, which must give the same mask. DSC / NSD against the clean shape (tolerance: the
case's coarsest voxel side). The trim on any image, CT or not, is also counted (``any_*``): refine
trims CT only.

The cases are ``image_margin.py``'s two groups (see its docstring): **chosen on**, where the trim's
two thresholds (``RATIO``, ``EDGE_GAIN``) were picked as round values among 0.5 / 1 / 2 and 1.2 / 1.5 / 2
(the largest gain on the rough sets that moved no clean, near-correct or real-CT case), from the
outputs of the default without the trim; and **held out**, looked at only after that. Adding tissue the
image shows as the structure was tried on the first group and dropped: on the real CT's adrenal glands
(1 mm cubes) it added neighbouring soft tissue to 9 of 16 cases.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
OUT = HERE / "results" / "image_trim.json"


def summarise(rows: list) -> dict:
    sets: dict = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]
        moved = [r for r in rs if r["removed"]]
        entry = {"group": rs[0]["group"], "cases": len(rs), "read_as_ct": sum(r["modality"] == "CT" for r in rs),
                 "moved": len(moved),
                 "input_dsc": round(100 * float(np.mean([r["input_dsc"] for r in rs])), 2),
                 "default_without_dsc": round(100 * float(np.mean([r["without_dsc"] for r in rs])), 2),
                 "moved_worse": sum(1 for r in moved if r["with_dsc"] < r["without_dsc"] - 0.01),
                 "moved_better": sum(1 for r in moved if r["with_dsc"] > r["without_dsc"] + 0.01),
                 # the trim on any image, CT or not (refine trims CT only)
                 "any_moved": sum(1 for r in rs if r["any_removed"]),
                 "any_worse": sum(1 for r in rs if r["any_dsc"] < r["without_dsc"] - 0.01)}
        for key in ("dsc", "nsd"):
            gain = sum(r[f"with_{key}"] - r[f"without_{key}"] for r in moved) / len(rs)
            entry[f"default_gain_{key}"] = round(100 * gain, 2)
        sets[name] = entry
    return sets


def main() -> int:
    import warnings

    from image_margin import all_cases

    from NeARSlicerLib import image_trim
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.metrics import dice, normalized_surface_dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    warnings.simplefilter("ignore")
    rows = []
    t0 = time.perf_counter()
    for group, st, name, truth, ann, spacing, image, structure in all_cases():
        tol = max(spacing)
        grid = Grid(shape=ann.shape, spacing=tuple(spacing), origin=(0.0, 0.0, 0.0))
        res = refine_mask(ann.astype(np.uint8), grid, image, RefineOptions(structure=structure, trim_to_image=False))
        without = res.mask > 0
        anywhere, any_found = image_trim.trim(without, image, spacing)
        ct = res.info["modality"] == "CT" and res.info["painted_slices_mm"] is None
        row = {"group": group, "set": st, "case": name, "modality": res.info["modality"],
               "input_dsc": dice(ann, truth), "without_dsc": dice(without, truth),
               "without_nsd": normalized_surface_dice(without, truth, spacing, tol),
               "any_removed": any_found.removed, "any_dsc": dice(anywhere, truth),
               "removed": any_found.removed if ct else 0}
        if row["removed"]:
            again = refine_mask(ann.astype(np.uint8), grid, image, RefineOptions(structure=structure))
            assert np.array_equal(again.mask > 0, anywhere), f"{st} {name}: refine's trim is not trim()'s"
            assert again.info["image_trim"]["removed"] == any_found.removed
            row["with_action"] = again.info["action"]
            row["with_dsc"] = dice(anywhere, truth)
            row["with_nsd"] = normalized_surface_dice(anywhere, truth, spacing, tol)
            print(f"{len(rows):4d} {st:24s} {name:22s} removed {row['removed']:5d} without "
                  f"{row['without_dsc']:.3f} with {row['with_dsc']:.3f}", flush=True)
        else:
            row["with_dsc"], row["with_nsd"] = row["without_dsc"], row["without_nsd"]
        rows.append(row)
    from NeARSlicerLib import image_margin

    thresholds = {name: getattr(image_trim, name) for name in ("RATIO", "EDGE_GAIN", "SMOOTH_MM", "THICK_MM", "MAX_SHARE")}
    thresholds.update({name: getattr(image_margin, name) for name in ("CORE_MM", "RING_MM")})  # the image's references
    sets = summarise(rows)
    OUT.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "thresholds": thresholds,
                               "sets": sets, "rows": rows}, indent=1))
    for name, entry in sets.items():
        print(f"{name:32s} moved {entry['moved']:3d} of {entry['cases']:3d} ({entry['read_as_ct']} CT), gain "
              f"{entry['default_gain_dsc']:+.2f} DSC / {entry['default_gain_nsd']:+.2f} NSD, worse "
              f"{entry['moved_worse']}, any image: moved {entry['any_moved']} worse {entry['any_worse']}")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
