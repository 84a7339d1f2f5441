"""Benchmark: smoothing baselines vs NeAR (shape-only S, shape + appearance S+A; single-case
refinement and study mode) on distorted annotations with known truth.

Case sets:

* ``alan_cases``: ALAN val shapes (1 mm, 64^3), each distorted with a fixed seed; with
  ``appearance`` each also gets a synthetic CT (``phantom.ct_phantom``, same seed) around its
  clean shape, so the image shows the true boundary and the annotation does not.
* ``real_ct_cases``: labels of a real CT (the adrenal glands of ../shared/data/totalseg_example),
  resampled with the CT onto a 1 mm working cube around each label, each distorted with several
  seeds.

Every NeAR row goes through the full ``refine_mask`` (or ``run_study``) path: crop, working grid,
fit, decode, map back. Reports DSC and NSD (1 mm tolerance) as mean +- sd in percent and seconds
per case (a study's training time is shared out over its cases).
"""
from __future__ import annotations

import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Sequence, Union

import numpy as np
import torch
from tqdm import tqdm

from .baselines import BASELINES
from .annotation_errors import corrupt
from .distort import distort
from .errors import InputError
from .geometry import Grid, to_working
from .metrics import dice, normalized_surface_dice
from .refine import RefineOptions, refine_mask

BENCH_SEED = 20_000  # case i is distorted (and its phantom CT drawn) with seed BENCH_SEED + i


@dataclass
class BenchCase:
    """A distorted ``annotation`` of a known ``truth`` (bool ``[k, j, i]`` on ``grid``), with its CT (HU) or None."""

    name: str
    truth: np.ndarray
    annotation: np.ndarray
    grid: Grid
    image: Optional[np.ndarray] = None


def identity_grid(shape: tuple[int, int, int], spacing: float = 1.0) -> Grid:
    return Grid(shape=tuple(shape), spacing=(spacing,) * 3, origin=(0.0, 0.0, 0.0),
                direction=(1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0))


def alan_cases(shapes: np.ndarray, appearance: bool = False, family: Optional[str] = None) -> list[BenchCase]:
    """Distorted clean shapes (1 mm); with ``appearance`` a synthetic CT around each clean shape.

    ``family``: an ``annotation_errors`` family (or ``mixture``) instead of the v1 generator
    (``distort``); case i always gets seed ``BENCH_SEED + i``.
    """
    from .phantom import ct_phantom

    cases = []
    for i, clean in enumerate(shapes):
        clean = np.asarray(clean, bool)
        image = ct_phantom(clean, seed=BENCH_SEED + i) if appearance else None
        noisy = (distort(clean, seed=BENCH_SEED + i) if family is None
                 else corrupt(clean, (1.0, 1.0, 1.0), family, BENCH_SEED + i, image=image))
        cases.append(BenchCase(f"val{i:03d}", clean, noisy, identity_grid(clean.shape), image))
    return cases


def real_ct_cases(ct_path: Union[str, Path], seg_path: Union[str, Path], labels: Sequence[int] = (8, 9),
                  per_label: int = 10, fov_mm: float = 64.0, family: Optional[str] = None) -> list[BenchCase]:
    """Cases from a real CT and its label map: each label's mask and the CT are resampled onto a
    1 mm cube of side ``fov_mm`` around the label (the truth), distorted with ``per_label`` seeds
    (``family``: an ``annotation_errors`` family instead of the v1 generator)."""
    from .io import read_image, read_mask

    image, igrid = read_image(str(ct_path))
    cases = []
    for label in labels:
        mask, grid, _ = read_mask(str(seg_path), label=label)
        if not igrid.same_as(grid):
            raise InputError(f"{seg_path} and {ct_path} are on different grids")
        if not mask.any():
            raise InputError(f"label {label} is empty in {seg_path}")
        work = to_working(mask > 0, grid, image, margin_mm=8.0, spacing_mm=1.0, min_fov_mm=fov_mm)
        truth = work.mask >= 0.5
        for s in range(per_label):
            seed = BENCH_SEED + 100 * label + s
            noisy = (distort(truth, seed=seed) if family is None
                     else corrupt(truth, work.grid.spacing, family, seed, image=work.image))
            cases.append(BenchCase(f"label{label}_d{s}", truth, noisy, work.grid, work.image))
    return cases


