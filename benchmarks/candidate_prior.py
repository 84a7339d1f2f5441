"""Should a newly trained shape prior replace the shipped one? Score it on the cases the shipped one was measured on.

    PYTHONPATH=NeARSlicer python benchmarks/candidate_prior.py anatomy PATH [--tag NAME]
    PYTHONPATH=NeARSlicer python benchmarks/candidate_prior.py adrenal PATH [--families mixture,overpaint,clean]
    PYTHONPATH=NeARSlicer python benchmarks/candidate_prior.py adrenal-sa PATH [--alan 48] [--real-per-label 8]

* ``anatomy`` (a general prior, e.g. a continuation of ``anatomy_v1``): the 72 real-CT cases of
  ``keep_or_refine.py`` (every example-CT structure >= 300 voxels at 3 mm: noise and 2-slice staircase,
  near-correct; the library's mixture, rough), the CT given, every change applied and the default
  (gated; nothing applied outside the card's domain). The shipped prior's column is read from
  keep_or_refine's cached refinements (``work/keep_or_refine_pts2048``), so only the candidate is refined.
* ``adrenal`` (a shape-only adrenal prior, e.g. a continuation of ``adrenal_v2``): the robustness
  benchmark's ALAN val shapes 0-15 per family (``robustness_v2.py``'s cases and seeds), every change
  applied, thick-slice paintings given to the prior as their staircase (as they were then); the shipped
  column is ``results/robustness_v2.json``'s ``adrenal_v2`` rows.

* ``adrenal-sa`` (an S+A adrenal prior that reads images per case, e.g. a continuation of
  ``adrenal_mr_v1``): the product's default with an image (``default`` preset, every do-no-harm step),
  the candidate and the shipped ``adrenal_mr_v1`` refined in the same run, on ALAN val shapes from 24
  on (0-23 chose the checkpoint) in their phantom CTs (the library's mixture, the held-out processes' mixture, clean), and on the real
  CT's two adrenal glands on 1 mm cubes with the CT's own 3 mm voxel (mixture, thick slices, clean):
  a candidate that learnt the phantoms and not CT shows on the real CT (as the GPU-trained S+A of
  2026-11-27 did: 92.2 on phantoms, 67.6 on the real glands).

The candidate is scored as it would ship: float16 weights (``ship_prior.py``), the shipped card's
``meta`` (scale, domain) beside it. Results: ``results/candidate_<kind>_<tag>.json``.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))
sys.path.insert(0, str(HERE))

from NeARSlicerLib.metrics import dice, normalized_surface_dice  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402
from NeARSlicerLib.prior import PRIOR_DIR, load_prior, save_prior  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402

SHIPPED_CARD = {"anatomy": PRIOR_DIR / "anatomy_v1.json", "adrenal": PRIOR_DIR / "adrenal_v2.json",
                "adrenal-sa": PRIOR_DIR / "adrenal_mr_v1.json"}
REAL_CT = HERE.parent.parent / "shared" / "data" / "totalseg_example"


def as_shipped(model, meta: dict, kind: str, folder: Path) -> Path:
    """A trained prior (``load_prior``'s model and meta) saved in float16 with the shipped prior's card meta
    beside it (how it would ship)."""
    card_meta = json.loads(SHIPPED_CARD[kind].read_text())["meta"]
    dest = folder / "candidate.safetensors"
    save_prior(dest, model, {**meta, **{k: v for k, v in card_meta.items() if k in ("scale", "domain", "fov_mm")}},
               dtype=torch.float16)
    dest.with_suffix(".json").write_text(json.dumps({"meta": card_meta}))
    return dest


def _mean(rows: list, key: str) -> float:
    return round(100 * float(np.mean([r[key] for r in rows])), 2)


def anatomy(cand: Path) -> dict:
    from keep_or_refine import _load
    from no_harm import real_structures
    from NeARSlicerLib.confidence import default_output

    domain = json.loads(SHIPPED_CARD["anatomy"].read_text())["meta"]["domain"]
    _, _, grid, ct = real_structures()[0]
    rows = []
    for path in sorted((HERE / "work" / "keep_or_refine_pts2048").glob("ct*.npz")):
        d = _load(path)
        ann, truth, shipped, sp = d["annotation"], d["truth"], d["refined"], d["spacing"]
        new = refine_mask(ann.astype(np.uint8), grid, ct, RefineOptions(prior=str(cand), keep_threshold=0.0,
                                                                         change_policy="all")).mask > 0
        rows.append({"case": path.stem, "kind": path.stem.split("_", 1)[1], "input": dice(ann, truth),
                     "shipped_all": dice(shipped, truth), "shipped_default": dice(default_output(ann, shipped, sp, domain), truth),
                     "candidate_all": dice(new, truth), "candidate_default": dice(default_output(ann, new, sp, domain), truth)})
        print(path.stem, {k: round(v, 4) for k, v in rows[-1].items() if isinstance(v, float)}, flush=True)
    table = {}
    for group, kinds in (("near-correct", ("noise", "stair")), ("rough", ("mixture",))):
        sel = [r for r in rows if r["kind"] in kinds]
        keys = ("input", "shipped_all", "shipped_default", "candidate_all", "candidate_default")
        table[group] = {"cases": len(sel), **{k: _mean(sel, k) for k in keys},
                        "worse_by_1": {k: sum(r[k] < r["input"] - 0.01 for r in sel) for k in keys[1:]}}
    return {"dice_percent": table, "rows": rows}


def adrenal(cand: Path, families: list[str]) -> dict:
    from robustness import ALAN
    from NeARSlicerLib.bench import BenchCase, alan_cases, identity_grid

    shipped = json.loads((HERE / "results" / "robustness_v2.json").read_text())
    val = np.load(ALAN)["val_shapes"][:16]
    # as robustness_v2.py measured the shipped prior: before painted slices were interpolated (2026-11-28)
    options = RefineOptions(prior=str(cand), appearance=False, preset="default", seed=0, change_policy="all",
                            interpolate_slices=False)
    table = {}
    for fam in families:
        key = "clean" if fam == "clean" else f"family:{fam}"
        cases = ([BenchCase(f"val{i:03d}", v.astype(bool), v.astype(bool), identity_grid(v.shape))
                  for i, v in enumerate(val)] if fam == "clean" else alan_cases(val, family=fam))
        rows = []
        for c in cases:
            out = refine_mask(c.annotation.astype(np.uint8), c.grid, None, options).mask > 0
            rows.append({"dsc": dice(out, c.truth), "nsd": normalized_surface_dice(out, c.truth, c.grid.spacing, 1.0)})
        old = shipped[key]["per_case"]["S (GPU, library)"]
        table[fam] = {"cases": len(rows), "input": [round(shipped[key]["table"]["input"][m], 2) for m in ("dsc", "nsd")],
                      "shipped": [_mean(old, m) for m in ("dsc", "nsd")],
                      "candidate": [_mean(rows, m) for m in ("dsc", "nsd")]}
        print(fam, table[fam], flush=True)
    return {"dsc_nsd_percent": table}


def adrenal_sa(cand: Path, alan: int, real_per_label: int) -> dict:
    """The candidate and the shipped S+A prior, the product's default with the image, on the same cases."""
    from robustness import ALAN
    from NeARSlicerLib.bench import BenchCase, alan_cases, real_ct_cases

    # val shapes 0-23 choose train-prior's checkpoint (train.validation_set): scored from 24 on
    val = np.load(ALAN)["val_shapes"][24:24 + alan]
    sets = {f"alan_{fam}": alan_cases(val, appearance=True, family=fam) for fam in ("mixture", "heldout_mixture")}
    sets["alan_clean"] = [BenchCase(c.name, c.truth, c.truth.copy(), c.grid, c.image, image_voxel_mm=c.image_voxel_mm)
                          for c in sets["alan_mixture"][:12]]
    for fam in ("mixture", "thick_slice"):
        sets[f"real_{fam}"] = real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", per_label=real_per_label,
                                            family=fam)
    sets["real_clean"] = [BenchCase(c.name, c.truth, c.truth.copy(), c.grid, c.image, image_voxel_mm=c.image_voxel_mm)
                          for c in sets["real_mixture"][::real_per_label]]
    priors = {"shipped": str(SHIPPED_CARD["adrenal-sa"].with_suffix(".safetensors")), "candidate": str(cand)}
    table, rows = {}, []
    for name, cases in sets.items():
        scores = {k: [] for k in ("input", *priors)}
        for c in cases:
            scores["input"].append((dice(c.annotation, c.truth), normalized_surface_dice(c.annotation, c.truth, c.grid.spacing, 1.0)))
            for who, path in priors.items():
                opts = RefineOptions(prior=path, appearance=True, preset="default", seed=0, structure="adrenal gland",
                                     image_voxel_mm=c.image_voxel_mm)
                out = refine_mask(c.annotation.astype(np.uint8), c.grid, c.image, opts).mask > 0
                scores[who].append((dice(out, c.truth), normalized_surface_dice(out, c.truth, c.grid.spacing, 1.0)))
            rows.append({"set": name, "case": c.name, **{k: [round(x, 4) for x in v[-1]] for k, v in scores.items()}})
        table[name] = {"cases": len(cases), **{k: [round(100 * float(np.mean([x[m] for x in v])), 2) for m in (0, 1)]
                                               for k, v in scores.items()},
                       "worse_than_input_by_1_dsc": {k: int(sum(a[0] < i[0] - 0.01 for a, i in zip(scores[k], scores["input"])))
                                                     for k in priors}}
        print(name, table[name], flush=True)
    return {"dsc_nsd_percent": table, "rows": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("kind", choices=["anatomy", "adrenal", "adrenal-sa"])
    ap.add_argument("prior", type=Path, help="the candidate's .safetensors (a train-prior output)")
    ap.add_argument("--tag", default=None, help="result name (default: the file's stem)")
    ap.add_argument("--families", default="mixture,overpaint,slab,thick_slice,holes,leak,missing_part,oversmooth,clean")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--alan", type=int, default=48, help="adrenal-sa: ALAN val shapes per set")
    ap.add_argument("--real-per-label", type=int, default=8, help="adrenal-sa: distortions of each real gland")
    args = ap.parse_args()
    warnings.simplefilter("ignore")
    torch.set_num_threads(args.threads)
    model, meta = load_prior(args.prior)
    with tempfile.TemporaryDirectory() as tmp:
        cand = as_shipped(model, meta, args.kind, Path(tmp))
        if args.kind == "adrenal-sa":
            res = adrenal_sa(cand, args.alan, args.real_per_label)
        else:
            res = anatomy(cand) if args.kind == "anatomy" else adrenal(cand, args.families.split(","))
    res = {"script": "benchmarks/candidate_prior.py", "kind": args.kind, "candidate": str(args.prior),
           "candidate_step": meta.get("step"), "candidate_val_dice_direct": meta.get("val_dice_direct"), **res}
    out = HERE / "results" / f"candidate_{args.kind}_{args.tag or args.prior.stem}.json"
    atomic_write_text(out, json.dumps(res, indent=1) + "\n")
    print(json.dumps({k: v for k, v in res.items() if k != "rows"}, indent=1))


if __name__ == "__main__":
    main()
