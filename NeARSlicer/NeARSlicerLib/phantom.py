"""Synthetic adrenal-like glands and CT context for the built-in demo and the tests (no downloads).

Arrays are ``[k, j, i]``; sizes are physical (mm), so a coarser spacing gives the same gland in
fewer voxels. Everything is deterministic per ``seed``.
"""

from __future__ import annotations

from typing import List, Sequence, Tuple, Union

import numpy as np
from scipy import ndimage

from .errors import InputError

__all__ = ["adrenal_phantom", "ct_phantom"]


def _random_rotation(rng: np.random.Generator) -> np.ndarray:
    """A rotation matrix from a random unit quaternion."""
    q = rng.normal(size=4)
    q /= np.linalg.norm(q)
    w, x, y, z = q
    return np.array([
        [1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)],
        [2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)],
        [2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)],
    ])


def _smooth_curve(rng: np.random.Generator, start: np.ndarray, heading: np.ndarray, length: float,
                  bend: float, step: float = 0.5) -> np.ndarray:
    """Points (N, 3) in the gland's local (u, v, w) frame along a gently bending in-plane curve.

    The heading turns by a smooth random angle profile (a few low-frequency sines) so limbs curve
    like real adrenal limbs instead of being straight rods.
    """
    n = max(int(length / step), 2)
    t = np.linspace(0.0, 1.0, n)
    turn = bend * (rng.uniform(-1, 1) * np.sin(np.pi * t) + 0.5 * rng.uniform(-1, 1) * np.sin(2 * np.pi * t))
    base = np.arctan2(heading[1], heading[0])
    angle = base + turn
    d = np.stack([np.cos(angle), np.sin(angle), np.zeros(n)], axis=1)
    pts = start + np.cumsum(d * step, axis=0) - d[0] * step
    return pts


