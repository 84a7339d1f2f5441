"""Fit an annotation's margin to the image: a segment painted a little too thick or too thin all round.

Over- and under-painting by a constant margin (a brush or threshold 1-2 mm off) is shape-plausible:
a gland painted 1 mm too thick is still a gland, so a shape prior cannot see it. The image can.
``fit`` tries one number, the margin ``d`` (mm; + outwards, - inwards), and moves the whole boundary
by it only when two independent readings of the image agree:

* **the shells**: walking outwards (or inwards) one voxel shell at a time, each shell must look like
  the structure (or like its surroundings) by the intensity likelihood ratio of ``image_evidence``,
  references from the annotation's core (more than ``CORE_MM`` inside) and a ring ``RING_MM``
  outside, for at least ``AGREE`` of its voxels; and the walk must stop inside ``MAX_MM`` at a shell
  that does not agree (a boundary found, not a flood into tissue of the structure's intensity);
* **the edge**: the mean gradient magnitude (Gaussian derivative, ``SIGMA_VOXELS``) on the boundary
  moved by ``d`` must be the strongest of the margins within ``MAX_MM`` (not at the range's end), and
  at least ``EDGE_GAIN`` times that on the annotation's own boundary.

The smaller of the two margins is applied (so a 2 mm over-painting whose shells stop at 1.73 mm,
a discrete distance level, is moved 1.73 mm). Without a margin all round, each of the boundary's six
sides (by the dominant direction of its outward normal) is judged on its own the same way: a segment
painted too thick on one side only. A correct annotation has its edge on its boundary, so it
is never moved; neither is one whose error is not a margin (the edge is not stronger elsewhere).
``refine`` fits images read as CT only: an MR-like generator that paints a gland's blurred rim with
its surroundings' intensity made the fit shrink correct masks (``benchmarks/image_margin.py``).
A box of more than ``MAX_BOX_VOXELS`` (a large organ on a full-resolution CT) is judged from a fixed-seed
sample of the cells its boundary crosses, each read through a halo so that its voxels' readings are the
whole box's, and moved from the layers next to its boundary (``boundary_sample``;
``benchmarks/large_margin_fit.py`` compares the two on boxes small enough for both).
Arrays are ``[k, j, i]``, spacing ``(i, j, k)`` mm; a margin smaller than the finest voxel side cannot
be fitted (nothing moves on a grid too coarse for the error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree

from . import boundary_sample
from .confidence import bounding_box
from .image_evidence import MIN_VOXELS, likelihood_ratio

MAX_MM = 2.5  # the largest margin fitted (a painting error, not a different structure)
AGREE = 0.6  # share of a shell's voxels the image must place on the shell's side
EDGE_GAIN = 1.1  # the fitted boundary's edge must be this much stronger than the annotation's
CORE_MM = 2.0  # the structure's reference: deeper than this inside the annotation
RING_MM = (3.0, 10.0)  # the surroundings' reference: beyond any margin fitted
SIGMA_VOXELS = 1.0  # Gaussian derivative scale of the edge strength
NORMAL_SIGMA_VOXELS = 1.5  # Gaussian smoothing of the annotation before its normals are read (the sides)
# a larger box is judged from a sample of its boundary's tiles (``boundary_sample``): the whole box costs
# about 1 s and 70 MB per million voxels on one core (a 130 mm organ at 0.8 mm is 4 M)
MAX_BOX_VOXELS = 4_000_000


SIDES = ("-k", "+k", "-j", "+j", "-i", "+i")  # the outward directions of the boundary, by array axis
MIN_SIDE_VOXELS = 30  # a side with fewer boundary voxels than this is not fitted on its own


@dataclass(frozen=True)
class MarginFit:
    """What the image said of the annotation's margin."""

    mm: float  # the margin applied all round: + outwards (under-painted), - inwards (over-painted), 0: none
    judged: bool  # False: too few reference voxels (or no contrast) to judge
    sides: tuple = ()  # ((side, mm), ...): margins applied to single sides (``SIDES``) when none all round

    @property
    def moved(self) -> bool:
        """Whether the fitted annotation differs from the painted one."""
        return bool(self.mm or self.sides)

    def as_dict(self) -> dict:
        return {"mm": self.mm, "judged": self.judged, "sides": [list(s) for s in self.sides]}


