"""Trim the pieces of a segment that the image shows are its surroundings: a slab or leak painted into fat.

The shape prior repairs what looks implausible, the image check (``image_evidence``) only moves the
prior's output back towards the annotation, and the margin fit (``image_margin``) moves the boundary
by one distance all round or on a side. A piece painted into the structure's surroundings that is
shape-plausible (a slab on a flat side, a blob the prior keeps) survives all three. ``trim`` finds it
in the image alone, judged by two readings, as the margin fit is:

* **it looks like the surroundings**: the voxels of the mask whose intensity, by the likelihood ratio
  of ``image_evidence`` (references as the margin fit takes them: the mask's core deeper than
  ``image_margin.CORE_MM`` and a ring ``RING_MM`` outside; smoothed over ``SMOOTH_MM`` against
  partial volume and noise), is more like the surroundings; of these only the thick part (holding a ball of ``THICK_MM``, at least one voxel each
  way, as ``confidence.thick_changes``), in connected pieces that reach the mask's boundary (a piece
  deep inside, such as a cyst, is the annotator's call), each with a mean ratio below ``-RATIO``;
* **the structure ends where it would end**: the image's edge (gradient magnitude) on the boundary that
  removing the piece makes is at least ``EDGE_GAIN`` times that on the piece's own outer boundary
  (a painting error ends in homogeneous tissue, the structure at an edge).

Only ever removes, and never more than ``MAX_SHARE`` of the mask in one piece. The thresholds were
chosen as round values on one group of cases and checked on held-out ones
(``benchmarks/image_trim.py``); adding tissue the image shows as the structure was tried and is not
done: on the real CT's adrenal glands it grew into neighbouring tissue of the same density.
Arrays are ``[k, j, i]``, spacing ``(i, j, k)`` mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import numpy as np
from scipy import ndimage

from . import ellipsoid_morphology
from .confidence import bounding_box
# the image is read as the margin fit reads it: references deeper than CORE_MM and a ring RING_MM out
from . import image_margin
from .image_margin import RING_MM, core_ring_ratio, edge_strength

SMOOTH_MM = 1.0  # Gaussian smoothing of the ratio before pieces are cut (at least half a voxel)
THICK_MM = 1.0  # a piece must hold a ball of this radius (at least one voxel each way)
RATIO = 1.0  # a piece's mean log-likelihood ratio must be below -RATIO
EDGE_GAIN = 1.5  # the boundary left behind against the piece's own outer boundary
MAX_SHARE = 0.3  # a piece larger than this share of the mask is not removed
# past the margin fit's whole-box bound the trim judges nothing (the fit samples such a box's boundary; a
# piece may lie anywhere on the mask, so the trim would need whole-box filters: 24-34 s on a 242 mm organ)
MAX_BOX_VOXELS = image_margin.MAX_BOX_VOXELS


@dataclass(frozen=True)
class Trim:
    """What the image trimmed."""

    removed: int  # voxels removed
    pieces: int  # pieces removed
    judged: bool  # False: too few reference voxels, no contrast or too large a box

    def as_dict(self) -> dict:
        return {"removed": self.removed, "pieces": self.pieces, "judged": self.judged}


def describe(removed: int, pieces: int) -> str:
    """The trim in one clause (the CLI's, Slicer's and the batch's words)."""
    return (f"{removed} voxels in {pieces} piece{'s' if pieces != 1 else ''} that the image shows as the "
            f"structure's surroundings were removed")


def box_pad(spacing: Sequence[float]) -> int:
    """Voxels (on every axis) that the trim reads around the mask's box: the surroundings' ring."""
    return int(np.ceil(RING_MM[1] / float(np.min(spacing)))) + 2


def trim(mask: np.ndarray, image: np.ndarray, spacing: Sequence[float],
         ratio_min: float = RATIO, edge_gain: float = EDGE_GAIN) -> tuple[np.ndarray, Trim]:
    """(``mask`` less the pieces the image shows as its surroundings, the trim): bool ``[k, j, i]`` on
    the mask's grid; the mask itself when there are none (module docstring)."""
    m = np.asarray(mask) > 0
    if not m.any():
        return m.copy(), Trim(0, 0, False)
    sp = np.asarray(spacing, float)[::-1]  # (k, j, i) mm
    box = bounding_box(m, m, box_pad(sp))
    if int(np.prod([b.stop - b.start for b in box])) > MAX_BOX_VOXELS:
        return m.copy(), Trim(0, 0, False)
    a, img = m[box], np.asarray(image, np.float32)[box]
    read = core_ring_ratio(a, img, sp)
    if read is None:
        return m.copy(), Trim(0, 0, False)
    ratio = read[2]
    smooth = ndimage.gaussian_filter(ratio, np.maximum(SMOOTH_MM / sp, 0.5))
    candidates = ellipsoid_morphology.opening(a & (smooth < 0), ellipsoid_morphology.reach(spacing, THICK_MM))
    labels, n = ndimage.label(candidates, np.ones((3, 3, 3), bool))
    if n == 0:
        return m.copy(), Trim(0, 0, True)
    strength = edge_strength(img, sp)
    face = ndimage.generate_binary_structure(3, 1)
    outside = ndimage.binary_dilation(~a, face)  # voxels with a face on the outside (or outside)
    volume = int(a.sum())
    out = a.copy()
    removed = pieces = 0
    for index, where in enumerate(ndimage.find_objects(labels), start=1):
        # the piece's box grown by one voxel, so that its neighbours are in view
        grown = tuple(slice(max(s.start - 1, 0), s.stop + 1) for s in where)
        piece = labels[grown] == index
        size = int(piece.sum())
        if size > MAX_SHARE * volume or not float(ratio[grown][piece].mean()) < -ratio_min:
            continue
        own = piece & outside[grown]  # its outer boundary
        if not own.any():
            continue  # deep inside: the annotator's call
        left = a[grown] & ~piece & ndimage.binary_dilation(piece, face)  # the boundary its removal leaves
        if not left.any():
            continue  # a separate piece: removing it is the island rule's job, not the image's
        if not float(strength[grown][left].mean()) >= edge_gain * float(strength[grown][own].mean()):
            continue
        out[grown][piece] = False
        removed += size
        pieces += 1
    if not out.any():
        return m.copy(), Trim(0, 0, True)
    full = m.copy()
    full[box] = out
    return full, Trim(removed, pieces, True)
