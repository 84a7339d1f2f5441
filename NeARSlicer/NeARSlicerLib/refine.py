"""Single-case refinement, the engine's main entry point.

``refine_mask`` reads only a box around the structure (``geometry.refine_box``: the working cube
and the image checks' reach, so the result is the whole volume's), crops the mask (and CT) to a
working cube at the prior's scale (its card's
``scale``: 1 mm for the adrenal priors, or a spacing chosen so the structure spans a set number of
voxels; never more than ``MAX_WORKING_SIDE`` voxels a side), encodes the mask to an initial latent
code, fits that code to the annotation in each mirrored view, decodes the cube coarse to fine and
maps the probability back onto the input grid. Then do no harm (``confidence.py``): when the
confidence is below ``RefineOptions.keep_threshold`` the annotation is returned unchanged
(``info["action"]`` says which). An image is read only when the prior's card accepts its
modality (``modality.py``); a case outside the prior's training domain gets a warning
(``domain.py``). Inputs are never modified. Arrays are [k, j, i]; geometry follows
``geometry.Grid`` (LPS, mm).
"""
from __future__ import annotations

import math
import os
import threading
import time
import warnings
from collections import OrderedDict
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional

import numpy as np
import torch
from scipy import ndimage

from . import confidence as conf_mod
from . import modality as modality_mod
from .confidence import DEFAULT_CHANGE_POLICY, DEFAULT_KEEP_THRESHOLD
from .decode import decode_probability
from .domain import check as domain_check, shape_facts
from .device import pick_device
from .errors import Cancelled, InputError, NeARError, PriorError, RefinementError
from .fit import FitConfig, fit_latent
from .geometry import Grid, check_volume_shape, grown_slices, refine_box, to_source, to_working
from . import image_margin, image_resolution, image_trim
from .image_evidence import box_pad as image_evidence_pad, support, undo_contradicted
from .model import NeARModel
from .appearance import normalise as normalise_image
from .prior import any_modality_prior, choose_prior, load_prior, resolve_prior
from .slice_interpolation import interpolate_painted_slices

@dataclass(frozen=True)
class Preset:
    """A speed/quality trade-off: latent fitting, and how many mirrored copies of the case are
    refined and averaged (the prior was trained on every flip, so they are equally valid views)."""

    fit: FitConfig
    flips: int = 1  # 1, 2, 4 or 8


# chosen on ALAN val shapes (not the benchmark's distortion seeds); see README "Benchmark"
PRESETS: dict[str, Preset] = {
    "fast": Preset(FitConfig(steps=0)),
    # 2048 fit points, not FitConfig's 8192: five Adam steps of lr 0.005 move each latent coordinate by
    # at most 0.025 whatever the gradient's size, so a quarter of the points give the same outputs (the
    # 432 cases of benchmarks/keep_or_refine.py: every set's mean within 0.02 DSC, the same cases made
    # worse) in half the fitting time (README "Speed and memory")
    "default": Preset(FitConfig(steps=5, lr=0.005, points=2048), flips=4),
    "quality": Preset(FitConfig(steps=5, lr=0.005), flips=8),
}
FLIPS = [(), (4,), (3,), (3, 4), (2,), (2, 4), (2, 3), (2, 3, 4)]  # tensor dims of (1, 1, k, j, i)

Progress = Callable[[float, str], None]


@dataclass
class RefineOptions:
    """User-facing knobs of one refinement."""

    # a prior name (``prior.prior_names()``: "auto", "adrenal", "anatomy", "adrenal-s", "anatomy-sa"...) or a
    # .safetensors path; None = "auto" (from ``structure``): S+A when an image is given (and ``appearance``), else S
    prior: Optional[str] = None
    appearance: bool = True  # use the image, if one is given and the prior was trained with it
    preset: str = "default"  # fast | default | quality
    device: str = "auto"  # auto | cpu | cuda
    seed: int = 0
    margin_mm: float = 4.0  # around the bounding box; the cube is at least the prior's field of view
    # working-cube spacing (mm) for a fixed-scale prior; None: the prior card's scale (adrenal: 1 mm)
    spacing_mm: Optional[float] = None
    # refined islands smaller than this are dropped (never the largest), and in the do-no-harm default's
    # output islands and enclosed holes smaller than this (painting specks) are removed; 0: keep all
    min_island_mm3: float = 10.0
    steps: Optional[int] = None  # overrides the preset's latent steps
    latent_reg: Optional[float] = None  # overrides the preset's lambda
    structure: Optional[str] = None  # what the mask is (segment name / terminology): picks the ``auto`` prior
    # do no harm (confidence.py): keep the annotation when the confidence is below this; 0: always refine
    keep_threshold: float = DEFAULT_KEEP_THRESHOLD
    # which of the prior's changes are applied (confidence.apply_changes): all | thick | gated
    change_policy: str = DEFAULT_CHANGE_POLICY
    # the image's modality when known (DICOM Modality "CT", "MR", ...); None: guessed from intensities
    modality: Optional[str] = None
    # the finest voxel side (mm) of the image as it was acquired, when it was resampled onto a finer mask
    # grid (Slicer: a volume under an oversampled segmentation): the image shows no edge finer than this,
    # so the margin fit moves no boundary by less; None: read off the image where it shows a coarser grid's
    # period (image_resolution), else the grid's own voxel
    image_voxel_mm: Optional[float] = None
    # a mask painted on thick slices and resampled to a finer grid (a staircase) is given to the prior
    # with its painted slices interpolated (slice_interpolation.py); False: its staircase as it is;
    # None: as the prior's card says (``interpolate_slices``; a study prior adapted on staircases says
    # False), else True
    interpolate_slices: Optional[bool] = None
    # with a CT read: an annotation painted too thick or too thin all round (by up to 2.5 mm) first
    # has its boundary moved to the image's edge (image_margin.py), when the image clearly shows it
    fit_margin: bool = True
    # with a CT read: the output's pieces that the image shows as the structure's surroundings (a slab or
    # leak painted into fat) are removed last (image_trim.py; not with change_policy "all")
    trim_to_image: bool = True
    # with a CT read: a thin change (the gate's "thick errors only") is applied whole when the image supports
    # at least confidence.OPEN_SUPPORT of it (a repair, not the prior's own boundary error)
    image_opens_gate: bool = True