def describe(mm: float, sides: Sequence = ()) -> str:
    """The margin in the CLI's, Slicer's and the batch's words (``sides``: (side, mm) pairs, the side a
    patient direction such as "posterior" (``Grid.patient_direction``) or an array side such as "+j")."""
    if mm:
        way, how = ("outwards", "thin") if mm > 0 else ("inwards", "thick")
        return f"its boundary was moved {abs(mm):.1f} mm {way} to the image's edge (painted too {how} all round)"
    parts = ", ".join(f"{side} {abs(m):.1f} mm {'outwards' if m > 0 else 'inwards'}" for side, m in sides)
    n = len(sides)
    return (f"its boundary was moved to the image's edge on {n} of its {len(SIDES)} sides ({parts}: painted "
            f"too thick or too thin on {'that side' if n == 1 else 'those sides'})")


@dataclass
class _Evidence:
    """The image around an annotation, in its box: what every margin is judged from. The per-voxel
    arrays are the whole box's (3-D) or, for a large box, its sampled tiles' voxels (1-D, ``_sampled``)."""

    box: tuple
    a: np.ndarray  # the annotation in the box
    din: np.ndarray  # mm from each inside voxel to the outside
    dout: np.ndarray  # mm from each outside voxel to the inside
    ratio: np.ndarray  # log-likelihood ratio structure / surroundings of each voxel's intensity
    strength: np.ndarray  # gradient magnitude (intensity per mm)
    sp: np.ndarray  # (k, j, i) mm
    # sampled: each voxel's surface flag and side (``_sides``), its weight (``boundary_sample.Tile``), and
    # the annotation's whole box (3-D)
    surface: Optional[np.ndarray] = None
    side_of: Optional[np.ndarray] = None
    weight: Optional[np.ndarray] = None
    whole: Optional[np.ndarray] = None


def box_pad(spacing: Sequence[float]) -> int:
    """Voxels (on every axis) that the fit reads around the annotation's box: the surroundings' ring
    and the edge filter beyond the largest margin (``spacing`` in mm, any order)."""
    sp = np.asarray(spacing, float)
    return int(np.ceil(max(RING_MM[1], MAX_MM + 4 * SIGMA_VOXELS * sp.max()) / sp.min())) + 2


