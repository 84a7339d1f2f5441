"""How fast the CPU makes training batches (not a test): run with the project's venv,

    .venv/bin/python benchmarks/batch_speed.py [--data ALAN.npz] [--steps 6] [--json out.json]

On a lent GPU the processes making batches were the limit (README "Training the priors"), so seconds per
batch set how many steps a GPU minute trains. Times ``training_data.make_raw`` (16 samples) in this one
process for the four data specs of ``benchmarks/gpu_train.sh`` (adrenal S, adrenal S+A with MR-like
images, general S with half the errors in voxels, general S+A), after one warm-up batch, and hashes the
batches made, so that two commits can be compared for speed and for making the same batches.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NeARSlicer"))

from NeARSlicerLib.annotation_errors import ALL_FAMILIES  # noqa: E402
from NeARSlicerLib.training_data import DataSpec, make_raw, step_rng  # noqa: E402

SPECS = {
    "adrenal_s": DataSpec(source="alan", families=ALL_FAMILIES),
    "adrenal_mr": DataSpec(source="alan", appearance=True, appearance_norm="case", p_mr=0.5, families=ALL_FAMILIES),
    "anatomy_s": DataSpec(source="anatomy", families=ALL_FAMILIES, p_voxel_errors=0.5),
    "anatomy_mr": DataSpec(source="anatomy", appearance=True, appearance_norm="case", p_mr=0.3, families=ALL_FAMILIES),
}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "alan64" / "alan64_trainval.npz"))
    ap.add_argument("--steps", type=int, default=6)
    ap.add_argument("--json", help="write the results here")
    args = ap.parse_args()
    shapes = np.load(args.data)["train_shapes"][:200]
    rows = {}
    for name, spec in SPECS.items():
        make_raw(shapes, spec, step_rng(1, 0), 16)  # warm-up: imports, caches
        digest = hashlib.sha256()
        t0 = time.perf_counter()
        for step in range(1, args.steps + 1):
            raw = make_raw(shapes, spec, step_rng(1, step), 16)
            for a in (raw.clean, raw.noisy, raw.image, raw.zoom, raw.spacing_mm):
                if a is not None:
                    digest.update(np.ascontiguousarray(a).tobytes())
        rows[name] = {"seconds_per_batch": round((time.perf_counter() - t0) / args.steps, 3),
                      "sha256": digest.hexdigest()}
        print(name, rows[name], flush=True)
    result = {"batch": 16, "steps": args.steps, "specs": rows}
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
