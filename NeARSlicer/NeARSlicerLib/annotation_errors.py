"""Annotation-error library: the ways people mis-paint a segment in Slicer, as seeded functions.

Every function takes a clean binary mask ``[k, j, i]``, its ``spacing`` (i, j, k) in mm and a
``numpy.random.Generator``, and returns a new mask (the input is never modified). Every size is in
mm, so an error means the same on a 0.7 mm and a 5 mm grid; an operation smaller than one voxel
rounds up to one voxel, as Slicer's margin and brush tools do. Axis 0 (k) is the slice axis.

Families (``FAMILIES``), each with a ``severity`` in [0, 1] (0: barely visible, 1: severe):

* ``overpaint``    a. dilation or erosion by 0.5-2 mm, 6-/18-/26-connected or in-plane-only
                      element, on the whole surface or on one side only;
* ``slab``         b. cubes, balls and brush strokes added to or cut from the surface;
* ``thick_slice``  c. the shape painted slice by slice on 2.5-5 mm axial slices (each slice its
                      own in-plane jitter, now and then a missed or doubled slice), brought back to
                      the fine grid by nearest-neighbour resampling (staircase);
* ``holes``        d. interior holes, salt and pepper near the surface, specks outside;
* ``leak``         e. spurs and blobs running into neighbouring tissue (into tissue that looks
                      like the structure when an image is given);
* ``missing_part`` f. a thin limb or a tip cut off;
* ``oversmooth``   g. a smoothing tool (Gaussian, median or opening) that erased thin parts;
* ``paper``           the NeAR paper's generator (``distort.distort``), sized in mm.

``mixture`` (h.) draws one to four families with random severities, from clean to severe.

``apply_family`` (and so ``mixture`` and ``corrupt``) runs a family on the box of a large volume that
it reaches (``FAMILY_REACH_MM``), in the volume's own coordinates (the families' ``origin``): the
same voxels as on the whole volume, at a fraction of the cost for a gland of a full-resolution CT.
"""
from __future__ import annotations

from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage as ndi

from .distort import DistortionParams, distort
from .geometry import distance_inside, distance_outside, grown_box

Spacing = Sequence[float]  # (i, j, k) mm

FAMILIES = ("overpaint", "slab", "thick_slice", "holes", "leak", "missing_part", "oversmooth")
ALL_FAMILIES = FAMILIES + ("paper",)


# ----------------------------------------------------------------------------- geometry helpers

def _axes_mm(spacing: Spacing) -> np.ndarray:
    """Voxel size per array axis (k, j, i) in mm."""
    return np.asarray(spacing, float)[::-1]


def _element(radius_mm: float, spacing: Spacing, kind: str) -> np.ndarray:
    """A structuring element reaching ``radius_mm`` (at least one voxel in-plane).

    ``kind``: ``ball`` (Euclidean), ``6`` (L1: iterated 6-connected steps), ``18`` (L1 <= 2r and
    Linf <= r: iterated 18-connected steps), ``26`` (Linf: a box), ``inplane`` (an axial disc).
    """
    vox = _axes_mm(spacing)
    r = max(float(radius_mm), float(vox[1:].min()))  # at least one in-plane voxel
    n = np.floor(r / vox + 1e-6).astype(int)
    if kind == "inplane":
        n[0] = 0
    grids = np.meshgrid(*[np.arange(-m, m + 1) * v for m, v in zip(n, vox)], indexing="ij")
    d = np.stack([np.abs(g) for g in grids])
    eps = 1e-6
    if kind in ("ball", "inplane"):
        el = np.sqrt((d ** 2).sum(0)) <= r + eps
    elif kind == "6":
        el = d.sum(0) <= r + eps
    elif kind == "18":
        el = (d.sum(0) <= 2 * r + eps) & (d.max(0) <= r + eps)
    elif kind == "26":
        el = d.max(0) <= r + eps
    else:
        raise ValueError(f"unknown structuring element {kind!r}")
    return el


