"""Which confidence flags the cases that got worse: the mirrored views' estimate or the image's support.

    PYTHONPATH=NeARSlicer python benchmarks/image_confidence.py [OUT.json] [--errors heldout_mixture]
    # default benchmarks/results/image_confidence.json; the held-out run: image_confidence_heldout.json

Every case is refined twice with the product's options (``--prior auto``, ``default`` preset, the case's
image): once with every change applied (``--changes all``: the prior's proposal, which both
confidences rate) and once with the default (gated, checked against the image: what a user gets).
``info`` holds both estimates of the same proposal: ``view_confidence`` (the calibrated logistic of
the mirrored views' signals, ``confidence.py``) and ``image_support`` (the share of the proposal's
change that the image agrees with, ``image_evidence.support``), which is now the reported confidence
whenever an image is read.

Case sets (none in any prior's training data; truth = the clean shape):

* ``ct_mixture``: every structure of the example CT (>= 300 voxels, and the adrenal glands) with the
  error library's mixture, 3 seeds, at its native 3 mm grid (``bench --all-structures``'s cases);
* ``ct_clean`` / ``ct_near``: the same structures clean, and with 1-voxel boundary noise or a 2-slice
  staircase (alternately; ``no_harm.py``'s perturbations);
* ``alan_mixture`` / ``alan_clean``: ALAN val shapes 0-31 with the mixture, 0-11 clean, each in its
  synthetic CT (``bench --appearance``'s cases);
* ``ct_adrenals``: the example CT's two adrenal glands on 1 mm cubes, mixture, 8 seeds each;
* ``unseen``: 20 generated shapes of the classes no prior trained on, each in a synthetic CT, mixture.

For each set and each estimate: the AUC of "the proposal beats the input by > 1 DSC" against "the
proposal is worse by > 1 DSC", and, for the default output, how many cases made worse by > 1 DSC
and how many made better had a confidence below 0.5 (flagged).

``--errors heldout_mixture`` distorts the four mixture sets by the held-out processes instead
(``heldout_errors``: nothing trained or was tuned on them, the confidences' calibration included) and
skips the clean and near-correct sets, which do not depend on the errors; the 1 mm adrenal cubes are
then told the CT's own voxel (``image_voxel_mm``), as Slicer tells the engine since 2026-12-06.
"""
from __future__ import annotations

import json
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "image_confidence.json"


def case_sets(errors: str = "mixture") -> list:
    """[(set, name, truth, annotation, grid, image, structure, image voxel mm or None)]."""
    import SimpleITK as sitk

    from NeARSlicerLib.bench import alan_cases, real_ct_cases, real_ct_structures, unseen_class_cases
    from no_harm import boundary_noise, staircase

    ct_dir = SHARED / "totalseg_example"
    ct_path, seg_path = ct_dir / "ct.nii.gz", ct_dir / "seg.nii.gz"
    out = []
    mixture = real_ct_structures(ct_path, seg_path, per_label=3, family=errors)
    for c in mixture:
        out.append(("ct_mixture", c.name, c.truth, c.annotation, c.grid, c.image, c.structure, None))
    library = errors == "mixture"
    seg = sitk.GetArrayFromImage(sitk.ReadImage(str(seg_path)))
    firsts = [c for c in mixture if c.name.endswith("_d0")] if library else []
    for i, c in enumerate(firsts):
        rng = np.random.default_rng(i)
        near = boundary_noise(c.truth, rng) if i % 2 == 0 else staircase(c.truth, rng)
        out.append(("ct_clean", c.name[:-3], c.truth, c.truth.copy(), c.grid, c.image, c.structure, None))
        out.append(("ct_near", c.name[:-3], c.truth, near, c.grid, c.image, c.structure, None))
    assert all(np.array_equal(seg == int(c.name[5:-3]), c.truth) for c in firsts)
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"][:32].astype(bool)
    for c in alan_cases(val, appearance=True, family=errors):
        out.append(("alan_mixture", c.name, c.truth, c.annotation, c.grid, c.image, "adrenal gland", None))
    for c in alan_cases(val[:12], appearance=True) if library else ():
        out.append(("alan_clean", c.name, c.truth, c.truth.copy(), c.grid, c.image, "adrenal gland", None))
    for c in real_ct_cases(ct_path, seg_path, per_label=8, family=errors):
        out.append(("ct_adrenals", c.name, c.truth, c.annotation, c.grid, c.image, "adrenal gland",
                    None if library else c.image_voxel_mm))
    for c in unseen_class_cases(20, family=errors):
        out.append(("unseen", c.name, c.truth, c.annotation, c.grid, c.image, None, None))
    return out


