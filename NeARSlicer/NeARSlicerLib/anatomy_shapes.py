"""Procedurally generated anatomy-like binary shapes for training a general (any-structure) prior.

Each class is designed in a local frame in relative units, randomly rotated, rasterised into an
``n``-voxel cube so that its longest bounding-box side spans a random number of voxels in
``extent_voxels``, and given the isotropic voxel size ``spacing_mm`` that makes that side its
physical size (drawn per class, 8-250 mm). Arrays are ``[k, j, i]``; every random draw comes from
the ``numpy.random.Generator`` passed in (no global RNG). Appearance (CT / MR-like context around a
shape) lives in ``anatomy_context``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

from .anatomy_context import synthetic_context, typical_tissue  # re-exported: one import for callers
from .errors import InputError
from .phantom import _random_rotation

__all__ = ["CLASSES", "HELD_OUT_CLASSES", "SIZE_RANGE_MM", "EXPECTED_HOLES", "AnatomyShape", "random_anatomy",
           "synthetic_context", "typical_tissue", "domain_of", "shape_topology", "elongation", "anatomy_study_cases"]

# Longest bounding-box side (mm) of each class: plausible adult ranges.
SIZE_RANGE_MM: Dict[str, Tuple[float, float]] = {
    "organ": (40.0, 250.0),      # compact lobulated: gallbladder .. spleen .. liver
    "kidney": (60.0, 150.0),     # bean with a hilum
    "vessel": (15.0, 250.0),     # curved tube: renal artery .. aorta
    "branching": (20.0, 200.0),  # vessel tree
    "bowel": (40.0, 250.0),      # tortuous tube
    "plate": (30.0, 250.0),      # thin curved sheet (diaphragm, muscle sheet)
    "shell": (20.0, 150.0),      # open thin shell (bladder / gallbladder wall, cortex)
    "vertebra": (30.0, 110.0),   # body + arch around a canal + processes
    "gland": (15.0, 70.0),       # multi-lobed Y / V (adrenal-like)
    "node": (8.0, 35.0),         # small round node
}
CLASSES: Tuple[str, ...] = tuple(SIZE_RANGE_MM)
# Kept out of training for the held-out benchmark: one tube-like, one compact. Neither is among the
# real example CT's benchmark structures, so holding them out costs the real-CT benchmark nothing.
HELD_OUT_CLASSES: Tuple[str, ...] = ("branching", "node")
# Through-holes of each class (a vertebra's canal); a shape that rasterised otherwise (a pinhole in
# an oblique sheet) is drawn again. Tubes that touch themselves (bowel, vessel trees) form loops
# naturally, so any number is allowed there. No class has cavities.
EXPECTED_HOLES: Dict[str, Optional[int]] = {
    "organ": 0, "kidney": 0, "vessel": 0, "branching": None, "bowel": None, "plate": 0, "shell": 0,
    "vertebra": 1, "gland": 0, "node": 0,
}


@dataclass
class AnatomyShape:
    """One generated shape: ``mask`` bool ``(n, n, n)`` ``[k, j, i]``, isotropic ``spacing_mm``,
    its class ``cls`` and ``size_mm`` (longest bounding-box side, mm)."""

    mask: np.ndarray
    spacing_mm: float
    cls: str
    size_mm: float


# --- primitives (local design frame, relative units; the longest side is ~100 units) -----------

@dataclass
class _Ellipsoid:
    centre: np.ndarray          # (3,)
    axes: np.ndarray            # (3, 3): columns are the semi-axis vectors
    add: bool = True


@dataclass
class _Tube:
    points: np.ndarray          # (N, 3) centre line
    radii: np.ndarray           # (N,)
    add: bool = True


@dataclass
class _Field:
    """An implicit solid: ``inside(local_points (M, 3), voxel) -> bool (M,)`` where ``voxel`` is the
    voxel size in design units (thin parts stay at least about two voxels thick); ``samples`` and
    ``margin`` bound it."""

    inside: Callable[[np.ndarray, float], np.ndarray]
    samples: np.ndarray         # (M, 3) points whose bounding box (plus ``margin``) holds the solid
    margin: float
    add: bool = True


def _ell(centre: Sequence[float], radii: Sequence[float], frame: Optional[np.ndarray] = None,
         add: bool = True) -> _Ellipsoid:
    f = np.eye(3) if frame is None else frame
    return _Ellipsoid(np.asarray(centre, float), f * np.asarray(radii, float)[None, :], add)


def _orthonormal_frame(tangent: np.ndarray, up: np.ndarray) -> np.ndarray:
    """Columns (tangent, side, normal) with ``normal`` as close to ``up`` as possible."""
    t = tangent / np.linalg.norm(tangent)
    n = up - t * (up @ t)
    if np.linalg.norm(n) < 1e-6:
        n = np.cross(t, [1.0, 0.0, 0.0]) if abs(t[0]) < 0.9 else np.cross(t, [0.0, 1.0, 0.0])
    n /= np.linalg.norm(n)
    return np.stack([t, np.cross(n, t), n], axis=1)


def _smooth_path(rng: np.random.Generator, start: np.ndarray, heading: np.ndarray, length: float,
                 wiggle: float, n: int = 120, planar: bool = False) -> np.ndarray:
    """A smoothly bending path (n, 3) of arc length ``length``; ``wiggle`` is the turning (rad)."""
    t = np.linspace(0.0, 1.0, n)
    angles = []
    for _ in range(1 if planar else 2):
        a = np.zeros(n)
        for f in (1, 2, 3):
            a += wiggle / f * rng.uniform(-1, 1) * np.sin(np.pi * f * t + rng.uniform(0, np.pi))
        angles.append(a)
    frame = _orthonormal_frame(heading, rng.normal(size=3) if not planar else np.array([0.0, 0.0, 1.0]))
    yaw = angles[0]
    pitch = np.zeros(n) if planar else angles[1]
    d = (np.cos(yaw) * np.cos(pitch))[:, None] * frame[:, 0] + (np.sin(yaw) * np.cos(pitch))[:, None] * frame[:, 1] \
        + np.sin(pitch)[:, None] * frame[:, 2]
    step = length / (n - 1)
    return start + np.concatenate([np.zeros((1, 3)), np.cumsum(d[1:] * step, axis=0)])


def _ellipsoid_chain(points: np.ndarray, half_width: np.ndarray, half_thick: np.ndarray,
                     up: np.ndarray, every: int = 3) -> List[_Ellipsoid]:
    """Flat ellipsoids swept along ``points``: a ribbon ``2*half_width`` wide, ``2*half_thick`` thick."""
    idx = np.arange(0, len(points), every)
    tang = np.gradient(points, axis=0)[idx]
    step = np.linalg.norm(tang, axis=1)
    t = tang / np.maximum(step, 1e-9)[:, None]
    normal = up[None, :] - t * (t @ up)[:, None]   # ``up`` is never along a ribbon's tangent here
    normal /= np.maximum(np.linalg.norm(normal, axis=1), 1e-9)[:, None]
    side = np.cross(normal, t)
    radii = np.stack([np.maximum(step * every, half_thick[idx]), half_width[idx], half_thick[idx]], axis=1)
    axes = np.stack([t, side, normal], axis=2) * radii[:, None, :]
    return [_Ellipsoid(points[i], a) for i, a in zip(idx, axes)]


# --- class designers ---------------------------------------------------------------------------

def _organ(rng: np.random.Generator) -> list:
    r = np.array([50.0, 50.0 * rng.uniform(0.45, 0.85), 50.0 * rng.uniform(0.25, 0.5)])
    prims: list = [_ell((0, 0, 0), r)]
    for _ in range(int(rng.integers(3, 8))):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        on_surface = d / np.sqrt(np.sum((d / r) ** 2))
        # rounded lobes bulging from the surface (not spikes): nearly isotropic, half buried
        lobe_r = float(np.mean(r)) * rng.uniform(0.3, 0.5) * rng.uniform(0.8, 1.2, size=3)
        prims.append(_ell(on_surface * rng.uniform(0.6, 0.85), lobe_r, _random_rotation(rng)))
    if rng.random() < 0.5:  # a concave visceral face (spleen, liver)
        cut_r = r * np.array([rng.uniform(0.6, 0.9), rng.uniform(0.6, 0.9), 1.0])
        prims.append(_ell((0, 0, -r[2] - cut_r[2] * rng.uniform(0.6, 0.85)), cut_r, add=False))
    return prims


def _kidney(rng: np.random.Generator) -> list:
    bend = rng.uniform(1.0, 1.6)                 # radians of arc
    rad = 50.0 / np.sin(bend / 2)                # the arc spans ~100 units
    ang = np.linspace(-bend / 2, bend / 2, 40)
    pts = np.stack([rad * np.sin(ang), rad * (1 - np.cos(ang)), np.zeros_like(ang)], axis=1)
    width = rng.uniform(20.0, 27.0) * (0.75 + 0.25 * np.sin(np.linspace(0, np.pi, 40)))
    thick = width * rng.uniform(0.6, 0.8)
    prims: list = _ellipsoid_chain(pts, width, thick, np.array([0.0, 0.0, 1.0]), every=2)
    # The hilum: a notch into the concave (inner, +y) side at the middle, cut through the whole
    # thickness so that no thin membrane (a rasterisation pinhole risk) is left over it.
    mid = pts[20]
    depth = width[20] * rng.uniform(0.2, 0.45)
    ry = rng.uniform(8.0, 12.0)
    prims.append(_ell(mid + np.array([0.0, width[20] + ry - depth, 0.0]),
                      (rng.uniform(10, 16), ry, thick[20] * 1.5), add=False))
    return prims


def _vessel(rng: np.random.Generator) -> list:
    pts = _smooth_path(rng, np.zeros(3), rng.normal(size=3), 100.0, wiggle=rng.uniform(0.3, 1.2))
    r0 = 100.0 / rng.uniform(4.0, 20.0) / 2.0
    t = np.linspace(0, 1, len(pts))
    radii = r0 * (1.0 + 0.15 * np.sin(2 * np.pi * t * rng.uniform(0.5, 1.5) + rng.uniform(0, 6)))
    if rng.random() < 0.15:  # an aneurysm-like bulge
        radii *= 1.0 + rng.uniform(0.5, 1.2) * np.exp(-((t - rng.uniform(0.3, 0.7)) / 0.08) ** 2)
    return [_Tube(pts, radii)]


def _branching(rng: np.random.Generator) -> list:
    trunk = _smooth_path(rng, np.zeros(3), rng.normal(size=3), 100.0, wiggle=rng.uniform(0.2, 0.8))
    r0 = 100.0 / rng.uniform(5.0, 12.0) / 2.0
    t = np.linspace(0, 1, len(trunk))
    prims: list = [_Tube(trunk, r0 * (1.0 - 0.3 * t))]
    tang = np.gradient(trunk, axis=0)
    for _ in range(int(rng.integers(1, 5))):
        at = int(rng.integers(int(0.2 * len(trunk)), int(0.85 * len(trunk))))
        side = np.cross(tang[at], rng.normal(size=3))
        angle = rng.uniform(0.5, 1.4)
        head = np.cos(angle) * tang[at] / np.linalg.norm(tang[at]) + np.sin(angle) * side / np.linalg.norm(side)
        length = rng.uniform(25.0, 60.0)
        br = _smooth_path(rng, trunk[at], head, length, wiggle=rng.uniform(0.2, 0.7), n=60)
        rb = r0 * (1.0 - 0.3 * t[at]) * rng.uniform(0.45, 0.8) * (1.0 - 0.3 * np.linspace(0, 1, len(br)))
        prims.append(_Tube(br, rb))
        if rng.random() < 0.3:
            at2 = int(rng.integers(len(br) // 3, len(br) - 5))
            sub = _smooth_path(rng, br[at2], np.gradient(br, axis=0)[at2] + rng.normal(size=3) * 0.8,
                               length * rng.uniform(0.3, 0.6), wiggle=0.4, n=40)
            prims.append(_Tube(sub, np.full(len(sub), rb[at2] * rng.uniform(0.5, 0.8))))
    return prims


def _bowel(rng: np.random.Generator) -> list:
    """A tortuous tube: a persistent random walk, steered back towards the centre when it strays."""
    n, step = 400, 1.0
    radius = rng.uniform(5.0, 9.0)
    bound = rng.uniform(35.0, 50.0)
    pos, head = np.zeros(3), rng.normal(size=3)
    head /= np.linalg.norm(head)
    turn = rng.normal(size=3) * 0.15
    pts = np.empty((n, 3))
    for s in range(n):
        turn = 0.9 * turn + rng.normal(size=3) * 0.06
        head = head + turn
        dist = np.linalg.norm(pos)
        if dist > bound:
            head = head - 0.4 * pos / dist
        head /= np.linalg.norm(head)
        pos = pos + head * step
        pts[s] = pos
    length = int(rng.integers(150, n))
    pts = pts[:length]
    t = np.linspace(0, 1, length)
    radii = radius * (1.0 + 0.2 * np.sin(2 * np.pi * t * rng.uniform(2, 6)))
    return [_Tube(pts, radii)]


def _wobble(rng: np.random.Generator) -> np.ndarray:
    """Coefficients (amplitude, phase) of a wobbly outline, for ``_outline``."""
    return np.stack([rng.uniform(-0.08, 0.08, size=3), rng.uniform(0, 2 * np.pi, size=3)], axis=1)


def _outline(wobble: np.ndarray, u: np.ndarray, v: np.ndarray, a: float, b: float) -> np.ndarray:
    """Inside a wobbly ellipse of semi-axes (a, b) in the (u, v) plane."""
    phi = np.arctan2(v / b, u / a)
    wob = 1.0
    for f, (amp, phase) in zip((2, 3, 5), wobble):
        wob = wob + amp * np.cos(f * phi + phase)
    return (u / a) ** 2 + (v / b) ** 2 <= wob ** 2


def _plate(rng: np.random.Generator) -> list:
    a, b = 50.0, 50.0 * rng.uniform(0.3, 1.0)
    half_t = 100.0 * rng.uniform(0.025, 0.06)
    c = rng.uniform(-0.012, 0.012, size=3)
    wave_amp, wave_f, wave_ph = rng.uniform(0, 6), rng.uniform(0.03, 0.08), rng.uniform(0, 2 * np.pi)
    wobble = _wobble(rng)

    def height(u: np.ndarray, v: np.ndarray) -> np.ndarray:
        return c[0] * u * u + c[1] * v * v + c[2] * u * v + wave_amp * np.sin(wave_f * u + wave_ph)

    def inside(p: np.ndarray, voxel: float) -> np.ndarray:
        u, v, w = p[:, 0], p[:, 1], p[:, 2]
        thick = np.maximum(half_t * (1.0 + 0.3 * np.cos(0.05 * u) * np.cos(0.04 * v)), 1.6 * voxel)
        # measured vertically, so widen by the slope to keep the thickness normal to the sheet
        du = 2 * c[0] * u + c[2] * v + wave_amp * wave_f * np.cos(wave_f * u + wave_ph)
        dv = 2 * c[1] * v + c[2] * u
        out = np.abs(w - height(u, v)) <= thick * np.sqrt(1.0 + du * du + dv * dv)
        out[out] = _outline(wobble, u[out], v[out], a, b)  # the costly outline only near the sheet
        return out

    # Bounds: the outline and a grid inside it, a (generous) thickness either side; wave crests
    # inside the outline must be in, or the render box would clip a window into the sheet.
    phi = np.linspace(0, 2 * np.pi, 64, endpoint=False)
    wob = 1.0 + sum(amp * np.cos(f * phi + ph) for f, (amp, ph) in zip((2, 3, 5), wobble))
    gu, gv = np.meshgrid(np.linspace(-1.3 * a, 1.3 * a, 27), np.linspace(-1.3 * b, 1.3 * b, 27))
    keep = _outline(wobble, gu.ravel(), gv.ravel(), a, b)
    uv = np.concatenate([np.stack([a * wob * np.cos(phi), b * wob * np.sin(phi)], axis=1),
                         np.stack([gu.ravel()[keep], gv.ravel()[keep]], axis=1)])
    mid = np.concatenate([uv, height(uv[:, 0], uv[:, 1])[:, None]], axis=1)
    samples = np.concatenate([mid + [0.0, 0.0, 2.0 * half_t], mid - [0.0, 0.0, 2.0 * half_t]])
    return [_Field(inside, samples, margin=2.0)]


def _shell(rng: np.random.Generator) -> list:
    r = 50.0 * np.array([1.0, rng.uniform(0.6, 1.0), rng.uniform(0.5, 1.0)])
    half_t = 50.0 * rng.uniform(0.04, 0.1)
    cut = r[2] * rng.uniform(-0.3, 0.6)     # the opening: everything above w = cut is removed

    def inside(p: np.ndarray, voxel: float) -> np.ndarray:
        q = np.sqrt(np.sum((p / r) ** 2, axis=1))
        # distance from the mid-surface, approximately in units (q scaled by the local radius)
        local_r = np.linalg.norm(p, axis=1) / np.maximum(q, 1e-6)
        return (np.abs(q - 1.0) * local_r <= max(half_t, 1.6 * voxel)) & (p[:, 2] <= cut)

    d = rng.normal(size=(400, 3))
    d /= np.linalg.norm(d, axis=1, keepdims=True)
    surface = d * r
    cap = surface[surface[:, 2] <= cut]
    samples = np.concatenate([cap * (1.0 + half_t / r[2]), cap * (1.0 - half_t / r[2])])
    return [_Field(inside, samples, margin=1.0)]


def _vertebra(rng: np.random.Generator) -> list:
    """Body (front, +y), an arch around the canal behind it, a spinous and two transverse processes."""
    body_a, body_b, half_h = rng.uniform(16, 24), rng.uniform(13, 18), rng.uniform(9, 14)
    canal_r = rng.uniform(7.0, 10.0)
    arch_r = rng.uniform(3.0, 4.5)
    ring = canal_r + arch_r
    centre_canal = np.array([0.0, -ring * 0.55, 0.0])

    def body(p: np.ndarray, voxel: float) -> np.ndarray:
        q = p - np.array([0.0, body_b * 0.75, 0.0])
        return ((q[:, 0] / body_a) ** 2 + (q[:, 1] / body_b) ** 2 <= 1.0) & (np.abs(q[:, 2]) <= half_h)

    body_samples = np.array([[sx * body_a, body_b * 0.75 + sy * body_b, sz * half_h]
                             for sx in (-1, 1) for sy in (-1, 1) for sz in (-1, 1)])
    prims: list = [_Field(body, body_samples, margin=1.0)]
    phi = np.linspace(0, 2 * np.pi, 60)
    ring_pts = centre_canal + np.stack([ring * np.cos(phi), ring * 0.9 * np.sin(phi), np.zeros_like(phi)], axis=1)
    prims += _ellipsoid_chain(ring_pts, np.full(60, arch_r), np.full(60, half_h * rng.uniform(0.45, 0.7)),
                              np.array([0.0, 0.0, 1.0]), every=2)
    back = centre_canal + np.array([0.0, -ring * 0.9, 0.0])
    spin = _smooth_path(rng, back, np.array([0.0, -1.0, -rng.uniform(0.0, 0.8)]), rng.uniform(25, 45),
                        wiggle=0.15, n=40)
    prims += _ellipsoid_chain(spin, np.full(40, arch_r * 0.8), np.full(40, half_h * 0.55),
                              np.array([0.0, 0.0, 1.0]), every=2)
    length_t = rng.uniform(18, 35)
    for sx in (-1.0, 1.0):
        start = centre_canal + np.array([sx * ring, 0.0, 0.0])
        tp = _smooth_path(rng, start, np.array([sx, -rng.uniform(0, 0.4), rng.uniform(-0.2, 0.2)]),
                          length_t * rng.uniform(0.9, 1.1), wiggle=0.15, n=30)
        prims.append(_Tube(tp, arch_r * 0.8 * (1.0 - 0.3 * np.linspace(0, 1, 30))))
    # Keep the canal open whatever the arch's thickness.
    prims.append(_ell(centre_canal, (canal_r, canal_r * 0.9, half_h * 3), add=False))
    return prims


def _gland(rng: np.random.Generator) -> list:
    """Two or three flat limbs from a junction (an adrenal-like Y or V), bent slightly out of plane."""
    up = np.array([0.0, 0.0, 1.0])
    n_limbs = int(rng.integers(2, 4))
    base = rng.uniform(0, 2 * np.pi)
    prims: list = []
    for limb in range(n_limbs):
        ang = base + limb * 2 * np.pi / n_limbs * rng.uniform(0.35, 0.6) * (3 if n_limbs == 3 else 1.4)
        length = rng.uniform(35.0, 55.0) if limb else rng.uniform(20.0, 40.0)
        pts = _smooth_path(rng, np.zeros(3), np.array([np.cos(ang), np.sin(ang), rng.uniform(-0.15, 0.15)]),
                           length, wiggle=rng.uniform(0.2, 0.5), n=50, planar=True)
        s = np.linspace(0, 1, len(pts))
        width = rng.uniform(6.0, 10.0) * (1.0 - 0.5 * s ** 2)
        thick = rng.uniform(2.0, 3.5) * (1.0 - 0.3 * s ** 2)
        prims += _ellipsoid_chain(pts, width, thick, up, every=2)
    prims.append(_ell((0, 0, 0), (8.0, 8.0, 3.5)))
    return prims


def _node(rng: np.random.Generator) -> list:
    r = 50.0 * np.array([1.0, rng.uniform(0.55, 1.0), rng.uniform(0.45, 0.9)])
    prims: list = [_ell((0, 0, 0), r)]
    for _ in range(int(rng.integers(0, 4))):
        d = rng.normal(size=3)
        d /= np.linalg.norm(d)
        prims.append(_ell(d / np.sqrt(np.sum((d / r) ** 2)) * 0.7, r * rng.uniform(0.25, 0.45, size=3),
                          _random_rotation(rng)))
    if rng.random() < 0.3:  # a shallow hilum
        prims.append(_ell((0, -r[1] * 1.25, 0), (r[0] * 0.3, r[1] * 0.4, r[2] * 0.5), add=False))
    return prims


_DESIGNERS: Dict[str, Callable[[np.random.Generator], list]] = {
    "organ": _organ, "kidney": _kidney, "vessel": _vessel, "branching": _branching, "bowel": _bowel,
    "plate": _plate, "shell": _shell, "vertebra": _vertebra, "gland": _gland, "node": _node,
}


# --- rasterisation -----------------------------------------------------------------------------

def _bounds(prims: list, rot: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """Axis-aligned bounds (lo, hi) of the additive primitives after rotation (design units)."""
    los, his = [], []
    for p in prims:
        if not p.add:
            continue
        if isinstance(p, _Ellipsoid):
            c, half = rot @ p.centre, np.linalg.norm(rot @ p.axes, axis=1)
            los.append(c - half)
            his.append(c + half)
        elif isinstance(p, _Tube):
            pts = p.points @ rot.T
            los.append((pts - p.radii[:, None]).min(0))
            his.append((pts + p.radii[:, None]).max(0))
        else:
            pts = p.samples @ rot.T
            los.append(pts.min(0) - p.margin)
            his.append(pts.max(0) + p.margin)
    return np.min(los, axis=0), np.max(his, axis=0)


def _box(centre: np.ndarray, half: np.ndarray, n: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    lo = np.maximum(np.floor(centre - half).astype(int), 0)
    hi = np.minimum(np.ceil(centre + half).astype(int) + 1, n)
    return None if np.any(hi <= lo) else (lo, hi)


def _paint_ellipsoid(out: np.ndarray, centre: np.ndarray, axes: np.ndarray, value: bool) -> None:
    """Set voxels of ``out`` inside the ellipsoid (voxel units) to ``value``."""
    half = np.linalg.norm(axes, axis=1)
    box = _box(centre, half, out.shape[0])
    if box is None:
        return
    lo, hi = box
    inv = np.linalg.inv(axes)
    g = [np.arange(lo[a], hi[a]) - centre[a] for a in range(3)]
    # inv @ x for every x of the box, built from its three separable axis terms
    y = (inv[:, 0, None, None, None] * g[0][None, :, None, None] + inv[:, 1, None, None, None] * g[1][None, None, :, None]
         + inv[:, 2, None, None, None] * g[2][None, None, None, :])
    inside = np.sum(y * y, axis=0) <= 1.0
    sub = out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
    if value:
        sub |= inside
    else:
        sub &= ~inside


def _paint_ball(out: np.ndarray, centre: np.ndarray, r: float) -> None:
    box = _box(centre, np.full(3, r), out.shape[0])
    if box is None:
        return
    lo, hi = box
    g = [(np.arange(lo[a], hi[a]) - centre[a]) ** 2 for a in range(3)]
    inside = g[0][:, None, None] + g[1][None, :, None] + g[2][None, None, :] <= r * r
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] |= inside


def _paint_tube(out: np.ndarray, pts: np.ndarray, radii: np.ndarray, value: bool) -> None:
    """Balls swept along a centre line (voxel units), resampled so consecutive balls overlap well."""
    seg = np.linalg.norm(np.diff(pts, axis=0), axis=1)
    arc = np.concatenate([[0.0], np.cumsum(seg)])
    step = max(0.5, 0.35 * float(radii.min()))
    s = np.arange(0.0, arc[-1] + step * 0.5, step)
    centres = np.stack([np.interp(s, arc, pts[:, a]) for a in range(3)], axis=1)
    rs = np.interp(s, arc, radii)
    if value:
        for c, r in zip(centres, rs):
            _paint_ball(out, c, float(r))
    else:
        for c, r in zip(centres, rs):
            _paint_ellipsoid(out, c, np.eye(3) * r, False)


def _render(prims: list, rot: np.ndarray, scale: float, offset: np.ndarray, n: int,
            min_radius: float = 1.0) -> np.ndarray:
    """Rasterise ``prims`` into an ``n``-cube: voxel = rot @ design * scale + offset."""
    occ = np.zeros((n, n, n), dtype=bool)
    carve = []
    for p in prims:
        if not p.add:
            carve.append(p)
            continue
        _draw(occ, p, rot, scale, offset, min_radius, True)
    for p in carve:
        _draw(occ, p, rot, scale, offset, min_radius, False)
    return occ


def _draw(occ: np.ndarray, p, rot: np.ndarray, scale: float, offset: np.ndarray, min_radius: float,
          value: bool) -> None:
    if isinstance(p, _Ellipsoid):
        axes = rot @ p.axes * scale
        # Thin parts stay at least ~2 voxels thick, so blurring does not break them apart.
        lengths = np.linalg.norm(axes, axis=0)
        axes = axes * (np.maximum(lengths, min_radius) / np.maximum(lengths, 1e-9))[None, :]
        _paint_ellipsoid(occ, rot @ p.centre * scale + offset, axes, value)
    elif isinstance(p, _Tube):
        pts = p.points @ rot.T * scale + offset
        _paint_tube(occ, pts, np.maximum(p.radii * scale, min_radius), value)
    else:
        samples = p.samples @ rot.T * scale + offset
        lo = np.maximum(np.floor(samples.min(0) - p.margin * scale - 1).astype(int), 0)
        hi = np.minimum(np.ceil(samples.max(0) + p.margin * scale + 1).astype(int) + 1, occ.shape[0])
        if np.any(hi <= lo):
            return
        grid = np.stack(np.meshgrid(*[np.arange(lo[a], hi[a], dtype=np.float32) for a in range(3)], indexing="ij"), axis=-1)
        local = ((grid.reshape(-1, 3) - offset.astype(np.float32)) / np.float32(scale)) @ rot.astype(np.float32)  # design frame
        inside = p.inside(local, min_radius / scale).reshape(grid.shape[:3])
        sub = occ[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]]
        if value:
            sub |= inside
        else:
            sub &= ~inside


def _largest_component(mask: np.ndarray) -> np.ndarray:
    labels, count = ndimage.label(mask)
    if count <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    return labels == (int(np.argmax(sizes)) + 1)


def _extent(mask: np.ndarray) -> int:
    """Longest bounding-box side in voxels."""
    idx = np.nonzero(mask.any(axis=(1, 2)))[0], np.nonzero(mask.any(axis=(0, 2)))[0], np.nonzero(mask.any(axis=(0, 1)))[0]
    return max(int(a[-1] - a[0] + 1) for a in idx)


def _finish(occ: np.ndarray) -> np.ndarray:
    """Round off facets (a light blur + threshold) within the occupied box, keep one component."""
    nz = np.nonzero(occ)
    if nz[0].size == 0:
        return occ
    lo = np.maximum(np.array([a.min() for a in nz]) - 3, 0)
    hi = np.minimum(np.array([a.max() for a in nz]) + 4, occ.shape[0])
    sl = tuple(slice(lo[a], hi[a]) for a in range(3))
    out = np.zeros_like(occ)
    out[sl] = ndimage.gaussian_filter(occ[sl].astype(np.float32), sigma=0.6, truncate=3.0) >= 0.5
    return _largest_component(out)


def _validated_classes(classes: Optional[Iterable[str]]) -> Tuple[str, ...]:
    chosen = CLASSES if classes is None else tuple(classes)
    unknown = [c for c in chosen if c not in SIZE_RANGE_MM]
    if not chosen or unknown:
        raise InputError(f"unknown anatomy classes {unknown or 'none given'}: use some of {', '.join(CLASSES)}")
    return chosen


def random_anatomy(rng: np.random.Generator, classes: Optional[Sequence[str]] = None, n: int = 64,
                   extent_voxels: Tuple[int, int] = (32, 48)) -> AnatomyShape:
    """One random shape of a class drawn uniformly from ``classes`` (default: all ``CLASSES``).

    The mask is ``(n, n, n)`` bool ``[k, j, i]``, one connected component (6-connectivity), randomly
    oriented, centred (its design's bounding box) and never touching the border; its longest
    bounding-box side spans ``extent_voxels[0]..extent_voxels[1]`` voxels and ``spacing_mm`` makes
    that side a random physical size in the class's ``SIZE_RANGE_MM`` (log-uniform).
    """
    chosen = _validated_classes(classes)
    lo_e, hi_e = int(extent_voxels[0]), int(extent_voxels[1])
    if not 4 <= lo_e <= hi_e <= n - 4:
        raise InputError(f"extent_voxels {extent_voxels} must satisfy 4 <= low <= high <= n - 4 (n = {n})")
    cls = chosen[int(rng.integers(len(chosen)))]
    size_lo, size_hi = SIZE_RANGE_MM[cls]
    size_mm = float(np.exp(rng.uniform(np.log(size_lo), np.log(size_hi))))
    target = int(rng.integers(lo_e, hi_e + 1))
    for _attempt in range(8):
        prims = _DESIGNERS[cls](rng)
        rot = _random_rotation(rng)
        lo, hi = _bounds(prims, rot)
        scale = (target - 1.0) / float(np.max(hi - lo))
        centre = (n - 1) / 2.0
        for _fit in range(4):
            offset = centre - (lo + hi) / 2.0 * scale
            mask = _finish(_render(prims, rot, scale, offset, n))
            if not mask.any():
                break
            ext = _extent(mask)
            if lo_e <= ext <= hi_e and not _touches_border(mask):
                if not _topology_ok(cls, mask):
                    break  # a new design and orientation
                return AnatomyShape(mask, size_mm / ext, cls, size_mm)
            scale *= target / ext
    raise RuntimeError(f"could not generate a {cls!r} shape within {extent_voxels} voxels")  # pragma: no cover


def _topology_ok(cls: str, mask: np.ndarray) -> bool:
    topo = shape_topology(mask)
    return topo["cavities"] == 0 and EXPECTED_HOLES[cls] in (None, topo["holes"])


def _touches_border(mask: np.ndarray) -> bool:
    return bool(mask[0].any() or mask[-1].any() or mask[:, 0].any() or mask[:, -1].any()
                or mask[:, :, 0].any() or mask[:, :, -1].any())


# --- domain summary (the prior card's "domain" entry) -------------------------------------------

def elongation(mask: np.ndarray) -> float:
    """sqrt(largest / smallest principal variance) of the voxel positions: about 1 for a ball.

    A voxel's own extent (variance 1/12 per axis) is added, so a one-voxel-thin sheet stays finite;
    the same measure as the out-of-domain check's (``domain.shape_facts``) on an isotropic grid."""
    pts = np.argwhere(mask).astype(float)
    if len(pts) < 4:
        return 1.0
    ev = np.linalg.eigvalsh(np.cov(pts.T) + np.eye(3) / 12.0)
    return float(np.sqrt(ev[-1] / max(ev[0], 1e-9)))


def shape_topology(mask: np.ndarray) -> Dict[str, int]:
    """Betti numbers of a binary solid (6-connected foreground, 26-connected background):
    ``components``, ``holes`` (tunnels, e.g. 1 for a ring) and ``cavities``, plus ``euler``."""
    from skimage.measure import euler_number

    m = np.asarray(mask, bool)
    nz = np.nonzero(m)
    if nz[0].size:  # only the bounding box matters (and costs)
        m = m[tuple(slice(a.min(), a.max() + 1) for a in nz)]
    m = np.pad(m, 1)
    euler = int(euler_number(m, connectivity=1))
    components = int(ndimage.label(m)[1])
    cavities = int(ndimage.label(~m, structure=np.ones((3, 3, 3)))[1]) - 1
    return {"components": components, "holes": components + cavities - euler, "cavities": cavities, "euler": euler}


def domain_of(shapes: Sequence[AnatomyShape]) -> dict:
    """Training-domain summary for a prior card's ``"domain"`` entry (contract 3).

    In the out-of-domain check's format (``domain.measure_domain``): ``size_mm`` and ``elongation``
    are the 0.5-99.5 percentile ranges, ``components`` the most connected components (26-connected)
    of a shape, ``shapes`` the count and ``what`` a description; added: the full ``size_mm_range`` /
    ``elongation_range``, ``holes`` and ``euler`` ``[min, max]`` (topology) and the ``classes`` seen."""
    if len(shapes) == 0:
        raise InputError("domain_of needs at least one shape")
    sizes = np.array([s.size_mm for s in shapes])
    elong = np.array([elongation(s.mask) for s in shapes])
    topo = [shape_topology(s.mask) for s in shapes]
    holes = [t["holes"] for t in topo]
    euler = [t["euler"] for t in topo]
    components = max(int(ndimage.label(s.mask, structure=np.ones((3, 3, 3)))[1]) for s in shapes)
    classes = sorted({s.cls for s in shapes})

    def pct(x: np.ndarray, digits: int) -> list:
        return [round(float(v), digits) for v in np.percentile(x, [0.5, 99.5])]

    def span(x: np.ndarray, digits: int) -> list:
        return [round(float(np.min(x)), digits), round(float(np.max(x)), digits)]

    return {
        "size_mm": pct(sizes, 1),
        "elongation": pct(elong, 2),
        "components": components,
        "shapes": len(shapes),
        "what": f"procedural anatomy shapes ({', '.join(classes)})",
        "size_mm_range": span(sizes, 1),
        "elongation_range": span(elong, 2),
        "holes": [int(min(holes)), int(max(holes))],
        "euler": [int(min(euler)), int(max(euler))],
        "classes": classes,
    }


def anatomy_study_cases(seed: int, n: int, classes: Sequence[str] = HELD_OUT_CLASSES, grid: int = 64,
                        extent_voxels: Tuple[int, int] = (32, 48), modality: str = "CT") -> List[dict]:
    """A reproducible synthetic study: ``n`` clean shapes of ``classes`` (default: the held-out
    ones, which no general prior trained on) each with an image around it.

    Each case is a dict with ``mask`` (bool ``[k, j, i]``), ``spacing_mm`` (isotropic), ``cls``,
    ``size_mm`` and ``image`` (float32: HU for ``"CT"``, arbitrary units for ``"MR"``; the structure's
    tissue typical of its class, ``typical_tissue``). The same
    ``seed`` always gives the same cases."""
    rng = np.random.default_rng(seed)
    cases = []
    for _ in range(int(n)):
        shape = random_anatomy(rng, classes, n=grid, extent_voxels=extent_voxels)
        image = synthetic_context(shape.mask, shape.spacing_mm, rng, modality=modality,
                                  tissue=typical_tissue(shape.cls, rng))
        cases.append({"mask": shape.mask, "spacing_mm": shape.spacing_mm, "cls": shape.cls,
                      "size_mm": shape.size_mm, "image": image})
    return cases
