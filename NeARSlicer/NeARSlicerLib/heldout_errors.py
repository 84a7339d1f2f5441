"""Held-out annotation errors: ways of mis-painting that no prior trains on and no gate was tuned on.

The annotation-error library (``annotation_errors``) feeds training and every threshold of the
do-no-harm gates, so a benchmark on it measures how well the product learnt that library. These
processes are kept apart, for evaluation only: nothing in training imports this module, and
``annotation_errors.corrupt`` does not know their names. Same conventions as the library: a clean
binary mask ``[k, j, i]``, ``spacing`` (i, j, k) in mm, a ``numpy.random.Generator``, every size in
mm, a new mask returned (the input never modified).

Families (``HELD_OUT_ERRORS``), each with a ``severity`` in [0, 1]:

* ``elastic``       a wobbly free-hand boundary: the mask warped by a smooth random displacement
                    field (correlation 6-12 mm, root-mean-square displacement 0.5-2 mm);
* ``fill_between``  Slicer's "Fill between slices": the true section painted on key slices every
                    3-12 mm along one axis (axial mostly), the slices between filled by shape-based
                    (signed-distance) interpolation, nothing beyond the outermost key slices;
* ``shift``         the whole annotation displaced by 0.5-3 mm (drawn on another series or phase,
                    or through a wrong transform);
* ``polygon``       the Draw / scissors tools: every axial section replaced by a polygon through
                    vertices clicked every 3-10 mm along its contour, each click off by up to 0.8 mm.

``heldout_mixture`` draws one to three of them with random severities.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

Spacing = Sequence[float]  # (i, j, k) mm

HELD_OUT_ERRORS = ("elastic", "fill_between", "shift", "polygon")
HELD_OUT_MIXTURE = "heldout_mixture"


def _axes_mm(spacing: Spacing) -> np.ndarray:
    """Voxel size per array axis (k, j, i) in mm."""
    return np.asarray(spacing, float)[::-1]


def _crop(mask: np.ndarray, spacing: Spacing, margin_mm: float) -> tuple[tuple[slice, ...], np.ndarray]:
    """The mask's bounding box grown by ``margin_mm`` (clipped to the array): (slices, cropped mask).
    The error processes work there, so a small structure of a whole CT costs what its box costs."""
    vox = _axes_mm(spacing)
    idx = np.nonzero(mask)
    pad = np.ceil(margin_mm / vox).astype(int) + 2
    box = tuple(slice(max(int(i.min()) - p, 0), min(int(i.max()) + p + 1, n))
                for i, p, n in zip(idx, pad, mask.shape))
    return box, mask[box]


def _sdf(mask: np.ndarray, vox: Sequence[float]) -> np.ndarray:
    """Signed distance to the surface in mm (negative inside), of a 3D mask or a 2D section (``vox``: the
    voxel size per array axis); an empty mask is outside everywhere. Moving this smooth field, rather
    than the binary mask, places the moved surface to a fraction of a voxel (a binary mask read with
    linear interpolation would round every move to whole voxels)."""
    if not mask.any():
        return np.full(mask.shape, 1e6, np.float32)
    outside = ndi.distance_transform_edt(~mask, sampling=vox)
    inside = ndi.distance_transform_edt(mask, sampling=vox)
    return (outside - inside).astype(np.float32)


def _resample(mask: np.ndarray, vox: np.ndarray, displacement_vox: np.ndarray) -> np.ndarray:
    """``mask`` read at each voxel + ``displacement_vox`` (3, *shape): its signed distance, linear."""
    grid = np.indices(mask.shape, dtype=np.float32) + displacement_vox
    return ndi.map_coordinates(_sdf(mask, vox), grid, order=1, mode="nearest") < 0


def elastic(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """A smooth random displacement field of root-mean-square length 0.5-2 mm and correlation 6-12 mm."""
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    amplitude = 0.5 + 1.5 * s
    corr = rng.uniform(6.0, 12.0)
    out = np.zeros_like(mask)
    box, m = _crop(mask, spacing, 3 * amplitude + corr)
    field = np.stack([ndi.gaussian_filter(rng.standard_normal(m.shape), corr / vox, mode="reflect")
                      for _ in range(3)])
    rms = np.sqrt((field ** 2).sum(0).mean())
    field_mm = field * (amplitude / max(float(rms), 1e-12))
    out[box] = _resample(m, vox, (field_mm / vox[:, None, None, None]).astype(np.float32))
    return out


def shift(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """The whole mask displaced by 0.5-3 mm in a random direction."""
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    d = rng.standard_normal(3)
    d_mm = d / np.linalg.norm(d) * (0.5 + 2.5 * s)
    out = np.zeros_like(mask)
    box, m = _crop(mask, spacing, float(np.abs(d_mm).max()))
    out[box] = _resample(m, vox, np.broadcast_to((-d_mm / vox)[:, None, None, None], (3, *m.shape)))
    return out


def fill_between(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
                 axis: Optional[int] = None) -> np.ndarray:
    """Key slices every 3-12 mm along ``axis`` (axial 60 %, coronal or sagittal 20 % each), each the true
    section, the slices between filled by interpolating the key sections' signed distances linearly;
    nothing is painted beyond the outermost key slices (the tool only fills between painted ones)."""
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    ax = int(rng.choice(3, p=[0.6, 0.2, 0.2])) if axis is None else int(axis)
    m = np.moveaxis(np.asarray(mask, bool), ax, 0)
    sampling = [v for a, v in enumerate(vox) if a != ax]
    gap_vox = max(2, int(round((3.0 + 9.0 * s) / vox[ax])))
    occupied = np.nonzero(m.any(axis=(1, 2)))[0]
    first, last = int(occupied.min()), int(occupied.max())
    keys = list(range(first + int(rng.integers(0, gap_vox)), last + 1, gap_vox))
    keys = [k for k in keys if m[k].any()] or [int(occupied[len(occupied) // 2])]
    out = np.zeros_like(m)
    sdf = {k: _sdf(m[k], sampling) for k in keys}
    for k in keys:
        out[k] = m[k]
    for a, b in zip(keys[:-1], keys[1:]):
        for z in range(a + 1, b):
            w = (z - a) / (b - a)
            out[z] = (1 - w) * sdf[a] + w * sdf[b] < 0
    return np.moveaxis(out, 0, ax)


def _polygon_section(section: np.ndarray, sampling: np.ndarray, step_mm: float, jitter_mm: float,
                     rng: np.random.Generator) -> np.ndarray:
    """One axial section redrawn as polygons through contour points every ``step_mm`` (even-odd
    filling, so a hole's contour cuts the hole out again)."""
    from skimage.draw import polygon as draw_polygon
    from skimage.measure import find_contours

    padded = np.pad(section.astype(np.float32), 1)
    out = np.zeros(section.shape, bool)
    for contour in find_contours(padded, 0.5):
        pts = contour - 1.0  # back to the section's indices
        seg = np.sqrt(((np.diff(pts, axis=0) * sampling) ** 2).sum(1))
        arc = np.concatenate([[0.0], np.cumsum(seg)])
        if arc[-1] < 2 * step_mm:  # a speck-sized contour: the annotator clicks a few points anyway
            n = 4
        else:
            n = max(3, int(round(arc[-1] / step_mm)))
        start = rng.uniform(0, arc[-1] / n) if arc[-1] > 0 else 0.0
        at = (start + np.arange(n) * arc[-1] / n) % max(arc[-1], 1e-9)
        verts = np.stack([np.interp(at, arc, pts[:, 0]), np.interp(at, arc, pts[:, 1])], 1)
        verts += rng.uniform(-jitter_mm, jitter_mm, verts.shape) / sampling
        rr, cc = draw_polygon(verts[:, 0], verts[:, 1], shape=section.shape)
        filled = np.zeros(section.shape, bool)
        filled[rr, cc] = True
        if not filled.any():  # clicks around a section smaller than a pixel still paint one
            r, c = np.clip(np.round(pts.mean(0)).astype(int), 0, np.array(section.shape) - 1)
            filled[r, c] = True
        out ^= filled
    return out


def polygon(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """Every axial section redrawn as polygons: a vertex every 3-10 mm of contour, each off by up to
    0.8 mm (the Draw effect's clicks)."""
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    step = 3.0 + 7.0 * s
    jitter = 0.8 * s
    out = np.zeros_like(mask)
    box, m = _crop(mask, spacing, 2.0 * jitter)
    sub = np.zeros_like(m)
    for k in np.nonzero(m.any(axis=(1, 2)))[0]:
        sub[k] = _polygon_section(m[k], vox[1:], step, jitter, rng)
    out[box] = sub
    return out


_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "elastic": elastic, "fill_between": fill_between, "shift": shift, "polygon": polygon,
}


def apply_heldout(mask: np.ndarray, spacing: Spacing, family: str, rng: np.random.Generator,
                  severity: float = 0.5) -> np.ndarray:
    """One held-out family's error on ``mask`` (3D, bool); an empty mask is returned as it is."""
    if family not in _FUNCS:
        raise ValueError(f"unknown held-out error {family!r}: use one of {', '.join(HELD_OUT_ERRORS)} "
                         f"or {HELD_OUT_MIXTURE}")
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"annotation errors need a 3D mask, got shape {m.shape}")
    if not m.any():
        return m.copy()
    return _FUNCS[family](m, spacing, rng, severity)