def auc(positive: list, negative: list) -> float | None:
    """P(a positive scores above a negative), ties half; None without both."""
    if not positive or not negative:
        return None
    p, n = np.asarray(positive, float)[:, None], np.asarray(negative, float)[None, :]
    return float(np.mean((p > n) + 0.5 * (p == n)))


def summarise(rows: list) -> dict:
    sets: dict = {}
    for name in list(dict.fromkeys(r["set"] for r in rows)) + ["all"]:
        rs = [r for r in rows if name in ("all", r["set"])]
        better = [r for r in rs if r["all_dsc"] > r["input_dsc"] + 0.01]
        worse = [r for r in rs if r["all_dsc"] < r["input_dsc"] - 0.01]
        entry = {"cases": len(rs), "proposal_better": len(better), "proposal_worse": len(worse)}
        for key in ("view_confidence", "image_support"):
            entry[f"auc_{key}"] = auc([r[key] for r in better if r[key] is not None],
                                      [r[key] for r in worse if r[key] is not None])
            made_worse = [r for r in rs if r["default_dsc"] < r["input_dsc"] - 0.01]
            made_better = [r for r in rs if r["default_dsc"] > r["input_dsc"] + 0.01]
            entry[f"default_worse_flagged_{key}"] = [sum(1 for r in made_worse if r[key] is not None and r[key] < 0.5),
                                                      len(made_worse)]
            entry[f"default_better_flagged_{key}"] = [sum(1 for r in made_better if r[key] is not None and r[key] < 0.5),
                                                       len(made_better)]
        sets[name] = entry
    return sets


def main() -> int:
    import argparse

    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=OUT)
    parser.add_argument("--errors", default="mixture", choices=["mixture", "heldout_mixture"])
    args = parser.parse_args()
    rows = []
    t0 = time.perf_counter()
    for st, name, truth, annotation, grid, image, structure, voxel in case_sets(args.errors):
        ann = np.asarray(annotation, bool)
        options = RefineOptions(structure=structure, image_voxel_mm=voxel)
        proposal = refine_mask(ann.astype(np.uint8), grid, image, replace(options, change_policy="all"))
        default = refine_mask(ann.astype(np.uint8), grid, image, options)
        info = proposal.info
        rows.append({"set": st, "case": name, "prior": info.get("prior_name"),
                     "input_dsc": dice(ann, truth), "all_dsc": dice(proposal.mask, truth),
                     "default_dsc": dice(default.mask, truth), "default_action": default.info["action"],
                     "default_gate_opened_by_image": default.info.get("gate_opened_by_image"),
                     "view_confidence": info.get("view_confidence"), "image_support": info.get("image_support"),
                     "signals": info.get("signals")})
        print(f"{len(rows):4d} {st:13s} {name:18s} in {rows[-1]['input_dsc']:.3f} all {rows[-1]['all_dsc']:.3f} "
              f"default {rows[-1]['default_dsc']:.3f} views {info.get('view_confidence')} image "
              f"{info.get('image_support')}", flush=True)
    result = {"errors": args.errors, "seconds": round(time.perf_counter() - t0, 1), "sets": summarise(rows),
              "rows": rows}
    args.out.write_text(json.dumps(result, indent=1))
    print(json.dumps(result["sets"], indent=1))
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
