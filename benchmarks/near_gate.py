"""Which changes a thick error lets through the do-no-harm gate: all of the prior's (before 2026-12-06)
or only those within ``near_mm`` of a thick change (``confidence.NEAR_MM``, now).

ALAN val shapes 0-15 (no prior trained on them), each distorted by every family of the error library,
its mixture, its version of the paper's generator (``paper``) and the held-out processes
(``heldout_errors``: no gate was set on them), with the bench's seeds (``bench.alan_cases``); the shipped shape-only adrenal prior, ``default``
preset. Each case is refined once with every change (``collect``, cached in ``benchmarks/work/near_gate``,
not committed) and every policy is scored on that same refinement (``report`` ->
``benchmarks/results/near_gate.json``). ``keep_or_refine.py`` scores the same variants on its own
cases (ALAN val 30-41, other seeds, and the example CT).

    PYTHONPATH=NeARSlicer python benchmarks/near_gate.py collect
    PYTHONPATH=NeARSlicer python benchmarks/near_gate.py report
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

from NeARSlicerLib.annotation_errors import FAMILIES  # noqa: E402
from NeARSlicerLib.heldout_errors import HELD_OUT_ERRORS, HELD_OUT_MIXTURE  # noqa: E402

WORK = HERE / "work" / "near_gate"
OUT = HERE / "results" / "near_gate.json"
ALAN = HERE.parent.parent / "shared" / "data" / "alan64" / "alan64_trainval.npz"
SETS = ("clean", *FAMILIES, "mixture", "paper", *HELD_OUT_ERRORS, HELD_OUT_MIXTURE)
HELD_OUT = (*HELD_OUT_ERRORS, HELD_OUT_MIXTURE)
VARIANTS = {"every change (gate of before)": None, "near 2 mm": 2.0, "near 3 mm (now)": 3.0, "near 5 mm": 5.0}


def _cases(name: str, shapes: np.ndarray):
    from NeARSlicerLib.bench import BenchCase, alan_cases, identity_grid

    if name == "clean":
        return [BenchCase(f"val{i:03d}", v.astype(bool), v.astype(bool), identity_grid(v.shape))
                for i, v in enumerate(shapes)]
    return alan_cases(shapes, family=name)


def collect(n: int) -> None:
    import warnings

    from NeARSlicerLib.refine import RefineOptions, refine_mask

    warnings.simplefilter("ignore")
    WORK.mkdir(parents=True, exist_ok=True)
    shapes = np.load(ALAN)["val_shapes"][:n]
    for name in SETS:
        path = WORK / f"{name}.npz"
        if path.is_file():
            continue
        t0, out = time.perf_counter(), {}
        for c in _cases(name, shapes):
            every = refine_mask(c.annotation > 0, c.grid,
                                options=RefineOptions(structure="adrenal gland", change_policy="all")).mask > 0
            for key, a in (("ann", c.annotation > 0), ("every", every), ("truth", c.truth > 0)):
                out[f"{c.name}|{key}"] = np.packbits(a)
        np.savez_compressed(WORK / f".{name}.npz", shape=np.asarray(shapes[0].shape), **out)
        (WORK / f".{name}.npz").rename(path)
        print(f"{name:16s} {time.perf_counter() - t0:6.0f} s", flush=True)


def _load(name: str):
    d = np.load(WORK / f"{name}.npz")
    shape = tuple(int(s) for s in d["shape"])
    n = int(np.prod(shape))
    unpack = lambda k: np.unpackbits(d[k])[:n].reshape(shape).astype(bool)  # noqa: E731
    for case in sorted({k.split("|")[0] for k in d.files if "|" in k}):
        yield case, unpack(f"{case}|ann"), unpack(f"{case}|every"), unpack(f"{case}|truth")


def report() -> None:
    from NeARSlicerLib.confidence import apply_changes
    from NeARSlicerLib.metrics import dice, normalized_surface_dice

    sp = (1.0, 1.0, 1.0)
    cols = ["input", "all", "thick", *VARIANTS]
    table, rows = {}, []
    for name in SETS:
        for case, ann, every, truth in _load(name):
            outs = {"input": ann, "all": every, "thick": apply_changes(ann, every, sp, "thick")}
            outs.update({v: apply_changes(ann, every, sp, "gated", near_mm=near) for v, near in VARIANTS.items()})
            rows.append({"set": name, "case": case,
                         **{f"{c}|dsc": round(100 * dice(m, truth), 3) for c, m in outs.items()},
                         **{f"{c}|nsd": round(100 * normalized_surface_dice(m, truth, sp, 1.0), 3)
                            for c, m in outs.items()}})
    groups = {name: [name] for name in SETS}
    groups["library and paper (rough)"] = [*FAMILIES, "mixture", "paper"]
    groups["held-out processes"] = list(HELD_OUT)
    groups["all rough"] = [s for s in SETS if s != "clean"]
    for g, members in groups.items():
        sel = [r for r in rows if r["set"] in members]
        table[g] = {"cases": len(sel), **{
            c: {"dsc": round(float(np.mean([r[f"{c}|dsc"] for r in sel])), 2),
                "nsd": round(float(np.mean([r[f"{c}|nsd"] for r in sel])), 2),
                "worse_by_1_dsc": sum(r[f"{c}|dsc"] < r["input|dsc"] - 1.0 for r in sel)} for c in cols}}
        print(f"{g:26s} n={len(sel):3d} " + " ".join(
            f"{c[:12]}={table[g][c]['dsc']:.2f}/{table[g][c]['nsd']:.2f}({table[g][c]['worse_by_1_dsc']})" for c in cols))
    OUT.write_text(json.dumps({"script": "benchmarks/near_gate.py", "prior": "adrenal_v2 (shape only), default",
                               "nsd_mm": 1.0, "table": table, "rows": rows}, indent=1) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("what", choices=["collect", "report"])
    ap.add_argument("--cases", type=int, default=16)
    args = ap.parse_args()
    collect(args.cases) if args.what == "collect" else report()


if __name__ == "__main__":
    main()
