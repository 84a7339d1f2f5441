"""Which S+A prior should read CT: the CT-window `adrenal_sa_v1` (the shipped CT default) or the
per-case-normalised `adrenal_mr_v1` (shipped for images that are not CT), with the shape-only
`adrenal_v2` and smoothing beside them.

Cases: the real CT's two adrenal glands (labels 8 and 9, 1 mm cubes, 8 seeds each; none of the priors
saw a real scan) with the error library's thick-slice painting, over/under-painting and mixture, and
ALAN val shapes 0-15 in synthetic CTs with the mixture (the robustness tables' cases); near-correct
annotations (clean, 1-voxel boundary noise, a 2-slice staircase) of both glands and of ALAN val
30-41 in synthetic CTs, where the default must do no harm. Each case is
refined once with every change (`--changes all`); the default `gated` output is
`confidence.apply_changes` of that refinement, or the input for a segment outside the prior's domain
(what `refine` does with keep threshold 0). DSC / NSD at 1 mm.

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/ct_appearance_prior.py
Results: ``benchmarks/results/ct_appearance_prior.json``; rows and refined masks are cached in
``benchmarks/work/ct_appearance_prior/`` (a rerun resumes; ``report`` alone rescores the cache).
"""
from __future__ import annotations

import json
import sys
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from keep_or_refine import domain_of  # noqa: E402
from robustness import ALAN, REAL_CT  # noqa: E402

from NeARSlicerLib.baselines import BASELINES  # noqa: E402
from NeARSlicerLib.bench import alan_cases, real_ct_cases  # noqa: E402
from NeARSlicerLib.confidence import default_output  # noqa: E402
from NeARSlicerLib.metrics import dice, normalized_surface_dice  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402
from NeARSlicerLib.prior import PRIOR_DIR  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402

# by file: registry names may move to other files (name -> (file, reads the image))
PRIORS = {"S adrenal_v2": (str(PRIOR_DIR / "adrenal_v2.safetensors"), False),
          "S+A adrenal_sa_v1 (CT window)": (str(PRIOR_DIR / "adrenal_sa_v1.safetensors"), True),
          "S+A adrenal_mr_v1 (per case)": (str(PRIOR_DIR / "adrenal_mr_v1.safetensors"), True)}
SETS = [("real CT", "thick_slice"), ("real CT", "overpaint"), ("real CT", "mixture"), ("phantom CT", "mixture"),
        ("real CT", "near-correct"), ("phantom CT", "near-correct")]
SEED = 61_000
WORK = HERE / "work" / "ct_appearance_prior"
OUT = HERE / "results" / "ct_appearance_prior.json"


def cases_of(where: str, family: str):
    """The set's cases; ``near-correct``: each truth clean, with 1-voxel boundary noise and with a 2-slice
    staircase (``no_harm``'s perturbations), 3 seeds each on the real CT, one each on ALAN val 30-41."""
    if family == "near-correct":
        from no_harm import boundary_noise, staircase

        if where == "real CT":
            base = real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9), per_label=1,
                                 family="holes")
            seeds = range(3)
        else:
            base = alan_cases(np.load(ALAN)["val_shapes"][30:42], appearance=True, family="holes")
            seeds = range(1)
        out = []
        for c in base:
            name = c.name.split("_")[0] if where == "real CT" else c.name
            out.append(replace(c, name=f"{name}_clean", annotation=c.truth.copy()))
            for s in seeds:
                rng = np.random.default_rng(SEED + 10 * s + len(out))
                out.append(replace(c, name=f"{name}_noise{s}", annotation=boundary_noise(c.truth, rng)))
                out.append(replace(c, name=f"{name}_stair{s}", annotation=staircase(c.truth, rng)))
        return out
    if where == "real CT":
        return real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9), per_label=8, family=family)
    return alan_cases(np.load(ALAN)["val_shapes"][:16], appearance=True, family=family)


