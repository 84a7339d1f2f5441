"""One refinement's data, from the scene to the engine and back: ``RefinementJob``. No Qt."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import numpy as np

from NeARSlicerLib.errors import NeARError


@dataclass
class RefinementJob:
    """Everything one refinement needs, taken from the scene by ``extract.prepareJob``.

    The arrays are on the *working grid*: the volume's grid, or the segmentation's own grid when that
    is finer (or when there is no volume), cropped to a box around the segment. ``ijkToLocal`` maps
    that grid into the segmentation node's own coordinates (before its parent transform), where the
    result is written back; ``grid`` is the same grid in world LPS for the engine.
    """

    segmentationNode: Any
    segmentId: str
    segmentName: str
    volumeNode: Any  # None: geometry from the segmentation itself, no appearance
    mask: np.ndarray  # uint8 [k, j, i]
    image: Optional[np.ndarray]  # float32 HU [k, j, i] or None
    grid: Any  # NeARSlicerLib.geometry.Grid (world, LPS)
    ijkToLocal: np.ndarray  # 4x4: voxel (i, j, k) of the arrays -> segmentation-node RAS (mm)
    options: dict  # keyword arguments of RefineOptions
    geometrySource: str = "volume"  # "volume" | "segmentation": whose grid the arrays are on
    probabilityVolume: bool = False
    changeSegments: bool = False
    cropOffset: tuple = (0, 0, 0)  # [k, j, i] of the arrays' first voxel in the full working grid
    fullShape: tuple = ()  # [k, j, i] shape of the full working grid
    # NeARSlicerLib.modality.ScanFacts of the whole volume (its modality and darkest value), which the
    # crop may not show: the engine reads the crop as the CLI reads the whole file. None without an image
    scan: Any = None
    result: Any = None  # RefineResult once computed
    stats: dict = field(default_factory=dict)
    newSegmentId: Optional[str] = None


def attachResult(job: RefinementJob, result, seconds: float) -> None:
    """Attach an engine result (``.mask`` on the job's grid, ``.warnings``) and its statistics (mL from
    the grid's voxel size, Dice(original, refined)) to ``job``."""
    from NeARSlicerLib.metrics import dice

    refined = np.asarray(result.mask) > 0
    if refined.shape != job.mask.shape:
        raise NeARError(f"engine returned a mask of shape {refined.shape}, expected {job.mask.shape}")
    voxelMl = float(np.prod(job.grid.spacing)) / 1000.0
    before, after = int(job.mask.sum()), int(refined.sum())
    job.result = result
    job.stats = {
        "segmentName": job.segmentName,
        "segmentId": job.segmentId,
        "voxelsBefore": before,
        "voxelsAfter": after,
        "volumeBeforeMl": before * voxelMl,
        "volumeAfterMl": after * voxelMl,
        "volumeChangePercent": 100.0 * (after - before) / before if before else float("nan"),
        "dice": float(dice(job.mask, refined)),
        "seconds": float(seconds),
        "preset": job.options.get("preset"),
        "appearance": job.image is not None,
        "geometry": job.geometrySource,
        "warnings": list(getattr(result, "warnings", []) or []),
    }
    info = getattr(result, "info", None) or {}
    # do no harm / modality facts of the engine (absent from older engines: read with .get)
    for key, name in (("confidence", "confidence"), ("action", "action"), ("modality", "modality"),
                      ("prior_name", "prior"), ("out_of_domain", "outOfDomain"),
                      ("painted_slices_mm", "paintedSlicesMm"), ("slices_interpolated", "slicesInterpolated"),
                      ("confidence_from", "confidenceFrom"), ("image_margin_mm", "imageMarginMm"),
                      ("image_margin_sides", "imageMarginSides"), ("gate_opened_by_image", "gateOpenedByImage"),
                      ("gate_closed_by_image", "gateClosedByImage")):
        if info.get(key) not in (None, ""):
            job.stats[name] = info[key]
    if "appearance" in info:
        job.stats["appearance"] = bool(info["appearance"])
    specks = info.get("specks") or {}
    if specks.get("removed") or specks.get("filled"):  # the output's specks cleaned
        job.stats["specksRemoved"] = int(specks.get("removed") or 0)
        job.stats["specksFilled"] = int(specks.get("filled") or 0)
    trimmed = info.get("image_trim") or {}
    if trimmed.get("removed"):  # what the image trimmed from the result
        job.stats["imageTrimmed"] = int(trimmed["removed"])
        job.stats["imageTrimmedPieces"] = int(trimmed.get("pieces") or 0)
    check = info.get("image_check") or {}
    if check.get("restored") or check.get("withdrawn"):  # what the image check undid of the prior's change
        job.stats["imageRestored"] = int(check.get("restored") or 0)
        job.stats["imageWithdrawn"] = int(check.get("withdrawn") or 0)


def formatOutcome(stats: dict) -> str:
    """One plain sentence for the result label beside Accept: what was done and how far to trust it."""
    if not stats:
        return ""
    action = str(stats.get("action") or "")
    conf = stats.get("confidence")
    # with an image the confidence is the share of the prior's change that the image supports
    fromImage = " from the image" if stats.get("confidenceFrom") == "image" else ""
    confText = (f"confidence {conf:.2f}{fromImage}" if isinstance(conf, (int, float))
                else "no confidence measured: the 'fast' preset has no mirrored views and no image was given")
    image = "shape and image" if stats.get("appearance") else "shape only"
    if stats.get("modality"):
        image += f", image read as {stats['modality']}"
    prior = f", prior {stats['prior']}" if stats.get("prior") else ""
    from NeARSlicerLib.confidence import REFINED_MARGIN, REFINED_SPECKS, REFINED_TRIM, describe_specks
    from NeARSlicerLib.image_margin import describe as describeMargin
    from NeARSlicerLib.image_trim import describe as describeTrim

    margin, sides = stats.get("imageMarginMm") or 0.0, stats.get("imageMarginSides") or ()
    trimmed, trimmedPieces = int(stats.get("imageTrimmed") or 0), int(stats.get("imageTrimmedPieces") or 0)
    specksRemoved, specksFilled = int(stats.get("specksRemoved") or 0), int(stats.get("specksFilled") or 0)
    specksText = describe_specks(specksRemoved, specksFilled)
    if action.startswith("kept"):
        reason = action.split(":", 1)[1].strip() if ":" in action else "kept"
        text = (f"Kept the original ({reason}, {confText}): NeAR found nothing it could reliably improve; "
                f"the '(NeAR)' segment equals the original.")
    elif action == REFINED_MARGIN:  # NeAR's change was not applied, the image's margin was
        text = (f"NeAR's changes were not applied, but {describeMargin(margin, sides)} ({confText}, {image}{prior}). "
                "Review, then Accept.")
    elif action == REFINED_TRIM:  # NeAR's change was not applied, the image's trim was
        text = (f"NeAR's changes were not applied, but {describeTrim(trimmed, trimmedPieces)} ({confText}, "
                f"{image}{prior}). Review, then Accept.")
    elif action == REFINED_SPECKS:  # NeAR's change was not applied, the specks were cleaned
        text = (f"NeAR's changes were not applied; only specks were cleaned ({specksText}) ({confText}, "
                f"{image}{prior}). Review, then Accept.")
    elif action.startswith("refined:"):  # do no harm: only thick errors corrected
        text = (f"Corrected thick errors only (blobs, holes, slabs, leaks, cut parts); the original boundary "
                f"was kept ({confText}, {image}{prior}). Review, then Accept.")
    elif isinstance(conf, (int, float)) and conf < 0.5:
        text = f"Refined with LOW confidence ({confText}, {image}{prior}): check carefully before Accept."
    else:
        text = f"Refined ({confText}, {image}{prior}). Review, then Accept."
    painted = stats.get("paintedSlicesMm")
    if isinstance(painted, (int, float)) and action == "refined":
        # the gate applied the whole refined surface because of this staircase: say why
        how = " its painted slices were interpolated for NeAR, and" if stats.get("slicesInterpolated") else ""
        text += (f" The original looks painted on {painted:.1f} mm slices (a staircase):{how} the refined "
                 "surface replaces it everywhere.")
    if stats.get("gateOpenedByImage") and action == "refined":
        # a thin change is applied only because the CT supports it: say why the boundary moved everywhere
        text += (" The change is thin, as NeAR's own boundary error is, but the CT supports"
                 f"{f' {conf:.0%} of it' if isinstance(conf, (int, float)) else ' it'}: the refined surface replaces "
                 "the original everywhere.")
    if stats.get("gateClosedByImage") and action != "refined":
        # a large change held back because the CT hardly supports it: say why it was not applied whole
        text += (" NeAR proposed a large change, but the CT supports only"
                 f"{f' {conf:.0%} of it' if isinstance(conf, (int, float)) else ' little of it'}: it was not "
                 "applied whole.")
    if (margin or sides) and action != REFINED_MARGIN:
        text += f" Before NeAR, {describeMargin(margin, sides)}."
    if (specksRemoved or specksFilled) and action != REFINED_SPECKS:
        text += f" Specks cleaned: {specksText}."
    if trimmed and action != REFINED_TRIM:
        text += f" Last, {describeTrim(trimmed, trimmedPieces)}."
    restored, withdrawn = int(stats.get("imageRestored") or 0), int(stats.get("imageWithdrawn") or 0)
    if restored or withdrawn:
        from NeARSlicerLib.image_evidence import describe_undone

        text += f" Checked against the image: {describe_undone(restored, withdrawn)} (the image contradicted them)."
    if stats.get("outOfDomain"):
        text += " The segment is outside the prior's training domain."
    return text
