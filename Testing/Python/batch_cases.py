"""Phantom cases on disk for the batch tests (deterministic per index; no data needed)."""
from __future__ import annotations

import csv
from pathlib import Path

import numpy as np

SHAPE = (48, 48, 48)


def make_cases(folder: Path, n: int, with_seg_nrrd: bool = True) -> list:
    """``n`` cases in ``folder``: ``cK.nii.gz`` (synthetic CT) + ``cK_seg.nii.gz``; the last one a
    ``.seg.nrrd`` with two segments (no image) when ``with_seg_nrrd``. Returns the manifest rows."""
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.io import write_image, write_mask, write_segmentation
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

    folder.mkdir(parents=True, exist_ok=True)
    grid = Grid(SHAPE, (1.0, 1.1, 0.9), (-20.0, 5.0, 30.0))
    rows = []
    for k in range(n):
        mask = adrenal_phantom(seed=k, shape=SHAPE)
        if with_seg_nrrd and k == n - 1:
            other = adrenal_phantom(seed=100 + k, shape=SHAPE)
            path = folder / f"c{k}.seg.nrrd"
            write_segmentation(str(path), [("left", mask, (1, 0, 0)), ("right", other, (0, 1, 0))], grid)
            rows.append({"case": f"c{k}", "mask": str(path), "image": "", "label": ""})
            continue
        write_mask(str(folder / f"c{k}_seg.nii.gz"), mask, grid)
        write_image(str(folder / f"c{k}.nii.gz"), ct_phantom(mask, seed=k), grid)
        rows.append({"case": f"c{k}", "mask": str(folder / f"c{k}_seg.nii.gz"),
                     "image": str(folder / f"c{k}.nii.gz"), "label": ""})
    return rows


def write_manifest(path: Path, rows: list) -> Path:
    with open(path, "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=["case", "mask", "image", "label"])
        w.writeheader()
        w.writerows(rows)
    return path


def read_summary(path: Path) -> list:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def masks_of(out: Path) -> dict:
    """{output file name: its arrays} for every non-hidden output in ``out`` (summary excluded)."""
    from NeARSlicerLib.io import read_mask, read_segments

    found = {}
    for p in sorted(out.iterdir()):
        if p.name.startswith(".") or p.name.endswith(".csv"):
            continue
        if p.name.endswith(".seg.nrrd"):
            segs, _ = read_segments(str(p))
            found[p.name] = {s["name"]: s["mask"] for s in segs}
        else:
            found[p.name] = {"mask": read_mask(str(p))[0]}
    return found


def same_masks(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(
        a[f].keys() == b[f].keys() and all(np.array_equal(a[f][s], b[f][s]) for s in a[f]) for f in a)


STABLE = ["case", "segment", "label", "mask", "image", "output", "voxels_before", "voxels_after", "dice",
          "confidence", "action", "prior", "error"]  # every column but seconds and host


def stable_rows(rows: list) -> list:
    """Rows comparable between output folders: the output as its file name."""
    return sorted(tuple(Path(r[c]).name if c == "output" and r[c] else r[c] for c in STABLE) for r in rows)


def three_glands(path: Path) -> np.ndarray:
    """A label map of three adrenal-like phantoms side by side (labels 1-3, 40 x 40 x 120 voxels of 1 mm)."""
    import SimpleITK as sitk

    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.phantom import adrenal_phantom

    grid = Grid((40, 40, 120), (1.0, 1.0, 1.0), (0.0, 0.0, 0.0))
    labels = np.zeros(grid.shape, np.uint8)
    for value in (1, 2, 3):
        labels[:, :, 40 * (value - 1):40 * value][adrenal_phantom(seed=value, shape=(40, 40, 40))] = value
    sitk.WriteImage(grid.to_sitk(labels), str(path))
    return labels