@dataclass
class RefineResult:
    """Refined mask and review maps, all on the input grid ([k, j, i])."""

    mask: np.ndarray  # uint8 0/1
    probability: np.ndarray  # float32 in [0, 1]
    added: np.ndarray  # bool: refined but not in the input
    removed: np.ndarray  # bool: in the input but not refined
    seconds: float
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)


class PriorCache:
    """Loaded priors, keyed by (file, its size and time, device), at most ``capacity`` of them
    (least recently used dropped first). Cached models are never modified; ``release()`` drops
    them all, e.g. when a long-lived worker goes idle, so that their (GPU) memory is returned."""

    def __init__(self, capacity: int = 2) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._items: OrderedDict[tuple, tuple[NeARModel, dict]] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._items)

    def get(self, path: Path, device: torch.device | str) -> tuple[NeARModel, dict]:
        """The prior in file ``path`` on ``device``, loaded on first use (a rewritten file is reloaded)."""
        path = Path(path).resolve()
        try:
            st = os.stat(path)
            key = (str(path), st.st_size, st.st_mtime_ns, str(device))
        except OSError:
            key = None  # load_prior raises its clear "not found"
        with self._lock:
            if key is not None and key in self._items:
                self._items.move_to_end(key)
                return self._items[key]
            model, meta = load_prior(path, device)
            model.requires_grad_(False)
            if key is not None:
                self._items[key] = (model, meta)
                while len(self._items) > self.capacity:
                    self._items.popitem(last=False)
            return model, meta

    def release(self) -> int:
        """Drop every cached prior (callers still holding one keep it); returns how many were dropped."""
        with self._lock:
            n = len(self._items)
            on_cuda = any(next(m.parameters()).is_cuda for m, _ in self._items.values())
            self._items.clear()
        if on_cuda and torch.cuda.is_available():
            torch.cuda.empty_cache()
        return n


PRIOR_CACHE = PriorCache()


def get_prior(path: Optional[str], device: torch.device | str) -> tuple[NeARModel, dict]:
    """A cached prior by name or path (None: the shipped shape-only adrenal prior); never modify it."""
    return PRIOR_CACHE.get(resolve_prior(path, with_image=False), device)


def release_priors() -> int:
    """Free the models held by ``PRIOR_CACHE`` (for idle workers); returns how many were dropped."""
    return PRIOR_CACHE.release()


def fit_config(options: RefineOptions) -> tuple[FitConfig, int]:
    """The preset's fit configuration with the options' overrides, and its number of flips."""
    if options.preset not in PRESETS:
        raise InputError(f"unknown preset {options.preset!r}: use one of {', '.join(PRESETS)}")
    preset = PRESETS[options.preset]
    cfg = preset.fit
    changes = {}
    if options.steps is not None:
        if options.steps < 0:
            raise InputError(f"steps must be >= 0, got {options.steps}")
        changes["steps"] = int(options.steps)
    if options.latent_reg is not None:
        changes["latent_reg"] = float(options.latent_reg)
    return (FitConfig(**{**cfg.__dict__, **changes}) if changes else cfg), preset.flips


def drop_islands(mask: np.ndarray, spacing: tuple, min_mm3: float) -> np.ndarray:
    """``mask`` without its connected components (26-connected) smaller than ``min_mm3``, except the
    largest. The per-point annotation inputs let the MLP keep isolated painted voxels (salt noise,
    a slipped brush); no anatomy the prior knows is that small."""
    if min_mm3 <= 0 or not mask.any():
        return mask
    # labelled on the mask's own box (a cropped array numbers its parts in the same order)
    box = grown_slices(mask, 0)
    labels, n = ndimage.label(mask[box], structure=np.ones((3, 3, 3), bool))
    if n < 2:
        return mask
    sizes = np.bincount(labels.ravel())[1:] * float(np.prod(spacing))
    keep = (sizes >= min_mm3) | (np.arange(n) == int(np.argmax(sizes)))
    out = np.zeros(np.shape(mask), bool)
    out[box] = keep[labels - 1] & (labels > 0)
    return out


