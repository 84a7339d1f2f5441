"""Does each preset keep a correct annotation? The clean sets of ``image_confidence.py`` refined with the
``fast`` and the ``default`` preset (``--prior auto``, the case's image): every structure of the example
CT at 3 mm (TotalSegmentator's masks, our reference), ALAN val 0-11 in their phantom CTs, and the
example's two adrenal glands on 1 mm cubes (told the CT's 3 mm voxel). Dice of the output to the
clean input, per set, and each case below 0.97 with its action and confidence.

    PYTHONPATH=NeARSlicer python benchmarks/preset_clean.py [--json benchmarks/results/preset_clean.json]
"""
from __future__ import annotations

import argparse
import json
import warnings
from pathlib import Path

import numpy as np

from NeARSlicerLib.bench import alan_cases, real_ct_cases, real_ct_structures
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.output_safety import atomic_write_text
from NeARSlicerLib.refine import RefineOptions, refine_mask

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
PRESETS = ("fast", "default")


def clean_sets() -> dict:
    """{set: [(name, clean mask, grid, image, structure, image voxel mm or None)]}."""
    ct_dir = SHARED / "totalseg_example"
    ct, seg = ct_dir / "ct.nii.gz", ct_dir / "seg.nii.gz"
    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"][:12].astype(bool)
    return {
        "example CT, every structure, 3 mm": [(c.name[:-3], c.truth, c.grid, c.image, c.structure, None)
                                              for c in real_ct_structures(ct, seg, per_label=1)],
        "ALAN val 0-11, phantom CT": [(c.name, c.truth, c.grid, c.image, "adrenal gland", None)
                                      for c in alan_cases(val, appearance=True)],
        "example CT adrenal glands, 1 mm cubes": [(c.name[:-3], c.truth, c.grid, c.image, "adrenal gland",
                                                   c.image_voxel_mm) for c in real_ct_cases(ct, seg, per_label=1)],
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "preset_clean.json")
    args = p.parse_args()
    out: dict = {}
    for name, cases in clean_sets().items():
        out[name] = {}
        for preset in PRESETS:
            kept, changed = [], []
            for case, truth, grid, image, structure, voxel in cases:
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    res = refine_mask(truth.astype(np.uint8), grid, image,
                                      RefineOptions(structure=structure, preset=preset, image_voxel_mm=voxel))
                kept.append(dice(res.mask, truth))
                if kept[-1] < 0.97:
                    changed.append({"case": case, "dice": round(kept[-1], 4), "prior": res.info.get("prior_name"),
                                    "action": res.info["action"], "confidence": res.info.get("confidence"),
                                    "gate_opened_by_image": res.info.get("gate_opened_by_image")})
            out[name][preset] = {"cases": len(kept), "mean_dice": round(float(np.mean(kept)), 4),
                                 "min_dice": round(float(np.min(kept)), 4), "below_0.97": changed}
            print(name, preset, out[name][preset], flush=True)
    atomic_write_text(str(args.json), json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
