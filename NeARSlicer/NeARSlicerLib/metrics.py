"""Overlap and surface metrics for binary masks indexed [k, j, i].

``spacing`` is always given in (i, j, k) order in mm, as everywhere in the engine.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


def dice(a: np.ndarray, b: np.ndarray) -> float:
    """Dice similarity coefficient of two binary masks (1.0 when both are empty)."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    denom = int(a.sum()) + int(b.sum())
    if denom == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / denom


def _surface(mask: np.ndarray) -> np.ndarray:
    """Foreground voxels with at least one 6-connected background neighbour (border counts as background)."""
    padded = np.pad(mask, 1)
    eroded = ndi.binary_erosion(padded, structure=ndi.generate_binary_structure(3, 1))
    return (padded & ~eroded)[1:-1, 1:-1, 1:-1]


def surface_distances(a: np.ndarray, b: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, np.ndarray]:
    """Distances (mm) from each surface voxel of ``a`` to the surface of ``b``, and vice versa."""
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    sampling = tuple(float(s) for s in spacing)[::-1]  # (i,j,k) -> array axes (k,j,i)
    sa, sb = _surface(a), _surface(b)
    dist_to_b = ndi.distance_transform_edt(~sb, sampling=sampling)
    dist_to_a = ndi.distance_transform_edt(~sa, sampling=sampling)
    return dist_to_b[sa], dist_to_a[sb]


def normalized_surface_dice(
    a: np.ndarray, b: np.ndarray, spacing: Sequence[float] = (1.0, 1.0, 1.0), tolerance_mm: float = 1.0
) -> float:
    """Normalized Surface Dice: share of both surfaces lying within ``tolerance_mm`` of the other.

    Surfaces are the boundary voxels of each mask; distances respect anisotropic ``spacing``.
    Returns 1.0 when both masks are empty and 0.0 when exactly one is.
    """
    a = np.asarray(a, bool)
    b = np.asarray(b, bool)
    if not a.any() and not b.any():
        return 1.0
    if not a.any() or not b.any():
        return 0.0
    d_ab, d_ba = surface_distances(a, b, spacing)
    ok = int((d_ab <= tolerance_mm).sum()) + int((d_ba <= tolerance_mm).sum())
    return ok / float(d_ab.size + d_ba.size)


nsd = normalized_surface_dice
