"""Voxel grids and the move between a source grid and the isotropic working cube NeAR runs on.

Arrays are ``[k, j, i]``; spacing/origin are ``(i, j, k)`` in mm (LPS); direction is SimpleITK's
row-major flat 9-tuple whose columns are the unit vectors of the i, j, k axes.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

import numpy as np
from scipy import ndimage

if TYPE_CHECKING:  # imported where used: the working-cube path (fit, decode) runs without SimpleITK
    import SimpleITK as sitk

from .errors import InputError

__all__ = ["Grid", "WorkingCase", "to_working", "to_source", "check_volume_shape", "on_lattice", "grid_difference"]


@dataclass(frozen=True)
class Grid:
    """Geometry of a voxel array: ``shape`` is ``(nk, nj, ni)``; the rest is in ITK order/units."""

    shape: Tuple[int, int, int]
    spacing: Tuple[float, float, float]
    origin: Tuple[float, float, float]
    direction: Tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)

    def __post_init__(self) -> None:
        # Normalise to plain tuples so grids hash, compare and print the same whatever came in.
        object.__setattr__(self, "shape", tuple(int(n) for n in self.shape))
        object.__setattr__(self, "spacing", tuple(float(s) for s in self.spacing))
        object.__setattr__(self, "origin", tuple(float(o) for o in self.origin))
        object.__setattr__(self, "direction", tuple(float(d) for d in np.ravel(self.direction)))
        if len(self.shape) != 3 or len(self.spacing) != 3 or len(self.origin) != 3:
            raise InputError(f"a grid needs 3 axes, got shape {self.shape} spacing {self.spacing}")
        if len(self.direction) != 9:
            raise InputError(f"direction must have 9 values, got {len(self.direction)}")
        if any(n < 1 for n in self.shape):
            raise InputError(f"grid shape must be positive, got {self.shape}")
        if not all(math.isfinite(s) and s > 0 for s in self.spacing):
            raise InputError(f"spacing must be positive and finite, got {self.spacing}")
        if not all(math.isfinite(v) for v in self.origin + self.direction):
            raise InputError("grid origin/direction contain NaN or Inf")
        if abs(np.linalg.det(self.direction_matrix())) < 1e-6:
            raise InputError(f"direction matrix is singular: {self.direction}")

    # --- conversions -------------------------------------------------------------------------
    @classmethod
    def from_sitk(cls, img: sitk.Image) -> "Grid":
        """Grid of a 3D SimpleITK image (its size is (ni, nj, nk); ours is reversed)."""
        if img.GetDimension() != 3:
            raise InputError(f"expected a 3D image, got {img.GetDimension()}D")
        return cls(tuple(reversed(img.GetSize())), img.GetSpacing(), img.GetOrigin(), img.GetDirection())

    def to_sitk(self, array: np.ndarray) -> sitk.Image:
        """SimpleITK image of ``array`` ([k, j, i], same shape as the grid) with this geometry."""
        import SimpleITK as sitk

        array = np.asarray(array)
        if array.shape != self.shape:
            raise InputError(f"array shape {array.shape} does not match grid shape {self.shape}")
        if array.dtype == bool:
            array = array.astype(np.uint8)
        img = sitk.GetImageFromArray(np.ascontiguousarray(array))
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img

    def direction_matrix(self) -> np.ndarray:
        """3x3 direction matrix; column c is the unit vector of axis c (i, j, k)."""
        return np.asarray(self.direction, dtype=float).reshape(3, 3)

    def patient_direction(self, side: str) -> str:
        """The patient direction ("left", "posterior", "superior"...; LPS) an array side such as "+k"
        or "-i" faces on this grid: the dominant component of that axis' direction (oblique grids too)."""
        axis = {"i": 0, "j": 1, "k": 2}[side[1]]
        vector = self.direction_matrix()[:, axis] * (1.0 if side[0] == "+" else -1.0)
        dominant = int(np.argmax(np.abs(vector)))
        negative, positive = (("right", "left"), ("anterior", "posterior"), ("inferior", "superior"))[dominant]
        return positive if vector[dominant] > 0 else negative

    def ijk_to_lps(self) -> np.ndarray:
        """4x4 affine mapping homogeneous (i, j, k, 1) voxel indices to LPS mm."""
        affine = np.eye(4)
        affine[:3, :3] = self.direction_matrix() * np.asarray(self.spacing)[None, :]
        affine[:3, 3] = self.origin
        return affine

    @classmethod
    def from_ijk_to_lps(cls, shape: Sequence[int], affine: np.ndarray) -> "Grid":
        """Grid from a ``[k, j, i]`` shape and a 4x4 (i, j, k) -> LPS affine."""
        affine = np.asarray(affine, dtype=float)
        if affine.shape != (4, 4):
            raise InputError(f"affine must be 4x4, got {affine.shape}")
        columns = affine[:3, :3]
        spacing = np.linalg.norm(columns, axis=0)
        if np.any(spacing <= 0):
            raise InputError("affine has a zero-length axis")
        direction = columns / spacing[None, :]
        return cls(tuple(shape), tuple(spacing), tuple(affine[:3, 3]), tuple(direction.ravel()))

    # --- comparisons / helpers ---------------------------------------------------------------
    def same_as(self, other: "Grid", tol: float = 1e-4) -> bool:
        """True when shape is equal and spacing, origin and direction agree within ``tol``."""
        return (
            self.shape == other.shape
            and np.allclose(self.spacing, other.spacing, rtol=0, atol=tol)
            and np.allclose(self.origin, other.origin, rtol=0, atol=tol)
            and np.allclose(self.direction, other.direction, rtol=0, atol=tol)
        )

    def index_to_lps(self, ijk: np.ndarray) -> np.ndarray:
        """LPS mm of continuous indices ``ijk`` (..., 3) given in (i, j, k) order."""
        ijk = np.asarray(ijk, dtype=float)
        a = self.ijk_to_lps()
        return ijk @ a[:3, :3].T + a[:3, 3]

    def lps_to_index(self, lps: np.ndarray) -> np.ndarray:
        """Continuous (i, j, k) indices of LPS points (..., 3)."""
        a = self.ijk_to_lps()
        return (np.asarray(lps, dtype=float) - a[:3, 3]) @ np.linalg.inv(a[:3, :3]).T

    def corners_lps(self) -> np.ndarray:
        """LPS mm of the 8 outer corners of the grid (voxel edges, not centres), shape (8, 3)."""
        ni, nj, nk = self.shape[2], self.shape[1], self.shape[0]
        c = np.array([[i, j, k] for i in (-0.5, ni - 0.5) for j in (-0.5, nj - 0.5) for k in (-0.5, nk - 0.5)])
        return self.index_to_lps(c)

    def sub_grid(self, lo_kji: Sequence[int], hi_kji: Sequence[int]) -> "Grid":
        """Grid of the array slice ``[lo_k:hi_k, lo_j:hi_j, lo_i:hi_i]``."""
        lo_ijk = np.asarray(lo_kji[::-1], dtype=float)
        origin = self.index_to_lps(lo_ijk)
        shape = tuple(int(h) - int(lo) for lo, h in zip(lo_kji, hi_kji))
        return Grid(shape, self.spacing, tuple(origin), self.direction)


