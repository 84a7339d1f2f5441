"""Synthetic annotation errors in the spirit of the NeAR paper.

The paper distorts clean shapes with random cubes added to or cut from the boundary,
a random dilation or erosion, and salt-and-pepper noise; the defaults here give a mean
input Dice of about 0.70 on the ALAN adrenal shapes (1 mm voxels, arrays [k, j, i]).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage as ndi

_BALL = ndi.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class DistortionParams:
    """Distortion strength. Sizes are in voxels of the mask's own grid."""

    n_cubes: tuple[int, int] = (4, 10)  # inclusive range of cubes placed on the boundary
    cube_size: tuple[int, int] = (3, 8)  # inclusive range of cube edge lengths
    p_morph: float = 0.6  # probability of a global dilation or erosion
    noise_fraction: float = 0.007  # voxels flipped, as a share of 4x the band's size (salt and pepper)
    noise_band: int = 8  # half-width of that band (voxels)


def distort(mask: np.ndarray, seed: int | None = 0, params: DistortionParams | None = None) -> np.ndarray:
    """Return a distorted copy of a binary mask ([k, j, i]); deterministic for a given ``seed``."""
    p = params or DistortionParams()
    rng = np.random.default_rng(seed)
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"distort expects a 3D mask, got shape {m.shape}")
    out = m.copy()
    if not m.any():
        return out

    # global over- or under-painting
    if rng.random() < p.p_morph:
        if rng.random() < 0.5:
            out = ndi.binary_dilation(out, _BALL)
        else:
            eroded = ndi.binary_erosion(out, _BALL)
            out = eroded if eroded.any() else out

    # slabs of over-/under-painting: cubes centred on boundary voxels
    boundary = np.argwhere(m & ~ndi.binary_erosion(m, _BALL))
    n = int(rng.integers(p.n_cubes[0], p.n_cubes[1] + 1))
    for _ in range(n):
        c = boundary[rng.integers(len(boundary))]
        s = int(rng.integers(p.cube_size[0], p.cube_size[1] + 1))
        lo = np.maximum(c - s // 2, 0)
        hi = np.minimum(lo + s, m.shape)
        out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = rng.random() < 0.5

    # salt and pepper near the surface, where a brush slips
    if p.noise_fraction > 0:
        band = ndi.binary_dilation(m, _BALL, iterations=p.noise_band) & ~ndi.binary_erosion(
            m, _BALL, iterations=p.noise_band
        )
        idx = np.flatnonzero(band)
        k = int(round(p.noise_fraction * idx.size * 4))
        if k:
            flip = rng.choice(idx, size=min(k, idx.size), replace=False)
            flat = out.reshape(-1)
            flat[flip] = ~flat[flip]
    return out
