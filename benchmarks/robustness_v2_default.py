"""The robustness benchmark's ALAN rows with today's default output, re-scored from the cached
every-change refinements of ``robustness_v2.py`` (``benchmarks/work/v2``, S ``adrenal_v2``).

``refine`` (keep threshold 0) returns ``confidence.default_output`` of its every-change mask (the
annotation for a segment outside the prior's domain, else ``apply_changes(..., "gated")``), so the
default output is computed from the cached every-change masks, without refining again. Results:
``benchmarks/results/robustness_v2_default.json``.

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/robustness_v2_default.py
"""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from keep_or_refine import domain_of  # noqa: E402
from robustness import ALAN, _score  # noqa: E402

from NeARSlicerLib.annotation_errors import FAMILIES  # noqa: E402
from NeARSlicerLib.bench import BenchCase, alan_cases, identity_grid  # noqa: E402
from NeARSlicerLib.confidence import default_output  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402

WORK = HERE / "work" / "v2"
OUT = HERE / "results" / "robustness_v2_default.json"
NAME = "S (GPU, library)"  # the every-change column of robustness_v2.json: the shipped adrenal_v2


def main() -> None:
    val = np.load(ALAN)["val_shapes"][:16]
    domain = domain_of("adrenal-s")
    sets = {f"family:{f}": alan_cases(val, family=f) for f in ("mixture", *FAMILIES)}
    sets["clean"] = [BenchCase(f"val{i:03d}", v.astype(bool), v.astype(bool), identity_grid(v.shape))
                     for i, v in enumerate(val)]
    res = {}
    for key, cases in sets.items():
        pred = np.load(WORK / f"pred_{key.replace(':', '_')}.npz")
        rows = {"input": [], "every change": [], "default": []}
        for c in cases:
            every = np.unpackbits(pred[f"{NAME}|{c.name}"])[: c.truth.size].reshape(c.truth.shape).astype(bool)
            for col, mask in (("input", c.annotation > 0), ("every change", every),
                              ("default", default_output(c.annotation, every, c.grid.spacing, domain))):
                rows[col].append(_score(mask, c))
        res[key] = {col: {"dsc": round(100 * float(np.mean([r["dsc"] for r in rs])), 2),
                          "nsd": round(100 * float(np.mean([r["nsd"] for r in rs])), 2),
                          "worse_by_1_dsc": sum(r["dsc"] < i["dsc"] - 0.01 for r, i in zip(rs, rows["input"]))}
                    for col, rs in rows.items()}
        print(key, {c: (v["dsc"], v["nsd"], v["worse_by_1_dsc"]) for c, v in res[key].items()}, flush=True)
    atomic_write_text(OUT, json.dumps({"script": "benchmarks/robustness_v2_default.py", "prior": "adrenal_v2",
                                       "cases": 16, "rows": res}, indent=1) + "\n")


if __name__ == "__main__":
    main()
