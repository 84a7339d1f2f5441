"""Synthetic image context around any structure: CT in HU, or MR-like in arbitrary units.

One tissue layout (the structure, a background, neighbouring organs, sometimes touching it, now and
then gas) is drawn first; a modality then maps tissues to intensities. CT contrasts span fat,
soft tissue, contrast-enhanced organs and bone; MR has no HU: fat bright or dark, organ contrasts
permuted, a smooth bias field and a random global scale and offset. Arrays are ``[k, j, i]``;
``spacing_mm`` is the isotropic voxel size; every draw comes from the ``rng`` passed in.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["synthetic_context", "typical_tissue", "TISSUES", "STRUCTURE_TISSUES", "CT_HU_RANGES",
           "CLASS_TISSUE_WEIGHTS"]

TISSUES = ("fat", "soft", "enhanced", "bone", "air")
# HU ranges drawn from, per tissue (bone: cancellous interior; its cortex is brighter, up to 1200).
CT_HU_RANGES: Dict[str, tuple] = {
    "fat": (-120.0, -60.0), "soft": (20.0, 70.0), "enhanced": (100.0, 250.0),
    "bone": (300.0, 450.0), "air": (-1000.0, -900.0),
}
_CORTEX_HU = (500.0, 1200.0)
STRUCTURE_TISSUES = ("soft", "enhanced", "bone")
# What each anatomy class usually is on a CT (weights of STRUCTURE_TISSUES): a vertebra is bone, a
# vessel mostly contrast-filled, a node or a bowel loop mostly soft tissue.
CLASS_TISSUE_WEIGHTS: Dict[str, Tuple[float, float, float]] = {
    "organ": (0.5, 0.5, 0.0), "kidney": (0.4, 0.6, 0.0), "vessel": (0.35, 0.65, 0.0),
    "branching": (0.35, 0.65, 0.0), "bowel": (0.7, 0.3, 0.0), "plate": (0.75, 0.05, 0.2),
    "shell": (0.7, 0.3, 0.0), "vertebra": (0.05, 0.0, 0.95), "gland": (0.6, 0.4, 0.0), "node": (0.8, 0.2, 0.0),
}


def typical_tissue(cls: str, rng: np.random.Generator) -> str:
    """A CT tissue for a structure of anatomy class ``cls``, drawn from ``CLASS_TISSUE_WEIGHTS``."""
    if cls not in CLASS_TISSUE_WEIGHTS:
        raise InputError(f"unknown anatomy class {cls!r}")
    return str(rng.choice(STRUCTURE_TISSUES, p=CLASS_TISSUE_WEIGHTS[cls]))


@dataclass
class _Layout:
    """Region map (0 background, 1 the structure, 2.. neighbours) and each region's tissue."""

    regions: np.ndarray
    tissue: List[str] = field(default_factory=list)


def _surface_points(mask: np.ndarray) -> np.ndarray:
    surf = mask & ~ndimage.binary_erosion(mask)
    pts = np.argwhere(surf)
    return pts if len(pts) else np.argwhere(mask)


def _ellipsoid_mask(shape: tuple, centre: np.ndarray, radii: np.ndarray, rot: np.ndarray) -> np.ndarray:
    """Voxels inside the ellipsoid ``|R^T (x - c) / r| <= 1`` (voxel units), evaluated in its box."""
    out = np.zeros(shape, dtype=bool)
    half = np.sqrt(((rot * radii[None, :]) ** 2).sum(axis=1))
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, shape)
    if np.any(hi <= lo):
        return out
    g = [np.arange(lo[a], hi[a], dtype=np.float32) - np.float32(centre[a]) for a in range(3)]
    q = np.zeros(tuple(hi - lo), dtype=np.float32)
    for a in range(3):
        proj = (rot[0, a] * g[0][:, None, None] + rot[1, a] * g[1][None, :, None] + rot[2, a] * g[2][None, None, :])
        q += (proj / np.float32(radii[a])) ** 2
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = q <= 1.0
    return out


def _rotation(rng: np.random.Generator) -> np.ndarray:
    q, r = np.linalg.qr(rng.normal(size=(3, 3)))
    return q * np.sign(np.diag(r))[None, :]


