"""Benchmark: smoothing baselines vs NeAR single-case refinement on distorted ALAN val shapes.

Every case is distorted with a fixed seed, so runs are comparable; NeAR goes through the
full ``refine_mask`` path (crop, working grid, fit, decode, map back). Reports DSC and NSD
(1 mm tolerance) as mean +- sd in percent and seconds per case.
"""
from __future__ import annotations

import json
import platform
import time
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from tqdm import tqdm

from .baselines import BASELINES
from .distort import distort
from .geometry import Grid
from .metrics import dice, normalized_surface_dice
from .refine import RefineOptions, refine_mask

BENCH_SEED = 20_000  # case i is distorted with seed BENCH_SEED + i


def identity_grid(shape: tuple[int, int, int], spacing: float = 1.0) -> Grid:
    return Grid(shape=tuple(shape), spacing=(spacing,) * 3, origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def _summary(rows: list[dict]) -> dict:
    d = np.array([r["dsc"] for r in rows]) * 100
    s = np.array([r["nsd"] for r in rows]) * 100
    t = np.array([r["seconds"] for r in rows])
    return {"dsc_mean": float(d.mean()), "dsc_sd": float(d.std()), "nsd_mean": float(s.mean()),
            "nsd_sd": float(s.std()), "seconds_mean": float(t.mean()), "cases": len(rows)}


def run_bench(
    shapes: np.ndarray,
    options: Optional[RefineOptions] = None,
    baselines: Optional[dict[str, Callable]] = None,
    log: Callable[[str], None] = print,
) -> dict:
    """Distort each clean shape, refine it every way, score against the clean shape."""
    opts = options or RefineOptions()
    methods = dict(baselines if baselines is not None else BASELINES)
    spacing = (1.0, 1.0, 1.0)
    per: dict[str, list[dict]] = {"input": [], **{k: [] for k in methods}, "NeAR": []}
    for i, clean in enumerate(tqdm(shapes, desc="bench", mininterval=2)):
        clean = np.asarray(clean, bool)
        noisy = distort(clean, seed=BENCH_SEED + i)
        grid = identity_grid(clean.shape)
        outputs: dict[str, tuple[np.ndarray, float]] = {"input": (noisy, 0.0)}
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn(noisy, spacing)
            outputs[name] = (out, time.perf_counter() - t0)
        res = refine_mask(noisy, grid, options=opts)
        outputs["NeAR"] = (res.mask > 0, res.seconds)
        for name, (m, sec) in outputs.items():
            per[name].append({"case": i, "dsc": dice(m, clean), "nsd": normalized_surface_dice(m, clean, spacing, 1.0),
                              "seconds": sec})
    table = {name: _summary(rows) for name, rows in per.items()}
    return {
        "table": table,
        "per_case": per,
        "settings": {"preset": opts.preset, "seed_base": BENCH_SEED, "device": str(res.info.get("device")),
                     "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
                     "prior": res.info.get("prior")},
    }


def format_table(result: dict) -> str:
    """A Markdown table: method | DSC % | NSD % (1 mm) | s / case."""
    lines = ["| method | DSC (%) | NSD 1 mm (%) | s / case |", "|---|---|---|---|"]
    for name, s in result["table"].items():
        lines.append(f"| {name} | {s['dsc_mean']:.2f} +- {s['dsc_sd']:.2f} | {s['nsd_mean']:.2f} +- {s['nsd_sd']:.2f} "
                     f"| {s['seconds_mean']:.2f} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(result, indent=1))
    tmp.replace(path)
