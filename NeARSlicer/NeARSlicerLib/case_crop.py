"""A study case held as the box of its volume that the study reads, not as the whole volume.

A study of full-resolution CTs held every case's whole mask and image, and then its whole result:
six cases of 512 x 512 x 250 voxels peaked at 4.4 GB (1.3 GB as boxes; ``benchmarks/study_memory.py``),
so a study of a few dozen such CTs needed tens of GB. ``study.load_cases`` keeps each case as the box
that the study's training cube and its final refinement read (``needed_box``: ``geometry.refine_box``
at the prior's scale, with the image checks' reach), with the whole scan's facts that a box alone would
misread (``modality.ScanFacts``: the modality its intensities show, its darkest value). Every result
on the box equals the whole volume's; outputs are placed back on the whole volume's grid
(``CropSource.place``). Arrays ``[k, j, i]``; sizes in mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np

from .geometry import Grid, refine_box
from .modality import ScanFacts
from .refine import RefineOptions, context_voxels, working_scale


@dataclass(frozen=True)
class CropSource:
    """Where a case's box lies: the whole volume's ``grid``, the box's first voxel ``lo`` and its
    ``shape`` ([k, j, i]), the whole scan's facts (None without an image) and the label the mask was
    read with (to read the case again with a larger box)."""

    grid: Grid
    lo: tuple[int, int, int]
    shape: tuple[int, int, int]
    scan: Optional[ScanFacts]
    label: Optional[str] = None

    @property
    def slices(self) -> tuple[slice, ...]:
        return tuple(slice(a, a + n) for a, n in zip(self.lo, self.shape))

    def place(self, box_mask: np.ndarray) -> np.ndarray:
        """A mask of the box on the whole volume (uint8, zero outside the box)."""
        whole = np.zeros(self.grid.shape, np.uint8)
        whole[self.slices] = box_mask
        return whole

    def holds(self, lo: Sequence[int], hi: Sequence[int]) -> bool:
        """Whether the box holds ``[lo, hi)`` (box indices, possibly beyond it), where the volume does."""
        end = np.asarray(self.lo) + np.asarray(self.shape)
        low_ok = (np.asarray(lo) >= 0) | (np.asarray(self.lo) == 0)
        high_ok = (np.asarray(hi) <= np.asarray(self.shape)) | (end == np.asarray(self.grid.shape))
        return bool(np.all(low_ok & high_ok))


def scan_facts(case) -> Optional[ScanFacts]:
    """The whole scan's facts of a case whose image is a crop of its scan: its own ``scan`` (a box cut by
    the caller, e.g. Slicer's crop around a segment) or its ``source``'s (``crop``); None when the case
    is its whole scan. ``case``: any object with a study case's fields."""
    own = getattr(case, "scan", None)
    if own is not None:
        return own
    source = getattr(case, "source", None)
    return None if source is None else source.scan


def needed_box(mask: np.ndarray, grid: Grid, meta: dict, margin_mm: float, spacing_mm: float, refines: bool,
               clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` box of ``grid`` ([k, j, i]) that a study reads for ``mask`` with a prior whose card is
    ``meta``: its training cube (``to_working`` at ``margin_mm`` and ``spacing_mm`` with the prior's field
    of view) and, when ``refines`` (the denoise recipe refines every case), ``refine_mask``'s box at the
    prior's scale. ``clip=False``: as needed, possibly beyond the array."""
    fov = float(meta.get("fov_mm", 64.0))
    lo, hi = refine_box(mask, grid, 0, clip=clip, margin_mm=margin_mm, spacing_mm=spacing_mm, min_fov_mm=fov)
    if refines:
        scale = working_scale(meta, RefineOptions(margin_mm=margin_mm, spacing_mm=spacing_mm))
        lo2, hi2 = refine_box(mask, grid, context_voxels(grid.spacing), clip=clip, **scale)
        lo, hi = np.minimum(lo, lo2), np.maximum(hi, hi2)
    return lo, hi


def crop(mask: np.ndarray, grid: Grid, image: Optional[np.ndarray], lo: Sequence[int], hi: Sequence[int],
         label: Optional[str] = None) -> tuple[np.ndarray, Grid, Optional[np.ndarray], CropSource]:
    """(mask, grid, image) of the box ``[lo, hi)`` of a whole volume, as copies (the whole arrays can be
    freed), and its ``CropSource``."""
    lo = tuple(int(v) for v in lo)
    shape = tuple(int(h) - a for a, h in zip(lo, hi))
    source = CropSource(grid, lo, shape, None if image is None else ScanFacts.of(image), label)
    box = source.slices
    return (np.ascontiguousarray(mask[box]), grid.sub_grid(lo, hi),
            None if image is None else np.ascontiguousarray(image[box]), source)


__all__ = ["CropSource", "needed_box", "crop"]