def _dilate(mask: np.ndarray, radius_mm: float, spacing: Spacing, kind: str = "ball") -> np.ndarray:
    if kind == "ball":
        # the ball element's dilation is the voxels within its radius of the mask: a distance transform
        # costs the same for any radius, where the element's cost grows with its volume (an 8 mm leak's
        # reach on a 0.25 mm grid took 13 s)
        m = np.asarray(mask, bool)
        if not m.any():
            return m.copy()
        vox = _axes_mm(spacing)
        r = max(float(radius_mm), float(vox[1:].min()))  # _element's radius
        return distance_outside(m, vox, r + 1e-6) <= r + 1e-6
    return ndi.binary_dilation(mask, _element(radius_mm, spacing, kind))


def _erode(mask: np.ndarray, radius_mm: float, spacing: Spacing, kind: str = "ball") -> np.ndarray:
    return ndi.binary_erosion(mask, _element(radius_mm, spacing, kind), border_value=0)


Origin = Sequence[int]  # [k, j, i] of an array's first voxel in the volume it is a box of


def _coords_mm(shape: Sequence[int], spacing: Spacing, origin: Origin = (0, 0, 0)) -> list[np.ndarray]:
    """Open grids of voxel-centre coordinates per array axis (mm), of the volume whose box at ``origin``
    the array is (the volume's own coordinates, so that a box errs as the whole volume does)."""
    vox = _axes_mm(spacing)
    return [np.arange(o, o + n).reshape([-1 if a == ax else 1 for a in range(3)]) * vox[ax]
            for ax, (n, o) in enumerate(zip(shape, origin))]


def _mm(index: np.ndarray, spacing: Spacing, origin: Origin) -> np.ndarray:
    """Voxel indices of a box at ``origin`` as the volume's coordinates (mm)."""
    return (index + np.asarray(origin)) * _axes_mm(spacing)


def _ball_at(shape: Sequence[int], spacing: Spacing, centre_mm: np.ndarray, radius_mm: float,
             origin: Origin = (0, 0, 0)) -> np.ndarray:
    c = _coords_mm(shape, spacing, origin)
    return sum((c[a] - centre_mm[a]) ** 2 for a in range(3)) <= radius_mm ** 2


def _box_at(shape: Sequence[int], spacing: Spacing, centre_mm: np.ndarray, half_mm: np.ndarray,
            origin: Origin = (0, 0, 0)) -> np.ndarray:
    c = _coords_mm(shape, spacing, origin)
    return (np.abs(c[0] - centre_mm[0]) <= half_mm[0]) & (np.abs(c[1] - centre_mm[1]) <= half_mm[1]) \
        & (np.abs(c[2] - centre_mm[2]) <= half_mm[2])


def _surface_voxels(mask: np.ndarray) -> np.ndarray:
    """(N, 3) indices of foreground voxels with a 6-connected background neighbour."""
    return np.argwhere(mask & ~ndi.binary_erosion(mask, border_value=0))


def _random_unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.normal(size=3)
    return v / np.linalg.norm(v)


def _one_side(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, origin: Origin = (0, 0, 0)) -> np.ndarray:
    """Voxels on one side of a random plane through the structure's centre (a half-space)."""
    vox = _axes_mm(spacing)
    centre = (np.argwhere(mask) + np.asarray(origin)).mean(0) * vox
    normal = _random_unit(rng)
    c = _coords_mm(mask.shape, spacing, origin)
    return sum((c[a] - centre[a]) * normal[a] for a in range(3)) > 0


def _outward(mask: np.ndarray, spacing: Spacing, at: np.ndarray) -> np.ndarray:
    """Unit outward normal (mm, array axes) at voxel ``at`` from a smoothed mask's gradient."""
    sm = ndi.gaussian_filter(mask.astype(np.float32), 1.5 / _axes_mm(spacing))
    lo = np.maximum(at - 1, 0)
    hi = np.minimum(at + 2, mask.shape)
    g = np.array([np.gradient(sm[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]], axis=a).mean() for a in range(3)])
    g = -g / _axes_mm(spacing)
    n = np.linalg.norm(g)
    return g / n if n > 1e-9 else np.array([1.0, 0.0, 0.0])


# ----------------------------------------------------------------------------- the families

