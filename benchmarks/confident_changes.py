"""Apply only the changes the prior is sure of? The refined probability as a change policy and as a confidence.

    PYTHONPATH=NeARSlicer python benchmarks/confident_changes.py collect   # refine each case once (slow)
    PYTHONPATH=NeARSlicer python benchmarks/confident_changes.py report    # -> results/confident_changes.json

The cases are those of ``keep_or_refine.py`` (its ``default``-preset refinements with 2048 fit points,
``work/keep_or_refine_pts2048``: ALAN val 30-41 near-correct and rough, every example-CT structure >= 300
voxels near-correct and with the mixture). Each is refined again with every change applied, this time
keeping the probability map on the input grid (uint8, ``work/confident_changes``); the masks must equal
the cached ones (checked). Variants scored against the truth (DSC %, cases worse than their input by
more than 1 DSC):

* ``margin_T``: the annotation, changed only where the mean probability of the mirrored views is
  beyond 0.5 +- T (the prior is sure);
* ``gated+margin_T``: the default's gate; where it stays closed, the thick changes *and* the sure ones;
* the same margin, the mean |2p - 1| over the changed voxels, as a per-case confidence (AUC for
  "the prior's whole mask is better than the input").
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))
sys.path.insert(0, str(HERE))

from keep_or_refine import MILD, _load, domain_of  # noqa: E402

CASES = HERE / "work" / "keep_or_refine_pts2048"
WORK = HERE / "work" / "confident_changes"
OUT = HERE / "results" / "confident_changes.json"
MARGINS = (0.1, 0.2, 0.3, 0.4)


def collect() -> None:
    from no_harm import identity_grid, real_structures
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    warnings.simplefilter("ignore")
    WORK.mkdir(parents=True, exist_ok=True)
    ct_grid = ct = None
    for path in sorted(CASES.glob("*.npz")):
        if (WORK / path.name).is_file():
            continue
        d = _load(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        if path.stem.startswith("ct"):
            if ct is None:
                _, _, ct_grid, ct = real_structures()[0]
            res = refine_mask(d["annotation"].astype(np.uint8), ct_grid, ct,
                              RefineOptions(keep_threshold=0.0, change_policy="all"))
        else:
            res = refine_mask(d["annotation"].astype(np.uint8), identity_grid(d["annotation"].shape), None,
                              RefineOptions(prior=meta["prior"], keep_threshold=0.0, change_policy="all"))
        if not np.array_equal(res.mask > 0, d["refined"]):
            raise SystemExit(f"{path.stem}: the refinement differs from keep_or_refine's cached mask")
        tmp = WORK / f".{path.stem}.npz"
        np.savez_compressed(tmp, prob=np.round(res.probability * 255).astype(np.uint8))
        tmp.rename(WORK / path.name)
        print(path.stem, flush=True)


def _auc(score: list, label: list) -> float:
    s, y = np.asarray(score, float), np.asarray(label, bool)
    pos, neg = s[y], s[~y]
    if not len(pos) or not len(neg):
        return float("nan")
    return float(np.mean([(p > neg).mean() + 0.5 * (p == neg).mean() for p in pos]))


def report() -> None:
    from NeARSlicerLib.confidence import apply_changes, default_output
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.output_safety import atomic_write_text

    rows = []
    for path in sorted(WORK.glob("*.npz")):
        d = _load(CASES / path.name)
        meta = json.loads((CASES / path.name).with_suffix(".json").read_text())
        ann, truth, ref, sp = d["annotation"], d["truth"], d["refined"], d["spacing"]
        prob = np.load(path)["prob"] / 255.0
        gated = apply_changes(ann, ref, sp, "gated")
        row = {"case": path.stem, "set": "ct" if path.stem.startswith("ct") else "alan", "kind": meta["kind"],
               "input": dice(ann, truth), "all": dice(ref, truth), "gated": dice(gated, truth),
               "default": dice(default_output(ann, ref, sp, domain_of(meta["prior"])), truth)}
        for t in MARGINS:
            sure = np.abs(prob - 0.5) > t
            row[f"margin_{t}"] = dice(np.where(sure, prob > 0.5, ann), truth)
            row[f"gated+margin_{t}"] = row["all"] if np.array_equal(gated, ref) else \
                dice(np.where(sure & ~(gated ^ ann), prob > 0.5, gated), truth)
        changed = ann ^ ref
        row["margin_confidence"] = float(np.abs(2 * prob[changed] - 1).mean()) if changed.any() else 1.0
        rows.append(row)
    policies = ["input", "all", "gated", "default", *[f"{p}_{t}" for p in ("margin", "gated+margin") for t in MARGINS]]
    table = {}
    for s in ("alan", "ct"):
        for group in ("near-correct", "rough"):
            sel = [r for r in rows if r["set"] == s and ((r["kind"] in MILD) == (group == "near-correct"))]
            if sel:
                table[f"{s}/{group}"] = {"cases": len(sel),
                                         **{p: round(100 * float(np.mean([r[p] for r in sel])), 2) for p in policies},
                                         "worse_by_1": {p: sum(r[p] < r["input"] - 0.01 for r in sel)
                                                        for p in policies[1:]}}
    auc = {s: round(_auc([r["margin_confidence"] for r in rows if s in ("all", r["set"])],
                         [r["all"] > r["input"] for r in rows if s in ("all", r["set"])]), 3)
           for s in ("all", "alan", "ct")}
    atomic_write_text(OUT, json.dumps({"script": "benchmarks/confident_changes.py", "dice_percent": table,
                                       "margin_confidence_auc": auc,
                                       "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                                for r in rows]}, indent=1) + "\n")
    for k, v in table.items():
        print(f"{k:18s} n={v['cases']:3d} " + " ".join(f"{p}={v[p]:.2f}({v['worse_by_1'].get(p, 0)})"
                                                    for p in policies))
    print("margin as confidence, AUC:", auc)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["collect", "report"])
    args = ap.parse_args()
    collect() if args.what == "collect" else report()


if __name__ == "__main__":
    main()