def _gland_curves(rng: np.random.Generator) -> List[Tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The body and two limbs of an inverted Y: list of (points, half-width mm, half-thickness mm)."""
    curves = []
    junction = np.zeros(3)
    # Body: a short, broad ridge going "up" (+v) from the junction.
    body_len = rng.uniform(12.0, 17.0)
    pts = _smooth_curve(rng, junction, np.array([rng.uniform(-0.2, 0.2), 1.0]), body_len, bend=0.3)
    t = np.linspace(0, 1, len(pts))
    width = rng.uniform(10.0, 12.0) * (1.0 - 0.4 * t)            # tapers towards the tip
    thick = rng.uniform(2.7, 3.1) * (1.0 - 0.25 * t)
    curves.append((pts, width, thick))
    # Two limbs diverging downwards at different angles and lengths (medial shorter than lateral).
    spread = rng.uniform(0.4, 0.7)
    for side, length in ((-1.0, rng.uniform(26.0, 32.0)), (1.0, rng.uniform(30.0, 38.0))):
        ang = -np.pi / 2 + side * spread + rng.uniform(-0.1, 0.1)
        pts = _smooth_curve(rng, junction, np.array([np.cos(ang), np.sin(ang)]), length, bend=0.45)
        t = np.linspace(0, 1, len(pts))
        width = rng.uniform(7.5, 9.0) * (1.0 - 0.5 * t ** 2)      # thin limbs with rounded ends
        thick = rng.uniform(2.1, 2.8) * (1.0 - 0.35 * t ** 2)
        curves.append((pts, width, thick))
    return curves


def adrenal_phantom(seed: int = 0, shape: Sequence[int] = (64, 64, 64),
                    spacing: Union[float, Sequence[float]] = 1.0) -> np.ndarray:
    """A synthetic adrenal-like gland: bool ``[k, j, i]`` of ``shape``, centred in the volume.

    An inverted-Y sheet (a body and two diverging limbs, 3-6 mm thick, a few cm long), bent out of
    plane and randomly oriented; about 3000-6000 voxels at 1 mm. ``spacing`` is mm, a scalar or
    (i, j, k).
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) != 3 or min(shape) < 2:
        raise InputError(f"phantom shape must be 3D, got {shape}")
    sp = np.broadcast_to(np.asarray(spacing, dtype=float), (3,)).copy()  # (i, j, k)
    if np.any(sp <= 0):
        raise InputError(f"spacing must be positive, got {tuple(sp)}")
    rng = np.random.default_rng(seed)
    curves = _gland_curves(rng)
    rot = _random_rotation(rng)
    # Out-of-plane bending: the sheet wraps slightly, as the gland hugs kidney and crus.
    cu, cv = rng.uniform(-0.02, 0.02, size=2)

    def to_world(p: np.ndarray) -> np.ndarray:
        bent = p + np.stack([np.zeros(len(p)), np.zeros(len(p)), cu * p[:, 0] ** 2 + cv * p[:, 1] ** 2], axis=1)
        return bent @ rot.T

    # Centre the gland's bounding box (of its centre lines) on the volume centre.
    all_world = np.concatenate([to_world(c[0]) for c in curves])
    shift = (all_world.max(0) + all_world.min(0)) / 2.0

    # Physical (i, j, k) mm coordinates of voxel centres, volume centre at 0.
    n_ijk = np.array(shape[::-1])
    centre_mm = (n_ijk - 1) / 2.0 * sp
    occ = np.zeros(shape, dtype=np.float32)
    normal = rot[:, 2]  # the sheet's thickness axis in world coordinates
    for pts, width, thick in curves:
        world = to_world(pts) - shift
        tangents = np.gradient(world, axis=0)
        tangents /= np.linalg.norm(tangents, axis=1, keepdims=True)
        for p, tan, hw, ht in zip(world[::2], tangents[::2], width[::2], thick[::2]):
            # Local frame: along the curve, across the sheet (width), through the sheet (thickness).
            n_ax = normal - tan * (normal @ tan)
            n_ax /= np.linalg.norm(n_ax)
            w_ax = np.cross(tan, n_ax)
            reach = hw + 1.0
            c_vox = (p + centre_mm) / sp
            lo = np.maximum(np.floor(c_vox - reach / sp).astype(int), 0)
            hi = np.minimum(np.ceil(c_vox + reach / sp).astype(int) + 1, n_ijk)
            if np.any(hi <= lo):
                continue
            ii, jj, kk = [np.arange(lo[a], hi[a]) * sp[a] - centre_mm[a] - p[a] for a in range(3)]
            d = np.stack(np.meshgrid(ii, jj, kk, indexing="ij"), axis=-1)  # [i, j, k, 3]
            r2 = (d @ tan / max(ht, 1.0)) ** 2 + (d @ w_ax / hw) ** 2 + (d @ n_ax / ht) ** 2
            blob = (r2 <= 1.0).transpose(2, 1, 0)
            sl = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
            occ[sl] = np.maximum(occ[sl], blob)
    # A light blur + threshold rounds off the facets of the swept ellipses.
    occ = ndimage.gaussian_filter(occ, sigma=0.6 / sp[::-1])
    mask = occ >= 0.5
    labels, n = ndimage.label(mask)
    if n > 1:
        sizes = ndimage.sum(mask, labels, index=np.arange(1, n + 1))
        mask = labels == (int(np.argmax(sizes)) + 1)
    return mask