def overpaint(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
              origin: Origin = (0, 0, 0)) -> np.ndarray:
    """a. Dilation or erosion by 0.5-2 mm with a 6-, 18-, 26-connected or in-plane element,
    on the whole surface or (40%) on one side of a random plane only."""
    m = np.asarray(mask, bool)
    radius = 0.5 + 1.5 * float(np.clip(severity, 0, 1)) * rng.uniform(0.5, 1.0)
    kind = str(rng.choice(["6", "18", "26", "inplane", "ball"]))
    grow = rng.random() < 0.5
    changed = _dilate(m, radius, spacing, kind) if grow else _erode(m, radius, spacing, kind)
    if not grow and not changed.any():
        return m.copy()
    if rng.random() < 0.4:
        side = _one_side(m, spacing, rng, origin)
        return np.where(side, changed, m)
    return changed


def _brush_stroke(shape, spacing, rng, start_mm: np.ndarray, radius: float, length: float,
                  origin: Origin = (0, 0, 0)) -> np.ndarray:
    """A sphere brush dragged along a wavy path within one axial slice plane (mm); it reaches at most
    ``length`` + ``radius`` from ``start_mm``."""
    vox = _axes_mm(spacing)
    out = np.zeros(shape, bool)
    heading = rng.uniform(0, 2 * np.pi)
    p = start_mm.astype(float).copy()
    step = max(radius * 0.6, float(vox[1:].min()))
    for _ in range(max(2, int(length / step))):
        out |= _ball_at(shape, spacing, p, radius, origin)
        heading += rng.normal(0, 0.35)
        p[1:] += step * np.array([np.sin(heading), np.cos(heading)])
    return out


def slab(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
         origin: Origin = (0, 0, 0)) -> np.ndarray:
    """b. Cubes (3-10 mm), balls (2-6 mm radius) and brush strokes added to or cut from the surface."""
    m = np.asarray(mask, bool)
    out = m.copy()
    surf = _surface_voxels(m)
    if not len(surf):
        return out
    s = float(np.clip(severity, 0, 1))
    n = int(rng.integers(2, 3 + round(10 * s)))
    for _ in range(n):
        c = _mm(surf[rng.integers(len(surf))], spacing, origin)
        what = rng.choice(["cube", "ball", "stroke"])
        size = 0.4 + 0.6 * s * rng.random()
        if what == "cube":
            half = np.full(3, (3.0 + 7.0 * size) / 2)
            region = _box_at(m.shape, spacing, c + rng.uniform(-1, 1, 3) * half * 0.5, half, origin)
        elif what == "ball":
            region = _ball_at(m.shape, spacing, c, 2.0 + 4.0 * size, origin)
        else:
            region = _brush_stroke(m.shape, spacing, rng, c, 1.5 + 2.5 * size, 8.0 + 17.0 * size, origin)
        if rng.random() < 0.5:
            out |= region
        else:
            out &= ~region
    return out


def thick_slice(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
                thickness_mm: Optional[float] = None, p_missed: Optional[float] = None,
                p_doubled: Optional[float] = None, origin: Origin = (0, 0, 0)) -> np.ndarray:
    """c. Painted on thick axial slices, then resampled to the fine grid (nearest neighbour).

    Slices of 2.5-5 mm (``thickness_mm``) start at a random phase. On each, the annotator paints
    what the thick slice shows (the slab's mean occupancy >= 0.5), with an in-plane shift of up to
    ~1.5 mm and an in-plane margin of up to +-1 mm of its own; a slice is now and then missed
    (left empty) or doubled (the neighbour's painting copied). Every fine slice inside one thick
    slice then carries the same painting, as nearest-neighbour resampling gives.
    """
    m = np.asarray(mask, bool)
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    t = float(thickness_mm) if thickness_mm else rng.uniform(2.5, 2.5 + 2.5 * max(s, 0.2))
    t = max(t, vox[0])
    pm = (0.04 + 0.1 * s) if p_missed is None else p_missed
    pd = (0.04 + 0.1 * s) if p_doubled is None else p_doubled
    z = _coords_mm(m.shape, spacing, origin)[0].reshape(-1)
    slab_of = np.floor((z - rng.uniform(0, t)) / t).astype(int)
    out = np.zeros_like(m)
    painted: dict[int, np.ndarray] = {}
    ids = np.unique(slab_of)
    for sid in ids:
        rows = slab_of == sid
        section = m[rows].mean(0) >= 0.5
        if section.any():
            shift = rng.normal(0, 0.4 + 0.6 * s, 2) / vox[1:]
            section = ndi.shift(section.astype(np.float32), shift, order=1, mode="constant") >= 0.5
            margin = rng.uniform(-1.0, 1.0) * s
            if abs(margin) >= 0.5 * vox[1:].min():
                el = _element(abs(margin), spacing, "inplane")[0]  # k extent is one voxel
                section = (ndi.binary_dilation(section, el) if margin > 0
                           else ndi.binary_erosion(section, el, border_value=0))
        painted[int(sid)] = section
    for sid in ids:
        section = painted[int(sid)]
        u = rng.random()
        if u < pm:
            section = np.zeros_like(section)
        elif u < pm + pd and int(sid) - 1 in painted:
            section = painted[int(sid) - 1]
        out[slab_of == sid] = section
    return out


