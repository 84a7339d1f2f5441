"""Shape-based interpolation of a mask painted on thick slices and resampled to a finer grid.

A segment painted on 5 mm slices and brought to a 1 mm grid by nearest-neighbour resampling (what
Slicer does when a segmentation's geometry is changed) repeats each painted slice about five times: a
staircase. Each run of identical slices is one painted slice, and what the annotator painted there
describes the structure at the run's centre. Between two run centres the structure is rebuilt by
interpolating the two sections' signed distance maps linearly (shape-based interpolation, Raya and
Udupa 1990) instead of repeating them. Arrays are [k, j, i]; spacing is (i, j, k) in mm.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np
from scipy import ndimage as ndi


def _signed_distance(section: np.ndarray, spacing: Sequence[float]) -> np.ndarray:
    """Signed distance (mm) of a 2D section: negative inside, positive outside."""
    return (ndi.distance_transform_edt(~section, sampling=spacing)
            - ndi.distance_transform_edt(section, sampling=spacing))


def interpolate_painted_slices(mask: np.ndarray, spacing: Sequence[float], axis: int) -> np.ndarray:
    """The staircase of ``mask`` (bool, [k, j, i], ``spacing`` (i, j, k) mm) along array ``axis``
    replaced by interpolated sections (bool, same shape).

    Runs of identical slices are the painted slices; each is a sample at its run's centre. An empty
    run between painted ones is a slice the annotator missed and is not a sample. Beyond the first
    and last painted centres the painted sections are kept as they are, so the structure's extent
    along ``axis`` is the annotator's.
    """
    full = np.moveaxis(np.asarray(mask) > 0, axis, 0)
    result = full.copy()
    n = full.shape[0]
    if n < 2 or not full.any():
        return np.moveaxis(result, 0, axis)
    # an interpolated section lies inside the union of its two painted sections, so the work is done on
    # their in-plane bounding box (2 pixels of background around it for the distances outside)
    rows, cols = np.flatnonzero(full.any(axis=(0, 2))), np.flatnonzero(full.any(axis=(0, 1)))
    box = (slice(None), slice(max(rows[0] - 2, 0), rows[-1] + 3), slice(max(cols[0] - 2, 0), cols[-1] + 3))
    m, out = full[box], result[box]
    plane = [float(spacing[2 - a]) for a in range(3) if a != axis]
    starts = np.r_[0, np.flatnonzero(np.any(m[1:] != m[:-1], axis=(1, 2))) + 1]
    ends = np.r_[starts[1:], n]
    painted = [i for i, s in enumerate(starts) if m[s].any()]
    centres = [(starts[i] + ends[i] - 1) / 2.0 for i in painted]
    if len(painted) < 2:
        return np.moveaxis(result, 0, axis)
    sdf = {i: _signed_distance(m[starts[i]], plane) for i in painted}
    lo_slice, hi_slice = int(np.ceil(centres[0])), int(np.floor(centres[-1]))
    for z in range(lo_slice, hi_slice + 1):
        b = int(np.searchsorted(centres, z, side="left"))
        if centres[b] == z:  # a run's own centre: its painted section, as it already is
            continue
        a = b - 1
        w = (z - centres[a]) / (centres[b] - centres[a])
        out[z] = (1.0 - w) * sdf[painted[a]] + w * sdf[painted[b]] < 0
    # slices outside the first and last centres keep their painted sections (``out`` is a view of ``result``)
    return np.moveaxis(result, 0, axis)