def fill_small_holes(mask: np.ndarray, spacing: tuple, min_mm3: float) -> np.ndarray:
    """``mask`` with its enclosed holes (background not face-connected to the outside) smaller than
    ``min_mm3`` filled: a brush's missed voxels, not a cavity an annotator left out on purpose."""
    if min_mm3 <= 0 or not mask.any():
        return mask
    # the background's face-connected pieces (as binary_fill_holes reads it) on the mask's box grown by a
    # voxel; those that reach the box's faces are outside, the others holes. One labelling of that box,
    # where fill_holes' propagation over the whole array took 1.2 s of a 250 mm organ's refinement at 0.7 mm
    box = grown_slices(mask, 1)
    labels, n = ndimage.label(~np.asarray(mask[box], bool))
    outside = np.unique(np.concatenate([np.take(labels, e, axis=a).ravel() for a in range(3) for e in (0, -1)]))
    if n == 0 or np.count_nonzero(outside) == n:  # no holes
        return mask
    sizes = np.bincount(labels.ravel(), minlength=n + 1) * float(np.prod(spacing))
    fill = sizes < min_mm3
    fill[outside] = False
    fill[0] = False
    out = np.array(mask, copy=True)
    out[box] = out[box] | fill[labels]
    return out


def _specks(refined: np.ndarray, prob: np.ndarray, action: str, spacing, min_mm3: float, notes: list) -> tuple:
    """(mask, probability, action, {"removed", "filled"}) once islands and enclosed holes smaller than
    ``min_mm3`` are removed and filled (``drop_islands``, ``fill_small_holes``): the specks of a kept
    or partly applied annotation, which the refined path drops anyway. A kept annotation that lost
    specks is ``REFINED_SPECKS`` (it is not the input)."""
    mask = refined > 0
    cleaned = fill_small_holes(drop_islands(mask, spacing, min_mm3), spacing, min_mm3)
    removed, filled = int((mask & ~cleaned).sum()), int((cleaned & ~mask).sum())
    found = {"removed": removed, "filled": filled}
    if not (removed or filled):
        return refined, prob, action, found
    notes.append(f"specks smaller than {min_mm3:g} mm^3 were cleaned: {conf_mod.describe_specks(removed, filled)}")
    if action.startswith("kept"):
        action = conf_mod.REFINED_SPECKS
    prob = np.where(cleaned & ~mask, 1.0, np.where(mask & ~cleaned, 0.0, prob)).astype(np.float32)
    return cleaned.astype(np.uint8), prob, action, found


def check_inputs(mask: np.ndarray, grid: Grid, image: Optional[np.ndarray]) -> None:
    """Clear, specific errors for inputs that cannot be refined (nothing is modified)."""
    check_volume_shape(mask, "mask")
    if tuple(mask.shape) != tuple(grid.shape):
        raise InputError(f"mask shape {tuple(mask.shape)} does not match its grid {tuple(grid.shape)}")
    if not np.any(mask):
        raise InputError("mask is empty: nothing to refine")
    if image is not None:
        if tuple(image.shape) != tuple(mask.shape):
            raise InputError(
                f"image and mask are on different grids: image shape {tuple(image.shape)}, mask shape {tuple(mask.shape)}"
            )
        if not np.all(np.isfinite(image)):
            raise InputError("image contains NaN or Inf values")


def refine_mask(
    mask: np.ndarray,
    grid: Grid,
    image: Optional[np.ndarray] = None,
    options: Optional[RefineOptions] = None,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
    scan: Optional[modality_mod.ScanFacts] = None,
) -> RefineResult:
    """Refine one binary mask ([k, j, i] on ``grid``); ``image`` in HU on the same grid, optional.
    ``scan``: the whole scan's facts when ``image`` is a crop of it (a study's cases, ``case_crop``),
    so that the crop refines as the whole scan would.

    Deterministic for a given ``options.seed`` on a given device; only local random generators
    are used (the global torch RNG is neither read nor reseeded). Raises InputError, PriorError,
    Cancelled, or RefinementError for any failure inside the engine (its cause chained); the
    inputs are untouched in every case.
    """
    try:
        result = _refine(mask, grid, image, options or RefineOptions(), progress or (lambda f, m: None), cancel,
                         scan)
    except NeARError:
        raise
    except Exception as exc:  # noqa: BLE001 - a torch/numpy failure becomes one clear line
        raise RefinementError(_failure_message(exc)) from exc
    for w in result.warnings:
        warnings.warn(w, stacklevel=2)
    return result


def _failure_message(exc: BaseException) -> str:
    """One line naming the cause of an internal failure, with a hint where there is one."""
    text = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
    cause = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    hint = ""
    if isinstance(exc, MemoryError) or "out of memory" in text.lower():
        hint = " (out of memory: try the 'fast' preset, device 'cpu' or a smaller margin)"
    return f"refinement failed inside the engine: {cause}{hint}"


GATE_CONTEXT_VOXELS = 8  # the gate's openings and 3 mm reach (confidence.py) read at most this far beyond a change
MAX_WORKING_SIDE = 128  # voxels per side of the working cube; larger structures get a coarser spacing
CARD_KEYS = ("scale", "domain", "appearance_norm", "modalities")  # read from the JSON card beside a prior


def card_meta(prior_path: Path, meta: dict) -> dict:
    """The prior's metadata with the card's ``scale``, ``domain``, ``appearance_norm`` and
    ``modalities`` (``<prior>.json`` beside the file, its ``"meta"``) laid over the file's own.

    The card is where these facts are kept for priors whose weights must not change (the shipped
    adrenal priors); an unreadable card is ignored (the file's metadata stands)."""
    import json

    card = Path(prior_path).with_suffix(".json")
    try:
        extra = json.loads(card.read_text()).get("meta", {}) if card.is_file() else {}
    except (OSError, ValueError, AttributeError):
        extra = {}
    merged = dict(meta)
    merged.update({k: extra[k] for k in CARD_KEYS if isinstance(extra, dict) and k in extra})
    return merged


