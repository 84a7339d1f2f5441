"""Does a general prior trained with errors in voxels (``train-prior --p-voxel-errors``) repair what
annotators do on a coarse CT? Score it as ``--prior auto`` uses it, on the real example CT's structures.

    PYTHONPATH=NeARSlicer python benchmarks/voxel_errors_prior.py SET OUT.json [--anatomy PRIOR.safetensors]

SET: ``mm`` (bench --all-structures: the library's mixture in mm, mild at 3 mm), ``voxel`` (the same
mixture with its sizes in the CT's voxels: ``--error-units voxel``, the issue's input level), ``heldout``
(the held-out processes' mixture in voxels: no prior or gate trained or tuned on it) or ``unseen`` (bench
--unseen-classes 20). ``--anatomy`` replaces the general prior that ``auto`` picks for every structure but
the adrenal glands (without it: the shipped ``anatomy_v1``). Rows: the product's default with the CT, and
every change of the prior (``--changes all``, never kept), DSC / NSD at 3 mm (unseen: each case's voxel).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))
sys.path.insert(0, str(HERE))

from NeARSlicerLib import prior as prior_mod  # noqa: E402
from NeARSlicerLib.bench import by_structure, real_ct_structures, run_bench, unseen_class_cases  # noqa: E402
from NeARSlicerLib.output_safety import atomic_write_text  # noqa: E402
from NeARSlicerLib.refine import RefineOptions  # noqa: E402

REAL_CT = HERE.parent.parent / "shared" / "data" / "totalseg_example"


def cases(which: str) -> tuple[list, float | None]:
    if which == "unseen":
        return unseen_class_cases(20), None
    family = "heldout_mixture" if which == "heldout" else "mixture"
    units = "mm" if which == "mm" else "voxel"
    return real_ct_structures(REAL_CT / "ct.nii.gz", REAL_CT / "seg.nii.gz", family=family, error_units=units), 3.0


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("set", choices=("mm", "voxel", "heldout", "unseen"))
    ap.add_argument("out")
    ap.add_argument("--anatomy", help="general S prior to score instead of the shipped one")
    ap.add_argument("--default-only", action="store_true", help="score the default only (not every change)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:  # the candidate as shipped lives here while it is scored
        if args.anatomy:  # scored as it would ship: float16, the shipped card's scale and domain
            from candidate_prior import as_shipped

            shipped = as_shipped(*prior_mod.load_prior(args.anatomy), "anatomy", Path(tmp))
            pair = prior_mod.PRIORS["anatomy"]
            prior_mod.PRIORS["anatomy"] = type(pair)(shipped, pair.appearance, pair.any_modality)
        chosen, tol = cases(args.set)
        variants = {"default": RefineOptions()}
        if not args.default_only:
            variants["every change"] = RefineOptions(change_policy="all", keep_threshold=0.0)
        result = run_bench(chosen, variants=variants, baselines={}, tolerance_mm=tol)
    result["by_structure"] = by_structure(result)
    result["settings"]["anatomy_prior"] = args.anatomy or str(prior_mod.ANATOMY_PRIOR)
    result["settings"]["set"] = args.set
    atomic_write_text(args.out, json.dumps(result, indent=1))
    for name, row in result["table"].items():
        print(f"{name}: {row['dsc_mean']:.2f} / {row['nsd_mean']:.2f}; worse by > 1 DSC: "
              f"{', '.join(result['by_structure']['worse'].get(name, [])) or 'none'}")


if __name__ == "__main__":
    main()
