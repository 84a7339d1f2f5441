"""Whether an image was resampled onto its grid from coarser voxels, and from what voxel size.

A CT reconstructed at 3 mm and resampled to 0.7 mm (a public dataset's isotropic copy, a volume
resampled in Slicer or SimpleITK) carries edges no sharper than its 3 mm voxels, yet its grid says
0.7 mm. The margin fit (``image_margin``) then places a boundary to a fraction of a millimetre on an
edge that interpolation spread over 3 mm, and moves correct masks (``benchmarks/full_resolution_harm.py``).

Interpolation leaves a mark that acquisition does not: along a resampled axis the image's fine detail
varies with the position of each plane between the coarse voxels' centres, with the coarse voxel's
period. Linear interpolation is exactly linear between them (no second difference there); B-spline
and windowed-sinc kernels modulate it less, but with the same period. A reconstructed image's noise
and anatomy have no such period. ``acquired_voxel_mm`` reads, along each axis, the mean absolute
second difference of each plane in each quadrant of the plane, and calls an axis resampled only when
every quadrant's strongest period (``MIN_MM``-``MAX_MM``, at least 2 planes) is the same and in the
same phase: a period of the grid's own pattern, not of anatomy that one quadrant holds. The
acquired voxel is the finest of the axes' (the resampled axes' periods, the others' own spacing),
the meaning of ``RefineOptions.image_voxel_mm``.

Limits: an axis resampled from less than twice its spacing shows an aliased period (1 mm onto 0.7 mm
reads as about 2.3 mm); one resampled to exactly half its voxel with the fine planes a quarter voxel
either side of the coarse ones has every plane at the same place between them, so no period; an ideal
band-limited (sinc) interpolation leaves no mark. Arrays ``[k, j, i]``,
spacing ``(i, j, k)`` mm.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import numpy as np
from scipy import ndimage

MIN_MM, MAX_MM = 1.2, 6.5  # the coarse voxels looked for: thin-slice to 5 mm acquisitions
MIN_PLANES = 24  # fewer planes along an axis cannot show a period against anatomy
PHASE_RAD = np.pi / 4  # the quadrants' periods agree in phase within this
MIN_STRENGTH = 10.0  # every quadrant's power at the period, over its typical power in the band
MIN_RATIO = 1.25  # an acquired voxel this much coarser than the grid's finest side is reported
MAX_PLANES = 160  # a larger box is read on its central part (a 242 mm organ's box: 44 M voxels at 0.7 mm)


@dataclass(frozen=True)
class AxisReading:
    """One axis's reading: ``period_mm`` (None: no period shared by every quadrant) and the peak's
    power over the median of each quadrant's spectrum (the weakest quadrant's)."""

    period_mm: Optional[float]
    strength: float


def _quadrant_sequences(image: np.ndarray, axis: int) -> list[np.ndarray]:
    """Per quadrant of the plane, the mean absolute second difference along ``axis`` of each plane."""
    x = np.moveaxis(np.asarray(image, dtype=np.float32), axis, 0)
    d = np.abs(x[2:] - 2.0 * x[1:-1] + x[:-2])
    h1, h2 = d.shape[1] // 2, d.shape[2] // 2
    return [d[:, a, b].mean(axis=(1, 2)) for a in (slice(0, h1), slice(h1, None))
            for b in (slice(0, h2), slice(h2, None))]


def _spectrum(seq: np.ndarray, spacing_mm: float) -> np.ndarray:
    """The complex spectrum of ``seq`` relative to its trend over 2 x ``MAX_MM`` (anatomy, not the grid)."""
    window = int(round(2 * MAX_MM / spacing_mm)) | 1
    trend = ndimage.uniform_filter1d(seq, size=window, mode="nearest")
    rel = seq / np.maximum(trend, 1e-3 * float(seq.mean()) + 1e-12) - 1.0
    rel = rel - ndimage.uniform_filter1d(rel, size=window, mode="nearest")
    return np.fft.rfft(rel * np.hanning(len(rel)))


def read_axis(image: np.ndarray, spacing_mm: float, axis: int) -> AxisReading:
    """The coarse voxel period (mm) along ``axis`` of ``image`` whose voxels are ``spacing_mm`` apart
    along it, or None when the quadrants do not share one."""
    n = np.shape(image)[axis] - 2
    others = [s for a, s in enumerate(np.shape(image)) if a != axis]
    if n < MIN_PLANES or min(others) < 4:
        return AxisReading(None, 0.0)
    freq = np.fft.rfftfreq(n)  # cycles per plane
    band = (freq >= spacing_mm / MAX_MM) & (freq <= min(0.5, spacing_mm / MIN_MM))
    if not band.any():
        return AxisReading(None, 0.0)
    seqs = _quadrant_sequences(image, axis)
    if any(not np.isfinite(seq).all() or float(seq.mean()) <= 0 for seq in seqs):
        return AxisReading(None, 0.0)  # a flat quadrant (air, a constant fill) has no detail to read
    specs = np.array([_spectrum(seq, spacing_mm) for seq in seqs])
    power = np.abs(specs) ** 2
    floor = np.median(power[:, band], axis=1)  # each quadrant's typical power in the band

    def shared(at: int) -> float:
        """The weakest quadrant's power at bin ``at`` over its typical power, when every quadrant's
        component there is in phase (0 otherwise)."""
        phase = np.angle(specs[:, at] * np.conj(specs[0, at]))
        return float(np.min(power[:, at] / np.maximum(floor, 1e-30))) if np.abs(phase).max() <= PHASE_RAD else 0.0

    pooled = np.abs(specs.sum(axis=0)) ** 2  # in phase, the quadrants add up
    at = int(np.argmax(np.where(band, pooled, 0.0)))
    strength = shared(at)
    if strength < MIN_STRENGTH:
        return AxisReading(None, strength)
    if 0 < at < len(pooled) - 1:  # the peak between spectral bins (a parabola through three, log power)
        a, b, c = np.log(pooled[at - 1:at + 2] + 1e-30)
        shift = 0.5 * (a - c) / (a - 2 * b + c) if (a - 2 * b + c) < 0 else 0.0
        f = (at + float(np.clip(shift, -0.5, 0.5))) / n
    else:
        f = freq[at]
    return AxisReading(float(spacing_mm / f), strength)


def acquired_voxel_mm(image: np.ndarray, spacing: Sequence[float]) -> Optional[float]:
    """The finest voxel side (mm) ``image`` (``[k, j, i]``, ``spacing`` (i, j, k) mm) was resampled from,
    when that is at least ``MIN_RATIO`` times its grid's finest side; None otherwise."""
    sp_kji = np.asarray(spacing, dtype=float)[::-1]
    lo = [max(0, (n - MAX_PLANES) // 2) for n in np.shape(image)]
    image = np.asarray(image)[tuple(slice(a, a + MAX_PLANES) for a in lo)]
    # a period spans at least 2 planes, so a resampled axis's side is never finer than its spacing
    finest = min(read_axis(image, float(sp), axis).period_mm or float(sp) for axis, sp in enumerate(sp_kji))
    return round(float(finest), 2) if finest >= MIN_RATIO * float(sp_kji.min()) else None
