"""Study mode on full-resolution scans: memory (not a test): run with the project's venv,

    .venv/bin/python benchmarks/study_memory.py [--cases 6] [--json out.json]

Until 2026-12-07 ``nearslicer study`` held every case's whole mask and CT, then every result as
whole arrays. Its cases are now the boxes of their volumes the study reads (``case_crop``). This writes
``--cases`` adrenal-like phantoms, each in its own 512 x 512 x 250 CT of 0.8 x 0.8 x 1 mm, and runs the
same study (denoise, 1 epoch, ``fast`` refinement, the adrenal prior with the CT) in two child
processes: with the cases read whole (the baseline: what ``load_cases`` gave before) and with
``nearslicer study`` (boxes). Reports each child's seconds and peak RSS, and whether their output
files hold the same voxels.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "NeARSlicer"))

from child_modes import peak_rss_gb, run_modes  # noqa: E402

SCAN = (250, 512, 512)  # [k, j, i]
SPACING = (0.8, 0.8, 1.0)  # (i, j, k) mm
SETTINGS = ["--recipe", "denoise", "--epochs", "1", "--preset", "fast", "--structure", "left adrenal gland"]


def write_cases(folder: Path, n: int) -> None:
    """``n`` cases: a distorted gland mask and a CT (int16 HU: fat, soft tissue, the gland's own phantom
    CT, air around the body), each gland at another place of its scan."""
    from NeARSlicerLib.distort import distort
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import write_image, write_mask
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    (folder / "masks").mkdir(parents=True)
    (folder / "images").mkdir()
    grid = Grid(SCAN, SPACING, (-200.0, -200.0, -120.0))
    rng = np.random.default_rng(0)
    k, j, i = np.ogrid[:SCAN[0], :SCAN[1], :SCAN[2]]
    body = ((j - 256) / 200.0) ** 2 + ((i - 256) / 230.0) ** 2 <= 1
    for c in range(n):
        small = adrenal_phantom(seed=c, shape=(80, 80, 64), spacing=SPACING)
        at = tuple(slice(int(o), int(o) + s) for o, s in zip(
            (rng.integers(40, 140), rng.integers(140, 300), rng.integers(140, 300)), small.shape))
        mask = np.zeros(SCAN, np.uint8)
        mask[at] = distort(small, seed=c)
        image = np.where(body, -90.0, -1000.0).astype(np.float32) + rng.normal(0, 12, SCAN).astype(np.float32)
        image[at] = ct_phantom(small, seed=c, spacing=SPACING)
        write_mask(str(folder / "masks" / f"case{c}.nii.gz"), mask, grid)
        write_image(str(folder / "images" / f"case{c}.nii.gz"), image.astype(np.int16), grid)


def child(mode: str, data: Path, out: Path) -> dict:
    """One study in this process: ``whole`` (each case read whole, as before) or ``boxes`` (the CLI)."""
    t0 = time.perf_counter()
    if mode == "boxes":
        from NeARSlicerLib.cli import main

        code = main(["study", "--masks", str(data / "masks"), "--images", str(data / "images"), "--out", str(out),
                     *SETTINGS])
        assert code == 0
    else:
        from NeARSlicerLib.batch import read_case_inputs
        from NeARSlicerLib.study import StudyCase, StudyConfig, run_study

        cases = []
        for path in sorted((data / "masks").iterdir()):
            mask, grid, image, _ = read_case_inputs(str(path), str(data / "images" / path.name))
            cases.append(StudyCase(path.name.split(".")[0], mask, grid, image, str(path),
                                   str(data / "images" / path.name), structure="left adrenal gland"))
        cfg = StudyConfig.for_recipe("denoise", epochs=1, refine_preset="fast")
        run_study(cases, None, cfg, out_dir=str(out))
    return {"seconds": round(time.perf_counter() - t0, 1),
            "peak_rss_gb": peak_rss_gb()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--cases", type=int, default=6)
    ap.add_argument("--json", help="write the results here")
    ap.add_argument("--child", nargs=3, metavar=("MODE", "DATA", "OUT"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        print(json.dumps(child(args.child[0], Path(args.child[1]), Path(args.child[2]))))
        return
    import SimpleITK as sitk

    with tempfile.TemporaryDirectory(prefix="study-memory-") as tmp:
        data = Path(tmp) / "data"
        write_cases(data, args.cases)
        runs = run_modes(__file__, ("whole", "boxes"), lambda mode: (data, Path(tmp) / mode))
        same = all(np.array_equal(*(sitk.GetArrayFromImage(sitk.ReadImage(str(Path(tmp) / m / f"case{c}.nii.gz")))
                                    for m in ("whole", "boxes"))) for c in range(args.cases))
    result = {"cases": args.cases, "scan": list(SCAN), "spacing_mm": list(SPACING), "settings": SETTINGS,
              "cases_read_whole": runs["whole"], "boxes": runs["boxes"], "same_outputs": same}
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