def heldout_mixture(mask: np.ndarray, spacing: Spacing,
                    rng: np.random.Generator) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """One to three held-out families in random order (fill between slices first: it is how the
    whole annotation was made), each with a severity drawn in [0.35, 1]; (mask, [(family, severity)])."""
    m = np.asarray(mask, bool)
    k = int(rng.integers(1, 4))
    chosen = [HELD_OUT_ERRORS[i] for i in rng.choice(len(HELD_OUT_ERRORS), size=k, replace=False)]
    chosen.sort(key=lambda f: f != "fill_between")
    out, applied = m, []
    for f in chosen:
        sev = float(rng.uniform(0.35, 1.0))
        nxt = apply_heldout(out, spacing, f, rng, sev)
        if nxt.sum() >= 0.2 * m.sum():
            out = nxt
            applied.append((f, round(sev, 3)))
    return out, applied


def is_heldout(family: Optional[str]) -> bool:
    """Whether ``family`` names a held-out process (or their mixture), not an error-library family."""
    return family in HELD_OUT_ERRORS or family == HELD_OUT_MIXTURE


def corrupt_heldout(mask: np.ndarray, spacing: Spacing, family: str, seed: int,
                    severity: Optional[float] = None) -> np.ndarray:
    """Deterministic entry point for benchmarks: a held-out ``family`` (or ``heldout_mixture``) with
    ``seed``; ``severity`` None draws it in [0.35, 1] (a benchmark case should be visibly wrong)."""
    rng = np.random.default_rng(seed)
    if family == HELD_OUT_MIXTURE:
        return heldout_mixture(mask, spacing, rng)[0]
    sev = float(rng.uniform(0.35, 1.0)) if severity is None else severity
    return apply_heldout(mask, spacing, family, rng, sev)
