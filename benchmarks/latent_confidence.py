"""Is the fitted latent code a confidence without an image? (issue 9's "how far the fitted code lies
from the prior's codes"). Each case refined shape only with every change (``--changes all``: the
prior's proposal), ``--prior auto``, ``default``; per set, the AUC with which each signal ranks the
proposals that beat their input by more than 1 DSC above those worse by more than 1 DSC:

* ``latent_rms`` (``info``): root-mean-square of the fitted codes (low: ranked as better);
* ``latent_shift``: how far the latent fit moved them from the encoder's codes (low: better);
* ``view_confidence``: the mirrored views' calibrated estimate (high: better), for comparison.

Sets: ALAN val 0-31 with the error library's mixture and with the held-out mixture, ALAN val 0-11
clean, every structure of the example CT at 3 mm with the mixture (2 seeds), the two real adrenal
glands on 1 mm cubes (6 seeds), 20 shapes of the general prior's held-out classes.

    PYTHONPATH=NeARSlicer python benchmarks/latent_confidence.py [--json benchmarks/results/latent_confidence.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import warnings
from pathlib import Path

import numpy as np

from NeARSlicerLib.bench import alan_cases, real_ct_cases, real_ct_structures, unseen_class_cases
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.output_safety import atomic_write_text
from NeARSlicerLib.refine import RefineOptions, refine_mask

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared" / "data"
# (signal, sign): a signal times its sign is higher for a proposal ranked as better
SIGNALS = (("latent_rms", -1.0), ("latent_shift", -1.0), ("view_confidence", 1.0))


def case_sets() -> dict:
    """{set: [(case, structure, clean?)]}."""
    ct_dir = SHARED / "totalseg_example"
    ct, seg = ct_dir / "ct.nii.gz", ct_dir / "seg.nii.gz"
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"][:32].astype(bool)
    return {
        "ALAN val, mixture": [(c, "adrenal gland", False) for c in alan_cases(val, family="mixture")],
        "ALAN val, held-out mixture": [(c, "adrenal gland", False) for c in alan_cases(val, family="heldout_mixture")],
        "ALAN val, clean": [(c, "adrenal gland", True) for c in alan_cases(val[:12])],
        "example CT, every structure, mixture": [(c, c.structure, False)
                                                 for c in real_ct_structures(ct, seg, per_label=2)],
        "held-out classes, mixture": [(c, None, False) for c in unseen_class_cases(20)],
        "example CT adrenal glands, 1 mm cubes, mixture": [(c, "adrenal gland", False)
                                                           for c in real_ct_cases(ct, seg, per_label=6, family="mixture")],
    }


def main() -> None:
    sys.path.insert(0, str(HERE))
    from image_confidence import auc

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=HERE / "results" / "latent_confidence.json")
    args = p.parse_args()
    rows, summary = [], {}
    for name, cases in case_sets().items():
        for case, structure, clean in cases:
            annotation = np.asarray(case.truth if clean else case.annotation, bool)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                res = refine_mask(annotation.astype(np.uint8), case.grid, None,
                                  RefineOptions(structure=structure, change_policy="all"))
            rows.append({"set": name, "case": case.name, "prior": res.info.get("prior_name"),
                         "input_dsc": dice(annotation, case.truth), "proposal_dsc": dice(res.mask, case.truth),
                         **{k: res.info.get(k) for k, _ in SIGNALS}})
        own = [r for r in rows if r["set"] == name]
        better = [r for r in own if r["proposal_dsc"] > r["input_dsc"] + 0.01]
        worse = [r for r in own if r["proposal_dsc"] < r["input_dsc"] - 0.01]
        summary[name] = {"cases": len(own), "better": len(better), "worse": len(worse),
                         "latent_rms_mean": round(float(np.mean([r["latent_rms"] for r in own])), 4),
                         **{f"auc_{k}": auc([sign * r[k] for r in better if r[k] is not None],
                                            [sign * r[k] for r in worse if r[k] is not None]) for k, sign in SIGNALS}}
        print(name, summary[name], flush=True)
    atomic_write_text(str(args.json), json.dumps({"sets": summary, "rows": rows}, indent=1) + "\n")


if __name__ == "__main__":
    main()