def holes(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
          origin: Origin = (0, 0, 0)) -> np.ndarray:
    """d. Interior holes (balls of 1-3 mm radius), salt and pepper within 1-4 mm of the surface,
    specks (1-2 mm balls) just outside."""
    m = np.asarray(mask, bool)
    out = m.copy()
    vox = _axes_mm(spacing)
    s = float(np.clip(severity, 0, 1))
    inside = distance_inside(m, vox)
    for _ in range(int(rng.integers(0, 1 + round(4 * s)))):
        r = rng.uniform(1.0, 1.0 + 2.0 * s)
        cand = np.argwhere(inside > r + 0.5)
        if len(cand):
            out &= ~_ball_at(m.shape, spacing, _mm(cand[rng.integers(len(cand))], spacing, origin), r, origin)
    width = rng.uniform(1.0, 1.0 + 3.0 * s)
    outside = distance_outside(m, vox, 5.0)  # read up to 5 mm (the band's width is at most 4)
    band = ((inside > 0) & (inside <= width)) | ((outside > 0) & (outside <= width))
    idx = np.flatnonzero(band)
    k = int(round(rng.uniform(0.01, 0.01 + 0.08 * s) * idx.size))
    if k:
        flip = rng.choice(idx, size=min(k, idx.size), replace=False)
        flat = out.reshape(-1)
        flat[flip] = ~flat[flip]
    near = np.argwhere((outside > 1.0) & (outside <= 5.0))
    for _ in range(int(rng.integers(1, 2 + round(8 * s)))):
        if len(near):
            out |= _ball_at(m.shape, spacing, _mm(near[rng.integers(len(near))], spacing, origin),
                            rng.uniform(0.6, 2.0), origin)
    return out


def leak(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
         image: Optional[np.ndarray] = None, origin: Origin = (0, 0, 0)) -> np.ndarray:
    """e. Spurs (tubes 5-25 mm long, 1-3.5 mm radius) and blobs (3-8 mm) running out of the surface.

    With an ``image`` (HU, same grid) a leak also floods the neighbouring tissue whose intensity
    is within 25 HU of the structure's median, near the surface: where a threshold or a
    region-growing tool escapes through a low-contrast border.
    """
    m = np.asarray(mask, bool)
    out = m.copy()
    surf = _surface_voxels(m)
    if not len(surf):
        return out
    s = float(np.clip(severity, 0, 1))
    for _ in range(int(rng.integers(1, 2 + round(4 * s)))):
        at = surf[rng.integers(len(surf))]
        normal = _outward(m, spacing, at)
        direction = normal + 0.6 * _random_unit(rng)
        direction /= np.linalg.norm(direction)
        start = _mm(at, spacing, origin)
        if rng.random() < 0.6:
            length = rng.uniform(5.0, 5.0 + 20.0 * s)
            r0 = rng.uniform(1.0, 1.0 + 2.5 * s)
            for f in np.linspace(0, 1, max(3, int(length / max(0.5, r0 * 0.6)))):
                out |= _ball_at(m.shape, spacing, start + direction * length * f, max(0.6, r0 * (1 - 0.6 * f)),
                                origin)
        else:
            r = rng.uniform(3.0, 3.0 + 5.0 * s)
            out |= _ball_at(m.shape, spacing, start + direction * r * rng.uniform(0.3, 0.8), r, origin)
    if image is not None and rng.random() < 0.7:
        hu = float(np.median(image[m]))
        similar = np.abs(image - hu) <= 25.0
        reach = _dilate(m, rng.uniform(2.0, 2.0 + 6.0 * s), spacing) & _one_side(m, spacing, rng, origin)
        flood = similar & reach
        labels, n = ndi.label(flood | m)
        if n:
            keep = np.unique(labels[m])
            out |= np.isin(labels, keep[keep > 0]) & flood
    return out


