"""A structure of a full-resolution scan (not a test): run with the project's venv,

    .venv/bin/python benchmarks/large_volume.py [--json out.json]

Refinement reads and writes only a box around the structure (``geometry.refine_box``): before
2026-12-07 every structure of a large scan paid for whole-volume filters and copies. Reports, in one
process, the adrenal-like phantom and its CT refined in its own 64^3 volume (the baseline) and placed
in a 512 x 512 x 250 scan of 0.8 x 0.8 x 1 mm (`fast` and `default`, best of 2; the ratio to the
baseline), then in a child process the batch of a 20-structure label map of that size (`--label all`,
`fast`): seconds and peak RSS.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NeARSlicer"))

from NeARSlicerLib.distort import distort  # noqa: E402
from NeARSlicerLib.geometry import Grid  # noqa: E402
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom  # noqa: E402
from NeARSlicerLib.refine import RefineOptions, refine_mask  # noqa: E402

SCAN = (250, 512, 512)  # [k, j, i]
SPACING = (0.8, 0.8, 1.0)  # (i, j, k) mm
EYE = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)


def label_map(n: int, seed: int = 0) -> np.ndarray:
    """``n`` ellipsoids of 6-38 mm across, at random places of a ``SCAN``-sized uint8 label map."""
    rng = np.random.default_rng(seed)
    out = np.zeros(SCAN, np.uint8)
    for value in range(1, n + 1):
        centre = [int(rng.integers(30, s - 30)) for s in SCAN]
        radii = rng.uniform(8, 25, 3)  # voxels
        box = tuple(slice(max(0, int(c - r - 1)), int(c + r + 2)) for c, r in zip(centre, radii))
        k, j, i = np.ogrid[box]
        inside = ((k - centre[0]) / radii[0]) ** 2 + ((j - centre[1]) / radii[1]) ** 2 + \
            ((i - centre[2]) / radii[2]) ** 2 <= 1
        out[box][inside] = value
    return out


def seconds(mask, grid, image, preset: str) -> float:
    best = []
    for _ in range(2):
        res = refine_mask(mask, grid, image, RefineOptions(preset=preset, structure="left adrenal gland"))
        best.append(res.seconds)
    return min(best)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--json")
    args = ap.parse_args()
    truth = adrenal_phantom(seed=0)
    noisy = distort(truth, seed=1)
    ct = ct_phantom(truth, seed=1, spacing=SPACING)
    small = Grid(noisy.shape, SPACING, (0.0, 0.0, 0.0), EYE)
    big_mask = np.zeros(SCAN, np.uint8)
    big_ct = np.full(SCAN, -100.0, np.float32)  # fat around the phantom's own CT
    at = (slice(90, 154), slice(200, 264), slice(300, 364))
    big_mask[at], big_ct[at] = noisy, ct
    big = Grid(SCAN, SPACING, (0.0, 0.0, 0.0), EYE)
    refine_mask(noisy, small, ct, RefineOptions(preset="fast"))  # warm-up (prior loading)
    out: dict = {"scan": list(SCAN), "spacing_mm": list(SPACING)}
    for preset in ("fast", "default"):
        own, whole = seconds(noisy, small, ct, preset), seconds(big_mask, big, big_ct, preset)
        out[f"{preset}_own_volume_s"], out[f"{preset}_large_scan_s"] = round(own, 2), round(whole, 2)
        out[f"{preset}_ratio"] = round(whole / own, 2)
        print(f"{preset}: {own:.2f} s in its own 64^3 volume, {whole:.2f} s in a {SCAN} scan ({whole / own:.1f}x)")

    with tempfile.TemporaryDirectory() as tmp:
        import SimpleITK as sitk

        case = Path(tmp) / "cases" / "scan1"
        case.mkdir(parents=True)
        image = sitk.GetImageFromArray(label_map(20))
        image.SetSpacing(SPACING)
        sitk.WriteImage(image, str(case / "scan1_seg.nii.gz"))
        command = ["/usr/bin/time", "-v", sys.executable, "-m", "NeARSlicerLib.cli", "batch", "--cases",
                   str(case.parent), "--label", "all", "--out", str(Path(tmp) / "out"), "--preset", "fast",
                   "--workers", "0"]
        t0 = time.perf_counter()
        run = subprocess.run(command, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT / "NeARSlicer")})
        wall = time.perf_counter() - t0
        rss = [line for line in run.stderr.splitlines() if "Maximum resident set size" in line]
        if run.returncode != 0 or not rss:
            sys.exit(f"batch failed ({run.returncode}): {run.stderr[-2000:]}")
        peak_mb = int(rss[0].split(":")[1]) / 1024
    out.update(batch_20_structures_s=round(wall, 1), batch_20_structures_peak_rss_mb=round(peak_mb))
    print(f"batch --label all of 20 structures in a {SCAN} label map, fast: {wall:.1f} s, peak RSS {peak_mb:.0f} MB")
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