def working_scale(meta: dict, opts: RefineOptions) -> dict:
    """``to_working`` scale arguments for a prior: a fixed spacing (``{"mode": "fixed",
    "spacing_mm": s}``, the default, 1 mm) or one chosen per case so that the structure spans
    ``extent_voxels`` of the prior's cube (``{"mode": "extent", "extent_voxels": 40}``)."""
    scale = meta.get("scale") or {"mode": "fixed"}
    fov = float(meta.get("fov_mm", 64.0))
    mode = str(scale.get("mode", "fixed")).lower()
    if mode == "extent":
        cube = int(scale.get("cube_voxels", 64))
        # the cube is exactly the prior's: its margin is the cube's, (cube - extent) / 2 voxels a side
        return {"extent_voxels": float(scale.get("extent_voxels", 40)), "min_fov_mm": 1e-3, "margin_mm": 0.0,
                "min_side_voxels": cube, "spacing_mm": 1.0, "max_side_voxels": max(MAX_WORKING_SIDE, cube)}
    if mode != "fixed":
        raise PriorError(f"the prior's card has an unknown scale mode {mode!r} (use 'fixed' or 'extent')")
    spacing = float(opts.spacing_mm if opts.spacing_mm is not None else scale.get("spacing_mm", 1.0))
    if not spacing > 0:
        raise InputError(f"spacing_mm must be positive, got {spacing}")
    return {"spacing_mm": spacing, "min_fov_mm": fov, "margin_mm": opts.margin_mm,
            "max_side_voxels": MAX_WORKING_SIDE}


def _appearance(image: Optional[np.ndarray], opts: RefineOptions, meta: dict, model: NeARModel,
                scan: Optional[modality_mod.ScanFacts] = None) -> tuple[bool, str, list[str]]:
    """(read the image?, modality, notes): the image is read only by an appearance prior whose card
    accepts its modality (``modality.accepts``)."""
    if image is None:
        return False, "", []
    found = modality_mod.guess(image, opts.modality, scan)
    if not (model.cfg.appearance and opts.appearance):
        return False, found.modality, []
    if modality_mod.accepts(meta, found.modality):
        return True, found.modality, []
    return False, found.modality, [
        f"{modality_mod.refusal(meta, found)}: the image was not used, the segment was refined by shape only"]


def _fallback_prior(image: np.ndarray, opts: RefineOptions, prior_name: str, prior_path: Path,
                    model: NeARModel, meta: dict, device: torch.device, refused: list[str],
                    scan: Optional[modality_mod.ScanFacts] = None):
    """(name, path, model, meta, read the image?, notes) after the chosen S+A prior refused the image."""
    other = any_modality_prior(prior_name)
    if other is not None:
        o_model, o_meta = PRIOR_CACHE.get(other[1], device)
        o_meta = card_meta(other[1], o_meta)
        use, _, _ = _appearance(image, opts, o_meta, o_model, scan)
        if use:
            found = modality_mod.guess(image, opts.modality, scan)
            trained = ", ".join(o_meta.get("modalities") or ["CT", "MR"])
            note = (f"the image does not look like CT ({found.reason}; read as {found.modality}): it was read by "
                    f"{other[0]}, the appearance prior for images that are not CT (trained on {trained}; "
                    "intensities relative to the annotation)")
            return other[0], other[1], o_model, o_meta, True, [note]
    shape_name, shape_path, _ = choose_prior(opts.prior, opts.structure, with_image=False)
    if shape_path != prior_path:
        model, meta = PRIOR_CACHE.get(shape_path, device)
        meta = card_meta(shape_path, meta)
        prior_name, prior_path = shape_name, shape_path
    return prior_name, prior_path, model, meta, False, refused


def _adopt(kept: np.ndarray, refined: np.ndarray, prob: np.ndarray, original: np.ndarray) -> tuple:
    """(mask, probability) once only ``kept`` of the prior's change stands: where a change was undone
    the probability is the annotation's (0 or 1), so that the review map shows no change there."""
    undone = kept != (refined > 0)
    out = np.array(prob, np.result_type(prob, np.float32))  # a copy: the caller's probability stays as it was
    out[undone] = original[undone]
    return kept.astype(np.uint8), out


def _margin_action(action: str, margin: Optional[image_margin.MarginFit]) -> str:
    """``action`` of a kept annotation, or ``REFINED_MARGIN`` when what is kept is the annotation with
    its margin fitted to the image (it is not the input)."""
    return conf_mod.REFINED_MARGIN if margin is not None and margin.moved else action


def _trim(refined: np.ndarray, prob: np.ndarray, action: str, image: np.ndarray, spacing, notes: list) -> tuple:
    """(mask, probability, action, trim) once the pieces the image shows as the surroundings are
    removed (image_trim.py): the probability is 0 there, and a kept annotation that lost a piece (its
    specks cleaned or not) is ``REFINED_TRIM`` (it is not the input)."""
    trimmed, found = image_trim.trim(refined > 0, image, spacing)
    if not found.removed:
        return refined, prob, action, found
    notes.append(f"after NeAR, {image_trim.describe(found.removed, found.pieces)}")
    if action.startswith("kept") or action == conf_mod.REFINED_SPECKS:
        action = conf_mod.REFINED_TRIM  # NeAR's change not applied: the trim is what changed most
    return trimmed.astype(np.uint8), np.where(trimmed, prob, 0.0).astype(np.float32), action, found


