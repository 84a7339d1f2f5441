"""The image as the model reads it, a(p) in [0, 1]: two normalisations, named on each prior's card.

* ``window`` (the paper's, the adrenal S+A prior): Hounsfield units clipped to [-60, 140] HU.
  Meaningful for CT only; fat, contrast-enhanced organs and bone all saturate.
* ``case``: per case, relative to the annotation itself: the median intensity just inside the
  annotation maps to 0.75 and the median of a shell just outside it to 0.25. It needs no HU, so it
  serves any CT contrast (fat, soft tissue, enhanced organ, bone) and MR alike, with either
  polarity. Where inside and outside do not differ (relative to their spread) the image carries no
  boundary and a neutral constant 0.5 is returned: the prior then works from the shape alone.
Arrays are ``[k, j, i]``; ``spacing`` is (i, j, k) mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi

from .geometry import distance_outside

NORMALISATIONS = ("window", "case")
WINDOW_HU = (-60.0, 140.0)


def window_ct(hu: np.ndarray, lo: float = WINDOW_HU[0], hi: float = WINDOW_HU[1]) -> np.ndarray:
    """HU clipped to [lo, hi] and scaled to [0, 1] (float32)."""
    return np.clip((np.asarray(hu, dtype=np.float32) - lo) / (hi - lo), 0.0, 1.0)


def _shell(mask: np.ndarray, spacing_kji: np.ndarray, inner_mm: float, outer_mm: float) -> np.ndarray:
    """Voxels whose distance to ``mask`` lies in (inner_mm, outer_mm]."""
    dist = distance_outside(mask, spacing_kji, outer_mm)
    return (dist > inner_mm) & (dist <= outer_mm)


def normalise_case(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0),
                   min_contrast: float = 0.5) -> np.ndarray:
    """Image relative to the annotation ``mask`` (same grid): inside-like -> 0.75, outside-like -> 0.25.

    ``min_contrast``: inside and outside medians must differ by at least this many pooled robust
    standard deviations, else the result is a constant 0.5 (no usable boundary in the image).
    """
    img = np.asarray(image, dtype=np.float32)
    m = np.asarray(mask) > 0
    sp = np.asarray(spacing, dtype=float)[::-1]
    neutral = np.full(img.shape, 0.5, dtype=np.float32)
    if not m.any() or m.all():
        return neutral
    voxel = float(sp.min())
    inner = ndi.binary_erosion(m, iterations=1)
    if inner.sum() < 8:
        inner = m
    ring = _shell(m, sp, 1.5 * voxel, max(3.0 * voxel, 4.0))
    if ring.sum() < 8:
        ring = ~m
    a_in, a_out = img[inner], img[ring]
    med_in, med_out = float(np.median(a_in)), float(np.median(a_out))

    def robust_sd(a: np.ndarray, med: float) -> float:
        return 1.4826 * float(np.median(np.abs(a - med)))

    spread = np.hypot(robust_sd(a_in, med_in), robust_sd(a_out, med_out)) / np.sqrt(2.0)
    contrast = med_in - med_out
    if abs(contrast) < max(min_contrast * spread, 1e-6):
        return neutral
    return np.clip(0.25 + 0.5 * (img - med_out) / contrast, 0.0, 1.0).astype(np.float32)


def normalise(image: np.ndarray, mask: np.ndarray, spacing: Sequence[float], mode: str) -> np.ndarray:
    """a(p) of ``image`` by the prior's normalisation ``mode`` (``window`` or ``case``)."""
    if mode == "window":
        return window_ct(image)
    if mode == "case":
        return normalise_case(image, mask, spacing)
    raise ValueError(f"unknown appearance normalisation {mode!r}: use one of {', '.join(NORMALISATIONS)}")
