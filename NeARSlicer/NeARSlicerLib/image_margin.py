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
a discrete distance level, is moved 1.73 mm). A correct annotation has its edge on its boundary, so it
is never moved; neither is one whose error is not a margin (the edge is not stronger elsewhere).
``refine`` fits images read as CT only: an MR-like generator that paints a gland's blurred rim with
its surroundings' intensity made the fit shrink correct masks (``benchmarks/image_margin.py``).
Arrays are ``[k, j, i]``, spacing ``(i, j, k)`` mm; a margin smaller than the finest voxel side cannot
be fitted (nothing moves on a grid too coarse for the error).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from .confidence import bounding_box
from .image_evidence import MIN_VOXELS, likelihood_ratio

MAX_MM = 2.5  # the largest margin fitted (a painting error, not a different structure)
AGREE = 0.6  # share of a shell's voxels the image must place on the shell's side
EDGE_GAIN = 1.1  # the fitted boundary's edge must be this much stronger than the annotation's
CORE_MM = 2.0  # the structure's reference: deeper than this inside the annotation
RING_MM = (3.0, 10.0)  # the surroundings' reference: beyond any margin fitted
SIGMA_VOXELS = 1.0  # Gaussian derivative scale of the edge strength


@dataclass(frozen=True)
class MarginFit:
    """What the image said of the annotation's margin."""

    mm: float  # the margin applied: + outwards (under-painted), - inwards (over-painted), 0: none
    judged: bool  # False: too few reference voxels (or no contrast) to judge
    shells_mm: float  # the shells' margin (signed; 0: none found)
    edge_mm: float  # the edge's margin (signed; 0: none found)

    def as_dict(self) -> dict:
        return {"mm": self.mm, "judged": self.judged, "shells_mm": self.shells_mm, "edge_mm": self.edge_mm}


def describe(mm: float) -> str:
    """The margin in the CLI's, Slicer's and the batch's words."""
    way, how = ("outwards", "thin") if mm > 0 else ("inwards", "thick")
    return f"its boundary was moved {abs(mm):.1f} mm {way} to the image's edge (painted too {how} all round)"


def _shell_margin(inside: np.ndarray, dist: np.ndarray, looks_right: np.ndarray, step: float) -> float:
    """The distance (mm) out to which successive shells of ``dist`` (distance from the boundary,
    mm, > 0 on the side walked) agree, 0 when none does or when the walk runs past ``MAX_MM``
    without meeting a shell that disagrees (then there is no boundary to find)."""
    levels = np.unique(np.round(dist[inside], 3))
    levels = levels[levels <= MAX_MM + step + 1e-6]
    reached, previous = 0.0, 0.0
    for level in levels:
        shell = inside & (dist > previous + 1e-6) & (dist <= level + 1e-6)
        previous = level
        if not shell.any():
            continue
        if float(looks_right[shell].mean()) < AGREE:
            return reached
        reached = float(level)
    return 0.0


def _edge_margin(a: np.ndarray, din: np.ndarray, dout: np.ndarray, img: np.ndarray, sp: np.ndarray) -> float:
    """The margin (mm, signed) whose boundary has the strongest edge, 0 when that is the annotation's
    own boundary, the range's end or less than ``EDGE_GAIN`` times the annotation's edge."""
    grads = [ndimage.gaussian_filter(img, SIGMA_VOXELS, order=tuple(int(i == axis) for i in range(3))) / sp[axis]
             for axis in range(3)]
    strength = np.sqrt(sum(g * g for g in grads))
    half = sp.min() / 2
    # signed distance of each voxel centre from the annotation's boundary surface (half a voxel
    # beyond the outermost inside centres), negative inside
    phi = np.where(a, -din + half, dout - half)
    step = sp.min()
    n = int(np.floor(MAX_MM / step)) + 1
    margins = np.arange(-n, n + 1) * step
    profile = np.array([float(strength[band].mean()) if (band := np.abs(phi - d) <= half + 1e-6).any() else 0.0
                        for d in margins])
    best, zero = int(np.argmax(profile)), n
    if best in (0, len(margins) - 1) or best == zero or not profile[best] >= EDGE_GAIN * profile[zero]:
        return 0.0
    return float(margins[best])


def fit(annotation: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> tuple[np.ndarray, MarginFit]:
    """(the annotation with its margin fitted to ``image``, the fit): bool ``[k, j, i]`` on the
    annotation's grid; the annotation itself when the image does not show a margin error."""
    ann = np.asarray(annotation) > 0
    sp = np.asarray(spacing, float)[::-1]  # (k, j, i) mm
    none = MarginFit(0.0, False, 0.0, 0.0)
    if not ann.any():
        return ann.copy(), none
    pad = int(np.ceil(max(RING_MM[1], MAX_MM + 4 * SIGMA_VOXELS * sp.max()) / sp.min())) + 2
    box = bounding_box(ann, ann, pad)
    a, img = ann[box], np.asarray(image, np.float32)[box]
    din = ndimage.distance_transform_edt(a, sampling=sp)
    dout = ndimage.distance_transform_edt(~a, sampling=sp)
    core = din > CORE_MM
    if core.sum() < MIN_VOXELS:
        core = din > sp.min() * 1.01  # a thin structure: all but its boundary layer
    around = (dout > RING_MM[0]) & (dout <= RING_MM[1])
    if core.sum() < MIN_VOXELS or around.sum() < MIN_VOXELS:
        return ann.copy(), none
    ratio = likelihood_ratio(img[core], img[around])(img)
    if not ratio.any():
        return ann.copy(), none
    step = float(sp.min())
    inwards = _shell_margin(a, din, ratio < 0, step)
    outwards = _shell_margin(~a, dout, ratio > 0, step)
    shells = 0.0 if (inwards and outwards) else (outwards or -inwards)
    edge = _edge_margin(a, din, dout, img, sp)
    mm = 0.0 if shells * edge <= 0 else float(np.sign(shells) * min(abs(shells), abs(edge)))
    out = ann.copy()
    if mm > 0:
        out[box] = a | (dout <= mm + 1e-6)
    elif mm < 0:
        moved = a & (din > -mm + 1e-6)
        if not moved.any():  # a margin never removes the whole structure
            return ann.copy(), MarginFit(0.0, True, shells, edge)
        out[box] = moved
    return out, MarginFit(round(mm, 3), True, round(shells, 3), round(edge, 3))