def ct_phantom(shape_mask: np.ndarray, seed: int = 0,
               spacing: Sequence[float] = (1.0, 1.0, 1.0), vary: bool = False) -> np.ndarray:
    """Plausible abdominal CT (float32 HU, ``[k, j, i]``) around the gland ``shape_mask``.

    Fat (~-100 HU) around a textured soft-tissue gland (~40 HU), a large neighbouring organ
    (~55 HU) touching part of the gland with low contrast, partial-volume blur and 15 HU noise.
    ``spacing`` is (i, j, k) mm. ``vary`` draws the scanner and patient from wide ranges instead
    (gland -15..50 HU, organ contrast 10-45 HU either way, fat -125..-75 HU, noise 8-25 HU,
    sometimes thick slices and a second organ), as used to train appearance priors that must
    carry over to real scans.
    """
    gland = np.asarray(shape_mask).astype(bool)
    if gland.ndim != 3:
        raise InputError(f"expected a 3D mask, got {gland.ndim} dimensions")
    if not gland.any():
        raise InputError("mask is empty")
    sp_kji = np.asarray(spacing, dtype=float)[::-1]
    rng = np.random.default_rng(seed)

    def texture(sigma_mm: float, amplitude: float) -> np.ndarray:
        """Smooth random field of standard deviation ``amplitude`` (HU)."""
        f = ndimage.gaussian_filter(rng.normal(size=gland.shape).astype(np.float32), sigma=sigma_mm / sp_kji)
        return f * (amplitude / max(float(f.std()), 1e-6))

    # Coordinates in mm, [k, j, i] components.
    kk, jj, ii = np.meshgrid(*[np.arange(n) * s for n, s in zip(gland.shape, sp_kji)], indexing="ij")
    pts = np.argwhere(gland) * sp_kji

    if vary:
        gland_hu, fat_hu = rng.uniform(-15.0, 50.0), rng.uniform(-125.0, -75.0)
        organ_hu = [gland_hu + rng.choice([-1.0, 1.0]) * rng.uniform(10.0, 45.0) for _ in range(2)]
        n_organs, noise_hu = int(rng.integers(1, 3)), rng.uniform(8.0, 25.0)
        psf_mm = rng.uniform(0.6, 1.2)
        slice_mm = rng.uniform(1.0, 2.0) if rng.random() < 0.4 else 0.0  # extra blur along k
    else:
        gland_hu, fat_hu, organ_hu, n_organs, noise_hu, psf_mm, slice_mm = 38.0, -100.0, [55.0], 1, 15.0, 0.8, 0.0

    # Neighbouring organs: big ellipsoids pressed against the gland's flat faces (as kidney,
    # liver or crus press on an adrenal), touching a patch of the boundary with low contrast.
    centred_pts = pts - pts.mean(axis=0)
    normal = np.linalg.svd(centred_pts, full_matrices=False)[2][2]  # least-spread axis of the sheet
    hu = fat_hu + texture(3.0, 12.0)                             # fat with mild heterogeneity
    side = rng.choice([-1.0, 1.0])
    for o in range(n_organs):
        direction = normal * side * (1 if o == 0 else -1) + 0.3 * rng.normal(size=3)
        direction /= np.linalg.norm(direction)
        contact = pts[np.argmax(pts @ direction)]
        radii = rng.uniform(25.0, 40.0, size=3)
        r_along = 1.0 / np.sqrt(np.sum((direction / radii) ** 2))  # ellipsoid radius along `direction`
        centre = contact + direction * (r_along - 3.0)              # overlaps the gland by ~3 mm
        organ = ((kk - centre[0]) / radii[0]) ** 2 + ((jj - centre[1]) / radii[1]) ** 2 \
            + ((ii - centre[2]) / radii[2]) ** 2 <= 1.0
        hu = np.where(organ & ~gland, organ_hu[o] + texture(2.0, 6.0), hu)
    hu = np.where(gland, gland_hu + texture(1.0, 8.0), hu)
    # Partial-volume blur (scanner PSF), optionally thick slices, then quantum noise.
    sigma = np.full(3, psf_mm)
    sigma[0] = np.hypot(psf_mm, slice_mm)
    hu = ndimage.gaussian_filter(hu.astype(np.float32), sigma=sigma / sp_kji)
    hu = hu + rng.normal(0.0, noise_hu, size=gland.shape)
    return hu.astype(np.float32)
