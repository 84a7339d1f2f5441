"""Classical mask clean-ups in the spirit of Slicer's Segment Editor "Smoothing" and "Islands".

They are the baselines NeAR is compared against. Masks are ``[k, j, i]`` 0/1 arrays; ``spacing``
is ``(i, j, k)`` mm; kernel sizes are physical (mm) so a kernel means the same on any grid.
Every function returns a new bool array of the input's shape.
"""

from __future__ import annotations

from typing import Callable, Dict, Sequence

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["ball", "median", "opening", "closing", "gaussian", "largest_component", "BASELINES"]


def _check(mask: np.ndarray, spacing: Sequence[float]) -> tuple:
    mask = np.asarray(mask)
    if mask.ndim != 3:
        raise InputError(f"expected a 3D mask, got {mask.ndim} dimensions")
    sp = tuple(float(s) for s in spacing)
    if len(sp) != 3 or not all(s > 0 for s in sp):
        raise InputError(f"spacing must be 3 positive values (i, j, k) mm, got {tuple(spacing)}")
    return mask != 0, sp


def _kernel_counts(size_mm: float, spacing: Sequence[float]) -> list:
    """Odd voxel counts ``[nk, nj, ni]`` ~ ``size_mm / spacing`` (at least 1), as Slicer sizes kernels.

    So a 3 mm kernel on a 5 mm slice axis stays within its slice instead of reaching 5 mm away.
    """
    if size_mm <= 0:
        raise InputError(f"kernel size must be positive, got {size_mm} mm")
    counts = []
    for s in spacing[::-1]:  # k, j, i
        n = max(1, int(round(size_mm / s)))
        counts.append(n + 1 - n % 2)
    return counts


def ball(size_mm: float, spacing: Sequence[float]) -> np.ndarray:
    """Ellipsoidal bool footprint ``[k, j, i]`` about ``size_mm`` across on a grid of ``spacing``.

    The ellipsoid is inscribed in the odd-sized box (semi-axes = half the voxel counts), the
    shape VTK's dilate/erode (behind Slicer's opening/closing) uses: 19 voxels for a 3x3x3 box.
    """
    counts = _kernel_counts(size_mm, spacing)
    grids = np.meshgrid(*[np.arange(n) - (n - 1) / 2.0 for n in counts], indexing="ij")
    r2 = sum((g / (n / 2.0)) ** 2 for g, n in zip(grids, counts))
    return r2 <= 1.0


def median(mask: np.ndarray, spacing: Sequence[float], size_mm: float = 3.0) -> np.ndarray:
    """Majority (median) filter over a ``size_mm`` box (as Slicer's median): removes small bumps
    and fills small dents."""
    fg, sp = _check(mask, spacing)
    fp = np.ones(_kernel_counts(size_mm, sp), dtype=bool)
    # For a binary image the median is a majority vote: count foreground under the footprint.
    count = ndimage.correlate(fg.astype(np.float32), fp.astype(np.float32), mode="constant", cval=0.0)
    return count > fp.sum() / 2.0


def _pad_width(fp: np.ndarray) -> list:
    return [(n // 2, n // 2) for n in fp.shape]


def opening(mask: np.ndarray, spacing: Sequence[float], size_mm: float = 3.0) -> np.ndarray:
    """Morphological opening with a ``size_mm`` ball: removes protrusions thinner than the ball."""
    fg, sp = _check(mask, spacing)
    fp = ball(size_mm, sp)
    return ndimage.binary_opening(fg, structure=fp)


def closing(mask: np.ndarray, spacing: Sequence[float], size_mm: float = 3.0) -> np.ndarray:
    """Morphological closing with a ``size_mm`` ball: fills gaps and holes narrower than the ball."""
    fg, sp = _check(mask, spacing)
    fp = ball(size_mm, sp)
    # Pad first: scipy's erosion treats beyond-the-array as background and would eat a mask that
    # touches the border after the dilation.
    pads = _pad_width(fp)
    closed = ndimage.binary_closing(np.pad(fg, pads), structure=fp)
    return closed[tuple(slice(a, closed.shape[d] - b) for d, (a, b) in enumerate(pads))]


def gaussian(mask: np.ndarray, spacing: Sequence[float], sigma_mm: float = 1.0) -> np.ndarray:
    """Gaussian blur of the 0/1 mask (``sigma_mm`` in mm on every axis), thresholded at 0.5."""
    fg, sp = _check(mask, spacing)
    if sigma_mm <= 0:
        raise InputError(f"sigma must be positive, got {sigma_mm} mm")
    blurred = ndimage.gaussian_filter(fg.astype(np.float32), sigma=[sigma_mm / s for s in sp[::-1]],
                                      mode="constant", cval=0.0)
    return blurred >= 0.5


def largest_component(mask: np.ndarray) -> np.ndarray:
    """Keep the largest 26-connected piece (diagonal contacts count, so thin limbs stay attached)."""
    fg = np.asarray(mask) != 0
    if fg.ndim != 3:
        raise InputError(f"expected a 3D mask, got {fg.ndim} dimensions")
    labels, n = ndimage.label(fg, structure=np.ones((3, 3, 3), bool))
    if n <= 1:
        return fg
    sizes = np.bincount(labels.ravel())
    sizes[0] = 0
    return labels == int(np.argmax(sizes))


Baseline = Callable[[np.ndarray, Sequence[float]], np.ndarray]

#: Name -> baseline(mask, spacing) with the parameters a Slicer user would typically try.
BASELINES: Dict[str, Baseline] = {
    "median 3mm": lambda m, sp: median(m, sp, 3.0),
    "median 5mm": lambda m, sp: median(m, sp, 5.0),
    "opening 3mm": lambda m, sp: opening(m, sp, 3.0),
    "closing 3mm": lambda m, sp: closing(m, sp, 3.0),
    "closing 5mm": lambda m, sp: closing(m, sp, 5.0),
    "gaussian 1mm": lambda m, sp: gaussian(m, sp, 1.0),
    "gaussian 2mm": lambda m, sp: gaussian(m, sp, 2.0),
    "largest component": lambda m, sp: largest_component(m),
}