@dataclass
class WorkingCase:
    """A mask (and image) resampled onto the isotropic working cube.

    ``mask``: float32 ``[k, j, i]`` soft occupancy in [0, 1]; ``image``: float32 HU or None;
    ``grid``: the working grid; ``source_grid``: the grid the mask came from;
    ``touches_border``: the source mask has foreground on a face of its array (it may be cut off).
    """

    mask: np.ndarray
    image: Optional[np.ndarray]
    grid: Grid
    source_grid: Grid
    touches_border: bool


def on_lattice(array: np.ndarray, grid: Grid, target: Grid, tol: float = 1e-3) -> Optional[np.ndarray]:
    """``array`` (on ``grid``) read on ``target`` without interpolation, when every voxel centre of
    ``target`` is a voxel centre of ``grid``: the same lattice stored flipped, with its axes in another
    order, or cropped. None otherwise (another spacing, a shift by part of a voxel, a rotation) or when
    ``target`` reaches outside ``grid``. ``tol`` in voxels."""
    index = np.linalg.inv(grid.ijk_to_lps()) @ target.ijk_to_lps()  # target (i, j, k, 1) -> grid (i, j, k)
    linear, offset = index[:3, :3], index[:3, 3]
    steps, shift = np.round(linear).astype(int), np.round(offset).astype(int)
    # each target axis must step along one grid axis by one voxel, forwards or backwards (a signed
    # permutation), from a whole-voxel offset
    if (not np.allclose(linear, steps, atol=tol) or not np.allclose(offset, shift, atol=tol)
            or not np.array_equal(np.abs(steps) @ np.abs(steps).T, np.eye(3, dtype=int))):
        return None
    # slices and transposes of the array (views: no index arrays the size of a whole CT)
    view, order = np.asarray(array).transpose(2, 1, 0), []  # indexed [i, j, k] of the grid
    cuts = [slice(None)] * 3
    for c, n in enumerate(target.shape[::-1]):  # target axis c (i, j, k) runs along grid axis r
        r = int(np.argmax(np.abs(steps[:, c])))
        first, last = int(shift[r]), int(shift[r] + steps[r, c] * (n - 1))
        if min(first, last) < 0 or max(first, last) >= view.shape[r]:
            return None  # the target reaches outside the grid
        cuts[r] = slice(first, last + 1) if steps[r, c] > 0 else slice(first, last - 1 if last > 0 else None, -1)
        order.append(r)
    return np.ascontiguousarray(view[tuple(cuts)].transpose(order).transpose(2, 1, 0))


