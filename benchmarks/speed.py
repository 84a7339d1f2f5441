"""Speed and memory benchmark of the engine (not a test): run with the project's venv,

    .venv/bin/python benchmarks/speed.py [--device auto|cpu|cuda] [--json out.json]

Reports, in one process: end-to-end refinement of an adrenal-like phantom mask with the adrenal
pair per preset (best of 3; shape only, and with its phantom CT), the default preset without its
latent-fit steps (an ablation), dense vs coarse-to-fine decoding of a 128^3 grid (and their ratio),
and the peak RSS.
"""
from __future__ import annotations

import argparse
import json
import platform
import resource
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeARSlicer"))

from NeARSlicerLib.bench import identity_grid  # noqa: E402
from NeARSlicerLib.decode import decode_logits, model_query  # noqa: E402
from NeARSlicerLib.device import pick_device  # noqa: E402
from NeARSlicerLib.distort import distort  # noqa: E402
from NeARSlicerLib.model import voxel_centres  # noqa: E402
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, get_prior, refine_mask  # noqa: E402


def best_of(fn, repeats: int = 3) -> float:
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        if torch.cuda.is_available():
            torch.cuda.synchronize()
        times.append(time.perf_counter() - t0)
    return min(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--json")
    args = ap.parse_args()
    device = pick_device(args.device)
    out: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "machine": platform.machine()}

    truth = adrenal_phantom(seed=0)
    noisy = distort(truth, seed=1)
    grid = identity_grid(noisy.shape)
    ct = ct_phantom(truth, seed=1)
    gland = "left adrenal gland"  # the product's main job: the adrenal pair (S, and S+A with the CT)
    refine_mask(noisy, grid, options=RefineOptions(preset="fast", device=args.device, structure=gland))  # warm-up
    refine_mask(noisy, grid, ct, RefineOptions(preset="fast", device=args.device, structure=gland))
    runs = [(f"refine_{p}_s", p, None, None) for p in ("fast", "default", "quality")]
    runs += [(f"refine_sa_{p}_s", p, ct, None) for p in ("fast", "default")]
    # ablation: the default preset's mirrored views without their 5 latent-fit steps (encoder code only)
    runs += [("refine_default_no_fit_s", "default", None, 0)]
    for key, preset, image, steps in runs:
        seconds = []
        for _ in range(3):
            res = refine_mask(noisy, grid, image, RefineOptions(preset=preset, device=args.device, structure=gland,
                                                                steps=steps))
            seconds.append(res.seconds)
        out[key] = round(min(seconds), 3)
        out["prior_" + key[:-2]] = res.info["prior_name"]
        print(f"{key}: {min(seconds):.2f} s end to end (best of 3), prior {res.info['prior_name']}, "
              f"{int(noisy.sum())}-voxel mask, {device}")

    model, _ = get_prior(None, device)
    with torch.no_grad():
        target = torch.from_numpy(noisy.astype(np.float32))[None, None].to(device)
        z, context = model.encode(target)
        query = model_query(model, z, context)
        maps = model.maps(z, context)
        pts = voxel_centres(128, device).view(-1, 3)

        def dense():  # the baseline: the model's point query at every voxel centre
            return torch.cat([model.query(maps, p[None], context)[0] for p in pts.split(131072)])

        evaluated = {}

        def fast():
            evaluated["n"] = decode_logits(query, 128)[1]

        t_dense, t_fast = best_of(dense, 2), best_of(fast, 3)
    out.update(decode128_dense_s=round(t_dense, 3), decode128_coarse_to_fine_s=round(t_fast, 3),
               decode128_speedup=round(t_dense / t_fast, 2), decode128_mlp_points=evaluated["n"])
    print(f"decode 128^3: dense {t_dense:.2f} s, coarse-to-fine {t_fast:.2f} s ({t_dense / t_fast:.1f}x, "
          f"{evaluated['n']} of {128 ** 3} points through the MLP)")
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    out["peak_rss_mb"] = round(rss_mb, 1)
    print(f"peak RSS {rss_mb:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
