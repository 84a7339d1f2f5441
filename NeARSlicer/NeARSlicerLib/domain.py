"""A prior's training domain (size, elongation, topology) and the out-of-domain warning.

A prior card's ``meta["domain"]`` (measured on the training shapes, see ``measure_domain``)::

    {"size_mm": [lo, hi],        # longest side of the bounding box (mm), 0.5-99.5 percentiles
     "elongation": [lo, hi],     # sqrt(largest / smallest principal variance), same percentiles
     "components": n,            # most connected components of a training shape (26-connected)
     "shapes": N, "what": "..."} # how many shapes it was measured on, and which

``check`` compares a case with it and returns warning texts (empty when inside). A case beyond
the range by more than ``TOLERANCE`` (relative) is out of domain: the prior never saw such a
shape, so its refinement may not be reliable. Masks are [k, j, i] with spacing (i, j, k) mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
from scipy import ndimage

from .geometry import grown_slices

TOLERANCE = 0.25  # 25 % beyond the training range before warning
SPECK_FRACTION = 0.02  # components below this share of the largest are ignored (stray paint)
# parts closer than this are one structure painted with gaps (a missed thick slice, a slipped brush): an
# annotation error that the prior should repair, not a shape it never saw
GAP_MM = 6.0


@dataclass(frozen=True)
class ShapeFacts:
    size_mm: float  # longest bounding-box side
    elongation: float  # sqrt(largest / smallest principal variance) of the voxel positions
    components: int  # parts of at least SPECK_FRACTION of the largest, more than GAP_MM apart


def shape_facts(mask: np.ndarray, spacing: Sequence[float]) -> ShapeFacts:
    """Size, elongation and component count of a binary ``mask`` ([k, j, i], spacing (i, j, k) mm)."""
    m = np.asarray(mask) > 0
    if not m.any():
        return ShapeFacts(0.0, 1.0, 0)
    sp = np.asarray(spacing, float)[::-1]  # per array axis
    box = grown_slices(m, 0)
    # labelled on the mask's own box (a cropped array numbers its parts in the same order)
    labels, n = ndimage.label(m[box], structure=np.ones((3, 3, 3), bool))
    if n == 1:  # one part (most structures): no count of every voxel's label (0.4 s on a liver at 0.7 mm)
        keep, core = np.array([1]), m
    else:
        sizes = np.bincount(labels.ravel())[1:]
        keep = np.flatnonzero(sizes >= SPECK_FRACTION * sizes.max()) + 1
        core = np.zeros(m.shape, bool)
        core[box] = np.isin(labels, keep)
    extent = np.array([np.ptp(np.flatnonzero(core.any(axis=tuple(a for a in range(3) if a != ax)))) + 1
                       for ax in range(3)]) * sp
    # the principal axes of a big structure from a strided subsample (no 10^7 x 3 index array)
    stride = max(1, int(np.ceil((core.sum() / 200_000) ** (1 / 3))))
    pts = np.argwhere(core[::stride, ::stride, ::stride]) * (sp * stride)
    # one voxel has no spread (np.cov of one point is NaN): only a voxel's own
    spread = np.cov((pts - pts.mean(0)).T) if len(pts) > 1 else np.zeros((3, 3))
    ev = np.linalg.eigvalsh(spread + np.eye(3) * (sp.min() ** 2) / 12.0)
    parts = len(keep) if len(keep) < 2 else _separate_parts(core, sp)
    return ShapeFacts(float(extent.max()), float(np.sqrt(ev[-1] / max(ev[0], 1e-9))), int(parts))


def _separate_parts(core: np.ndarray, sp: np.ndarray, gap_mm: float = GAP_MM,
                    max_voxels: int = 2_000_000) -> int:
    """Groups of the parts of ``core`` (bool, [k, j, i], ``sp`` mm per array axis) lying more than
    ``gap_mm`` apart: each part grown by half the gap, then counted as connected regions. A box of
    more than ``max_voxels`` is measured on blocks (a block holding any voxel is set), so the
    distance map's memory stays bounded for a structure of any size."""
    from skimage.measure import block_reduce

    span = [np.flatnonzero(core.any(axis=tuple(a for a in range(3) if a != ax))) for ax in range(3)]
    crop = core[tuple(slice(int(n[0]), int(n[-1]) + 1) for n in span)]
    block = max(1, int(np.ceil((crop.size / max_voxels) ** (1 / 3))))
    if block > 1:
        crop, sp = block_reduce(crop, (block,) * 3, np.max), sp * block
    pad = np.ceil(0.5 * gap_mm / sp).astype(int) + 1
    crop = np.pad(crop, [(int(p), int(p)) for p in pad])
    near = ndimage.distance_transform_edt(~crop, sampling=sp) <= 0.5 * gap_mm
    labels, _ = ndimage.label(near, structure=np.ones((3, 3, 3), bool))
    return int(len(np.unique(labels[crop])))


