"""Training batches for the priors: clean shape, rough annotation and image, made on CPU workers.

A batch depends on (seed, step) alone, so any worker may make any step and a resumed run draws
what an uninterrupted one draws. The CPU part (shapes, annotation errors, synthetic images) runs in
a process pool (``BatchStream``); the rest (zoom, blurs, point sampling) runs on the training
device in ``train.py``. Arrays are ``[k, j, i]``; cube voxels are ``spacing_mm`` wide.

Sources:
* ``alan``: ALAN adrenal shapes, 1 mm voxels (the adrenal priors; fixed 1 mm working scale).
* ``anatomy``: procedurally generated anatomy-like shapes of 8-250 mm (``anatomy_shapes``), plus a
  share of ALAN shapes rescaled the same way, each at the voxel size that makes its longest side span
  ``extent_voxels`` voxels (the general prior's ``extent`` working scale).
"""
from __future__ import annotations

import multiprocessing as mp
from collections import OrderedDict
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Optional

import numpy as np
from scipy import ndimage as ndi

from .annotation_errors import mixture
from .appearance import normalise
from .distort import DistortionParams, distort
from .phantom import ct_phantom


@dataclass(frozen=True)
class DataSpec:
    """What one training run draws."""

    source: str = "alan"  # alan | anatomy
    appearance: bool = False
    appearance_norm: str = "window"  # window | case (see appearance.py)
    families: Optional[tuple[str, ...]] = None  # error-library families; None: the paper's distort()
    p_clean: float = 0.15
    classes: Optional[tuple[str, ...]] = None  # anatomy classes drawn (None: all but the held-out ones)
    p_alan: float = 0.25  # anatomy source: share of rescaled ALAN shapes
    p_mr: float = 0.3  # with case normalisation: share of MR-like images (anatomy_context MR)
    extent_voxels: tuple[int, int] = (32, 48)
    # share of corrupted samples whose error sizes are read in voxels of the training cube instead of mm:
    # an annotator paints on the scan's voxels, and a structure spanning ~40 of them has about the scan's
    # voxel in its working cube, so a large organ's 1-2 voxel brush error is 5-10 mm, which mm sizes
    # (0.5-2 mm) never teach a prior of large shapes
    p_voxel_errors: float = 0.0


@dataclass
class RawBatch:
    """CPU arrays of one step: ``clean``/``noisy`` uint8 (B, n, n, n), ``image`` float16 a(p) in [0, 1]
    or None, ``zoom`` (B,) isotropic zoom factors, ``spacing_mm`` (B,) voxel sizes."""

    clean: np.ndarray
    noisy: np.ndarray
    image: Optional[np.ndarray]
    zoom: np.ndarray
    spacing_mm: np.ndarray


def random_distortion(rng: np.random.Generator) -> DistortionParams:
    """A random strength of the paper's error generator, from almost clean to worse than its default."""
    hi = int(rng.integers(0, 15))
    return DistortionParams(
        n_cubes=(0, hi),
        cube_size=(3, int(rng.integers(4, 10))),
        p_morph=float(rng.uniform(0.0, 0.8)),
        noise_fraction=float(rng.uniform(0.0, 0.012)),
        noise_band=int(rng.integers(2, 9)),
    )


def augment(shape: np.ndarray, rng: np.random.Generator, max_shift: int = 2) -> np.ndarray:
    """Random flips of each axis and a shift of up to ``max_shift`` voxels."""
    axes = tuple(a for a in range(3) if rng.random() < 0.5)
    out = np.flip(shape, axes) if axes else shape
    shift = rng.integers(-max_shift, max_shift + 1, size=3)
    return np.roll(out, tuple(int(s) for s in shift), axis=(0, 1, 2))


def rescale_to_extent(shape: np.ndarray, spacing_mm: float, extent: int, n: int = 64) -> tuple[np.ndarray, float]:
    """``shape`` resampled so that its longest bounding-box side spans ``extent`` voxels, centred in
    an n^3 cube; returns (mask, new voxel size in mm)."""
    idx = np.argwhere(shape)
    lo, hi = idx.min(0), idx.max(0) + 1
    crop = shape[lo[0]:hi[0], lo[1]:hi[1], lo[2]:hi[2]].astype(np.float32)
    factor = extent / float(max(hi - lo))
    zoomed = ndi.zoom(np.pad(crop, 1), factor, order=1) >= 0.5
    out = np.zeros((n, n, n), bool)
    size = np.minimum(zoomed.shape, n)
    start = (n - size) // 2
    out[start[0]:start[0] + size[0], start[1]:start[1] + size[1], start[2]:start[2] + size[2]] = \
        zoomed[:size[0], :size[1], :size[2]]
    return out, spacing_mm / factor


def _corrupt(clean: np.ndarray, spacing_mm: float, rng: np.random.Generator, spec: DataSpec,
             hu: Optional[np.ndarray]) -> np.ndarray:
    if rng.random() < spec.p_clean:
        return clean
    if spec.p_voxel_errors > 0 and rng.random() < spec.p_voxel_errors:
        spacing_mm = 1.0  # sizes in voxels (drawn only when asked: older recipes keep their random stream)
    if spec.families is None:
        return distort(clean, seed=int(rng.integers(2**31)), params=random_distortion(rng))
    return mixture(clean, (spacing_mm,) * 3, rng, spec.families, image=hu)[0]


