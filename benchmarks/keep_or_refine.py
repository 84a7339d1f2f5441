"""Do no harm, measured across near-correct and rough inputs: which of the prior's changes to apply.

    PYTHONPATH=NeARSlicer python benchmarks/keep_or_refine.py collect [--only alan|ct]  # refine each case once (slow)
    PYTHONPATH=NeARSlicer python benchmarks/keep_or_refine.py report                   # -> results/keep_or_refine.json

``--fit-points N`` / ``--fit-steps N`` change the ``default`` preset's latent fit (points per step,
steps) for both commands: work in ``work/keep_or_refine_ptsN`` / ``_stepsN``, results in
``results/keep_or_refine_ptsN.json`` / ``_stepsN.json``. ``results/keep_or_refine.json`` was made with
8192 points, the default until 2026-11-28 (now 2048; ``--fit-points 8192`` redoes it).
``results/keep_or_refine_2026-12-06.json`` is the 2048-point work re-collected with that day's code
(``report --fit-points 2048 --out ...``), when the ``_near`` variants (``confidence.NEAR_MM``) were
added and became the default.

Every case is refined once, always (``keep_threshold=0``, ``change_policy="all"``); the input, the
refined mask and the truth are stored (``benchmarks/work/keep_or_refine/``, not committed), so that
every change policy of ``confidence.apply_changes`` is scored on exactly the same refinements.

Cases (truth = the clean shape; none of them is in any prior's training set):

* ``alan``: ALAN val shapes 30-41 (1 mm), each clean, with 1-voxel boundary noise, with each
  family of the error library alone and with the mixture; shape-only adrenal prior;
* ``ct``: every structure of the example CT with >= 300 voxels at its native 3 mm grid, with
  1-voxel boundary noise, with a 2-slice staircase, and with the library's mixture; the CT given,
  ``--prior auto``.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))
sys.path.insert(0, str(HERE))

WORK = HERE / "work" / "keep_or_refine"
OUT = HERE / "results" / "keep_or_refine.json"
SEED = 47_000
ALAN_SHAPES = range(30, 42)
MILD = ("clean", "noise", "stair")  # near-correct inputs: the do-no-harm targets


def _save(name: str, **arrays) -> None:
    WORK.mkdir(parents=True, exist_ok=True)
    packed = {k: np.packbits(np.asarray(v, bool)) for k, v in arrays.items() if k not in ("spacing",)}
    tmp = WORK / f".{name}.npz"
    np.savez(tmp, shape=np.asarray(arrays["truth"].shape), spacing=np.asarray(arrays["spacing"], float), **packed)
    tmp.rename(WORK / f"{name}.npz")


def _load(path: Path) -> dict:
    d = np.load(path)
    shape = tuple(int(s) for s in d["shape"])
    n = int(np.prod(shape))
    out = {k: np.unpackbits(d[k])[:n].reshape(shape).astype(bool) for k in ("truth", "annotation", "refined")}
    out["spacing"] = tuple(float(s) for s in d["spacing"])
    return out


def _refine(name: str, kind: str, truth, annotation, grid, image=None, meta: dict | None = None) -> None:
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    if (WORK / f"{name}.npz").is_file():
        return
    t0 = time.perf_counter()
    res = refine_mask(annotation.astype(np.uint8), grid, image,
                      RefineOptions(keep_threshold=0.0, change_policy="all", **(meta or {})))
    _save(name, truth=truth, annotation=annotation, refined=res.mask > 0, spacing=grid.spacing)
    info = {"kind": kind, "seconds": round(time.perf_counter() - t0, 2), "prior": res.info.get("prior_name"),
            "signals": res.info.get("signals"), "confidence": res.info.get("confidence")}
    (WORK / f"{name}.json").write_text(json.dumps(info))
    print(f"{name:28s} {info['seconds']:6.1f} s", flush=True)


def collect(only: str | None, reverse: bool = False) -> None:
    import warnings

    from no_harm import SHARED, boundary_noise, identity_grid, real_structures, staircase
    from NeARSlicerLib.annotation_errors import FAMILIES, corrupt

    warnings.simplefilter("ignore")
    if only in (None, "alan"):
        val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"].astype(bool)
        g = identity_grid((64, 64, 64))
        for i in (reversed(ALAN_SHAPES) if reverse else ALAN_SHAPES):  # two collectors meet in the middle
            rng = np.random.default_rng(SEED + i)
            conds = {"clean": val[i], "noise": boundary_noise(val[i], rng), "stair": staircase(val[i], rng)}
            for f in (*FAMILIES, "mixture", "paper"):  # paper last: the seeds of the others stay
                conds[f] = corrupt(val[i], (1.0, 1.0, 1.0), f, SEED + 100 * i + len(conds))
            for c, ann in conds.items():
                _refine(f"alan{i:02d}_{c}", c, val[i], np.asarray(ann, bool), g, meta={"prior": "adrenal-s"})
    if only in (None, "ct"):
        for label, truth, grid, ct in real_structures():
            rng = np.random.default_rng(SEED + label)
            conds = {"noise": boundary_noise(truth, rng), "stair": staircase(truth, rng),
                     "mixture": corrupt(truth, grid.spacing, "mixture", SEED + label, image=ct)}
            for c, ann in conds.items():
                _refine(f"ct{label:03d}_{c}", c, truth, np.asarray(ann, bool), grid, ct)


VARIANTS = {  # name: (policy, thick radius mm, gate fraction, gate change, near mm: None = every change)
    "all": ("all", 1.0, 0.0, 1.0, None), "thick": ("thick", 1.0, 0.0, 1.0, None),
    "thick_2mm": ("thick", 2.0, 0.0, 1.0, None),
    "gated_1%": ("gated", 1.0, 0.01, 1.0, None), "gated_2%": ("gated", 1.0, 0.02, 1.0, None),
    "gated_5%": ("gated", 1.0, 0.05, 1.0, None), "gated_10%": ("gated", 1.0, 0.10, 1.0, None),
    "gated_2%_c10": ("gated", 1.0, 0.02, 0.10, None), "gated_2%_c15": ("gated", 1.0, 0.02, 0.15, None),
    "gated_2%_c20": ("gated", 1.0, 0.02, 0.20, None), "gated_2%_c30": ("gated", 1.0, 0.02, 0.30, None),
    # since 2026-12-06 the thick-change gate applies the changes within NEAR_MM of a thick one, not all
    "gated_2%_c15_near2": ("gated", 1.0, 0.02, 0.15, 2.0), "gated_2%_c15_near3": ("gated", 1.0, 0.02, 0.15, 3.0),
    "gated_2%_c15_near5": ("gated", 1.0, 0.02, 0.15, 5.0),
}


def domain_of(prior_name: str) -> dict | None:
    """The training domain on the card of a prior, by registry name or file."""
    from NeARSlicerLib.prior import resolve_prior_named
    from NeARSlicerLib.refine import card_meta

    _, path = resolve_prior_named(prior_name, with_image=prior_name.endswith("-sa"))
    return card_meta(path, {}).get("domain")


def report() -> None:
    from NeARSlicerLib.confidence import apply_changes
    from NeARSlicerLib.domain import check, shape_facts
    from NeARSlicerLib.metrics import dice

    rows = []
    for path in sorted(WORK.glob("*.npz")):
        d = _load(path)
        meta = json.loads(path.with_suffix(".json").read_text())
        row = {"case": path.stem, "set": path.stem[:2] if path.stem.startswith("ct") else "alan",
               "kind": meta["kind"], "input": dice(d["annotation"], d["truth"])}
        for name, (policy, radius, gate, gate_change, near) in VARIANTS.items():
            out = apply_changes(d["annotation"], d["refined"], d["spacing"], policy, radius, gate, gate_change,
                                near_mm=near)
            row[name] = dice(out, d["truth"])
        # the shipped default (refine.py, confidence.GATE_*): gated, nothing applied outside the prior's domain
        row["ood"] = bool(check(shape_facts(d["annotation"], d["spacing"]), domain_of(meta["prior"])))
        row["default"] = row["input"] if row["ood"] else row["gated_2%_c15_near3"]
        rows.append(row)
    policies = ["input", *VARIANTS, "default"]
    table = {}
    for s in ("alan", "ct"):
        for kind in sorted({r["kind"] for r in rows if r["set"] == s}):
            sel = [r for r in rows if r["set"] == s and r["kind"] == kind]
            table[f"{s}/{kind}"] = {"cases": len(sel), **{p: round(100 * float(np.mean([r[p] for r in sel])), 2)
                                                           for p in policies},
                                    "worse_by_1": {p: sum(r[p] < r["input"] - 0.01 for r in sel) for p in policies[1:]}}
        for group, kinds in (("near-correct", MILD), ("rough", None)):
            sel = [r for r in rows if r["set"] == s and ((r["kind"] in kinds) if kinds else (r["kind"] not in MILD))]
            if sel:
                table[f"{s}/{group}"] = {"cases": len(sel),
                                         **{p: round(100 * float(np.mean([r[p] for r in sel])), 2) for p in policies},
                                         "worse_by_1": {p: sum(r[p] < r["input"] - 0.01 for r in sel)
                                                        for p in policies[1:]}}
    OUT.write_text(json.dumps({"script": "benchmarks/keep_or_refine.py", "dice_percent": table,
                               "rows": [{k: (round(v, 4) if isinstance(v, float) else v) for k, v in r.items()}
                                        for r in rows]}, indent=1) + "\n")
    for k, v in table.items():
        print(f"{k:22s} n={v['cases']:3d} " + " ".join(f"{p}={v[p]:.1f}" for p in policies)
              + "  worse>1: " + " ".join(f"{p}={n}" for p, n in v["worse_by_1"].items()))


def _variant(points: int | None, steps: int | None) -> None:
    """Run this process's refinements with another latent fit in the default preset, into their own files."""
    from dataclasses import replace

    from NeARSlicerLib import refine

    global WORK, OUT
    preset = refine.PRESETS["default"]
    changes = {k: v for k, v in (("points", points), ("steps", steps)) if v is not None}
    refine.PRESETS["default"] = replace(preset, fit=replace(preset.fit, **changes))
    name = "keep_or_refine_" + "_".join(f"{'pts' if k == 'points' else k}{v}" for k, v in changes.items())
    WORK, OUT = HERE / "work" / name, HERE / "results" / f"{name}.json"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["collect", "report"])
    ap.add_argument("--only", choices=["alan", "ct"])
    ap.add_argument("--reverse", action="store_true", help="ALAN shapes in reverse order (a second collector)")
    ap.add_argument("--fit-points", type=int, help="the default preset's latent-fit points per step (a variant)")
    ap.add_argument("--fit-steps", type=int, help="the default preset's latent-fit steps (a variant)")
    ap.add_argument("--out", type=Path, help="the report's JSON (default: the variant's results file)")
    args = ap.parse_args()
    if args.fit_points is not None or args.fit_steps is not None:
        _variant(args.fit_points, args.fit_steps)
    if args.out is not None:
        global OUT
        OUT = args.out
    collect(args.only, args.reverse) if args.what == "collect" else report()


if __name__ == "__main__":
    main()