def _layout(mask: np.ndarray, rng: np.random.Generator, tissue: Optional[str] = None) -> _Layout:
    """The structure, a background and 1-3 neighbours (touching it with probability ~0.6 each)."""
    regions = np.zeros(mask.shape, dtype=np.int8)
    regions[mask] = 1
    background = "soft" if rng.random() < 0.2 else "fat"
    drawn = str(rng.choice(["soft", "enhanced", "bone"], p=[0.45, 0.38, 0.17]))  # drawn either way: same stream
    structure = tissue or drawn
    layout = _Layout(regions, [background, structure])
    surf = _surface_points(mask)
    centroid = np.argwhere(mask).mean(axis=0)
    n = min(mask.shape)
    for _ in range(int(rng.integers(1, 4))):
        p = surf[int(rng.integers(len(surf)))].astype(float)
        d = p - centroid + rng.normal(size=3) * 2.0
        d /= max(np.linalg.norm(d), 1e-6)
        rot = _rotation(rng)
        radii = rng.uniform(0.1, 0.45, size=3) * n
        r_along = 1.0 / np.sqrt(np.sum(((rot.T @ d) / radii) ** 2))
        gap = -rng.uniform(1.0, 3.0) if rng.random() < 0.6 else rng.uniform(1.5, 5.0)
        inside = _ellipsoid_mask(mask.shape, p + d * (r_along + gap), radii, rot) & (regions == 0)
        tissue = str(rng.choice(["soft", "enhanced", "bone", "fat"], p=[0.45, 0.35, 0.12, 0.08]))
        regions[inside] = len(layout.tissue)
        layout.tissue.append(tissue)
    if rng.random() < 0.3:  # bowel gas: a few pockets near the structure
        for _ in range(int(rng.integers(1, 4))):
            p = surf[int(rng.integers(len(surf)))].astype(float)
            d = p - centroid
            d /= max(np.linalg.norm(d), 1e-6)
            radii = rng.uniform(0.03, 0.1, size=3) * n
            centre = p + d * (radii.max() + rng.uniform(-1.0, 3.0))
            inside = _ellipsoid_mask(mask.shape, centre, radii, _rotation(rng)) & (regions != 1)
            regions[inside] = len(layout.tissue)
            layout.tissue.append("air")
    return layout


def _texture(rng: np.random.Generator, shape: tuple, sigma_vox: float) -> np.ndarray:
    """A smooth random field of unit standard deviation."""
    f = ndimage.gaussian_filter(rng.standard_normal(size=shape, dtype=np.float32), sigma=sigma_vox)
    return f / max(float(f.std()), 1e-6)


def _fill(layout: _Layout, values: Dict[str, float], jitter: float, texture_amp: Dict[str, float],
          rng: np.random.Generator, bone_rim: float, spacing_mm: float) -> np.ndarray:
    """Piecewise-constant tissues with a per-region jitter and texture; bone regions get a cortex."""
    shape = layout.regions.shape
    img = np.zeros(shape, dtype=np.float32)
    tex = _texture(rng, shape, sigma_vox=float(np.clip(2.0 / spacing_mm, 0.8, 3.0)))
    for rid, tissue in enumerate(layout.tissue):
        where = layout.regions == rid
        if not where.any():
            continue
        img[where] = values[tissue] + rng.normal(0.0, jitter) + texture_amp[tissue] * tex[where]
        if tissue == "bone":
            # the cortex: a rim ~1.5 mm (at least one voxel) thick
            depth = max(1, int(round(1.5 / spacing_mm)))
            rim = where & ~ndimage.binary_erosion(where, iterations=depth)
            img[rim] = bone_rim
    return img


def _psf_sigma(rng: np.random.Generator, spacing_mm: float) -> float:
    """Partial-volume blur (voxels): a 0.5-1.5 mm scanner PSF plus at least 0.4 voxel."""
    return float(np.clip(np.hypot(rng.uniform(0.5, 1.5) / spacing_mm, 0.4), 0.4, 1.5))