def missing_part(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5,
                 origin: Origin = (0, 0, 0)) -> np.ndarray:
    """f. A thin limb (what an opening of 1.5-3 mm removes, one connected piece) or a tip (the
    last 5-25% of the structure along a random direction) cut off."""
    m = np.asarray(mask, bool)
    s = float(np.clip(severity, 0, 1))
    if rng.random() < 0.6:
        thin = m & ~ndi.binary_opening(m, _element(rng.uniform(1.5, 3.0), spacing, "ball"), border_value=0)
        labels, n = ndi.label(thin, structure=np.ones((3, 3, 3), bool))
        if n:
            sizes = np.bincount(labels.ravel())[1:]
            ok = np.flatnonzero(sizes >= max(3, 0.01 * m.sum()))
            if len(ok):
                pick = int(rng.choice(ok)) + 1
                out = m & (labels != pick)
                if out.sum() >= 0.3 * m.sum():
                    return out
    pts = _mm(np.argwhere(m), spacing, origin)
    d = _random_unit(rng)
    proj = pts @ d
    cut = np.quantile(proj, 1.0 - rng.uniform(0.05, 0.05 + 0.2 * s))
    c = _coords_mm(m.shape, spacing, origin)
    return m & ~(sum(c[a] * d[a] for a in range(3)) > cut)


