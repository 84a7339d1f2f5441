"""Do no harm: how far a refinement can be trusted, and whether to keep the input instead.

One mechanism serves both the per-case confidence (0..1, reported) and the do-no-harm choice
(keep the annotation when the confidence is below a threshold). The signals compare the annotation
with the refined mask on the input grid (what the user gets) and the mirrored views on the
working cube (where the prior ran):

* ``disagreement``: how much the mirrored views (``refine.FLIPS``), each fitted on its own,
  disagree about the refined surface (mean pairwise 1 - Dice). A prior that knows the shape gives
  the same answer from every view; one that is guessing does not.
* ``change``: 1 - Dice(annotation, refined): how much the prior changed.
* ``deep_change``: the part of that change that is *thick* (voxels of the difference lying more
  than ``DEEP_MM`` below its edge), relative to the annotation's volume. Annotation errors (blobs,
  holes, slabs, leaks, missing parts) leave thick differences; the prior's own reconstruction
  error on a correct annotation is a thin shell spread over the whole surface.
* ``shell``: ``change - deep_change``: the thin part of the change.

The confidence is a logistic function of these signals whose weights were calibrated on ALAN val
shapes with some error families and held-out families/structures for testing
(``benchmarks/no_harm.py``, README "Do no harm"). Arrays are [k, j, i].
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

from . import ellipsoid_morphology
from .geometry import grown_slices

DEEP_MM = 1.5  # a difference thicker than about 3 mm (1.5 mm from its edge) is an error, not a shell
# keep the annotation when the confidence is below this. 0 (always refine) by default: on rough
# annotations the calibrated confidence is lowest where refinement helps most (README "Do no harm"),
# so a positive default would keep the very cases the prior repairs; DO_NO_HARM is the setting for
# near-correct (e.g. automatic) masks, where it kept all 27 measured cases at the input's Dice.
DEFAULT_KEEP_THRESHOLD = 0.0
DO_NO_HARM_THRESHOLD = 0.5
# measured (benchmarks/keep_or_refine.py, README "Do no harm"): "all" made 12 of 27 near-correct ALAN
# masks and 13 of 48 near-correct real-CT ones worse by > 1 DSC; "gated" none, and it repairs rough
# ones more than "thick" (over-painting is a thin change that only the open gate applies)
DEFAULT_CHANGE_POLICY = "gated"
KEPT_PLAUSIBLE = "kept: already plausible"
KEPT_UNCERTAIN = "kept: low confidence"
KEPT_OUT_OF_DOMAIN = "kept: outside the prior's domain"
KEPT_IMAGE = "kept: the image contradicts the prior's changes"  # image_evidence.undo_contradicted undid every change
# the prior's output was empty: a painted structure is never deleted whole unless --changes all
KEPT_NO_SHAPE = "kept: the prior found no shape in it"
REFINED = "refined"
REFINED_ERRORS_ONLY = "refined: thick errors only, boundary kept"
# the prior's change was not applied, but the image showed the annotation painted too thick or too thin
# all round, and its margin was moved to the image's edge (image_margin.py)
REFINED_MARGIN = "refined: margin fitted to the image only"
# the prior's change was not applied, but pieces the image shows as the structure's surroundings were
# removed (image_trim.py)
REFINED_TRIM = "refined: trimmed to the image only"
# the prior's change was not applied, but the annotation's specks (islands and enclosed holes smaller than
# RefineOptions.min_island_mm3) were removed and filled
REFINED_SPECKS = "refined: specks cleaned only"


def describe_specks(removed: int, filled: int) -> str:
    """The specks cleaned, in one clause (the CLI's, Slicer's and the batch's words)."""
    def voxels(n: int) -> str:
        return f"{n} voxel{'s' if n != 1 else ''}"
    return f"{voxels(removed)} of isolated specks removed, {voxels(filled)} of small enclosed holes filled"


# logistic weights over the signals (see ``confidence``), fitted by ``benchmarks/no_harm.py calibrate``
# on the calibration cases only (14 ALAN val cases, 2 of them improved by refinement: see README)
WEIGHTS = {"bias": 1.0, "deep_change": 0.0, "shell": -8.29, "disagreement": -116.638}


@dataclass(frozen=True)
class Signals:
    """What the confidence is computed from (all fractions, 0..1)."""

    change: float
    deep_change: float
    shell: float
    disagreement: Optional[float]  # None with a single view
    deep_profile: tuple = ()  # (depth mm, fraction of the annotation's volume changed deeper than it)

    def as_dict(self) -> dict:
        d = {k: (None if getattr(self, k) is None else round(float(getattr(self, k)), 5))
             for k in ("change", "deep_change", "shell", "disagreement")}
        d["deep_profile"] = [[float(a), round(float(b), 5)] for a, b in self.deep_profile]
        return d


PROFILE_MM = (1.0, 1.5, 2.0, 3.0, 4.0, 6.0)
MAX_VOXELS = 8_000_000  # larger boxes are measured on every second voxel


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    s = int(a.sum()) + int(b.sum())
    return 1.0 if s == 0 else 2.0 * int(np.logical_and(a, b).sum()) / s


def bounding_box(a: np.ndarray, b: np.ndarray, pad: int = 2) -> tuple:
    """Slices of the box around ``a | b`` grown by ``pad`` voxels and clipped to the array."""
    both = np.asarray(a, bool) if a is b else np.asarray(a, bool) | np.asarray(b, bool)
    if not both.any():
        return tuple(slice(0, min(int(pad) + 1, n)) for n in both.shape)
    # from the projections: an index array of every voxel (argwhere) took 0.4 s on a liver's box at 0.7 mm
    return grown_slices(both, pad)


def _depth_beyond(mask: np.ndarray, sp: np.ndarray, low_mm: float, high_mm: float) -> np.ndarray:
    """``distance_transform_edt(mask, sampling=sp)`` (mm; ``sp`` per array axis) wherever either is above
    ``low_mm``, up to ``high_mm`` (deeper: some value above it); 0 elsewhere. Only voxels
    that survive a 1-D erosion along each axis by ``low_mm`` can lie deeper, and a depth up to ``high_mm``
    is read within that far: the transform runs on those voxels' box grown by it, not on the whole box
    (a prior's shell of a change has none: 1.4 s of a colon's refinement at 0.7 mm)."""
    m = np.asarray(mask, bool)
    out = np.zeros(m.shape)
    # beyond the array is not the outside, as for the distance transform
    cand = ellipsoid_morphology.segment_erosion(m, np.floor(low_mm / sp + 1e-9).astype(int), border_value=1)
    if not cand.any():
        return out
    box = grown_slices(cand, np.ceil(high_mm / sp).astype(int) + 1)
    inner = m[box]
    # the candidates' own depths: another voxel's nearest outside voxel may lie beyond the box; a box
    # without an outside voxel (scipy's transform is then not a distance) holds only depths beyond high_mm
    depth = ndimage.distance_transform_edt(inner, sampling=sp) if not inner.all() else np.full(inner.shape, np.inf)
    out[box] = np.where(cand[box], depth, 0.0)
    return out


def signals(annotation: np.ndarray, refined: np.ndarray, spacing: Sequence[float],
            views: Sequence[np.ndarray]) -> Signals:
    """The signals of one refinement: the ``annotation`` and ``refined`` masks on the input grid
    ([k, j, i], ``spacing`` (i, j, k) mm) and each mirrored view's probability on the working cube."""
    ann, ref = np.asarray(annotation) > 0, np.asarray(refined) > 0
    box = bounding_box(ann, ref)
    ann, ref = ann[box], ref[box]
    step = 2 if ann.size > MAX_VOXELS else 1
    sp = np.asarray(spacing, float)[::-1] * step
    ann, ref = ann[::step, ::step, ::step], ref[::step, ::step, ::step]
    change = 1.0 - _dice(ann, ref)
    diff = ann ^ ref
    volume = max(int(ann.sum()), 1)
    profile = []
    if diff.any():
        # depth of each changed voxel below the edge of the change (mm), less half a voxel: a change
        # one voxel thick has depth ~0 whatever the voxel size
        half = 0.5 * float(sp.max())
        depth = _depth_beyond(diff, sp, PROFILE_MM[0] + half, PROFILE_MM[-1] + half) - half
        profile = [(d, min(float((depth > d).sum()) / volume, 1.0)) for d in PROFILE_MM]
    else:
        profile = [(d, 0.0) for d in PROFILE_MM]
    deep = dict(profile)[DEEP_MM]
    masks = [np.asarray(v) >= 0.5 for v in views]
    pairs = [(a, b) for i, a in enumerate(masks) for b in masks[i + 1:]]
    # one view (the "fast" preset): no disagreement to measure, so no calibrated confidence
    disagreement = float(np.mean([1.0 - _dice(a, b) for a, b in pairs])) if pairs else None
    return Signals(change=change, deep_change=deep, shell=max(change - deep, 0.0), disagreement=disagreement,
                   deep_profile=tuple(profile))


def confidence(sig: Signals, weights: dict = WEIGHTS) -> Optional[float]:
    """P(the refinement is better than the annotation), 0..1, from ``sig`` (logistic model); None
    without the mirrored views' disagreement (one view: the model was calibrated with four)."""
    if sig.disagreement is None:
        return None
    x = weights["bias"] + sum(weights[k] * getattr(sig, k) for k in weights if k != "bias")
    return 1.0 / (1.0 + math.exp(-max(min(x, 50.0), -50.0)))


# which of the prior's changes reach the output (``apply_changes``)
CHANGE_ALL = "all"  # the refined mask as the prior proposes it
# only changes thicker than a voxel or so (the annotation's own boundary is kept); nothing outside the domain
CHANGE_THICK = "thick"
# all changes when the annotation has thick errors, else only the thick ones; nothing outside the prior's domain
CHANGE_GATED = "gated"
CHANGE_POLICIES = (CHANGE_ALL, CHANGE_THICK, CHANGE_GATED)
THICK_RADIUS_MM = 1.0  # a change must hold a ball of this radius (at least one voxel each way) to count as thick
GATE_FRACTION = 0.02  # thick changes above this fraction of the annotation's volume: the annotation is rough
GATE_CHANGE = 0.15  # or a change (1 - Dice(annotation, refined)) above this: thin structures' errors are thin
# or the annotation was painted on slices thicker than its grid: each slice repeated in runs of at least this
# many slices on average (2.5 on a 1 mm grid: the library's 2.5-5 mm painting; a 2-slice staircase is ~2)
SLICE_RUN = 2.5
SLICE_RUN_MIN_SLICES = 8  # fewer slices along an axis say nothing about how it was painted
# or a CT read by refine supports at least this share of the prior's whole change (image_evidence.support):
# evidence the prior did not produce that a thin change is a repair (an oversmoothed gland's lost limbs, a
# thin leak) rather than its own boundary error. 0.8: the lowest value at which opening the gate harmed no
# clean or near-correct case by more than 1 DSC in benchmarks/results/image_confidence.json's 210 cases
OPEN_SUPPORT = 0.8
# and a CT read by refine that supports less than this share of the prior's whole change keeps a large change
# (GATE_CHANGE) from opening the gate by its size alone: the prior's reshaping of a structure it does not know
# is a large change too, and the image is the only evidence beside the prior. 0.4, chosen on
# image_confidence.py's 210 cases (benchmarks/change_gate_support.py): any floor in (0.19, 0.49] closes only
# the one case there that the open gate made worse than its input (support 0.19, 51.3 -> 49.9 DSC) and none
# that it helped (the next, support 0.49, gained 5.5). On four sets it was not chosen on (held-out error
# processes, error sizes in voxels, the CT at 0.7 mm, a fresh draw) it made no case worse than its input, and
# one fewer so
CHANGE_SUPPORT = 0.4
# where only the thick changes' fraction (GATE_FRACTION) opens the gate, the prior's changes within this
# distance of a thick change are applied with it (the error's thin rim), not its reshaping of the rest of
# the boundary: a leak or a slab says nothing about the boundary far from it (benchmarks/near_gate.py,
# benchmarks/keep_or_refine.py; README "A thick error opens the gate around itself")
NEAR_MM = 3.0


def thick_radius_mm(working_spacing_mm: Optional[float]) -> float:
    """The radius (mm) of the ball a change must hold to count as thick: ``THICK_RADIUS_MM``, or one voxel
    of the prior's working grid where that is coarser. A prior that saw a structure on 5 mm voxels (a liver
    in the general prior's cube) is off by up to about that much all over its surface, which on a 0.7 mm
    grid is a change several voxels thick: its own reconstruction error, not an annotation's error
    (benchmarks/full_resolution_harm.py; 1 mm, the calibration's, is the adrenal prior's voxel)."""
    if working_spacing_mm is None:
        return THICK_RADIUS_MM
    return max(THICK_RADIUS_MM, float(working_spacing_mm))


def thick_changes(annotation: np.ndarray, refined: np.ndarray, spacing: Sequence[float],
                  radius_mm: float = THICK_RADIUS_MM) -> np.ndarray:
    """The part of ``annotation ^ refined`` (bool, [k, j, i]) that is thick: the morphological opening
    of the difference by a ball of ``radius_mm`` (at least one voxel each way, and at least
    ``THICK_RADIUS_MM``). A blob, leak, hole, slab or missing part is thick; a prior's reconstruction
    error on a correct boundary is a thin shell and is not."""
    ann, ref = np.asarray(annotation) > 0, np.asarray(refined) > 0
    out = np.zeros(ann.shape, bool)
    diff = ann ^ ref
    if not diff.any():
        return out
    box = bounding_box(diff, diff, pad=3)
    # never a ball smaller than the calibration's (1 mm on its 1 mm grid): rounded to the voxel, 1 mm on a
    # 0.7 mm grid was a ball of 0.7 mm, and a clean gland's own reconstruction error counted as thick
    out[box] = ellipsoid_morphology.opening(diff[box], ellipsoid_morphology.reach(spacing, radius_mm, THICK_RADIUS_MM))
    return out


@dataclass(frozen=True)
class PaintedSlices:
    """An annotation painted on thick slices and resampled to a finer grid (a staircase)."""

    axis: int  # array axis of the slices: 0 = k, 1 = j, 2 = i
    run: float  # mean number of identical consecutive slices
    thickness_mm: float  # run x the grid's spacing along ``axis``: the painted slices' thickness


def painted_slices(annotation: np.ndarray, spacing: Sequence[float],
                   min_run: float = SLICE_RUN) -> Optional[PaintedSlices]:
    """The axis along which ``annotation`` (bool, [k, j, i], ``spacing`` (i, j, k) mm) repeats each
    slice ``min_run`` times or more on average, or None. A mask painted on 5 mm slices and brought to a
    1 mm grid repeats every slice about 5 times; a smooth shape on its own grid almost never repeats
    one, and a prism (one run) or a structure of few slices is not counted. Nor is a mask that repeats
    its slices along every axis it spans: that is a mask made on a coarser grid and resampled to this
    one (an automatic segmentation computed at 3 mm on a 0.7 mm CT), not painted slice by slice; its
    steps are under half a coarse voxel everywhere, and a prior is no surer of its surface than they are
    (benchmarks/full_resolution_harm.py)."""
    ann = np.asarray(annotation) > 0
    if not ann.any():
        return None
    box = bounding_box(ann, ann, pad=0)
    ann = ann[box]
    found = []
    for axis in range(3):
        s = np.moveaxis(ann, axis, 0).reshape(ann.shape[axis], -1)
        if s.shape[0] < SLICE_RUN_MIN_SLICES:
            continue
        runs = 1 + int(np.count_nonzero(np.any(s[1:] != s[:-1], axis=1)))
        run = s.shape[0] / runs
        found.append(PaintedSlices(axis, run, run * float(spacing[2 - axis])) if runs >= 3 and run >= min_run
                     else None)
    painted = [f for f in found if f is not None]
    if not painted or (len(found) > 1 and len(painted) == len(found)):
        return None
    return max(painted, key=lambda f: f.run)


def near_thick(annotation: np.ndarray, refined: np.ndarray, thick: np.ndarray, spacing: Sequence[float],
               near_mm: float = NEAR_MM) -> np.ndarray:
    """The part of ``annotation ^ refined`` (bool, [k, j, i]) within ``near_mm`` (at least one voxel
    each way) of a ``thick`` change: a thick error with the thin rim the opening left of it."""
    diff = (np.asarray(annotation) > 0) ^ (np.asarray(refined) > 0)
    # the dilation reads only the thick change's box grown by its reach
    return ellipsoid_morphology.dilation(thick, ellipsoid_morphology.reach(spacing, near_mm)) & diff


def large_change(annotation: np.ndarray, refined: np.ndarray, gate_change: float = GATE_CHANGE) -> bool:
    """Whether ``refined`` changes more than ``gate_change`` of ``annotation`` (1 - Dice; bool or 0/1 arrays,
    [k, j, i]): the size at which the ``gated`` policy applies every change."""
    return 1.0 - _dice(np.asarray(annotation) > 0, np.asarray(refined) > 0) > gate_change


def apply_changes(annotation: np.ndarray, refined: np.ndarray, spacing: Sequence[float], policy: str = CHANGE_ALL,
                  radius_mm: float = THICK_RADIUS_MM, gate_fraction: float = GATE_FRACTION,
                  gate_change: float = GATE_CHANGE, painted: Optional[bool] = None,
                  supported: bool = False, near_mm: Optional[float] = NEAR_MM) -> np.ndarray:
    """The output mask (bool, [k, j, i]) when only the changes ``policy`` admits are applied to
    ``annotation``: ``all``, ``thick`` (``thick_changes``) or ``gated``: all when 1 - Dice(annotation,
    refined) exceeds ``gate_change`` (a thin but large error), the annotation was painted on thick
    slices (``painted_slices``: its staircase is a thin error everywhere; ``painted``, when given, is
    that finding already made) or the image supports the change (``supported``: ``refine``'s finding,
    ``OPEN_SUPPORT``); the thick ones and every change within ``near_mm`` of them (``near_thick``; all,
    with ``near_mm`` None) when the thick changes exceed ``gate_fraction`` of the annotation's volume;
    else the thick ones only. An empty ``refined`` is applied by ``all`` only: the others return the
    annotation. Keeping a segment outside the prior's domain is ``refine``'s part of both non-``all``
    policies."""
    if policy not in CHANGE_POLICIES:
        raise ValueError(f"change policy must be one of {', '.join(CHANGE_POLICIES)}, got {policy!r}")
    ann, ref = np.asarray(annotation) > 0, np.asarray(refined) > 0
    if policy != CHANGE_ALL and not ref.any():
        return ann.copy()  # an empty proposal would delete the structure whole (KEPT_NO_SHAPE)
    if policy == CHANGE_ALL or (policy == CHANGE_GATED and supported):
        return ref.copy()  # the image's support opens the gate before the thick part is measured
    thick = thick_changes(ann, ref, spacing, radius_mm)
    if policy == CHANGE_GATED:
        if large_change(ann, ref, gate_change) or (
                painted if painted is not None else painted_slices(ann, spacing) is not None):
            return ref.copy()
        if thick.sum() > gate_fraction * max(int(ann.sum()), 1):
            return ref.copy() if near_mm is None else ann ^ near_thick(ann, ref, thick, spacing, near_mm)
    return ann ^ thick


def default_output(annotation: np.ndarray, refined: np.ndarray, spacing: Sequence[float], domain: Optional[dict],
                   policy: str = DEFAULT_CHANGE_POLICY) -> np.ndarray:
    """What ``refine`` returns with keep threshold 0 and ``policy``, given the prior's every-change mask
    ``refined`` (bool, [k, j, i], ``spacing`` (i, j, k) mm): the annotation for a segment outside the
    prior's ``domain`` (not refined at all, unless the policy is ``all``), else ``apply_changes``. For
    benchmarks that refine once with every change and score the default from the same masks."""
    from .domain import check, shape_facts

    ann = np.asarray(annotation) > 0
    if policy != CHANGE_ALL and check(shape_facts(ann, spacing), domain):
        return ann.copy()
    return apply_changes(ann, refined, spacing, policy)


def decide(conf: Optional[float], sig: Signals, keep_threshold: float) -> str:
    """The action: ``REFINED`` when ``conf >= keep_threshold`` (or no confidence could be measured:
    one view); else the annotation is kept, as ``KEPT_PLAUSIBLE`` when the prior found little to
    correct, ``KEPT_UNCERTAIN`` when it changed much but its views disagree."""
    if conf is None or conf >= keep_threshold:
        return REFINED
    return KEPT_UNCERTAIN if sig.deep_change > 0.05 and sig.disagreement > 0.1 else KEPT_PLAUSIBLE