def _evidence(ann: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> Optional[_Evidence]:
    """None with too few reference voxels or no contrast; a box of more than ``MAX_BOX_VOXELS`` is read
    from a sample of its boundary's tiles (``_sampled``)."""
    sp = np.asarray(spacing, float)[::-1]  # (k, j, i) mm
    box = bounding_box(ann, ann, box_pad(sp))
    a = ann[box]
    if a.size > MAX_BOX_VOXELS:
        return _sampled(box, a, np.asarray(image)[box], sp)
    img = np.asarray(image, np.float32)[box]
    read = core_ring_ratio(a, img, sp)
    return None if read is None else _Evidence(box, a, *read, edge_strength(img, sp), sp)


def sample_halo(sp: np.ndarray) -> np.ndarray:
    """Voxels per array axis (``sp``: mm per array axis) around a sampled cell for its voxels to read as in
    the whole box: the normals' smoothing and derivative, the edge filter, and 5 mm of distance (beyond the
    largest margin and its step, so that the shells, the edge's bands and the nearest surface are exact)."""
    filters = int(4 * NORMAL_SIGMA_VOXELS + 0.5) + 1  # scipy's Gaussian reaches truncate * sigma, sobel one more
    return np.maximum(filters, np.ceil(5.0 / sp)).astype(int)


def _sampled(box: tuple, a: np.ndarray, img: np.ndarray, sp: np.ndarray) -> Optional[_Evidence]:
    """The evidence of a large box from the voxels of a sample of the cells its boundary crosses
    (``boundary_sample.boundary_tiles``): each cell read through a window with ``sample_halo``, so that its
    voxels' distances, edge strength, surface and sides are the whole box's. The references are the
    cells' core and ring voxels (the ring cut where the halo ends)."""
    parts: dict = {name: [] for name in ("a", "din", "dout", "img", "strength", "surface", "side_of", "weight")}
    for tile in boundary_sample.boundary_tiles(a, sp, sample_halo(sp)):
        aw, iw = a[tile.window], np.asarray(img[tile.window], np.float32)
        surface = aw & ~ndimage.binary_erosion(aw)
        read = {"a": aw, "din": ndimage.distance_transform_edt(aw, sampling=sp),
                "dout": ndimage.distance_transform_edt(~aw, sampling=sp), "img": iw,
                "strength": edge_strength(iw, sp), "surface": surface, "side_of": _sides(aw, surface, sp),
                "weight": np.full(aw.shape, tile.weight, np.float32)}
        for name, arr in read.items():
            parts[name].append(arr[tile.core].ravel())
    if not parts["a"]:
        return None
    flat = {name: np.concatenate(arrs) for name, arrs in parts.items()}
    ratio = _ratio(flat["din"], flat["dout"], flat["img"], sp)
    if ratio is None:
        return None
    return _Evidence(box, flat["a"], flat["din"], flat["dout"], ratio, flat["strength"], sp,
                     surface=flat["surface"], side_of=flat["side_of"], weight=flat["weight"], whole=a)


def core_ring_ratio(a: np.ndarray, img: np.ndarray, sp: np.ndarray) -> Optional[tuple]:
    """(din, dout, ratio) of a mask ``a`` and its image ``img`` in a box (``sp``: mm per array axis):
    mm from each inside voxel to the outside and from each outside voxel to the inside, and each
    voxel's log-likelihood ratio structure / surroundings, from the mask deeper than ``CORE_MM`` (all
    but its boundary layer for a thin structure) and a ring ``RING_MM`` outside. None with fewer than
    ``MIN_VOXELS`` reference voxels on either side or no contrast. The trim reads the image the same way."""
    din = ndimage.distance_transform_edt(a, sampling=sp)
    dout = ndimage.distance_transform_edt(~a, sampling=sp)
    ratio = _ratio(din, dout, img, sp)
    return None if ratio is None else (din, dout, ratio)


def _ratio(din: np.ndarray, dout: np.ndarray, img: np.ndarray, sp: np.ndarray) -> Optional[np.ndarray]:
    """Each voxel's log-likelihood ratio (``core_ring_ratio``) from its distances in and out (mm) and
    intensity, arrays of any shape; None with too few reference voxels or no contrast."""
    core = din > CORE_MM
    if core.sum() < MIN_VOXELS:
        core = din > sp.min() * 1.01  # a thin structure: all but its boundary layer
    around = (dout > RING_MM[0]) & (dout <= RING_MM[1])
    if core.sum() < MIN_VOXELS or around.sum() < MIN_VOXELS:
        return None
    ratio = likelihood_ratio(img[core], img[around])(img)
    return ratio if ratio.any() else None


def edge_strength(img: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Gradient magnitude of ``img`` (intensity per mm; ``sp``: mm per array axis), Gaussian
    derivatives at ``SIGMA_VOXELS``."""
    grads = [ndimage.gaussian_filter(img, SIGMA_VOXELS, order=tuple(int(i == axis) for i in range(3))) / sp[axis]
             for axis in range(3)]
    return np.sqrt(sum(g * g for g in grads))


def _mean(values: np.ndarray, where: np.ndarray, weight: Optional[np.ndarray]) -> float:
    """The mean of ``values`` within ``where``, weighted by ``weight`` when given (a stratified sample)."""
    return float(values[where].mean() if weight is None else np.average(values[where], weights=weight[where]))


def _shell_margin(inside: np.ndarray, dist: np.ndarray, looks_right: np.ndarray, step: float,
                  weight: Optional[np.ndarray] = None) -> float:
    """The distance (mm) out to which successive shells of ``dist`` (distance from the boundary,
    mm, > 0 on the side walked) agree, 0 when none does or when the walk runs past ``MAX_MM``
    without meeting a shell that disagrees (then there is no boundary to find); ``weight``: each
    voxel's (a sample's), None: all alike."""
    levels = np.unique(np.round(dist[inside], 3))
    levels = levels[levels <= MAX_MM + step + 1e-6]
    reached, previous = 0.0, 0.0
    for level in levels:
        shell = inside & (dist > previous + 1e-6) & (dist <= level + 1e-6)
        previous = level
        if not shell.any():
            continue
        if _mean(looks_right, shell, weight) < AGREE:
            return reached
        reached = float(level)
    return 0.0


def _edge_margin(ev: _Evidence, where: np.ndarray) -> float:
    """The margin (mm, signed) whose boundary has the strongest edge within ``where``, 0 when that is
    the annotation's own boundary, the range's end or less than ``EDGE_GAIN`` times the annotation's edge."""
    half = ev.sp.min() / 2
    # signed distance of each voxel centre from the annotation's boundary surface (half a voxel
    # beyond the outermost inside centres), negative inside
    phi = np.where(ev.a, -ev.din + half, ev.dout - half)
    step = ev.sp.min()
    n = int(np.floor(MAX_MM / step)) + 1
    margins = np.arange(-n, n + 1) * step
    profile = np.array([_mean(ev.strength, band, ev.weight) if (band := (np.abs(phi - d) <= half + 1e-6) & where).any()
                        else 0.0 for d in margins])
    best, zero = int(np.argmax(profile)), n
    if best in (0, len(margins) - 1) or best == zero or not profile[best] >= EDGE_GAIN * profile[zero]:
        return 0.0
    return float(margins[best])


def _margin(ev: _Evidence, where: np.ndarray) -> float:
    """The margin (mm, signed) both readings find within ``where``, the smaller of the two; 0: none."""
    step = float(ev.sp.min())
    inwards = _shell_margin(ev.a & where, ev.din, ev.ratio < 0, step, ev.weight)
    outwards = _shell_margin(~ev.a & where, ev.dout, ev.ratio > 0, step, ev.weight)
    shells = 0.0 if (inwards and outwards) else (outwards or -inwards)
    edge = _edge_margin(ev, where)
    return 0.0 if shells * edge <= 0 else float(np.sign(shells) * min(abs(shells), abs(edge)))


def _sides(a: np.ndarray, surface: np.ndarray, sp: np.ndarray) -> np.ndarray:
    """Each voxel's side (index into ``SIDES``) of an annotation ``a`` (3-D): the dominant axis and sign
    of the outward normal at its nearest ``surface`` (boundary) voxel (the normal of the annotation
    smoothed by ``NORMAL_SIGMA_VOXELS``)."""
    soft = ndimage.gaussian_filter(a.astype(np.float32), NORMAL_SIGMA_VOXELS)
    normal = np.stack([-ndimage.sobel(soft, axis=axis) / sp[axis] for axis in range(3)])
    nearest = ndimage.distance_transform_edt(~surface, sampling=sp, return_distances=False, return_indices=True)
    return _side_index(normal[(slice(None), *nearest)])


def _side_index(normal: np.ndarray) -> np.ndarray:
    """The side (index into ``SIDES``) of outward normals (3 x ...): their dominant axis and its sign."""
    axis = np.argmax(np.abs(normal), axis=0)
    outward = np.take_along_axis(normal, axis[None], axis=0)[0] > 0
    return axis * 2 + outward


def _surface_sides(a: np.ndarray, inner: np.ndarray, sp: np.ndarray) -> tuple:
    """(the surface voxels of ``a`` (3-D) as ``fit`` takes them, as an (n, 3) index array; their sides):
    the normals read at those voxels alone, as ``_sides`` reads them (a large box's whole sobel costs
    seconds). ``inner``: ``boundary_sample.inner_layer(a)``, which lacks only the voxels on the array's faces."""
    surface = inner.copy()
    for axis in range(3):  # binary_erosion's border_value=0: a voxel on the array's face is on the surface
        for face in (0, -1):
            index = [slice(None)] * 3
            index[axis] = face
            surface[tuple(index)] |= a[tuple(index)]
    surface = np.argwhere(surface)
    soft = ndimage.gaussian_filter(a.astype(np.float32), NORMAL_SIGMA_VOXELS)
    # ndimage.sobel: a [-1, 0, 1] derivative along the axis, [1, 2, 1] across it, the array's faces reflected
    taps = np.array([[-1.0, 0.0, 1.0], [1.0, 2.0, 1.0]])
    normal = np.zeros((3, len(surface)))
    for offset in np.ndindex(3, 3, 3):
        d = np.asarray(offset) - 1
        at = np.clip(surface + d, 0, np.asarray(a.shape) - 1)  # one voxel past a face reflects onto it
        value = soft[tuple(at.T)].astype(np.float64)
        for axis in range(3):
            weight = np.prod([taps[0 if other == axis else 1][d[other] + 1] for other in range(3)])
            if weight:
                normal[axis] -= weight * value / sp[axis]
    return surface, _side_index(normal)


def _moved(ev: _Evidence, mm: float, where: np.ndarray, a: np.ndarray) -> np.ndarray:
    """``a`` with its boundary within ``where`` moved by ``mm``."""
    if mm > 0:
        return a | (where & (ev.dout <= mm + 1e-6))
    return a & ~(where & ev.a & (ev.din <= -mm + 1e-6))


def _crossed(a: np.ndarray, sp: np.ndarray, mm: float, inner: Optional[np.ndarray] = None,
             outer: Optional[np.ndarray] = None) -> np.ndarray:
    """The voxels that moving the boundary of ``a`` (3-D) ``mm`` all round (+ outwards) adds or removes,
    from the layers next to the boundary (``boundary_sample.near``; ``inner``/``outer``: those layers when
    already at hand) instead of the whole box's distances."""
    if mm > 0:
        return boundary_sample.near(boundary_sample.inner_layer(a) if inner is None else inner, sp, mm) & ~a
    return boundary_sample.near(boundary_sample.outer_layer(a) if outer is None else outer, sp, -mm) & a


def _grown(a: np.ndarray, sp: np.ndarray, mm: float) -> np.ndarray:
    """``a`` (3-D) with its boundary moved ``mm`` all round (+ outwards): ``_moved`` everywhere."""
    return a ^ _crossed(a, sp, mm)


def _moved_sides(a: np.ndarray, sp: np.ndarray, found: Sequence) -> tuple:
    """(``a`` (3-D) with the boundary of each side moved, the sides that moved voxels): ``found`` holds
    (side index, name, mm). Each voxel the side's margin would move all round is moved when its nearest
    surface voxel is on that side, as ``fit`` moves a side (an equidistant tie may fall the other way)."""
    out, sides = a.copy(), []
    if not found:
        return out, sides
    inner = boundary_sample.inner_layer(a)
    outer = boundary_sample.outer_layer(a) if any(side_mm < 0 for *_, side_mm in found) else None
    surface, surface_side = _surface_sides(a, inner, sp)
    tree = cKDTree(surface * sp)
    for index, name, side_mm in found:
        at = np.argwhere(_crossed(a, sp, side_mm, inner, outer))
        if len(at):
            at = at[surface_side[tree.query(at * sp)[1]] == index]
        if len(at):  # a side is reported only where it moved voxels (``MarginFit.moved``)
            out[tuple(at.T)] = side_mm > 0
            sides.append((name, round(side_mm, 3)))
    return out, sides


def fit(annotation: np.ndarray, image: np.ndarray, spacing: Sequence[float],
        image_voxel_mm: Optional[float] = None) -> tuple[np.ndarray, MarginFit]:
    """(the annotation with its margin fitted to ``image``, the fit): bool ``[k, j, i]`` on the
    annotation's grid; the annotation itself when the image does not show a margin error. A margin
    all round is looked for first; when there is none, one on each side (``SIDES``) on its own,
    judged the same way from that side's voxels (a segment painted too thick on one side only).
    ``image_voxel_mm``: the finest voxel side of the image as acquired, when it was resampled onto this
    finer grid; no margin smaller than it is applied (an edge interpolated between coarse voxels places
    a boundary no better than that: a 3 mm CT under a 1 mm segmentation moved a correct gland 2 mm)."""
    ann = np.asarray(annotation) > 0
    finest = float(image_voxel_mm or 0.0)
    if finest > MAX_MM:  # every margin the fit could find is finer than the image
        return ann.copy(), MarginFit(0.0, False)
    ev = _evidence(ann, image, spacing) if ann.any() else None
    if ev is None:
        return ann.copy(), MarginFit(0.0, False)

    def resolved(margin_mm: float) -> float:
        return margin_mm if abs(margin_mm) >= finest - 1e-6 else 0.0

    everywhere = np.ones_like(ev.a)
    mm = resolved(_margin(ev, everywhere))
    sides: list = []
    if mm:
        out = _moved(ev, mm, everywhere, ev.a) if ev.whole is None else _grown(ev.whole, ev.sp, mm)
    else:  # each side judged on its own (a large box's on the sample), then moved
        if ev.whole is None:
            surface = ev.a & ~ndimage.binary_erosion(ev.a)
            side_of = _sides(ev.a, surface, ev.sp)
        else:
            surface, side_of = ev.surface, ev.side_of
        found = [(index, name, side_mm) for index, name in enumerate(SIDES)
                 if int((surface & (side_of == index)).sum()) >= MIN_SIDE_VOXELS
                 and (side_mm := resolved(_margin(ev, side_of == index)))]
        if ev.whole is not None:  # moved on the whole box
            out, sides = _moved_sides(ev.whole, ev.sp, found)
        else:
            out = ev.a.copy()
            for index, name, side_mm in found:
                moved = _moved(ev, side_mm, side_of == index, out)
                if (moved ^ out).any():  # a side is reported only where it moved voxels (``MarginFit.moved``)
                    out = moved
                    sides.append((name, round(side_mm, 3)))
    if not out.any():  # a margin never removes the whole structure
        return ann.copy(), MarginFit(0.0, True)
    full = ann.copy()
    full[ev.box] = out
    return full, MarginFit(round(mm, 3), True, tuple(sides))
