"""The image's margin fit before NeAR: what it gains on rough annotations and whether it moves correct ones.

    PYTHONPATH=NeARSlicer python benchmarks/image_margin.py   # -> benchmarks/results/image_margin.json

``refine_mask`` fits the margin first (all round, else side by side) (``image_margin.fit``, with an image, unless the mask is found
painted on thick slices) and refines the fitted annotation. Where the fit does not move a case, the
output with it is the output without it, by construction, so only the cases it moved are refined,
with the product's default (``--prior auto``, ``default`` preset, the case's image) once with the fit
and once without (``RefineOptions(fit_margin=False)``). Per set: how many cases moved; the change of
the set's mean DSC / NSD (tolerance: the case's coarsest voxel side) against the clean shape that the
fit makes to the default's output (exact: the unmoved cases contribute nothing); and for the moved
cases their input, default without and default with the fit. The fit alone (no NeAR) is also scored
on every case.

Two groups of case sets, none in any prior's training data:

* **chosen on**: ``image_confidence.py``'s seven sets (the example CT's structures with the mixture,
  clean and near-correct at 3 mm; ALAN val 0-31 in phantom CTs, mixture and clean; the real adrenals
  on 1 mm cubes; 20 held-out-class shapes), plus ALAN val 0-15 over/under-painted (``overpaint``).
  The fit's two thresholds (``AGREE``, ``EDGE_GAIN``) were picked on the inputs of these sets (no
  refinement involved) as the round values that moved no clean or near-correct case;
* **held out**: sets looked at only after the thresholds were fixed. ALAN val 32-59, one family each
  in turn (overpaint, slab, holes, leak, missing part, oversmooth, mixture), half in the standard
  phantom CT and half in a varied one (``ct_phantom(vary=True)``: other contrasts, noise, blur,
  thick slices), and 12 of them clean; 24 generated shapes of the classes the general prior trained
  on, in synthetic CT and in synthetic MR, families in turn, and 10 of each clean; 20 more held-out-
  class shapes (another seed) with the mixture; every structure of the example CT over/under-painted
  at 3 mm (one seed); ALAN val 60-97 clean, over/under-painted and with the mixture, in a varied
  phantom CT and in an MR-like image (``no_harm.mr_phantom``). The MR-like set is why the fit is for
  CT only: fitted there (``fit_any_dsc``) it shrank 9 of the 38 clean glands (that generator paints the
  gland's blurred rim with its surroundings' intensity), so ``refine`` fits only images read as CT.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
OUT = HERE / "results" / "image_margin.json"
FAMILIES = ("overpaint", "slab", "holes", "leak", "missing_part", "oversmooth", "mixture")


def chosen_on() -> list:
    """[(set, name, truth, annotation, spacing, image, structure)]: the sets the thresholds were picked on."""
    from NeARSlicerLib.bench import alan_cases
    from image_confidence import case_sets

    out = [(s, n, t, a, g.spacing, i, st) for s, n, t, a, g, i, st in case_sets()]
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"][:16].astype(bool)
    for c in alan_cases(val, appearance=True, family="overpaint"):
        out.append(("alan_overpaint", c.name, c.truth, c.annotation, c.grid.spacing, c.image, "adrenal gland"))
    return out


def held_out() -> list:
    """The sets looked at only after the thresholds were fixed (module docstring)."""
    from NeARSlicerLib.anatomy_shapes import CLASSES, HELD_OUT_CLASSES, anatomy_study_cases
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.bench import real_ct_structures
    from NeARSlicerLib.phantom import ct_phantom

    out = []
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"].astype(bool)
    one = (1.0, 1.0, 1.0)
    for j, i in enumerate(range(32, 60)):
        clean, vary = val[i], j % 2 == 1
        image = ct_phantom(clean, seed=500 + i, vary=vary)
        family = FAMILIES[j % len(FAMILIES)]
        where = "varied" if vary else "standard"
        annotation = corrupt(clean, one, family, 900 + i, image=image)
        out.append((f"ho_alan_{where}", f"val{i:03d}_{family}", clean, annotation, one, image, "adrenal gland"))
        if j < 12:
            out.append((f"ho_alan_{where}_clean", f"val{i:03d}", clean, clean.copy(), one, image, "adrenal gland"))
    trained = tuple(c for c in CLASSES if c not in HELD_OUT_CLASSES)
    for modality, seed in (("CT", 777), ("MR", 778)):
        for k, c in enumerate(anatomy_study_cases(seed, 24, classes=trained, modality=modality)):
            sp = (float(c["spacing_mm"]),) * 3
            family = FAMILIES[k % len(FAMILIES)]
            out.append((f"ho_shapes_{modality}", f"{c['cls']}_{k:02d}_{family}", c["mask"],
                        corrupt(c["mask"], sp, family, 3000 + k, image=c["image"]), sp, c["image"], None))
            if k < 10:
                out.append((f"ho_shapes_{modality}_clean", f"{c['cls']}_{k:02d}", c["mask"], c["mask"].copy(), sp,
                            c["image"], None))
    for k, c in enumerate(anatomy_study_cases(4242, 20)):
        sp = (float(c["spacing_mm"]),) * 3
        out.append(("ho_unseen", f"{c['cls']}_{k:02d}", c["mask"],
                    corrupt(c["mask"], sp, "mixture", 5000 + k, image=c["image"]), sp, c["image"], None))
    from no_harm import mr_phantom

    for i in range(60, 98):
        clean = val[i]
        for where, image in (("varied_ct", ct_phantom(clean, seed=7000 + i, vary=True)),
                             ("mr_like", mr_phantom(clean, 7000 + i))):
            out.append((f"ho_alan60_{where}_clean", f"val{i:03d}", clean, clean.copy(), one, image, "adrenal gland"))
            for family in ("overpaint", "mixture"):
                out.append((f"ho_alan60_{where}_{family}", f"val{i:03d}", clean,
                            corrupt(clean, one, family, 8000 + i, image=image), one, image, "adrenal gland"))
    ct = SHARED / "totalseg_example"
    for c in real_ct_structures(ct / "ct.nii.gz", ct / "seg.nii.gz", per_label=1, family="overpaint"):
        out.append(("ho_ct_overpaint", c.name, c.truth, c.annotation, c.grid.spacing, c.image, c.structure))
    return out


def all_cases():
    """(group, set, name, truth, annotation (bool), spacing, image, structure) of both groups in turn."""
    for group, cases in (("chosen on", chosen_on()), ("held out", held_out())):
        for st, name, truth, annotation, spacing, image, structure in cases:
            yield group, st, name, truth, np.asarray(annotation, bool), spacing, image, structure


def summarise(rows: list) -> dict:
    sets: dict = {}
    for name in dict.fromkeys(r["set"] for r in rows):
        rs = [r for r in rows if r["set"] == name]
        moved = [r for r in rs if r["margin_mm"] or r["sides"]]
        entry = {"group": rs[0]["group"], "cases": len(rs), "moved": len(moved),
                 "input_dsc": round(100 * float(np.mean([r["input_dsc"] for r in rs])), 2),
                 "fit_alone_dsc": round(100 * float(np.mean([r["fit_dsc"] for r in rs])), 2),
                 "fit_alone_worse": sum(1 for r in rs if r["fit_dsc"] < r["input_dsc"] - 0.01),
                 # the fit on any image, CT or not (refine fits CT only)
                 "fit_any_dsc": round(100 * float(np.mean([r["fit_any_dsc"] for r in rs])), 2),
                 "fit_any_moved": sum(1 for r in rs if r["fit_any_moved"]),
                 "fit_any_worse": sum(1 for r in rs if r["fit_any_dsc"] < r["input_dsc"] - 0.01)}
        for key in ("dsc", "nsd"):
            # the fit's change of the set's mean default output (unmoved cases: no change)
            gain = sum(r[f"with_{key}"] - r[f"without_{key}"] for r in moved) / len(rs)
            entry[f"default_gain_{key}"] = round(100 * gain, 2)
        if moved:
            for key in ("input", "without", "with"):
                entry[f"moved_{key}_dsc"] = round(100 * float(np.mean([r[f"{key}_dsc"] for r in moved])), 2)
                entry[f"moved_{key}_nsd"] = round(100 * float(np.mean([r[f"{key}_nsd"] for r in moved])), 2)
            entry["moved_with_worse_than_without"] = sum(1 for r in moved if r["with_dsc"] < r["without_dsc"] - 0.01)
            entry["moved_with_better_than_without"] = sum(1 for r in moved if r["with_dsc"] > r["without_dsc"] + 0.01)
        sets[name] = entry
    return sets


def main() -> int:
    import warnings

    from NeARSlicerLib.confidence import painted_slices
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.image_margin import fit
    from NeARSlicerLib.metrics import dice, normalized_surface_dice
    from NeARSlicerLib.modality import guess
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    warnings.simplefilter("ignore")
    rows = []
    t0 = time.perf_counter()
    for group, st, name, truth, ann, spacing, image, structure in all_cases():
        tol = max(spacing)
        fitted, found = fit(ann, image, spacing)
        any_dsc, any_moved = dice(fitted, truth), found.moved
        read_as = guess(image, None).modality
        if painted_slices(ann, spacing) is not None or read_as != "CT":
            fitted, found = ann, None  # refine fits neither a staircase's margin nor a non-CT image's
        row = {"group": group, "set": st, "case": name, "modality": read_as,
               "margin_mm": found.mm if found else 0.0, "sides": list(found.sides) if found else [],
               "input_dsc": dice(ann, truth), "fit_dsc": dice(fitted, truth), "fit_any_dsc": any_dsc,
               "fit_any_moved": any_moved}
        if found is not None and found.moved:
            grid = Grid(shape=ann.shape, spacing=tuple(spacing), origin=(0.0, 0.0, 0.0))
            outs = {}
            for key, on in (("with", True), ("without", False)):
                res = refine_mask(ann.astype(np.uint8), grid, image,
                                  RefineOptions(structure=structure, fit_margin=on))
                outs[key] = res.mask > 0
                row[f"{key}_action"] = res.info["action"]
            assert res.info["image_margin_mm"] is None and row["with_action"]  # the last run: no fit
            for key, mask in (("input", ann), *outs.items()):
                row[f"{key}_dsc"] = dice(mask, truth)
                row[f"{key}_nsd"] = normalized_surface_dice(mask, truth, spacing, tol)
            print(f"{len(rows):4d} {st:22s} {name:22s} margin {row['margin_mm']:+.2f} sides {row['sides']} "
                  f"input {row['input_dsc']:.3f} without {row['without_dsc']:.3f} with {row['with_dsc']:.3f}",
                  flush=True)
        rows.append(row)
    from NeARSlicerLib import image_margin

    thresholds = {name: getattr(image_margin, name) for name in ("MAX_MM", "AGREE", "EDGE_GAIN", "CORE_MM", "RING_MM")}
    sets = summarise(rows)
    OUT.write_text(json.dumps({"seconds": round(time.perf_counter() - t0, 1), "thresholds": thresholds,
                               "sets": sets, "rows": rows}, indent=1))
    for name, entry in sets.items():
        print(f"{name:32s} moved {entry['moved']:3d} of {entry['cases']:3d}, default gain "
              f"{entry['default_gain_dsc']:+.2f} DSC / {entry['default_gain_nsd']:+.2f} NSD")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(HERE))
    sys.exit(main())
