"""Do no harm on a CT of thick slices (not a test): run with the project's venv,

    .venv/bin/python benchmarks/thick_slice_ct.py [--step 2] [--json-clean C.json] [--json-mixture M.json]

Most clinical abdominal CTs are read on 5 mm slices. The example CT (``../shared/data/totalseg_example``,
3 mm isotropic) is made into one of ``--step`` x 3 mm slices by keeping every ``--step``-th slice of the
CT and of its label map (nothing is interpolated: each kept slice and its labels are the scan's own, so
the truth stays exact). Then:

* ``clean``: every label of ``--min-voxels`` voxels or more (and the adrenal glands, 8 and 9) refined as
  it is, shape only and with the CT (``--prior auto``, ``default``): Dice(clean, refined) and the action
  (issue 9: >= 0.93 on every real structure);
* ``mixture``: ``nearslicer bench --real-ct DIR --all-structures`` on the thick-slice scan (the error
  library's mixture, 3 seeds; NSD at the coarsest voxel side), with ``--min-voxels`` scaled with the
  voxel so that the same structures are scored as at 3 mm.
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
import warnings
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if not any(Path(p, "NeARSlicerLib").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(ROOT / "NeARSlicer"))

import numpy as np  # noqa: E402

EXAMPLE = ROOT.parent / "shared" / "data" / "totalseg_example"
ADRENAL_LABELS = (8, 9)


def write_thick(folder: Path, step: int) -> None:
    """``ct.nii.gz`` and ``seg.nii.gz`` of the example with every ``step``-th slice (k) kept."""
    import SimpleITK as sitk

    for name in ("ct", "seg"):
        image = sitk.ReadImage(str(EXAMPLE / f"{name}.nii.gz"))
        out = sitk.GetImageFromArray(sitk.GetArrayFromImage(image)[::step].copy())
        out.SetOrigin(image.GetOrigin())
        out.SetDirection(image.GetDirection())
        out.SetSpacing(image.GetSpacing()[:2] + (image.GetSpacing()[2] * step,))
        sitk.WriteImage(out, str(folder / f"{name}.nii.gz"))


def clean_rows(folder: Path, min_voxels: int) -> list[dict]:
    """Each clean structure refined shape only and with the CT: Dice to itself, action, prior."""
    import SimpleITK as sitk

    from NeARSlicerLib.io import read_image
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    image, grid = read_image(str(folder / "ct.nii.gz"))
    labels = sitk.GetArrayFromImage(sitk.ReadImage(str(folder / "seg.nii.gz")))
    rows = []
    for label in (int(v) for v in np.unique(labels) if v > 0):
        mask = (labels == label).astype(np.uint8)
        if mask.sum() < min_voxels and label not in ADRENAL_LABELS:
            continue
        structure = "adrenal gland" if label in ADRENAL_LABELS else f"label {label}"
        for with_ct in (False, True):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                result = refine_mask(mask, grid, image if with_ct else None, RefineOptions(structure=structure))
            rows.append({"label": label, "voxels": int(mask.sum()), "with_ct": with_ct,
                         "dice": float(dice(result.mask > 0, mask > 0)), "action": result.info["action"],
                         "prior": result.info["prior_name"], "image_support": result.info.get("image_support"),
                         "gate_opened_by_image": result.info.get("gate_opened_by_image")})
            print(rows[-1], flush=True)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--step", type=int, default=2, help="keep every STEP-th slice (2: 6 mm slices)")
    parser.add_argument("--min-voxels", type=int, default=300, help="smallest label at 3 mm (scaled by STEP)")
    parser.add_argument("--json-clean", default=str(ROOT / "benchmarks/results/thick_slice_ct_clean.json"))
    parser.add_argument("--json-mixture", default=str(ROOT / "benchmarks/results/thick_slice_ct_mixture.json"))
    args = parser.parse_args()
    from NeARSlicerLib.cli import main as cli_main
    from NeARSlicerLib.output_safety import atomic_write_text

    min_voxels = max(1, args.min_voxels // args.step)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        write_thick(folder, args.step)
        start = time.perf_counter()
        rows = clean_rows(folder, min_voxels)
        summary = {str(with_ct): {"cases": len(d), "mean_dice": float(np.mean(d)), "min_dice": float(np.min(d)),
                                  "below_0.93": [r["label"] for r in rows if r["with_ct"] == with_ct
                                                 and r["dice"] < 0.93]}
                   for with_ct in (False, True)
                   for d in [[r["dice"] for r in rows if r["with_ct"] == with_ct]]}
        atomic_write_text(args.json_clean, json.dumps({
            "scan": f"example CT, every {args.step}th slice ({3 * args.step} mm)", "min_voxels": min_voxels,
            "seconds": round(time.perf_counter() - start, 1), "summary_by_with_ct": summary, "rows": rows},
            indent=1))
        print(json.dumps(summary, indent=1))
        code = cli_main(["bench", "--real-ct", str(folder), "--all-structures", "--min-voxels", str(min_voxels),
                         "--json", args.json_mixture])
    sys.exit(code)


if __name__ == "__main__":
    main()
