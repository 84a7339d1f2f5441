"""Score the priors trained on a GPU (benchmarks/gpu_train.sh) on the robustness benchmark of issue 8.

The cases are those of ``robustness.py`` (same ALAN val shapes, same error seeds), so the input,
smoothing and held-out columns of ``results/robustness.json`` stay comparable; this adds the new
priors' columns. Results: ``benchmarks/results/robustness_v2.json`` (resumable per table).

    PYTHONPATH=NeARSlicer .venv/bin/python benchmarks/robustness_v2.py --s PATH --sa PATH
    # the shipped default's choice among the prior's changes (--work must differ: rows are cached there):
    ... --changes gated --work benchmarks/work/v2_gated --out benchmarks/results/robustness_v2_gated.json
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from robustness import ALAN, REAL_CT, score_rows  # noqa: E402

from NeARSlicerLib.annotation_errors import FAMILIES  # noqa: E402
from NeARSlicerLib.baselines import BASELINES  # noqa: E402
from NeARSlicerLib.bench import BenchCase, alan_cases, identity_grid, real_ct_cases  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402
from NeARSlicerLib.refine import RefineOptions  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--s", required=True, help="shape-only prior to score")
    ap.add_argument("--sa", required=True, help="S+A prior to score")
    ap.add_argument("--work", default="benchmarks/work/v2")
    ap.add_argument("--cases", type=int, default=16)
    ap.add_argument("--out", default="benchmarks/results/robustness_v2.json")
    ap.add_argument("--changes", default="all", help="change policy of the refinements (confidence.apply_changes): "
                    "all (the prior's own output, as first measured) or the do-no-harm default gated")
    args = ap.parse_args()
    torch.set_num_threads(2)
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    out = Path(args.out)
    res = json.loads(out.read_text()) if out.is_file() else {}
    val = np.load(ALAN)["val_shapes"][: args.cases]
    d = dict(preset="default", seed=0, change_policy=args.changes)
    s_new = RefineOptions(prior=args.s, appearance=False, **d)
    # column names: the first run scored the GPU-trained files; other runs say which prior and policy
    s_name, sa_name = (("S (GPU, library)", "S+A (GPU, library)") if args.changes == "all" else
                       (f"S ({Path(args.s).stem}, {args.changes})", f"S+A ({Path(args.sa).stem}, {args.changes})"))

    def run(key, cases, methods):
        if key in res:
            return
        print("==", key, flush=True)
        res[key] = score_rows(cases, methods, work, key.replace(":", "_"))
        atomic_write_text(out, json.dumps(res, indent=1))

    run("family:mixture", alan_cases(val, family="mixture"), {s_name: s_new})
    run("sa:mixture", alan_cases(val, appearance=True, family="mixture"),
        {s_name: s_new, sa_name: RefineOptions(prior=args.sa, **d)})
    for fam in FAMILIES:
        run(f"family:{fam}", alan_cases(val, family=fam), {s_name: s_new})
    run("clean", [BenchCase(f"val{i:03d}", v.astype(bool), v.astype(bool), identity_grid(v.shape))
                  for i, v in enumerate(val)], {s_name: s_new})
    if (REAL_CT / "ct.nii.gz").is_file():
        run("realct:thick_slice", real_ct_cases(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", (8, 9), per_label=8,
                                                family="thick_slice"),
            {**BASELINES, s_name: s_new, sa_name: RefineOptions(prior=args.sa, **d)})
    print("== done", flush=True)


if __name__ == "__main__":
    main()
