"""A mask stored as the box that holds its voxels: the many small segments of one large volume (a
TotalSegmentator label map of a full-resolution CT: 117 structures, 65 million voxels) held in the
memory of a few, where a full-size array per segment needed tens of GB.

Arrays are ``[k, j, i]``; ``lo`` is the box's first voxel on the volume.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

import numpy as np


@dataclass(frozen=True)
class BoxedMask:
    """A 0/1 mask of a volume of ``shape``: ``array`` (bool) is its box starting at ``lo``, and
    every voxel outside the box is 0."""

    shape: Tuple[int, int, int]
    lo: Tuple[int, int, int]
    array: np.ndarray

    @classmethod
    def of(cls, mask: np.ndarray) -> "BoxedMask":
        """The box of a full-size mask's nonzero voxels (an empty mask: an empty box)."""
        from .geometry import occupied_box

        m = np.asarray(mask) != 0
        if not m.any():
            return cls.empty(m.shape)
        lo, hi = occupied_box(m)
        return cls(tuple(m.shape), tuple(int(a) for a in lo), m[tuple(slice(a, b) for a, b in zip(lo, hi))].copy())

    @classmethod
    def empty(cls, shape) -> "BoxedMask":
        return cls(tuple(int(n) for n in shape), (0, 0, 0), np.zeros((0, 0, 0), bool))

    @property
    def box(self) -> Tuple[slice, slice, slice]:
        """The box's slices of the volume."""
        return tuple(slice(a, a + n) for a, n in zip(self.lo, self.array.shape))

    def any(self) -> bool:
        return bool(self.array.any())

    def extent(self) -> str:
        """Slicer's ``SegmentN_Extent``: 'imin imax jmin jmax kmin kmax' of the voxels set."""
        if not self.array.any():
            return "0 -1 0 -1 0 -1"
        from .geometry import occupied_box

        lo, hi = occupied_box(self.array)
        (k0, j0, i0), (k1, j1, i1) = np.add(lo, self.lo), np.add(hi, self.lo) - 1
        return f"{i0} {i1} {j0} {j1} {k0} {k1}"

    def full(self) -> np.ndarray:
        """The mask on the whole volume (uint8 0/1)."""
        out = np.zeros(self.shape, np.uint8)
        out[self.box] = self.array
        return out


def label_boxes(labels: np.ndarray) -> Dict[int, BoxedMask]:
    """Every nonzero value of a label-map array as a ``BoxedMask`` (one pass for the boxes)."""
    from scipy import ndimage

    labels = np.asarray(labels)
    shape = tuple(labels.shape)
    values = [int(v) for v in np.unique(labels) if v != 0]
    out: Dict[int, BoxedMask] = {}
    if values and values[0] > 0 and labels.dtype.kind in "iu" and values[-1] <= 65535:
        for value, box in enumerate(ndimage.find_objects(labels), start=1):  # None: a value not present
            if box is not None:
                out[value] = BoxedMask(shape, tuple(s.start for s in box), labels[box] == value)
        return out
    for value in values:  # negative or float values, or very large ones: one pass per value
        out[value] = BoxedMask.of(labels == value)
    return out
