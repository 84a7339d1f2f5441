"""Do no harm with the image: the changes of a shape-only prior that the image contradicts are undone.

A shape-only prior (the general ``anatomy`` prior) reshapes a segment without reading the image. When
an image is given it can still check the prior: the voxels that the annotation and the refinement
agree on (less their surface) show what the structure looks like, a ring of tissue 1-9 mm outside
both shows what surrounds it. Each voxel's log-likelihood ratio ``log p(I | inside) / p(I | around)``
comes from the two intensity histograms (bins between their 1st and 99th percentiles, so any
modality and unit). Each connected piece of the change is judged as a whole (partial volume makes
single voxels unreliable):

* a piece the prior **removed** that looks like the structure (mean ratio above ``margin``) is put back;
* a piece the prior **added** that looks like the surroundings (mean ratio below ``-margin``) is taken out;
* any other piece stays as the prior proposed.

So the output only ever moves back towards the annotation. The price: a leak into tissue of the
structure's own intensity looks like the structure, so the prior's removal of it is undone too (the
image cannot tell them apart; the annotation stands there as it was).

``support`` is the same evidence as one number, the confidence of a refinement with an image: the
share of the prior's proposed change (by voxels) that the image agrees with. Arrays are
``[k, j, i]``, spacing ``(i, j, k)`` mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import numpy as np
from scipy import ndimage

from .confidence import bounding_box

RING_MM = (1.0, 9.0)  # the surroundings: this far outside both masks (mm)
BINS = 32
MIN_VOXELS = 30  # fewer reference voxels than this on either side: no verdict
MAX_VOXELS = 4_000_000  # larger boxes give their reference intensities from a sub-sampled grid
MARGIN = 0.0  # log-likelihood ratio a piece must pass: 0 is "more like one side than the other"


@dataclass(frozen=True)
class Verdict:
    """What the image said of the prior's change."""

    restored: int  # voxels the prior removed that are put back
    withdrawn: int  # voxels the prior added that are taken out
    pieces: int  # pieces of the change judged
    judged: bool  # False: too few reference voxels to judge (the change stands as proposed)

    def as_dict(self) -> dict:
        return {"restored": self.restored, "withdrawn": self.withdrawn, "pieces": self.pieces, "judged": self.judged}


def likelihood_ratio(inside: np.ndarray, around: np.ndarray) -> Callable[[np.ndarray], np.ndarray]:
    """``log p(I | inside) / p(I | around)`` as a function of intensity, from the intensities of
    ``inside`` and ``around`` voxels (1-D arrays): histograms between their 1st and 99th percentiles,
    smoothed, with a pseudo-count so that an intensity seen on one side only gives a finite ratio."""
    ref = np.concatenate([inside, around]).astype(np.float64)
    lo, hi = np.percentile(ref, [1.0, 99.0])
    if not hi > lo:
        return lambda values: np.zeros(np.shape(values), np.float32)
    edges = np.linspace(lo, hi, BINS + 1)

    def density(values: np.ndarray) -> np.ndarray:
        counts, _ = np.histogram(np.clip(values, lo, hi), edges)
        smooth = ndimage.gaussian_filter1d(counts.astype(np.float64), 1.0) + 0.5
        return smooth / smooth.sum()

    table = (np.log(density(inside)) - np.log(density(around))).astype(np.float32)

    def lookup(values: np.ndarray) -> np.ndarray:
        return table[np.clip(np.searchsorted(edges, np.clip(values, lo, hi), side="right") - 1, 0, BINS - 1)]

    return lookup


def _references(a: np.ndarray, r: np.ndarray, img: np.ndarray, sp: np.ndarray) -> Optional[tuple]:
    """Intensities of the structure (the agreed voxels less their surface) and of its surroundings
    (1-9 mm outside both masks), or None with fewer than ``MIN_VOXELS`` of either. A box of more than
    ``MAX_VOXELS`` is sampled on every n-th voxel: histograms need no more."""
    step = max(1, int(np.ceil((a.size / MAX_VOXELS) ** (1.0 / 3.0))))
    if step > 1:
        a, r, img, sp = a[::step, ::step, ::step], r[::step, ::step, ::step], img[::step, ::step, ::step], sp * step
    agree = a & r
    core = ndimage.binary_erosion(agree)
    if core.sum() < MIN_VOXELS:
        core = agree
    outside = ndimage.distance_transform_edt(~(a | r), sampling=sp)
    around = (outside > RING_MM[0]) & (outside <= RING_MM[1])
    if core.sum() < MIN_VOXELS or around.sum() < MIN_VOXELS:
        return None
    return img[core], img[around]