def grid_difference(a: Grid, b: Grid, tol: float = 1e-4) -> str:
    """What differs between two grids, in words (shape, spacing, origin, direction), for messages."""
    parts = []
    if a.shape != b.shape:
        parts.append(f"shape {a.shape[::-1]} vs {b.shape[::-1]} (i, j, k)")
    if not np.allclose(a.spacing, b.spacing, rtol=0, atol=tol):
        parts.append(f"spacing {tuple(round(v, 4) for v in a.spacing)} vs {tuple(round(v, 4) for v in b.spacing)} mm")
    if not np.allclose(a.origin, b.origin, rtol=0, atol=tol):
        parts.append(f"origin {tuple(round(v, 2) for v in a.origin)} vs {tuple(round(v, 2) for v in b.origin)} mm")
    if not np.allclose(a.direction, b.direction, rtol=0, atol=tol):
        parts.append(f"direction {tuple(round(v, 3) for v in a.direction)} vs {tuple(round(v, 3) for v in b.direction)}")
    return ", ".join(parts) or "nothing"


def check_volume_shape(array: np.ndarray, what: str = "mask") -> None:
    """Raise InputError unless ``array`` is a 3D volume with every dimension > 1."""
    if array.ndim == 2 or (array.ndim == 3 and min(array.shape) == 1):
        raise InputError(f"2D input: {what} shape {array.shape} is a single slice; NeAR needs a 3D volume")
    if array.ndim != 3:
        raise InputError(f"expected a 3D {what}, got {array.ndim} dimensions (shape {array.shape})")


def _covering_box(grid: Grid, target: Grid, pad: int) -> Optional[Tuple[np.ndarray, np.ndarray]]:
    """``[lo, hi)`` index box ([k, j, i]) of ``grid`` covering ``target``'s extent plus ``pad`` voxels.

    Lets us resample between a huge CT and a small cube without copying/visiting the whole CT.
    Returns None when the two grids do not overlap.
    """
    ijk = grid.lps_to_index(target.corners_lps())
    lo = np.floor(ijk.min(axis=0)).astype(int) - pad
    hi = np.ceil(ijk.max(axis=0)).astype(int) + pad + 1
    n_ijk = np.asarray(grid.shape[::-1])
    lo = np.clip(lo, 0, n_ijk)
    hi = np.clip(hi, 0, n_ijk)
    if np.any(hi <= lo):
        return None
    return lo[::-1], hi[::-1]


