"""The CT opens the do-no-harm gate: what it gains on rough annotations and whether it touches correct ones.

    PYTHONPATH=NeARSlicer python benchmarks/image_gate.py [OUT.json]   # -> benchmarks/results/image_gate.json

The gated default applies only the thick part of a thin change (``confidence.apply_changes``): on its
shape alone a thin repair (an oversmoothed gland's lost rim, a thin leak) cannot be told from the
prior's own boundary error. Since 2026-11-29 an image read as CT that supports at least
``confidence.OPEN_SUPPORT`` (0.8) of the prior's whole change (``image_evidence.support``) opens the
gate (``info["gate_opened_by_image"]``); the image check still undoes what it contradicts. Every case
is refined with the product's default (``--prior auto``, ``default`` preset, the case's image); a case
whose gate the image opened is refined again with the threshold out of reach (the gate as before),
every other case's output is the same either way. DSC / NSD against the clean shape (tolerance: the
case's coarsest voxel side).

Cases: **chosen on**, ``image_confidence.py``'s 210 (OPEN_SUPPORT is the lowest of 0.6 / 0.7 / 0.75 /
0.8 / 0.85 / 0.9 at which, scored from ``results/image_confidence.json``'s rows, opening the gate harmed
no clean or near-correct case by more than 1 DSC); **held out**, looked at only after that: the margin
benchmark's other sets (``image_margin.py``) and ALAN val 32-97 with the mixture in their phantom CTs
(``bench --appearance --errors mixture``'s cases).
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "image_gate.json"
CHOSEN_ON = ("ct_mixture", "ct_clean", "ct_near", "alan_mixture", "alan_clean", "ct_adrenals", "unseen")


def cases():
    """(group, set, name, truth, annotation (bool), spacing, image, structure)."""
    from image_margin import all_cases

    from NeARSlicerLib.bench import alan_cases

    for _, st, name, truth, annotation, spacing, image, structure in all_cases():
        yield ("chosen on" if st in CHOSEN_ON else "held out"), st, name, truth, annotation, spacing, image, structure
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"].astype(bool)
    for c in alan_cases(val, appearance=True, family="mixture")[32:]:
        yield "held out", "ho_alan_mixture_32_97", c.name, c.truth, c.annotation, c.grid.spacing, c.image, "adrenal gland"


def summarise(rows: list) -> dict:
    sets: dict = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]
        opened = [r for r in rs if r["opened"]]
        entry = {"group": rs[0]["group"], "cases": len(rs), "opened": len(opened),
                 "input_dsc": round(100 * float(np.mean([r["input_dsc"] for r in rs])), 2),
                 "closed_dsc": round(100 * float(np.mean([r["closed_dsc"] for r in rs])), 2),
                 "default_dsc": round(100 * float(np.mean([r["open_dsc"] for r in rs])), 2),
                 "opened_worse_by_1": sum(1 for r in opened if r["open_dsc"] < r["closed_dsc"] - 0.01),
                 "opened_worse": sum(1 for r in opened if r["open_dsc"] < r["closed_dsc"] - 1e-4),
                 "opened_better_by_1": sum(1 for r in opened if r["open_dsc"] > r["closed_dsc"] + 0.01),
                 "default_worse_than_input_by_1": sum(1 for r in rs if r["open_dsc"] < r["input_dsc"] - 0.01)}
        for key in ("dsc", "nsd"):
            entry[f"gain_{key}"] = round(100 * sum(r[f"open_{key}"] - r[f"closed_{key}"] for r in opened) / len(rs), 2)
        sets[name] = entry
    return sets


def main() -> int:
    import warnings

    import NeARSlicerLib.confidence as confidence
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.metrics import dice, normalized_surface_dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    rows = []
    t0 = time.perf_counter()
    threshold = confidence.OPEN_SUPPORT
    for group, st, name, truth, annotation, spacing, image, structure in cases():
        grid = Grid(tuple(truth.shape), tuple(float(s) for s in spacing), (0.0, 0.0, 0.0))
        tol = float(max(spacing))
        options = RefineOptions(structure=structure)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            res = refine_mask(annotation.astype(np.uint8), grid, image, options)
            opened = bool(res.info.get("gate_opened_by_image"))
            closed = res
            if opened:
                confidence.OPEN_SUPPORT = 2.0  # out of reach: the gate as before
                try:
                    closed = refine_mask(annotation.astype(np.uint8), grid, image, options)
                finally:
                    confidence.OPEN_SUPPORT = threshold
        score = {}
        for key, out in (("input", annotation), ("open", res.mask > 0), ("closed", closed.mask > 0)):
            score[f"{key}_dsc"] = dice(out, truth)
            score[f"{key}_nsd"] = normalized_surface_dice(out, truth, spacing, tol)
        rows.append({"group": group, "set": st, "case": name, "modality": res.info.get("modality"),
                     "image_support": res.info.get("image_support"), "opened": opened,
                     "action": res.info.get("action"), "closed_action": closed.info.get("action"), **score})
        if opened:
            print(f"{len(rows):4d} {st:24s} {name:22s} support {res.info.get('image_support')} closed "
                  f"{score['closed_dsc']:.3f} opened {score['open_dsc']:.3f}", flush=True)
    result = {"seconds": round(time.perf_counter() - t0, 1), "open_support": threshold,
              "sets": summarise(rows), "rows": rows}
    (Path(sys.argv[1]) if len(sys.argv) > 1 else OUT).write_text(json.dumps(result, indent=1))
    print(json.dumps(result["sets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