def oversmooth(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """g. Slicer's smoothing tool applied too strongly: Gaussian (sigma 0.8-2.2 mm), median (3-6 mm)
    or opening (1-2.5 mm); thin parts and corners are erased."""
    m = np.asarray(mask, bool)
    s = float(np.clip(severity, 0, 1))
    vox = _axes_mm(spacing)
    how = rng.choice(["gaussian", "median", "opening"])
    if how == "gaussian":
        sigma = rng.uniform(0.8, 0.8 + 1.4 * s)
        out = ndi.gaussian_filter(m.astype(np.float32), sigma / vox) >= 0.5
    elif how == "median":
        size_mm = rng.uniform(3.0, 3.0 + 3.0 * s)
        size = np.maximum(1, 2 * np.round(size_mm / vox / 2).astype(int) + 1)
        out = ndi.median_filter(m.astype(np.uint8), size=tuple(size)) > 0
    else:
        out = ndi.binary_opening(m, _element(rng.uniform(1.0, 1.0 + 1.5 * s), spacing, "ball"), border_value=0)
    return out if out.any() else m.copy()


def paper(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator, severity: float = 0.5) -> np.ndarray:
    """The NeAR paper's generator (``distort.distort``: boundary cubes, a one-voxel dilation or
    erosion, salt and pepper), with its voxel sizes scaled from 1 mm to this grid."""
    s = float(np.clip(severity, 0, 1))
    per_vox = 1.0 / float(_axes_mm(spacing).mean())
    hi = int(round(2 + 12 * s))
    params = DistortionParams(
        n_cubes=(0, hi),
        cube_size=(max(1, round(3 * per_vox)), max(2, round((4 + 5 * s) * per_vox))),
        p_morph=0.8 * s,
        noise_fraction=0.012 * s,
        noise_band=max(1, round((2 + 6 * s) * per_vox)),
    )
    return distort(np.asarray(mask, bool), seed=int(rng.integers(2**31)), params=params)


_FUNCS: dict[str, Callable[..., np.ndarray]] = {
    "overpaint": overpaint, "slab": slab, "thick_slice": thick_slice, "holes": holes, "leak": leak,
    "missing_part": missing_part, "oversmooth": oversmooth, "paper": paper,
}


# the farthest (mm) any family but ``paper`` reads or paints from the mask: a leak's spur (25 mm, radius
# 3.5 mm at its root) and a slab's brush stroke (25 mm long, radius 4 mm); a Gaussian's 4 sigma (8.8 mm),
# a blob (14.4 mm) and the leak's flood (8 mm) stay within it
FAMILY_REACH_MM = 32.0


def _family_box(mask: np.ndarray, spacing: Spacing, family: str) -> Optional[tuple[np.ndarray, np.ndarray]]:
    """``[lo, hi)`` box of ``mask``'s volume ([k, j, i]) that ``family`` reads and paints, None when that
    is the whole volume or the family may reach anywhere (``paper``). Thick-slice painting keeps every
    slice: its slabs' phase and random draws run over the whole slice axis."""
    if family == "paper":
        return None
    lo, hi = grown_box(mask, np.ceil(FAMILY_REACH_MM / _axes_mm(spacing)).astype(int) + 2)
    if family == "thick_slice":
        lo[0], hi[0] = 0, mask.shape[0]
    if np.all(lo == 0) and np.all(hi == np.asarray(mask.shape)):
        return None
    return lo, hi


def apply_family(mask: np.ndarray, spacing: Spacing, family: str, rng: np.random.Generator,
                 severity: float = 0.5, image: Optional[np.ndarray] = None) -> np.ndarray:
    """One family's error on ``mask``; ``image`` (HU, same grid) is used by ``leak`` only. A mask small
    in its volume (a gland of a full-resolution CT) errs on the box the family reaches
    (``FAMILY_REACH_MM``), in the volume's own coordinates: the same voxels as on the whole volume."""
    if family not in _FUNCS:
        raise ValueError(f"unknown error family {family!r}: use one of {', '.join(ALL_FAMILIES)} or mixture")
    m = np.asarray(mask, bool)
    if m.ndim != 3:
        raise ValueError(f"annotation errors need a 3D mask, got shape {m.shape}")
    if not m.any():
        return m.copy()
    box = _family_box(m, spacing, family)
    if box is None:
        if family == "leak":
            return leak(m, spacing, rng, severity, image=image)
        return _FUNCS[family](m, spacing, rng, severity)
    lo, hi = box
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    kw = {"image": None if image is None else np.asarray(image)[crop]} if family == "leak" else {}
    if family != "oversmooth":  # the others place what they paint by the volume's coordinates
        kw["origin"] = tuple(int(v) for v in lo)
    out = np.zeros_like(m)
    out[crop] = _FUNCS[family](m[crop], spacing, rng, severity, **kw)
    return out


def mixture(mask: np.ndarray, spacing: Spacing, rng: np.random.Generator,
            families: Sequence[str] = ALL_FAMILIES, image: Optional[np.ndarray] = None,
            p_clean: float = 0.0, max_families: int = 4) -> tuple[np.ndarray, list[tuple[str, float]]]:
    """h. One to ``max_families`` of ``families`` in random order, each with a random severity.

    Returns the mask and what was applied, ``[(family, severity), ...]`` (empty: left clean).
    Thick-slice painting, when drawn, comes first (it is how the whole annotation was made).
    """
    m = np.asarray(mask, bool)
    if not families or rng.random() < p_clean:
        return m.copy(), []
    fams = list(families)
    k = int(rng.integers(1, min(max_families, len(fams)) + 1))
    chosen = [fams[i] for i in rng.choice(len(fams), size=k, replace=False)]
    chosen.sort(key=lambda f: f != "thick_slice")
    out, applied = m, []
    for f in chosen:
        sev = float(rng.beta(1.3, 1.6))
        nxt = apply_family(out, spacing, f, rng, sev, image=image)
        if nxt.sum() >= 0.2 * m.sum():  # an annotator keeps most of the structure
            out = nxt
            applied.append((f, round(sev, 3)))
    return out, applied


def corrupt(mask: np.ndarray, spacing: Spacing, family: str, seed: int,
            severity: Optional[float] = None, image: Optional[np.ndarray] = None) -> np.ndarray:
    """Deterministic entry point for benchmarks: ``family`` (or ``mixture``) with ``seed``.

    ``severity`` None draws it in [0.35, 1] (a benchmark case should be visibly wrong).
    """
    rng = np.random.default_rng(seed)
    if family == "mixture":
        return mixture(mask, spacing, rng, FAMILIES, image=image)[0]
    sev = float(rng.uniform(0.35, 1.0)) if severity is None else severity
    return apply_family(mask, spacing, family, rng, sev, image=image)
