"""Generation speed of the procedural anatomy shapes and their synthetic context (not a test):

    OMP_NUM_THREADS=1 .venv/bin/python benchmarks/anatomy_shapes_speed.py [--per-class 20] [--n 64] [--sheet PNG]

Prints, per class, the mean / 95th-percentile / max CPU time of ``random_anatomy`` on one core
(process time, so that other jobs on a shared machine inflate it less than wall time), and
the time of ``synthetic_context`` for CT and MR, plus the training domain of the non-held-out
classes (``domain_of``) as it would go into a prior card. ``--sheet`` also draws a contact sheet:
per class, three shapes (projections) and a mid slice of a CT and an MR-like context.
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
    ap.add_argument("--sheet", help="write a PNG contact sheet of the classes here")
    args = ap.parse_args()
    rng = np.random.default_rng(args.seed)
    shapes, all_ms = [], []
    print("CPU ms per shape (one thread)")
    print(f"{'class':10s} {'mean ms':>8s} {'p95 ms':>8s} {'max ms':>8s} {'voxels':>8s}")
    for cls in CLASSES:
        ms = []
        for _ in range(args.per_class):
            t = time.process_time()
            s = random_anatomy(rng, [cls], n=args.n)
            ms.append(1000 * (time.process_time() - t))
            shapes.append(s)
        all_ms += ms
        vox = np.mean([s.mask.sum() for s in shapes[-args.per_class:]])
        print(f"{cls:10s} {np.mean(ms):8.1f} {np.percentile(ms, 95):8.1f} {np.max(ms):8.1f} {vox:8.0f}")
    print(f"{'all':10s} {np.mean(all_ms):8.1f} {np.percentile(all_ms, 95):8.1f} {np.max(all_ms):8.1f}")
    for modality in ("CT", "MR"):
        ms = []
        for s in shapes[:: max(1, len(shapes) // 20)]:
            t = time.process_time()
            synthetic_context(s.mask, s.spacing_mm, rng, modality=modality)
            ms.append(1000 * (time.process_time() - t))
        print(f"context {modality}: mean {np.mean(ms):.1f} ms, max {np.max(ms):.1f} ms ({len(ms)} images)")
    train = [s for s in shapes if s.cls not in HELD_OUT_CLASSES]
    print("training domain:", json.dumps(domain_of(train)))
    if args.sheet:
        contact_sheet(args.sheet, np.random.default_rng(args.seed), args.n)


def contact_sheet(path: str, rng: np.random.Generator, n: int) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from NeARSlicerLib.anatomy_shapes import typical_tissue

    fig, ax = plt.subplots(len(CLASSES), 5, figsize=(7.5, 1.5 * len(CLASSES)))
    for row, cls in enumerate(CLASSES):
        for col in range(3):
            s = random_anatomy(rng, [cls], n=n)
            ax[row, col].imshow(s.mask.sum(axis=col), cmap="gray")
            ax[row, col].set_title(f"{cls}{' (held out)' if cls in HELD_OUT_CLASSES else ''} {s.size_mm:.0f} mm",
                                   fontsize=6)
        k = int(np.argwhere(s.mask)[:, 0].mean())
        for col, modality in ((3, "CT"), (4, "MR")):
            img = synthetic_context(s.mask, s.spacing_mm, rng, modality=modality, tissue=typical_tissue(cls, rng))
            window = dict(vmin=-200, vmax=400) if modality == "CT" else {}
            ax[row, col].imshow(img[k], cmap="gray", **window)
            ax[row, col].contour(s.mask[k], [0.5], colors="r", linewidths=0.4)
            ax[row, col].set_title(modality, fontsize=6)
    for a in ax.ravel():
        a.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=60)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
