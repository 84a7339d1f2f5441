"""A large mask's boundary, read from a sample of tiles and moved by a ball, at a cost set by its surface.

The image's margin fit (``image_margin``) judges an annotation from distance transforms and filters of its
whole box. On a full-resolution CT a large organ's box holds tens of millions of voxels (a 242 mm organ at
0.7 mm: 44 M; one distance transform of it takes 13 s on this CPU), yet every reading the fit makes lies
within a few mm of the boundary. Here:

* ``boundary_tiles`` picks cells of the box that the boundary crosses (a fixed-seed sample drawn in equal
  numbers from the cells facing each direction, each weighted by the cells it stands for), each read
  through a window grown by a halo, so that the distances and filters at the cell's own voxels are those
  of the whole box (distances up to the halo exactly);
* ``near`` gives the voxels within a radius (mm, Euclidean) of a set of voxels by stamping the ball's
  offsets on them: the same voxels as thresholding a distance transform, for the cost of the set times
  the ball.

Arrays are ``[k, j, i]``; spacings here are per array axis ``(k, j, i)`` mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

TILE_MM = 24.0  # a cell's side: about 34 voxels of a 0.7 mm grid
SAMPLE_VOXELS = 3_000_000  # the windows' voxels in all: about 1.5 s of the margin fit on this CPU
SEED = 0  # the cells sampled are the same on every run
_FACE = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class Tile:
    """One sampled cell: ``window`` slices the box, ``core`` slices the window down to the cell; ``weight``:
    the crossed cells it stands for (its stratum's cells over those drawn from it), so that weighted means
    over the sample estimate the means over every crossed cell."""

    window: tuple
    core: tuple
    weight: float = 1.0


def boundary_tiles(mask: np.ndarray, sp_kji: Sequence[float], halo: Sequence[int],
                   budget_voxels: Optional[int] = None, tile_mm: float = TILE_MM,
                   by_side: bool = True) -> list[Tile]:
    """Cells (``tile_mm`` a side) of ``mask``'s array that hold voxels both in and out of it, as many as
    ``budget_voxels`` (default ``SAMPLE_VOXELS``) of windows (each cell grown by ``halo`` voxels per axis,
    clipped to the array) allow: all of them when they fit, else a fixed-seed sample of them (``SEED``).
    ``by_side``: the sample is drawn in equal numbers from the cells facing each of the six directions (by
    the outward normal of the cells' mask shares), so that every side of the boundary is read from as
    many cells as any other (a side judged from a few cells misjudged its margin by a distance level)."""
    budget_voxels = SAMPLE_VOXELS if budget_voxels is None else budget_voxels
    m = np.asarray(mask, bool)
    cell = np.maximum(1, np.round(tile_mm / np.asarray(sp_kji, float))).astype(int)
    counts = -(-np.asarray(m.shape) // cell)  # cells per axis, the last one on each axis cut by the array
    inside = tuple(slice(0, n) for n in m.shape)

    def blocks(fill: bool) -> np.ndarray:  # the cells' voxels; a cut cell filled up beyond the array
        padded = np.full(tuple(counts * cell), fill)
        padded[inside] = m
        return padded.reshape(counts[0], cell[0], counts[1], cell[1], counts[2], cell[2])

    cells = blocks(False)
    crossed = cells.any(axis=(1, 3, 5)) & ~blocks(True).all(axis=(1, 3, 5))
    picked = np.argwhere(crossed)
    halo = np.asarray(halo, int)
    per_tile = int(np.prod(cell + 2 * halo))
    n = max(1, budget_voxels // per_tile)
    weights = np.ones(len(picked))
    if len(picked) > n:
        rng = np.random.default_rng(SEED)
        if by_side:
            share = cells.mean(axis=(1, 3, 5), dtype=np.float32)  # each cell's share of the mask
            outward = -np.stack([np.gradient(share, axis=a) if share.shape[a] > 1 else np.zeros_like(share)
                                 for a in range(3)])[(slice(None), *picked.T)]
            axis = np.argmax(np.abs(outward), axis=0)
            side = axis * 2 + (np.take_along_axis(outward, axis[None], axis=0)[0] > 0)
            chosen = np.sort(_stratified(side, n, rng))
            drawn = np.bincount(side[chosen], minlength=6)
            weights = (np.bincount(side, minlength=6) / np.maximum(drawn, 1))[side[chosen]]
        else:
            chosen = np.sort(rng.choice(len(picked), n, replace=False))
            weights = np.full(n, len(picked) / n)
        picked = picked[chosen]
    tiles = []
    for index, weight in zip(picked, weights):
        lo = index * cell
        hi = np.minimum(lo + cell, m.shape)
        w_lo, w_hi = np.maximum(lo - halo, 0), np.minimum(hi + halo, m.shape)
        tiles.append(Tile(tuple(slice(int(a), int(b)) for a, b in zip(w_lo, w_hi)),
                          tuple(slice(int(a), int(b)) for a, b in zip(lo - w_lo, hi - w_lo)), float(weight)))
    return tiles


def _stratified(group: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """``n`` indices into ``group`` (labels), as equal a number from each label as its members allow."""
    members = [rng.permutation(np.flatnonzero(group == g)) for g in np.unique(group)]
    take = np.zeros(len(members), int)
    while take.sum() < n:  # one more from each label that has one left, smallest counts first
        open_ = [g for g in range(len(members)) if take[g] < len(members[g])]
        for g in sorted(open_, key=lambda g: take[g])[:n - int(take.sum())]:
            take[g] += 1
    return np.concatenate([m[:t] for m, t in zip(members, take)])


def ball_offsets(sp_kji: Sequence[float], radius_mm: float) -> np.ndarray:
    """The voxel offsets ``d`` (n x 3, k j i) with |d * spacing| <= ``radius_mm`` (+1e-6, as the fit compares
    distances)."""
    sp = np.asarray(sp_kji, float)
    r = np.floor((radius_mm + 1e-6) / sp).astype(int)
    grid = np.stack(np.meshgrid(*[np.arange(-n, n + 1) for n in r], indexing="ij"), -1).reshape(-1, 3)
    return grid[((grid * sp) ** 2).sum(axis=1) <= (radius_mm + 1e-6) ** 2]


def near(sources: np.ndarray, sp_kji: Sequence[float], radius_mm: float) -> np.ndarray:
    """The voxels within ``radius_mm`` of a voxel of ``sources`` (bool ``[k, j, i]``), centre to centre:
    ``distance_transform_edt(~sources, sampling=sp_kji) <= radius_mm + 1e-6`` on the same array."""
    src = np.asarray(sources, bool)
    offsets = ball_offsets(sp_kji, radius_mm)
    reach = np.abs(offsets).max(axis=0)
    padded = np.zeros(tuple(np.asarray(src.shape) + 2 * reach), bool)
    inner = tuple(slice(int(r), int(r) + n) for r, n in zip(reach, src.shape))
    strides = np.array([padded.shape[1] * padded.shape[2], padded.shape[2], 1])
    at = np.ravel_multi_index(tuple(np.nonzero(src) + reach[:, None]), padded.shape)
    flat = padded.reshape(-1)
    for step in offsets @ strides:
        flat[at + step] = True
    return padded[inner].copy()


def inner_layer(mask: np.ndarray) -> np.ndarray:
    """The voxels of ``mask`` with a face neighbour in the array outside it: the nearest voxel of ``mask``
    to any voxel outside it is one of these."""
    m = np.asarray(mask, bool)
    return m & ~ndimage.binary_erosion(m, _FACE, border_value=1)


def outer_layer(mask: np.ndarray) -> np.ndarray:
    """The voxels outside ``mask`` with a face neighbour in it: the nearest outside voxel to any voxel of
    ``mask`` is one of these."""
    m = np.asarray(mask, bool)
    return ~m & ndimage.binary_dilation(m, _FACE)