def measure_domain(masks: Iterable[np.ndarray], spacing: Sequence[float], what: str) -> dict:
    """The ``domain`` card entry of a prior trained on ``masks`` (all on ``spacing``)."""
    facts = [shape_facts(m, spacing) for m in masks]
    size = np.array([f.size_mm for f in facts])
    elong = np.array([f.elongation for f in facts])
    return {
        "size_mm": [round(float(np.percentile(size, 0.5)), 1), round(float(np.percentile(size, 99.5)), 1)],
        "elongation": [round(float(np.percentile(elong, 0.5)), 2), round(float(np.percentile(elong, 99.5)), 2)],
        "components": int(max(f.components for f in facts)),
        "shapes": len(facts),
        "what": what,
    }


def widen(domain: dict | None, facts: Sequence[ShapeFacts], what: str) -> dict | None:
    """``domain`` grown to cover the sizes and elongations of the shapes ``facts`` describe (a study's
    own annotations, which a study-adapted prior has been trained on); None stays None (a prior
    without a domain is never out of it); a limit the domain does not set stays unset. Sizes in mm.

    The number of separate parts is not widened: the working cube is sized to one structure, and a
    study's few epochs do not teach a prior of single structures to hold many thin parts (the
    example CT's costal cartilages, six parts over 294 mm on 7.3 mm working voxels, came back from a
    study of their clean annotation at 0.61 Dice while the widened domain let them in)."""
    if not domain or not facts:
        return domain
    out = {**domain, "what": f"{domain.get('what', 'its training shapes')} and {what}"}
    for key, digits in (("size_mm", 1), ("elongation", 2)):
        if domain.get(key):
            values = [getattr(f, key) for f in facts]
            out[key] = [round(float(min(domain[key][0], *values)), digits),
                        round(float(max(domain[key][-1], *values)), digits)]
    return out


def check(facts: ShapeFacts, domain: dict | None, tolerance: float = TOLERANCE) -> list[str]:
    """Warnings for a case whose ``facts`` lie outside a prior's ``domain`` (none without a domain)."""
    if not domain:
        return []
    out = []
    what = domain.get("what", "its training shapes")
    size = domain.get("size_mm")
    if size and not (size[0] * (1 - tolerance) <= facts.size_mm <= size[1] * (1 + tolerance)):
        # the range beside the measure, as for the elongation: ``what`` may end in a clause of its own
        out.append(f"out of the prior's domain: this segment is {facts.size_mm:.0f} mm long, outside the "
                   f"{size[0]:.0f}-{size[1]:.0f} mm of {what}; the result may not be reliable")
    elong = domain.get("elongation")
    if elong and not (elong[0] * (1 - tolerance) <= facts.elongation <= elong[1] * (1 + tolerance)):
        out.append(f"out of the prior's domain: this segment's elongation ({facts.elongation:.1f}) is outside the "
                   f"{elong[0]:.1f}-{elong[1]:.1f} of {what}; the result may not be reliable")
    comps = domain.get("components")
    if comps and facts.components > comps + 1:
        out.append(f"out of the prior's domain: this segment has {facts.components} separate parts, {what} had at "
                   f"most {comps}; the result may not be reliable")
    return out