def check_do_no_harm(opts: RefineOptions) -> None:
    """InputError unless the do-no-harm settings of ``opts`` are usable (a study checks them before it trains)."""
    if not 0.0 <= float(opts.keep_threshold) <= 1.0:
        raise InputError(f"keep_threshold must be in [0, 1], got {opts.keep_threshold}")
    if opts.change_policy not in conf_mod.CHANGE_POLICIES:
        raise InputError(f"change policy must be one of {', '.join(conf_mod.CHANGE_POLICIES)}, "
                         f"got {opts.change_policy!r}")
    check_image_voxel_mm(opts.image_voxel_mm)


def check_image_voxel_mm(value: Optional[float]) -> None:
    """InputError unless ``value`` (``RefineOptions.image_voxel_mm``, a study case's) is None or a positive size."""
    if value is not None and not (np.isfinite(float(value)) and float(value) > 0):
        raise InputError(f"image_voxel_mm (the image's own voxel side) must be a positive size in mm, got {value}")


def _resolve_prior(image: Optional[np.ndarray], opts: RefineOptions, device: torch.device,
                   scan: Optional[modality_mod.ScanFacts] = None) -> tuple:
    """(prior name, path, model, card, read the image?, modality, image notes, notes) of a refinement:
    the prior ``opts`` chooses for the structure, or its fallback when it refuses the image's modality."""
    prior_name, prior_path, prior_note = choose_prior(opts.prior, opts.structure,
                                                      with_image=image is not None and opts.appearance)
    model, meta = PRIOR_CACHE.get(prior_path, device)
    notes: list[str] = [prior_note] if prior_note else []
    meta = card_meta(prior_path, meta)
    if meta.get("encoder_trained") is False:
        # a paper-recipe study prior: its encoder was never trained, and a few small latent steps from
        # a random code give a random shape, so refuse rather than return one
        raise InputError(f"prior {Path(prior_path).name} was made by a study of the paper's recipe, whose encoder "
                         "is untrained: it cannot refine new annotations (use that study's own outputs, or a "
                         "prior from the denoise or fast recipe)")
    use_appearance, modality, image_notes = _appearance(image, opts, meta, model, scan)
    if image_notes and prior_name is not None:
        # refused image: the anatomy's any-modality S+A prior when installed and it reads this
        # modality, else its shape-only prior (not the S+A one reading a blank image)
        prior_name, prior_path, model, meta, use_appearance, image_notes = _fallback_prior(
            image, opts, prior_name, prior_path, model, meta, device, image_notes, scan)
    return prior_name, prior_path, model, meta, use_appearance, modality, image_notes, notes