def box_pad(spacing: Sequence[float]) -> int:
    """Voxels (on every axis) that the check reads around the two masks' box: the surroundings' ring."""
    return int(np.ceil(RING_MM[1] / float(np.min(spacing)))) + 1


def _evidence(ann: np.ndarray, ref: np.ndarray, image: np.ndarray, spacing: Sequence[float]) -> Optional[tuple]:
    """(box, annotation, refinement and image in the box, likelihood ratio) for judging the change
    from ``ann`` to ``ref`` (bool), the box large enough for the surroundings' ring; None with too few
    reference voxels."""
    sp = np.asarray(spacing, float)[::-1]  # (k, j, i) mm
    box = bounding_box(ann, ref, box_pad(sp))
    a, r, img = ann[box], ref[box], np.asarray(image)[box]
    refs = _references(a, r, img, sp)
    return None if refs is None else (box, a, r, img, likelihood_ratio(*refs))


def describe_undone(restored: int, withdrawn: int) -> str:
    """What the check undid, in one clause (the CLI's and Slicer's words, the review report's)."""
    return f"{restored} voxels the prior removed were put back and {withdrawn} it added were taken out"


def support(annotation: np.ndarray, refined: np.ndarray, image: np.ndarray,
            spacing: Sequence[float]) -> Optional[float]:
    """The share (0-1) of the change from ``annotation`` to ``refined`` (bool ``[k, j, i]``) that
    ``image`` agrees with: voxels added that look more like the structure than its surroundings,
    and voxels removed that look more like the surroundings. None when nothing changed or there are
    too few reference voxels to tell (the references of ``undo_contradicted``). Unlike a prior's own
    signals it is evidence the prior did not produce: the prior never read the image, or read it
    only through its small working cube."""
    ann, ref = np.asarray(annotation) > 0, np.asarray(refined) > 0
    if not (ann ^ ref).any():
        return None
    evidence = _evidence(ann, ref, image, spacing)
    if evidence is None:
        return None
    _, a, r, img, ratio = evidence
    agree = int((ratio(img[r & ~a]) > 0).sum()) + int((ratio(img[a & ~r]) < 0).sum())
    return agree / int((a ^ r).sum())


def undo_contradicted(annotation: np.ndarray, refined: np.ndarray, image: np.ndarray,
                      spacing: Sequence[float], margin: float = MARGIN) -> tuple[np.ndarray, Verdict]:
    """``refined`` (bool ``[k, j, i]``) with the pieces of its change from ``annotation`` that
    ``image`` contradicts undone (module docstring), and the verdict."""
    ann, ref = np.asarray(annotation) > 0, np.asarray(refined) > 0
    out = ref.copy()
    if not (ann ^ ref).any():
        return out, Verdict(0, 0, 0, True)
    evidence = _evidence(ann, ref, image, spacing)
    if evidence is None:
        return out, Verdict(0, 0, 0, False)
    box, a, r, img, ratio = evidence
    sub = out[box]  # a view: undoing a piece here undoes it in ``out``
    restored = withdrawn = pieces = 0
    for removed, diff in ((True, a & ~r), (False, r & ~a)):
        labels, n = ndimage.label(diff, np.ones((3, 3, 3), bool))
        if n == 0:
            continue
        which = labels[diff]
        sizes = np.bincount(which, minlength=n + 1)
        means = np.bincount(which, ratio(img[diff]).astype(np.float64), minlength=n + 1) / np.maximum(sizes, 1)
        undo = np.flatnonzero((means > margin) if removed else (means < -margin))
        undo = undo[undo > 0]
        pieces += n
        if len(undo):
            sub[np.isin(labels, undo)] = removed
            count = int(sizes[undo].sum())
            restored, withdrawn = (restored + count, withdrawn) if removed else (restored, withdrawn + count)
    return out, Verdict(restored, withdrawn, pieces, True)