def _resample(array: np.ndarray, grid: Grid, target: Grid, outside: float) -> np.ndarray:
    """Linear resampling of float ``array`` on ``grid`` onto ``target``; ``outside`` beyond it."""
    import SimpleITK as sitk

    box = _covering_box(grid, target, pad=2)
    if box is None:
        return np.full(target.shape, outside, dtype=np.float32)
    lo, hi = box
    crop = array[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32, copy=False)
    src = grid.sub_grid(lo, hi).to_sitk(crop)
    out = sitk.Resample(src, target.to_sitk(np.zeros(target.shape, np.uint8)), sitk.Transform(),
                        sitk.sitkLinear, float(outside), sitk.sitkFloat32)
    return sitk.GetArrayFromImage(out)


def occupied_box(mask: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` index box ([k, j, i]) of the nonzero voxels of a non-empty ``mask``, from its
    projections (no index array of every voxel)."""
    m = np.asarray(mask)
    if m.dtype != bool:
        m = m != 0
    # the k projection over the whole array, the j and i ones from the occupied slabs' projection onto a
    # plane: 3 ms on a 44 M voxel bool box, where three whole-array projections took 34 ms (12 calls a refine)
    k = np.flatnonzero(m.any(axis=(1, 2)))
    plane = m[k[0]:k[-1] + 1].any(axis=0)
    j, i = np.flatnonzero(plane.any(axis=1)), np.flatnonzero(plane.any(axis=0))
    return np.array([k[0], j[0], i[0]]), np.array([k[-1] + 1, j[-1] + 1, i[-1] + 1])


def grown_box(mask: np.ndarray, pad) -> Tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` ([k, j, i]) of the non-empty ``mask``'s occupied box grown by ``pad`` voxels (per
    axis), within the array."""
    lo, hi = occupied_box(mask)
    return np.maximum(lo - pad, 0), np.minimum(hi + pad, mask.shape)


def grown_slices(mask: np.ndarray, pad) -> tuple:
    """``grown_box`` as slices."""
    return tuple(slice(int(a), int(b)) for a, b in zip(*grown_box(mask, pad)))


def distance_outside(mask: np.ndarray, spacing_kji: Sequence[float], reach_mm: float) -> np.ndarray:
    """Euclidean distance (mm) of every voxel to the nearest voxel of ``mask`` (0 on it), as
    ``ndimage.distance_transform_edt(~mask, sampling=spacing_kji)`` gives it up to ``reach_mm``; inf
    beyond the mask's box grown by ``reach_mm``, where every voxel is farther. Computed on that box,
    which a training cube's or a study's small structure leaves much smaller than the array. An empty
    mask gets scipy's own values for an array without a zero (the library's holes read them as before)."""
    m = np.asarray(mask, bool)
    sp = np.asarray(spacing_kji, float)
    if not m.any():
        return ndimage.distance_transform_edt(~m, sampling=sp)
    out = np.full(m.shape, np.inf)
    box = grown_slices(m, np.ceil(float(reach_mm) / sp).astype(int) + 1)
    out[box] = ndimage.distance_transform_edt(~m[box], sampling=sp)
    return out


def distance_inside(mask: np.ndarray, spacing_kji: Sequence[float]) -> np.ndarray:
    """Euclidean distance (mm) of every voxel of ``mask`` to the nearest voxel outside it within the
    array (0 outside the mask), as ``ndimage.distance_transform_edt(mask, sampling=spacing_kji)`` gives
    it; computed on the mask's box grown by a voxel, which holds a nearest outside voxel of each."""
    m = np.asarray(mask, bool)
    out = np.zeros(m.shape)
    if not m.any():
        return out
    box = grown_slices(m, 1)
    out[box] = ndimage.distance_transform_edt(m[box], sampling=np.asarray(spacing_kji, float))
    return out