def _ct(layout: _Layout, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    values = {t: rng.uniform(*CT_HU_RANGES[t]) for t in TISSUES}
    amp = {"fat": 10.0, "soft": 6.0, "enhanced": 10.0, "bone": 40.0, "air": 15.0}
    # regions of one tissue differ by ~12 HU (liver vs muscle): a same-tissue neighbour is low-contrast, not invisible
    img = _fill(layout, values, jitter=12.0, texture_amp=amp, rng=rng,
                bone_rim=rng.uniform(*_CORTEX_HU), spacing_mm=spacing_mm)
    img = ndimage.gaussian_filter(img, sigma=_psf_sigma(rng, spacing_mm))
    noise = rng.standard_normal(size=img.shape, dtype=np.float32)
    noise = ndimage.gaussian_filter(noise, sigma=rng.uniform(0.0, 0.7))  # reconstruction-kernel grain
    img += noise * (rng.uniform(5.0, 30.0) / max(float(noise.std()), 1e-6))
    return np.clip(img, -1024.0, 3071.0).astype(np.float32)


def _bias_field(rng: np.random.Generator, shape: tuple) -> np.ndarray:
    """A smooth field of unit standard deviation: a random quadratic polynomial over the cube, as a
    coil's sensitivity varies slowly across it."""
    x = [np.linspace(-1.0, 1.0, s, dtype=np.float32) for s in shape]
    axes = [x[0][:, None, None], x[1][None, :, None], x[2][None, None, :]]
    field = np.zeros(shape, dtype=np.float32)
    for a in range(3):
        field = field + np.float32(rng.normal()) * axes[a] + np.float32(0.5 * rng.normal()) * axes[a] ** 2
        field = field + np.float32(0.5 * rng.normal()) * axes[a] * axes[(a + 1) % 3]
    return (field - field.mean()) / max(float(field.std()), 1e-6)


def _mr(layout: _Layout, rng: np.random.Generator, spacing_mm: float) -> np.ndarray:
    """MR-like: tissue contrasts permuted, fat bright (T1/T2) or dark (fat-suppressed), no HU."""
    organ_levels = rng.permutation(rng.uniform(0.15, 0.9, size=3))
    values = {"soft": organ_levels[0], "enhanced": organ_levels[1],
              "fat": rng.uniform(0.75, 1.0) if rng.random() < 0.6 else rng.uniform(0.03, 0.15),
              "air": rng.uniform(0.0, 0.04)}
    values["bone"] = values["fat"] * rng.uniform(0.6, 0.9)  # fatty marrow inside a dark cortex
    amp = {t: 0.03 for t in TISSUES}
    img = _fill(layout, values, jitter=0.03, texture_amp=amp, rng=rng,
                bone_rim=rng.uniform(0.0, 0.08), spacing_mm=spacing_mm)
    img = ndimage.gaussian_filter(img, sigma=_psf_sigma(rng, spacing_mm))
    img = img * np.exp(rng.uniform(0.05, 0.35) * _bias_field(rng, img.shape))
    sigma = np.float32(rng.uniform(0.01, 0.05))
    real = img + sigma * rng.standard_normal(size=img.shape, dtype=np.float32)
    imag = sigma * rng.standard_normal(size=img.shape, dtype=np.float32)
    img = np.sqrt(real * real + imag * imag)  # magnitude images: Rician noise, never negative
    return (img * rng.uniform(50.0, 4000.0) + rng.uniform(0.0, 300.0)).astype(np.float32)


def synthetic_context(mask: np.ndarray, spacing_mm: float, rng: np.random.Generator,
                      modality: str = "CT", tissue: Optional[str] = None) -> np.ndarray:
    """An image (float32, same shape as ``mask``) with the structure ``mask`` in plausible context.

    ``"CT"``: HU; the structure is soft tissue (20..70), contrast-enhanced (100..250) or bone
    (300..450 with a 500..1200 cortex), in fat (-120..-60) or soft tissue, with 1-3 neighbours of
    any of these tissues (often touching it), sometimes gas (-1000..-900), partial-volume blur and
    5-30 HU noise. ``"MR"``: arbitrary positive units, same layout, contrasts permuted.
    ``tissue`` ("soft", "enhanced" or "bone") fixes the structure's tissue (e.g. ``typical_tissue``
    of its class); None draws it."""
    m = np.asarray(mask).astype(bool)
    if m.ndim != 3:
        raise InputError(f"expected a 3D mask, got {m.ndim} dimensions")
    if not m.any():
        raise InputError("mask is empty")
    spacing = float(spacing_mm)
    if not np.isfinite(spacing) or spacing <= 0:
        raise InputError(f"spacing_mm must be positive, got {spacing_mm}")
    kind = str(modality).upper()
    if kind not in ("CT", "MR"):
        raise InputError(f"modality must be 'CT' or 'MR', got {modality!r}")
    if tissue is not None and tissue not in STRUCTURE_TISSUES:
        raise InputError(f"tissue must be one of {', '.join(STRUCTURE_TISSUES)}, got {tissue!r}")
    layout = _layout(m, rng, tissue)
    return _ct(layout, rng, spacing) if kind == "CT" else _mr(layout, rng, spacing)
