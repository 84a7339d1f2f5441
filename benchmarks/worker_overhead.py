"""Overhead of running the engine in its worker process (as Slicer does) instead of in-process
(not a test): run with the project's venv,

    .venv/bin/python benchmarks/worker_overhead.py [--device auto|cpu|cuda] [--repeats 7] [--json out.json]

For the ``fast`` preset on an adrenal-sized case (shape only, and with its CT), in one process:

* cold: the first job through a new ``EngineProcess`` (start Python, import torch, load the prior, run);
* warm: the following jobs on the same worker (wall-clock as the caller sees it);
* in-process: ``refine_mask`` on an already loaded prior, the same inputs;
* overhead = median(warm) - median(in-process): what the process boundary costs a warm job
  (the goal: <= 1 s). Runs alternate warm / in-process so both see the same machine load;
* boundary = median(warm wall-clock - the engine's own seconds inside the worker): the transfer,
  messages and polling alone, insensitive to how busy the machine is while the engine computes.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeARSlicer"))

from NeARSlicerLib.bench import identity_grid  # noqa: E402
from NeARSlicerLib.device import pick_device  # noqa: E402
from NeARSlicerLib.distort import distort  # noqa: E402
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402
from NeARSlicerLib.worker_client import EngineProcess  # noqa: E402


def measure(engine: EngineProcess, mask, grid, image, options: dict, repeats: int) -> dict:
    """Cold (first job of a new worker), warm and in-process seconds for one configuration."""
    t0 = time.perf_counter()
    engine.refine(mask, grid, image, options)
    cold = time.perf_counter() - t0
    refine_mask(mask, grid, image, RefineOptions(**options))  # load the prior in this process too
    warm, local, boundary = [], [], []
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = engine.refine(mask, grid, image, options)
        warm.append(time.perf_counter() - t0)
        boundary.append(warm[-1] - result.seconds)
        t0 = time.perf_counter()
        refine_mask(mask, grid, image, RefineOptions(**options))
        local.append(time.perf_counter() - t0)
    return {"cold_first_job_s": round(cold, 3), "warm_median_s": round(statistics.median(warm), 3),
            "warm_max_s": round(max(warm), 3), "in_process_median_s": round(statistics.median(local), 3),
            "overhead_median_s": round(statistics.median(warm) - statistics.median(local), 3),
            "boundary_median_s": round(statistics.median(boundary), 3), "boundary_max_s": round(max(boundary), 3),
            "repeats": repeats}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--device", default="auto")
    ap.add_argument("--repeats", type=int, default=7)
    ap.add_argument("--json")
    args = ap.parse_args()
    device = pick_device(args.device)
    out: dict = {"device": str(device), "torch": torch.__version__, "threads": torch.get_num_threads(),
                 "machine": platform.machine(), "python": platform.python_version(), "preset": "fast",
                 "cpus": os.cpu_count(), "load_average_1min_at_start": round(os.getloadavg()[0], 2)}
    truth = adrenal_phantom(seed=0)
    mask = distort(truth, seed=1)
    grid = identity_grid(mask.shape)
    image = ct_phantom(truth, seed=0)
    for name, img in (("shape_only", None), ("with_ct", image)):
        with EngineProcess(idle_timeout_s=600) as engine:  # a new worker per configuration: a cold start each
            row = measure(engine, mask, grid, img, {"preset": "fast", "device": args.device}, args.repeats)
        out[name] = row
        print(f"fast, {name} ({mask.shape[0]}^3, {device}): cold first job {row['cold_first_job_s']:.2f} s; "
              f"warm {row['warm_median_s']:.3f} s (max {row['warm_max_s']:.3f}) vs in-process "
              f"{row['in_process_median_s']:.3f} s: overhead {row['overhead_median_s']:+.3f} s; process boundary "
              f"{row['boundary_median_s']:.3f} s (max {row['boundary_max_s']:.3f})")
    out["load_average_1min_at_end"] = round(os.getloadavg()[0], 2)  # other work on the machine skews the timings
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