def _summary(rows: list[dict]) -> dict:
    d = np.array([r["dsc"] for r in rows]) * 100
    s = np.array([r["nsd"] for r in rows]) * 100
    t = np.array([r["seconds"] for r in rows])
    return {"dsc_mean": float(d.mean()), "dsc_sd": float(d.std()), "nsd_mean": float(s.mean()),
            "nsd_sd": float(s.std()), "seconds_mean": float(t.mean()), "cases": len(rows)}


def _score(case: BenchCase, mask: np.ndarray, seconds: float) -> dict:
    return {"case": case.name, "dsc": dice(mask, case.truth),
            "nsd": normalized_surface_dice(mask, case.truth, case.grid.spacing, 1.0), "seconds": seconds}


def run_bench(
    cases: Union[Sequence[BenchCase], np.ndarray],
    options: Optional[RefineOptions] = None,
    baselines: Optional[dict[str, Callable]] = None,
    log: Callable[[str], None] = print,
    variants: Optional[dict[str, RefineOptions]] = None,
    studies: Optional[dict[str, tuple[Optional[str], bool]]] = None,
) -> dict:
    """Score every method on every case against its truth.

    ``cases``: BenchCase list, or an array of clean shapes (``alan_cases`` without images).
    ``variants``: single-case NeAR rows, name -> RefineOptions (default ``{"NeAR": options}``).
    ``studies``: study-mode rows, name -> (prior path or None, use images), fast recipe on all cases.
    """
    from .study import StudyCase, StudyConfig, run_study

    if not isinstance(cases, (list, tuple)) or (cases and not isinstance(cases[0], BenchCase)):
        cases = alan_cases(np.asarray(cases))
    methods = dict(baselines if baselines is not None else BASELINES)
    # the benchmark's cases are adrenal glands (ALAN, the real CT's labels 8/9): auto picks that prior
    variants = dict(variants or {"NeAR": options or RefineOptions(structure="adrenal gland")})
    per: dict[str, list[dict]] = {"input": [], **{k: [] for k in methods}, **{k: [] for k in variants}}
    info = {}
    for case in tqdm(cases, desc="bench", mininterval=2):
        per["input"].append(_score(case, case.annotation, 0.0))
        for name, fn in methods.items():
            t0 = time.perf_counter()
            out = fn(case.annotation, case.grid.spacing)
            per[name].append(_score(case, out, time.perf_counter() - t0))
        for name, opts in variants.items():
            res = refine_mask(case.annotation.astype(np.uint8), case.grid, case.image, options=opts)
            per[name].append(_score(case, res.mask > 0, res.seconds))
            info[name] = {k: res.info[k] for k in ("prior", "preset", "appearance", "device")}
    for name, (prior, use_images) in (studies or {}).items():
        log(f"study mode: {name} on {len(cases)} cases")
        study_cases = [StudyCase(c.name, c.annotation.astype(np.uint8), c.grid, c.image if use_images else None)
                       for c in cases]
        res = run_study(study_cases, prior, StudyConfig.for_recipe("fast", appearance=use_images))
        per[name] = [_score(c, m > 0, s) for c, m, s in zip(cases, res.masks, res.case_seconds)]
        info[name] = {"prior": res.info["prior"], "appearance": res.info["appearance"], "epochs": res.epochs,
                      "train_seconds": round(res.train_seconds, 1)}
    return {
        "table": {name: _summary(rows) for name, rows in per.items()},
        "per_case": per,
        "settings": {"seed_base": BENCH_SEED, "torch_threads": torch.get_num_threads(),
                     "machine": platform.machine(), "methods": info},
    }


def best_smoothing(result: dict) -> str:
    """Name of the smoothing baseline with the highest mean DSC in ``result`` (chosen with hindsight)."""
    names = [n for n in result["table"] if n in BASELINES]
    return max(names, key=lambda n: result["table"][n]["dsc_mean"])


def format_table(result: dict) -> str:
    """A Markdown table: method | DSC % | NSD % (1 mm) | s / case."""
    lines = ["| method | DSC (%) | NSD 1 mm (%) | s / case |", "|---|---|---|---|"]
    for name, s in result["table"].items():
        lines.append(f"| {name} | {s['dsc_mean']:.2f} +- {s['dsc_sd']:.2f} | {s['nsd_mean']:.2f} +- {s['nsd_sd']:.2f} "
                     f"| {s['seconds_mean']:.2f} |")
    return "\n".join(lines)


def write_json(result: dict, path: str | Path) -> None:
    from .output_safety import atomic_write_text

    atomic_write_text(Path(path), json.dumps(result, indent=1))