def score(mask: np.ndarray, case) -> dict:
    return {"dsc": 100 * dice(mask, case.truth),
            "nsd": 100 * normalized_surface_dice(mask, case.truth, case.grid.spacing, 1.0)}


def collect(refine: bool = True) -> list[dict]:
    """Refine every case with every prior (cached), then score every change and gated."""
    WORK.mkdir(parents=True, exist_ok=True)
    domains = {name: domain_of(prior) for name, (prior, _) in PRIORS.items()}  # each card read once
    rows = []
    for where, family in SETS:
        key = f"{where} / {family}"
        for case in cases_of(where, family):
            cache = WORK / f"{key.replace(' / ', '_').replace(' ', '_')}_{case.name}.npz"
            if not cache.is_file():
                if not refine:
                    continue
                masks, secs = {}, {}
                for name, (prior, with_image) in PRIORS.items():
                    t0 = time.perf_counter()
                    res = refine_mask(case.annotation.astype(np.uint8), case.grid,
                                      case.image if with_image else None,
                                      RefineOptions(prior=prior, preset="default", seed=0, change_policy="all",
                                                    appearance=with_image))
                    secs[name] = time.perf_counter() - t0
                    masks[name] = np.packbits(res.mask > 0)
                np.savez(WORK / ".tmp.npz", seconds=json.dumps(secs), **{n: m for n, m in masks.items()})
                (WORK / ".tmp.npz").rename(cache)
            d = np.load(cache)
            secs = json.loads(str(d["seconds"]))
            row = {"set": key, "case": case.name, "input": score(case.annotation, case)}
            for name, fn in BASELINES.items():
                row[name] = score(fn(case.annotation, case.grid.spacing), case)
            for name in PRIORS:
                refined = np.unpackbits(d[name])[:case.truth.size].reshape(case.truth.shape).astype(bool)
                row[f"{name}, every change"] = {**score(refined, case), "seconds": round(secs[name], 2)}
                # the default output (keep threshold 0): the input outside the domain, else apply_changes
                row[f"{name}, gated"] = score(default_output(case.annotation, refined, case.grid.spacing,
                                                             domains[name], "gated"), case)
            rows.append(row)
            print(key, case.name, {k: round(v["dsc"], 1) for k, v in row.items() if isinstance(v, dict)
                                   and k not in BASELINES}, flush=True)
    return rows


def report(rows: list[dict]) -> dict:
    out = {}
    for where, family in SETS:
        key = f"{where} / {family}"
        sel = [r for r in rows if r["set"] == key]
        if not sel:
            continue
        names = [k for k in sel[0] if isinstance(sel[0][k], dict)]
        table = {n: {"dsc": round(float(np.mean([r[n]["dsc"] for r in sel])), 2),
                     "nsd": round(float(np.mean([r[n]["nsd"] for r in sel])), 2),
                     "worse_than_input_by_1_dsc": sum(r[n]["dsc"] < r["input"]["dsc"] - 1 for r in sel)}
                 for n in names}
        best = max(BASELINES, key=lambda n: table[n]["dsc"])
        for n in BASELINES:
            table.pop(n)
        table["best smoothing"] = {"dsc": round(float(np.mean([r[best]["dsc"] for r in sel])), 2),
                                   "nsd": round(float(np.mean([r[best]["nsd"] for r in sel])), 2), "which": best}
        out[key] = {"cases": len(sel), "table": table}
    return out


if __name__ == "__main__":
    warnings.simplefilter("ignore")
    torch.set_num_threads(2)
    rows = collect(refine="report" not in sys.argv[1:])
    res = report(rows)
    atomic_write_text(OUT, json.dumps({"script": "benchmarks/ct_appearance_prior.py", "sets": res,
                                       "rows": [{k: v for k, v in r.items() if k not in BASELINES} for r in rows]},
                                      indent=1))
    for key, v in res.items():
        print("==", key, v["cases"])
        for n, t in v["table"].items():
            print(f"  {n:45s} {t['dsc']:6.2f} / {t['nsd']:6.2f}", t.get("worse_than_input_by_1_dsc", t.get("which")))