def cube_size(extent_mm: float, source_spacing: Sequence[float], margin_mm: float, spacing_mm: float,
              min_fov_mm: float, extent_voxels: Optional[float] = None, min_side_voxels: int = 0,
              max_side_voxels: Optional[int] = None) -> Tuple[int, float]:
    """(voxels per side, spacing mm) of the working cube of a structure whose bounding box's longest
    side is ``extent_mm`` (``to_working``'s rules; ``source_spacing`` the input grid's, mm)."""
    if extent_voxels is not None:
        if not extent_voxels > 0:
            raise InputError(f"extent_voxels must be positive, got {extent_voxels}")
        # the finest source voxel bounds the useful detail of a tiny structure
        spacing_mm = max(float(extent_mm) / float(extent_voxels), 0.25 * float(min(source_spacing)))
    side = max(float(min_fov_mm), float(extent_mm) + 2.0 * margin_mm, min_side_voxels * spacing_mm)
    n = int(math.ceil(side / spacing_mm - 1e-9))
    n += n % 2
    if max_side_voxels is not None and n > max_side_voxels:
        n = int(max_side_voxels) - int(max_side_voxels) % 2
        spacing_mm = side / n
    return n, float(spacing_mm)


def refine_box(mask: np.ndarray, grid: Grid, context_voxels: int, clip: bool = True,
               **scale) -> Tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` index box ([k, j, i]) of ``grid`` that holds everything refining ``mask`` reads or
    writes: the working cube ``to_working(mask, grid, **scale)`` makes (whichever of the mask's parts
    it is centred on), and ``context_voxels`` beyond it and beyond the mask on every axis (the image
    read around the masks). A crop to this box refines exactly as the whole volume, which a
    full-resolution CT holding a small structure makes many times slower (whole-volume filters).
    ``clip=False``: the box as needed, reaching beyond the array where the volume would have to."""
    lo, hi = occupied_box(mask)
    sp_kji = np.asarray(grid.spacing, float)[::-1]
    extent_mm = float(((hi - lo) * sp_kji).max())
    n, spacing = cube_size(extent_mm, grid.spacing, scale.get("margin_mm", 8.0), scale.get("spacing_mm", 1.0),
                           scale.get("min_fov_mm", 64.0), scale.get("extent_voxels"),
                           scale.get("min_side_voxels", 0), scale.get("max_side_voxels"))
    # the cube keeps the grid's axes, is centred inside the mask's box and is no larger than the whole
    # mask's (its parts' cube is smaller): half its side beyond the box covers it, and 3 voxels more the
    # linear resampling's reach (``_resample`` reads 2 beyond the cube)
    half = (n + 2) * spacing / 2.0
    reach = np.ceil(half / sp_kji).astype(int) + 3 + int(context_voxels)
    if not clip:
        return lo - reach, hi + reach
    return np.maximum(lo - reach, 0), np.minimum(hi + reach, np.asarray(mask.shape))


def to_working(
    mask: np.ndarray,
    grid: Grid,
    image: Optional[np.ndarray] = None,
    margin_mm: float = 8.0,
    spacing_mm: float = 1.0,
    min_fov_mm: float = 64.0,
    min_component_fraction: float = 0.0,
    extent_voxels: Optional[float] = None,
    min_side_voxels: int = 0,
    max_side_voxels: Optional[int] = None,
    outside: Optional[float] = None,
) -> WorkingCase:
    """Resample ``mask`` (0/1, [k, j, i] on ``grid``) and ``image`` (HU) onto an isotropic cube.

    The cube keeps the source axes' directions (an oblique scan is not rotated), is centred on the
    physical centre of the mask's bounding box, has side ``max(min_fov_mm, largest bbox extent +
    2 * margin_mm)`` mm and an even number of ``spacing_mm`` voxels per axis. With
    ``min_component_fraction`` > 0 the box ignores connected components smaller than that share
    of the largest one (they are still resampled where the cube covers them).

    Scale: with ``extent_voxels`` the spacing is chosen instead so that the bounding box's longest
    side spans that many voxels (a prior trained at a fixed *relative* scale); ``min_side_voxels``
    is the smallest cube (voxels per side). ``max_side_voxels`` caps the cube: a larger one is
    coarsened (spacing grows), so memory and time stay bounded for structures of any size.
    The spacing used is ``result.grid.spacing``. ``outside``: the image's value beyond the scan (None:
    the image's minimum; a caller that passes a crop of the scan passes the whole scan's).
    """
    mask = np.asarray(mask)
    check_volume_shape(mask, "mask")
    if mask.shape != grid.shape:
        raise InputError(f"mask shape {mask.shape} does not match its grid shape {grid.shape}")
    if image is not None:
        image = np.asarray(image)
        if image.shape != mask.shape:
            raise InputError(f"image shape {image.shape} does not match mask shape {mask.shape}")
        if not np.all(np.isfinite(image)):
            raise InputError("image has NaN or Inf values")
    if not (spacing_mm > 0 and margin_mm >= 0 and min_fov_mm > 0):
        raise InputError(f"bad working-grid parameters: spacing {spacing_mm}, margin {margin_mm}, fov {min_fov_mm}")
    fg = mask != 0
    if not fg.any():
        raise InputError("mask is empty")

    lo_kji, hi_kji = occupied_box(fg)
    if min_component_fraction > 0:
        # stray specks (a slipped brush, salt noise) must not move or enlarge the cube; labelled on the
        # mask's own box (the same parts, for less than the refine box's context)
        box = tuple(slice(int(a), int(b)) for a, b in zip(lo_kji, hi_kji))
        labels, n_comp = ndimage.label(fg[box], structure=np.ones((3, 3, 3), bool))
        if n_comp > 1:
            sizes = np.bincount(labels.ravel())[1:]
            keep = np.flatnonzero(sizes >= min_component_fraction * sizes.max()) + 1
            core_lo, core_hi = occupied_box(np.isin(labels, keep))
            lo_kji, hi_kji = lo_kji + core_lo, lo_kji + core_hi
    hi_kji = hi_kji - 1  # the last occupied index
    centre_ijk = ((lo_kji + hi_kji) / 2.0)[::-1]
    extent_mm = ((hi_kji - lo_kji + 1)[::-1]) * np.asarray(grid.spacing)  # along i, j, k
    n, spacing_mm = cube_size(float(extent_mm.max()), grid.spacing, margin_mm, spacing_mm, min_fov_mm,
                              extent_voxels, min_side_voxels, max_side_voxels)
    centre_lps = grid.index_to_lps(centre_ijk)
    half = (n - 1) / 2.0 * spacing_mm
    origin = centre_lps - grid.direction_matrix() @ np.full(3, half)
    work = Grid((n, n, n), (spacing_mm,) * 3, tuple(origin), grid.direction)

    soft = np.clip(_resample(fg.astype(np.float32), grid, work, 0.0), 0.0, 1.0)
    work_image = None
    if image is not None:
        # Beyond the scan there is no tissue: use the darkest value the scan has (air, ~-1000 HU
        # in CT) so the padding stays within the intensity range the model has seen.
        if outside is None:
            outside = float(image.min()) if image.size else -1000.0
        work_image = _resample(image, grid, work, float(outside))

    touches = bool(
        fg[0].any() or fg[-1].any() or fg[:, 0].any() or fg[:, -1].any() or fg[:, :, 0].any() or fg[:, :, -1].any()
    )
    return WorkingCase(mask=soft.astype(np.float32), image=work_image, grid=work, source_grid=grid,
                       touches_border=touches)


def to_source(prob: np.ndarray, working_grid: Grid, source_grid: Grid) -> np.ndarray:
    """Resample a working-grid probability ([k, j, i]) onto ``source_grid`` (linear, 0 outside).

    Returns float32 on the source grid; the caller thresholds at 0.5.
    """
    prob = np.asarray(prob)
    if prob.shape != working_grid.shape:
        raise InputError(f"probability shape {prob.shape} does not match working grid {working_grid.shape}")
    out = np.zeros(source_grid.shape, dtype=np.float32)
    # Only the source voxels the cube covers can be nonzero: resample onto that sub-block alone.
    box = _covering_box(source_grid, working_grid, pad=1)
    if box is None:
        return out
    lo, hi = box
    sub = source_grid.sub_grid(lo, hi)
    out[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]] = _resample(prob.astype(np.float32), working_grid, sub, 0.0)
    return out
