"""Small refined batch folders for the review tests, made with the real engine on phantom cases.

``make_batch_folder`` writes what ``nearslicer batch`` writes (contract 1 in COMMON/README):
``summary.csv`` with the contract's columns, ``<case>.nii.gz`` refined masks for label-map inputs,
one ``<case>.seg.nrrd`` holding the original and ``<name> (NeAR)`` segments for a ``.seg.nrrd``
input, and one failed case. ``make_refine_study_folder`` writes the older Slicer ``refineStudy``
layout: ``nearslicer_summary.csv`` (case, segment, voxels_before, voxels_after, dice, seconds,
error, output) and ``.seg.nrrd`` outputs with both segments, no image recorded.

Each case: a gland (``phantom.adrenal_phantom``) in a synthetic CT (``phantom.ct_phantom``), a
rough annotation (``annotation_errors.corrupt``, one error family per case) refined by
``refine.refine_mask(..., RefineOptions(preset="fast", change_policy="all"))``. Numbers in the CSV are measured.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import SimpleITK as sitk

CONTRACT_COLUMNS = ["case", "segment", "label", "mask", "image", "output", "voxels_before", "voxels_after", "dice",
                    "confidence", "action", "prior", "modality", "warnings", "seconds", "host", "error",
                    "painted_slices_mm", "slices_interpolated", "image_restored", "image_withdrawn",
                    "image_margin_mm", "image_margin_sides", "image_trimmed", "specks_removed", "specks_filled",
                    "settings"]
OLD_COLUMNS = ["case", "segment", "voxels_before", "voxels_after", "dice", "seconds", "error", "output"]
SPACING = (1.5, 1.5, 1.5)
SHAPE = (36, 44, 44)
# Rows as nearslicer batch writes them: a label map's structure is "Label_<value>", a .seg.nrrd's its name.
# (case name, phantom seed, error family): different families give different volume changes
CASES = [("case01", 1, "overpaint"), ("case02", 2, "holes"), ("case03", 3, "missing_part"), ("case04", 4, "slab")]
SEGMENT = "left adrenal"
RED, BLUE = (0.9, 0.1, 0.1), (0.1, 0.3, 1.0)


def _grid():
    from NeARSlicerLib.geometry import Grid

    image = sitk.Image([SHAPE[2], SHAPE[1], SHAPE[0]], sitk.sitkUInt8)
    image.SetSpacing(SPACING)
    image.SetOrigin((-30.0, -40.0, 12.0))
    return Grid.from_sitk(image)


def refined_cases(seed_offset: int = 0) -> list:
    """Per case: dict(name, ct, truth, rough, refined, grid, seconds, info, warnings) -- refined by the engine."""
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    grid = _grid()
    out = []
    for name, seed, family in CASES:
        truth = adrenal_phantom(seed=seed + seed_offset, shape=SHAPE, spacing=SPACING)
        ct = ct_phantom(truth, seed=seed, spacing=SPACING).astype(np.float32)
        rough = corrupt(truth, SPACING, family, seed=seed).astype(np.uint8)
        started = time.perf_counter()
        # every change of the prior, so that each case has something to review (the do-no-harm
        # default keeps some of these small phantoms as they are)
        result = refine_mask(rough, grid, ct, RefineOptions(preset="fast", seed=0, change_policy="all"))
        out.append(dict(name=name, ct=ct, truth=truth, rough=rough, refined=result.mask, grid=grid,
                        seconds=time.perf_counter() - started, info=dict(result.info), warnings=list(result.warnings)))
    return out


def _dice(a, b) -> float:
    a, b = np.asarray(a) > 0, np.asarray(b) > 0
    total = a.sum() + b.sum()
    return 1.0 if total == 0 else 2.0 * float((a & b).sum()) / float(total)


def make_batch_folder(root: Path, cases: list) -> Path:
    """The ``nearslicer batch`` layout in ``root/batch`` (inputs in ``root/inputs``)."""
    from NeARSlicerLib.io import write_image, write_mask, write_segmentation
    from NeARSlicerLib.output_safety import SummaryWriter

    inputs, batch = root / "inputs", root / "batch"
    inputs.mkdir(parents=True)
    batch.mkdir(parents=True)
    summary = SummaryWriter(batch / "summary.csv", CONTRACT_COLUMNS)
    for n, case in enumerate(cases):
        ct_path = inputs / f"{case['name']}_ct.nii.gz"
        write_image(ct_path, case["ct"], case["grid"])
        seg_input = n == len(cases) - 1  # the last case comes as a Slicer .seg.nrrd
        if seg_input:
            mask_path = inputs / f"{case['name']}.seg.nrrd"
            write_segmentation(mask_path, [(SEGMENT, case["rough"], RED)], case["grid"])
            out_path = batch / f"{case['name']}.seg.nrrd"
            write_segmentation(out_path, [(SEGMENT, case["rough"], RED),
                                          (SEGMENT + " (NeAR)", case["refined"], BLUE)], case["grid"])
        else:
            mask_path = inputs / f"{case['name']}_mask.nii.gz"
            write_mask(mask_path, case["rough"], case["grid"])
            out_path = batch / f"{case['name']}.nii.gz"
            write_mask(out_path, case["refined"], case["grid"])
        info = case["info"]
        confidence = info.get("confidence")
        summary.add({"case": case["name"], "segment": SEGMENT if seg_input else "Label_1", "label": "1",
                     "mask": str(mask_path), "image": str(ct_path), "output": str(out_path),
                     "voxels_before": int(case["rough"].sum()), "voxels_after": int(case["refined"].sum()),
                     "dice": f"{_dice(case['rough'], case['refined']):.4f}",
                     "confidence": "" if confidence is None else f"{float(confidence):.4f}",
                     "action": info.get("action") or "", "prior": str(info.get("prior_name") or info.get("prior", "")),
                     "modality": info.get("modality") or "", "warnings": " | ".join(case["warnings"]),
                     "seconds": f"{case['seconds']:.2f}", "host": "test", "error": ""})
    # a case that failed: recorded with its error, no output
    summary.add({"case": "case99", "segment": "", "mask": str(inputs / "case99_mask.nii.gz"),
                 "error": "InputError: mask is empty", "seconds": "0.01", "host": "test"})
    return batch


def make_refine_study_folder(root: Path, cases: list) -> Path:
    """The older Slicer ``refineStudy`` layout in ``root/study``: both segments in each .seg.nrrd."""
    from NeARSlicerLib.io import write_segmentation
    from NeARSlicerLib.output_safety import SummaryWriter

    folder = root / "study"
    folder.mkdir(parents=True)
    summary = SummaryWriter(folder / "nearslicer_summary.csv", OLD_COLUMNS)
    for case in cases:
        out_path = folder / f"{case['name']}.seg.nrrd"
        write_segmentation(out_path, [(SEGMENT, case["rough"], RED), (SEGMENT + " (NeAR)", case["refined"], BLUE)],
                           case["grid"])
        summary.add({"case": case["name"], "segment": SEGMENT, "voxels_before": int(case["rough"].sum()),
                     "voxels_after": int(case["refined"].sum()),
                     "dice": f"{_dice(case['rough'], case['refined']):.4f}", "seconds": f"{case['seconds']:.2f}",
                     "error": "", "output": str(out_path)})
    summary.add({"case": "broken", "segment": "", "error": "InputError: needs one segmentation and at most one image"})
    return folder


# ---------------------------------------------------------------------------------- fixtures
import pytest  # noqa: E402  (fixtures for the test modules that import them)


@pytest.fixture(scope="session")
def phantom_cases():
    """The refined phantom cases, computed once per test session (about 10 s on a busy CPU)."""
    return refined_cases()


@pytest.fixture
def batch_folder(phantom_cases, tmp_path) -> Path:
    """A fresh ``nearslicer batch`` folder for one test."""
    return make_batch_folder(tmp_path, phantom_cases)


@pytest.fixture
def study_folder(phantom_cases, tmp_path) -> Path:
    """A fresh Slicer ``refineStudy`` folder (older layout) for one test."""
    return make_refine_study_folder(tmp_path, phantom_cases)