def make_sample(shapes: Optional[np.ndarray], spec: DataSpec, rng: np.random.Generator
                ) -> tuple[np.ndarray, np.ndarray, Optional[np.ndarray], float]:
    """(clean, noisy, a(p) or None, voxel size mm) of one training sample."""
    modality = "CT"
    if spec.source == "alan":
        clean, spacing = augment(shapes[int(rng.integers(len(shapes)))], rng), 1.0
        hu = None
        if spec.appearance:
            if spec.appearance_norm == "case" and rng.random() < spec.p_mr:
                from .anatomy_context import synthetic_context

                # MR-like context from the anatomy generator's layout, so that no single phantom's
                # layout is the only one the prior sees (CT stays the adrenal phantom's)
                modality = "MR"
                hu = synthetic_context(clean, spacing, rng, modality="MR", tissue="soft")
            else:
                hu = ct_phantom(clean, seed=int(rng.integers(2**31)), vary=True)
    elif spec.source == "anatomy":
        from .anatomy_shapes import HELD_OUT_CLASSES, CLASSES, random_anatomy, synthetic_context

        extent = int(rng.integers(spec.extent_voxels[0], spec.extent_voxels[1] + 1))
        if shapes is not None and rng.random() < spec.p_alan:
            clean, spacing = rescale_to_extent(shapes[int(rng.integers(len(shapes)))], 1.0, extent)
            clean = augment(clean, rng)
        else:
            classes = spec.classes or tuple(c for c in CLASSES if c not in HELD_OUT_CLASSES)
            shape = random_anatomy(rng, classes=classes, extent_voxels=spec.extent_voxels)
            clean, spacing = augment(shape.mask, rng, max_shift=1), float(shape.spacing_mm)
        hu = None
        if spec.appearance:
            if spec.appearance_norm == "case" and rng.random() < spec.p_mr:
                modality = "MR"
            hu = synthetic_context(clean, spacing, rng, modality=modality)
    else:
        raise ValueError(f"unknown training source {spec.source!r}: use alan or anatomy")
    noisy = _corrupt(clean, spacing, rng, spec, hu if modality == "CT" else None)
    image = normalise(hu, noisy, (spacing,) * 3, spec.appearance_norm) if hu is not None else None
    return clean, noisy, image, spacing


def make_raw(shapes: Optional[np.ndarray], spec: DataSpec, rng: np.random.Generator, batch: int) -> RawBatch:
    """One step's samples (see ``RawBatch``)."""
    clean, noisy, image, spacing = zip(*[make_sample(shapes, spec, rng) for _ in range(batch)])
    # random isotropic zoom: structures vary in size and the working cube need not fit them exactly
    zoom = rng.uniform(0.9, 1.1, size=batch).astype(np.float32)
    return RawBatch(np.stack(clean).astype(np.uint8), np.stack(noisy).astype(np.uint8),
                    np.stack(image).astype(np.float16) if spec.appearance else None, zoom,
                    np.asarray(spacing, np.float32))


# -- the worker pool -------------------------------------------------------------------------------
_WORKER_SHAPES: Optional[np.ndarray] = None  # set once per worker process by _init_worker


def _init_worker(data_path: Optional[str], key: str) -> None:
    global _WORKER_SHAPES
    import torch

    torch.set_num_threads(1)
    _WORKER_SHAPES = np.load(data_path)[key] if data_path else None


def _worker_raw(spec: DataSpec, seed: int, step: int, batch: int, rank: int) -> RawBatch:
    return make_raw(_WORKER_SHAPES, spec, step_rng(seed, step, rank), batch)


def step_rng(seed: int, step: int, rank: int = 0) -> np.random.Generator:
    """The numpy stream of one step, from (seed, step) alone; data-parallel process ``rank`` > 0
    draws its own stream (rank 0 draws what a single process draws)."""
    return np.random.default_rng([seed, step] if rank == 0 else [seed, step, rank])


class BatchStream:
    """Raw batches of steps 0, 1, 2... made ahead by ``workers`` processes (0: one thread here).

    ``data_path``/``key``: the npz of ALAN shapes read by each worker (None for pure anatomy).
    """

    def __init__(self, data_path: Optional[str], key: str, spec: DataSpec, seed: int, batch: int,
                 workers: int = 0, ahead: Optional[int] = None, rank: int = 0):
        self.spec, self.seed, self.batch, self.rank = spec, seed, batch, rank
        self._pending: "OrderedDict[int, Future]" = OrderedDict()
        self._last: Optional[tuple[int, RawBatch]] = None
        if workers > 0:
            # spawn: the training process may already hold a CUDA context, which fork must not copy
            self._pool: Executor = ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"),
                                                       initializer=_init_worker, initargs=(data_path, key))
            self.ahead = ahead or 2 * workers
            self._local = None
        else:
            self._pool = ThreadPoolExecutor(1)
            self.ahead = ahead or 1
            self._local = np.load(data_path)[key] if data_path else None

    def _submit(self, step: int) -> Future:
        if isinstance(self._pool, ThreadPoolExecutor):
            return self._pool.submit(make_raw, self._local, self.spec, step_rng(self.seed, step, self.rank),
                                     self.batch)
        return self._pool.submit(_worker_raw, self.spec, self.seed, step, self.batch, self.rank)

    def get(self, step: int) -> RawBatch:
        """The batch of ``step``; steps must be asked for in non-decreasing order."""
        if self._last is not None and self._last[0] == step:
            return self._last[1]
        for s in list(self._pending):
            if s < step:
                self._pending.pop(s).cancel()
        for s in range(step, step + self.ahead + 1):
            if s not in self._pending:
                self._pending[s] = self._submit(s)
        self._last = (step, self._pending.pop(step).result())
        return self._last[1]

    def close(self) -> None:
        for f in self._pending.values():
            f.cancel()
        self._pending.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)
