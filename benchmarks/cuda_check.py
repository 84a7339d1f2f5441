"""One CUDA check of the engine's fit path, runnable where SimpleITK is absent (the lent GPU machine).

The working-cube part of refine (encode, fit the latent code with the `default` preset's settings,
decode, four mirrored views) on ALAN val shapes with library-mixture errors, run on CUDA and on the
CPU with the same prior and seeds. refine's working cube is a linear resampling of the mask, soft at
the edges; here the cube is the 64^3 1 mm array shifted by half a voxel along each axis (the clean
shape alike), which gives the same kind of input without SimpleITK. Prints Dice to the clean shape on each device, Dice between the
devices and seconds per case (wall clock, after one warm-up case).
Usage: python benchmarks/cuda_check.py DATA.npz [PRIOR] [N]
"""
from __future__ import annotations

import json
import sys
import time

import numpy as np
import torch
from scipy import ndimage

from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.decode import decode_probability
from NeARSlicerLib.fit import fit_latent
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.prior import load_prior
from NeARSlicerLib.refine import FLIPS, PRESETS


def refine_cube(model, rough: np.ndarray, device: torch.device) -> np.ndarray:
    """The working-cube refinement of refine._refine (no crop or map back): mask (n, n, n) bool."""
    preset = PRESETS["default"]
    target = torch.from_numpy(half_voxel(rough))[None, None].to(device)
    views = []
    for index, dims in enumerate(FLIPS[:preset.flips]):
        t = target.flip(dims) if dims else target
        with torch.no_grad():
            z0, context = model.encode(t, None)
        z, fitted, _ = fit_latent(model, t, z0, preset.fit, context, seed=index)
        p = decode_probability(fitted, z, rough.shape[0], context)
        views.append((p.flip([d - 2 for d in dims]) if dims else p).cpu().numpy())
    return np.mean(views, axis=0) >= 0.5


def half_voxel(mask: np.ndarray) -> np.ndarray:
    """``mask`` moved by half a voxel on every axis, linearly interpolated (soft edges), float32."""
    return ndimage.shift(mask.astype(np.float32), 0.5, order=1, mode="constant")


def main() -> None:
    data, prior = sys.argv[1], (sys.argv[2] if len(sys.argv) > 2 else "adrenal")
    n = int(sys.argv[3]) if len(sys.argv) > 3 else 6
    raw = np.load(data)["val_shapes"][:n]
    shapes = [half_voxel(c) >= 0.5 for c in raw]
    rough = [corrupt(c, (1.0, 1.0, 1.0), "mixture", 20000 + i) for i, c in enumerate(raw)]
    devices = [torch.device("cuda")] if torch.cuda.is_available() else []
    devices.append(torch.device("cpu"))
    out: dict = {"prior": prior, "cases": n}
    masks: dict = {}
    for dev in devices:
        model, _ = load_prior(prior, dev)
        refine_cube(model, corrupt(raw[0], (1.0, 1.0, 1.0), "mixture", 0), dev)  # warm-up
        t0, res = time.time(), []
        for r in rough:
            res.append(refine_cube(model, r, dev))
        if dev.type == "cuda":
            torch.cuda.synchronize()
        out[dev.type] = {"seconds_per_case": round((time.time() - t0) / n, 3),
                         "dice": round(float(np.mean([dice(r, c) for r, c in zip(res, shapes)])), 4)}
        masks[dev.type] = res
    out["input_dice"] = round(float(np.mean([dice(half_voxel(r) >= 0.5, c) for r, c in zip(rough, shapes)])), 4)
    if "cuda" in masks:
        out["cuda_vs_cpu_dice"] = round(float(np.mean([dice(a, b) for a, b in zip(masks["cuda"], masks["cpu"])])), 4)
    print("cuda check:", json.dumps(out))


if __name__ == "__main__":
    main()
