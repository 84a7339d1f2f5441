"""Generation speed of the procedural anatomy shapes and their synthetic context (not a test):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anatomy_shapes_speed.py [--per-class 20] [--n 64]

Prints, per class, the mean / 95th-percentile / max time of ``random_anatomy`` on one core, and
the time of ``synthetic_context`` for CT and MR, plus the training domain of the non-held-out
classes (``domain_of``) as it would go into a prior card.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeARSlicer"))

from NeARSlicerLib.anatomy_shapes import (CLASSES, HELD_OUT_CLASSES, domain_of, random_anatomy,  # noqa: E402
                                          synthetic_context)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--per-class", type=int, default=20)
    ap.add_argument("--n", type=int, default=64)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shapes, all_ms = [], []
    print(f"{'class':10s} {'mean ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'voxels':>8s}")
    for cls in CLASSES:
        ms = []
        for _ in range(args.per_class):
            t = time.perf_counter()
            s = random_anatomy(rng, [cls], n=args.n)
            ms.append(1000 * (time.perf_counter() - t))
            shapes.append(s)
        all_ms += ms
        vox = np.mean([s.mask.sum() for s in shapes[-args.per_class:]])
        print(f"{cls:10s} {np.mean(ms):8.1f} {np.percentile(ms, 95):8.1f} {np.max(ms):8.1f} {vox:8.0f}")
    print(f"{'all':10s} {np.mean(all_ms):8.1f} {np.percentile(all_ms, 95):8.1f} {np.max(all_ms):8.1f}")
    for modality in ("CT", "MR"):
        ms = []
        for s in shapes[:: max(1, len(shapes) // 20)]:
            t = time.perf_counter()
            synthetic_context(s.mask, s.spacing_mm, rng, modality=modality)
            ms.append(1000 * (time.perf_counter() - t))
        print(f"context {modality}: mean {np.mean(ms):.1f} ms, max {np.max(ms):.1f} ms ({len(ms)} images)")
    train = [s for s in shapes if s.cls not in HELD_OUT_CLASSES]
    print("training domain:", json.dumps(domain_of(train)))


if __name__ == "__main__":
    main()