def reads_box(mask: np.ndarray, grid: Grid, image: Optional[np.ndarray], options: Optional[RefineOptions] = None,
              scan: Optional[modality_mod.ScanFacts] = None) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` box of ``grid`` ([k, j, i], possibly beyond the array) that ``refine_mask`` with these
    arguments reads and writes: a crop of the volume holding it (with ``scan``, the whole scan's facts)
    refines as the whole volume. Chooses the prior as ``refine_mask`` does (raises as it does)."""
    opts = options or RefineOptions()
    meta = _resolve_prior(image, opts, pick_device(opts.device), scan)[3]
    return refine_box(np.asarray(mask), grid, context_voxels(grid.spacing), clip=False, **working_scale(meta, opts))


def _refine(mask: np.ndarray, grid: Grid, image: Optional[np.ndarray], opts: RefineOptions,
            report: Progress, cancel: Optional[Callable[[], bool]],
            scan: Optional[modality_mod.ScanFacts] = None) -> RefineResult:
    t0 = time.perf_counter()
    check_inputs(np.asarray(mask), grid, image)
    check_do_no_harm(opts)
    cfg, n_flips = fit_config(opts)
    device = pick_device(opts.device)
    prior_name, prior_path, model, meta, use_appearance, modality, image_notes, notes = _resolve_prior(
        image, opts, device, scan)
    # an image refused for its modality is not read at all, not even to check the prior's changes
    image_refused = bool(image_notes) and not use_appearance
    # the image is evidence of its own about the prior's change (image_evidence): its support is the
    # confidence, and its verdict undoes what it contradicts
    image_evidence = image is not None and opts.appearance and not image_refused
    notes += image_notes

    report(0.0, "cropping and resampling to the working grid")
    scale = working_scale(meta, opts)
    # everything below reads and writes only the box around the structure (geometry.refine_box), which
    # refines exactly as the whole volume: a small structure of a full-resolution CT took 9 s of
    # whole-volume filters where the prior took 0.2 s. The image's darkest value (beyond the scan) is
    # the whole scan's. The box is the painted mask's; the margin fit (2.5 mm at most) and the painted
    # slices' interpolation (half a slice) grow what the cube is made from by less than the image
    # checks' reach (10 mm or more) that the box adds
    full_shape = tuple(np.shape(mask))
    outside = None if image is None else scan.outside if scan is not None else float(np.min(image))
    lo, hi = refine_box(np.asarray(mask), grid, context_voxels(grid.spacing), **scale)
    crop = tuple(slice(int(a), int(b)) for a, b in zip(lo, hi))
    mask, grid = np.asarray(mask)[crop], grid.sub_grid(lo, hi)
    image = None if image is None else np.asarray(image)[crop]
    original = np.asarray(mask) > 0
    painted = conf_mod.painted_slices(original, grid.spacing)
    interpolate = painted is not None and (opts.interpolate_slices if opts.interpolate_slices is not None
                                           else bool(meta.get("interpolate_slices", True)))
    # the annotation the prior refines and its changes are measured against: the painted one, or with
    # its margin fitted to the image (a staircase's error is not a margin: its slices are interpolated).
    # CT only: on MR-like images whose structure's rim reads as its surroundings the fit shrank correct
    # masks (benchmarks/image_margin.py)
    # the trim (benchmarks/image_trim.py) reads the image as the margin fit does, under the same conditions
    reads_ct = image_evidence and painted is None and modality == "CT"
    annotation, margin, found_trim, read_voxel = original, None, None, None
    if reads_ct and opts.fit_margin:
        image_voxel = opts.image_voxel_mm
        if image_voxel is None:  # not told: a CT resampled from coarser voxels shows their period
            image_voxel = read_voxel = image_resolution.acquired_voxel_mm(image, grid.spacing)
            if read_voxel is not None:
                notes.append(f"the image looks resampled from about {read_voxel:g} mm voxels (its detail repeats "
                             "with that period): no margin finer than that was fitted (an image voxel given "
                             "overrides this)")
        annotation, margin = image_margin.fit(original, image, grid.spacing, image_voxel_mm=image_voxel)
        # the sides a reviewer reads: the patient's directions on this grid ("posterior"), not array axes
        margin = replace(margin, sides=tuple((grid.patient_direction(side), mm) for side, mm in margin.sides))
        if margin.moved:
            notes.append(f"the image shows a margin error: {image_margin.describe(margin.mm, margin.sides)}, "
                         "before NeAR")
    # the domain is judged on what the prior would refine: a gland painted 1.7 mm too thin all round looks
    # too small for the adrenal prior until the image's margin has been fitted (ALAN val 91: kept at 64 DSC
    # as out of domain, refined from its fitted margin at 86)
    facts = shape_facts(annotation, grid.spacing)
    domain_notes = domain_check(facts, meta.get("domain"))
    notes += domain_notes

    def case_info(**fields) -> dict:
        """``RefineResult.info``: what every exit reports, then ``fields`` (the fit's own facts)."""
        return {"device": str(device), "preset": opts.preset,
                "prior": str(prior_path),
                "prior_name": prior_name,  # registry name ("adrenal-sa"...), None for a file given by path
                "keep_threshold": float(opts.keep_threshold), "change_policy": opts.change_policy,
                "modality": modality,  # "CT", "MR", "other"; "" without an image
                "out_of_domain": bool(domain_notes), "size_mm": round(facts.size_mm, 1),
                # painted on slices this thick (mm) and resampled to a finer grid: a staircase (gated applies all)
                "painted_slices_mm": None if painted is None else round(painted.thickness_mm, 1),
                "slices_interpolated": interpolate,
                # the margin moved to the image's edge all round (mm, + outwards; 0: none; None: not fitted),
                # else on single sides ([[side, mm], ...], the side a patient direction: "posterior")
                "image_margin_mm": None if margin is None or not margin.judged else margin.mm,
                "image_margin_sides": None if margin is None or not margin.sides else [list(s) for s in margin.sides],
                # what the image trimmed from the output ({removed, pieces, judged}; None: not tried)
                "image_trim": None if found_trim is None else found_trim.as_dict(),
                # the image's own voxel (mm) read off its detail when it was not given (None: none coarser read)
                "image_voxel_read_mm": read_voxel,
                **fields}
    def finish(mask: np.ndarray, prob: np.ndarray, action: str) -> tuple:
        """(mask, probability, action, specks) after the do-no-harm default's last steps, on every exit
        but ``--changes all`` (the prior's mask): specks cleaned (``_specks``), then, with a CT read,
        the pieces the image shows as the surroundings trimmed (``_trim``, its facts in ``found_trim``)."""
        nonlocal found_trim
        specks = None
        if opts.change_policy == conf_mod.CHANGE_ALL:
            return mask, prob, action, specks
        if opts.min_island_mm3 > 0:
            mask, prob, action, specks = _specks(mask, prob, action, grid.spacing, opts.min_island_mm3, notes)
        if reads_ct and opts.trim_to_image:
            mask, prob, action, found_trim = _trim(mask, prob, action, image, grid.spacing, notes)
        return mask, prob, action, specks

    if domain_notes and opts.change_policy != conf_mod.CHANGE_ALL:
        # do no harm: a prior does not reshape a structure unlike any it was trained on, so it is not
        # fitted at all (``--changes all`` still refines it)
        kept, prob, action, specks = finish(annotation.astype(np.uint8), annotation.astype(np.float32),
                                            _margin_action(conf_mod.KEPT_OUT_OF_DOMAIN, margin))
        report(1.0, "done")
        return _on_whole_volume(RefineResult(
            mask=kept, probability=prob, added=(kept > 0) & ~original,
            removed=original & (kept == 0), seconds=time.perf_counter() - t0, warnings=notes,
            info=case_info(slices_interpolated=False, steps=0, flips=0, decoder_steps=0, appearance=False,
                           working_shape=None,
                           working_spacing_mm=None, thick_radius_mm=None, final_loss=None, confidence=None,
                           confidence_from=None,
                           view_confidence=None, image_support=None, gate_opened_by_image=False, gate_closed_by_image=False,
                           action=action, signals=None, image_check=None, specks=specks)), crop, full_shape)
    fov = float(meta.get("fov_mm", 64.0))
    source = annotation
    if interpolate:
        # the prior sees the painted slices interpolated, not their staircase; the annotation itself
        # stays what changes are measured against
        source = interpolate_painted_slices(original, grid.spacing, painted.axis)
    case = to_working(source, grid, image if use_appearance else None, min_component_fraction=0.02, outside=outside,
                      **scale)
    spacing = float(case.grid.spacing[0])
    side = case.mask.shape[0] * spacing
    thick_mm = conf_mod.thick_radius_mm(spacing)  # what the gate counts as a thick change, at the prior's voxel
    if "extent_voxels" not in scale and side > 1.15 * fov:
        notes.append(f"the segment ({side:.0f} mm cube) is larger than the prior's {fov:.0f} mm field of view: "
                     "the prior is applied at a reduced scale")
    if case.touches_border:
        notes.append("the mask touches the border of its volume: the refined surface there is extrapolated")
    if image is not None and opts.appearance and not model.cfg.appearance \
            and not any("refined by shape only" in n for n in notes):
        notes.append("this prior is shape-only: the image was not used" + (
            "" if opts.change_policy == conf_mod.CHANGE_ALL else " to shape the segment, only to check the prior's changes"))

    # the only randomness is fit_latent's point sampling, from its own seeded generator
    n = case.mask.shape[0]
    target = torch.from_numpy(np.ascontiguousarray(case.mask, dtype=np.float32))[None, None].to(device)
    appearance = None
    if use_appearance:
        # as the prior was trained: a HU window, or relative to the annotation (appearance.normalise)
        work_image = normalise_image(case.image, case.mask, (spacing,) * 3, modality_mod.prior_normalisation(meta))
        appearance = torch.from_numpy(np.ascontiguousarray(work_image, dtype=np.float32))[None, None].to(device)
    flips = FLIPS[:n_flips]
    views: list[np.ndarray] = []
    losses: list[float] = []
    codes: list[tuple[torch.Tensor, torch.Tensor]] = []  # (encoder's, fitted) latent code of each view
    for index, dims in enumerate(flips):
        # each mirrored view is encoded, fitted and decoded on its own, then mirrored back
        t = target.flip(dims) if dims else target
        a = (appearance.flip(dims) if dims else appearance) if appearance is not None else None
        with torch.no_grad():
            z0, context = model.encode(t, a)

        def fit_progress(f: float, msg: str, _i: int = index) -> None:
            report(0.05 + 0.85 * (_i + 0.8 * f) / len(flips), msg)

        z, fitted, view_losses = fit_latent(model, t, z0, cfg, context, seed=opts.seed + index,
                                            progress=fit_progress, cancel=cancel)
        codes.append((z0.detach().flatten().cpu(), z.detach().flatten().cpu()))
        losses += view_losses
        if cancel is not None and cancel():
            raise Cancelled("refinement cancelled")
        report(0.05 + 0.85 * (index + 0.8) / len(flips), f"decoding the refined surface ({index + 1}/{len(flips)})")
        p = decode_probability(fitted, z, n, context)
        views.append((p.flip([d - 2 for d in dims]) if dims else p).cpu().numpy())
    prob_work = np.mean(views, axis=0)
    report(0.95, "mapping back to the input grid")
    prob = to_source(prob_work, case.grid, grid).astype(np.float32)
    refined = drop_islands(prob >= 0.5, grid.spacing, opts.min_island_mm3).astype(np.uint8)
    sig = conf_mod.signals(annotation, refined, grid.spacing, views)
    del views
    view_confidence = conf_mod.confidence(sig)
    image_support = support(annotation, refined > 0, image, grid.spacing) if image_evidence else None
    confidence = image_support if image_support is not None else view_confidence
    action = conf_mod.decide(confidence, sig, float(opts.keep_threshold))
    if image_support is not None and action != conf_mod.REFINED:
        action = conf_mod.KEPT_IMAGE  # kept because the image does not support the prior's change
    # a CT that supports nearly all of the prior's change opens the gate (a thin repair, not the prior's
    # own boundary error); the image check below still undoes any piece it contradicts
    ct_weighs = opts.image_opens_gate and reads_ct and image_support is not None
    supported = ct_weighs and image_support >= conf_mod.OPEN_SUPPORT
    # a large change that the CT hardly supports does not open the gate by its size alone: the gate then weighs
    # its thick part (confidence.CHANGE_SUPPORT)
    gate_change = math.inf if ct_weighs and image_support < conf_mod.CHANGE_SUPPORT else conf_mod.GATE_CHANGE
    opened_by_image = closed_by_image = False
    if action == conf_mod.REFINED and not refined.any() and opts.change_policy != conf_mod.CHANGE_ALL:
        # do no harm: the prior would delete what the user painted (seen: a study prior on a painted line),
        # or, gated to its thick part, hollow it out; only --changes all, which applies every change, may
        notes.append("the prior found no plausible shape in this annotation (its output was empty): the "
                     "annotation was kept; --changes all would leave it empty")
        action = conf_mod.KEPT_NO_SHAPE
    if action == conf_mod.REFINED and opts.change_policy == conf_mod.CHANGE_GATED and math.isinf(gate_change):
        closed_by_image = any(conf_mod.large_change(a, refined) for a in (
            (annotation, original) if margin is not None and margin.moved else (annotation,)))
    if action == conf_mod.REFINED and opts.change_policy != conf_mod.CHANGE_ALL:
        applied = conf_mod.apply_changes(annotation, refined, grid.spacing, opts.change_policy, thick_mm,
                                         gate_change=gate_change, painted=painted is not None)
        if margin is not None and margin.moved and not np.array_equal(applied, refined > 0):
            as_painted = conf_mod.apply_changes(original, refined, grid.spacing, opts.change_policy, thick_mm,
                                                gate_change=gate_change, painted=False)
            if np.array_equal(as_painted, refined > 0):
                # the gate opens for the annotation as painted (its margin error was one of its errors): the
                # prior's whole output stands, as it would have without the margin fit
                applied = refined > 0
        if supported and not np.array_equal(applied, refined > 0):
            widened = conf_mod.apply_changes(annotation, refined, grid.spacing, opts.change_policy, thick_mm,
                                             painted=painted is not None, supported=True)
            opened_by_image = not np.array_equal(widened, applied)  # the gated policy opens, thick does not
            applied = widened
        if not np.array_equal(applied, refined > 0):
            refined, prob = _adopt(applied, refined, prob, annotation)
            # nothing thicker than the prior's own boundary error: the annotation stands as it is
            action = conf_mod.REFINED_ERRORS_ONLY if (applied ^ annotation).any() else conf_mod.KEPT_PLAUSIBLE
    verdict = None
    if action in (conf_mod.REFINED, conf_mod.REFINED_ERRORS_ONLY) and opts.change_policy != conf_mod.CHANGE_ALL \
            and image_evidence:
        # do no harm with the image: no prior overrules it (a shape-only one never read it; an S+A
        # one reads it through a small working cube and can still cut tissue that looks like the organ)
        checked, verdict = undo_contradicted(annotation, refined, image, grid.spacing)
        if verdict.restored or verdict.withdrawn:
            refined, prob = _adopt(checked, refined, prob, annotation)
            if not (checked ^ annotation).any():
                action = conf_mod.KEPT_IMAGE
    if action in (conf_mod.REFINED, conf_mod.REFINED_ERRORS_ONLY):
        if not refined.any():
            notes.append("the refined mask is empty: the prior found no plausible shape in this annotation")
    else:
        # do no harm: the annotation is returned unchanged (the prior's proposal is not applied), its
        # margin fitted to the image when the image showed one
        refined = annotation.astype(np.uint8)
        prob = annotation.astype(np.float32)
        action = _margin_action(action, margin)
    refined, prob, action, specks = finish(refined, prob, action)
    seconds = time.perf_counter() - t0
    report(1.0, "done")
    return _on_whole_volume(RefineResult(
        mask=refined,
        probability=prob,
        added=(refined > 0) & ~original,
        removed=original & (refined == 0),
        seconds=seconds,
        warnings=notes,
        info=case_info(
            steps=cfg.steps, flips=n_flips, decoder_steps=cfg.decoder_steps, appearance=use_appearance,
            working_shape=tuple(case.mask.shape), working_spacing_mm=spacing,
            thick_radius_mm=thick_mm,  # a change thinner than this ball (mm radius) was the prior's own error
            final_loss=losses[-1] if losses else None,
            # with an image read: the share of the prior's change the image supports; else the mirrored
            # views' estimate (None: one view and no image)
            confidence=None if confidence is None else round(float(confidence), 4),
            confidence_from=None if confidence is None else ("image" if image_support is not None else "views"),
            view_confidence=None if view_confidence is None else round(float(view_confidence), 4),
            image_support=None if image_support is None else round(float(image_support), 4),
            # the gate was closed on the change's shape, and the CT's support of it (at least
            # confidence.OPEN_SUPPORT) opened it: every change applied, less what the image check undid
            gate_opened_by_image=opened_by_image,
            # the change was larger than confidence.GATE_CHANGE, which opens the gate, but the CT supported less
            # than confidence.CHANGE_SUPPORT of it: the gate stayed closed (only its thick part, if any, applied)
            gate_closed_by_image=closed_by_image,
            action=action, signals=sig.as_dict(),
            # root-mean-square of the fitted latent codes, and of how far the fit moved them from the encoder's
            latent_rms=round(float(torch.stack([c[1] for c in codes]).pow(2).mean().sqrt()), 4),
            latent_shift=round(float(torch.stack([c[1] - c[0] for c in codes]).pow(2).mean().sqrt()), 4),
            # what the image check undid of the prior's change (None: not checked)
            image_check=None if verdict is None else verdict.as_dict(),
            # voxels of specks removed / of small enclosed holes filled in the default's output (None: not cleaned)
            specks=specks),
    ), crop, full_shape)


def context_voxels(spacing) -> int:
    """Voxels (every axis) that the steps after the prior read beyond the masks' box: the image's
    checks (their rings and filters) and the do-no-harm gate's morphology."""
    return max(image_margin.box_pad(spacing), image_trim.box_pad(spacing), image_evidence_pad(spacing),
               GATE_CONTEXT_VOXELS)


def _on_whole_volume(result: RefineResult, crop: tuple, shape: tuple) -> RefineResult:
    """``result``, computed on the box ``crop`` of a volume of ``shape``, placed on the whole volume."""
    if all(c.start == 0 and c.stop == n for c, n in zip(crop, shape)):
        return result

    def placed(array: np.ndarray, dtype) -> np.ndarray:
        whole = np.zeros(shape, dtype)
        whole[crop] = array
        return whole

    return replace(result, mask=placed(result.mask, np.uint8), probability=placed(result.probability, np.float32),
                   added=placed(result.added, bool), removed=placed(result.removed, bool))
