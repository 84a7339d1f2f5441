"""Study mode: the paper's transductive NeAR on a set of cases, and a much cheaper recipe for it.

Given N annotated cases, a decoder + point MLP and one latent code per case are trained jointly on
the annotations themselves (auto-decoding); every case is then decoded from its own code. The
shared model can only represent shapes common to the study, so each case's idiosyncratic errors
(spurs, holes, slabs) are not reproduced.

Three recipes:

* ``"paper"`` (Yang, Shi et al., MICCAI 2022, for comparison): random-initialised model, latent
  codes drawn from N(0, 0.02^2), dense BCE on a jittered 64^3 grid of every case each step,
  Adam 1e-3 for everything, lr x0.1 at epochs 150/700/1200, 1500 epochs, l2 penalty 1e-2.
* ``"denoise"`` (default, ``study_adapt.py``): the prior's whole model learns to recover the
  prior's own reconstruction of each annotation from a re-distorted copy of it (the
  annotation-error library), regularised towards the prior's weights (L2-SP), for a few epochs;
  every case is then refined by ``refine_mask`` with the adapted prior (encode + latent fit +
  flips). The annotations are never a training target, so their errors are not learnt.
* ``"fast"``: decoder + MLP warm-started from a trained prior, latent codes initialised
  by the prior's encoder, a few thousand points per case and step drawn near each annotation's
  surface plus uniformly (``fit.sample_fit_points``), a much lower learning rate for the shared
  model than for the codes, and early stopping once the loss stops improving.

Each case is cropped to its own isotropic working cube by ``geometry.to_working`` (as
``refine.py`` does) and the result is mapped back to the case's source grid. Arrays are
``[k, j, i]``; grids follow ``geometry.Grid`` (LPS, mm); points are normalised (x, y, z) in
[-1, 1] of each case's cube. Compute is counted in MLP point evaluations (forward, training and
decoding) and conv-decoder passes (one per latent code decoded).

Training is resumable: a checkpoint (model, codes, optimiser, step, the batch generator's state,
loss history; safetensors + JSON via ``checkpoint.py``, never pickle) is written atomically every
``checkpoint_every`` steps and on cancel; resuming gives bit-identical results to an
uninterrupted run on the CPU. Outputs are written by ``study_output.py``.

Under ``torchrun --nproc-per-node N`` (``distributed.Distributed``: gloo on CPU, NCCL on GPU) every
process holds the whole model and all latent codes; each step's batch of cases is split among the
processes and their gradients are added up (:func:`_batch_gradients`), so that N processes take
the single-process steps up to floating-point rounding. Only rank 0 writes (checkpoints, masks,
summary, prior) and reports; it alone decodes the cases after training. A checkpoint holds no
process count: it resumes under any N, or alone.
"""
from __future__ import annotations

import json
import math
import time
import warnings
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .appearance import normalise as normalise_image
from .case_crop import CropSource, crop, needed_box, scan_facts
from .checkpoint import load_checkpoint, load_training_state, save_training_state
from .decode import decode_logits, decode_probability, model_query
from .distributed import Distributed
from .errors import Cancelled, InputError
from .fit import sample_fit_points
from .geometry import Grid, to_source, to_working
from .output_safety import check_outputs
from .model import Condition, ModelConfig, NeARModel, sample_volume, voxel_centres
from . import modality as modality_mod
from .domain import shape_facts, widen as widen_domain
from .prior import choose_prior, default_prior, load_prior, resolve_prior
from .refine import RefineOptions, card_meta, drop_islands, working_scale
from .study_adapt import denoise_step, prior_snapshot, redistort, refine_with
from .study_prior_choice import study_prior
from .study_output import StudyOutputs, save_study_prior, study_card, summary_row, write_study

RECIPES = ("denoise", "fast", "paper")
DEFAULT_RECIPE = "denoise"  # what run_study, the CLI and the worker use when no recipe is named
DENOISE_TARGETS = ("prior", "annotation")  # StudyConfig.denoise_targets
CHECKPOINT_FORMAT = "nearslicer-study-2"  # -1 was a torch.save (pickle) file: refused
Progress = Callable[[float, str], None]


@dataclass
class StudyCase:
    """One case of a study: a 0/1 mask ``[k, j, i]`` on ``grid`` and optionally its CT (HU, same grid)."""

    name: str
    mask: np.ndarray
    grid: Grid
    image: Optional[np.ndarray] = None
    mask_path: Optional[str] = None  # the files it was read from: outputs must never replace them
    image_path: Optional[str] = None
    # what the mask is (segment name, terminology text, label or file name): ``--prior auto`` chooses by it
    structure: Optional[str] = None
    # the summary's segment name and the label it was read with (a value, or a .seg.nrrd segment's): the
    # review reads the original from ``mask_path`` with it, as for a batch
    segment: Optional[str] = None
    label: Optional[str] = None
    # the image's own finest voxel side (mm) when it was resampled onto this finer mask grid (an
    # oversampled Slicer segmentation): the case's final refinement fits no margin finer than it
    image_voxel_mm: Optional[float] = None
    # set when mask, image and grid are a box of a larger volume (``load_cases``): where the box lies and
    # the whole scan's facts; outputs are written on the whole volume's grid
    source: Optional[CropSource] = None
    # the whole scan's facts when the caller cut the box itself (no ``source``: outputs stay on this grid)
    scan: Optional[modality_mod.ScanFacts] = None


@dataclass(frozen=True)
class StudyConfig:
    """Hyper-parameters of a study. ``StudyConfig.for_recipe("paper")`` gives the paper's values.

    An epoch is one pass over all cases in batches of ``batch_cases``; each batch is one optimiser
    step. ``points`` is per case and step (fast recipe); the paper recipe uses every point of a
    ``dense_res``^3 grid instead, jittered by up to ``grid_noise`` (normalised units).
    Early stopping: training ends once the epoch loss has not dropped below
    ``(1 - tolerance) * best`` for ``patience`` epochs (``patience = 0``: never).
    """

    recipe: str = "fast"  # these field defaults are the fast recipe's; for_recipe(DEFAULT_RECIPE) is the default study
    epochs: int = 60
    batch_cases: int = 8
    points: int = 4096
    dense_res: int = 64
    grid_noise: float = 0.01
    lr_latent: float = 1e-2
    lr_model: float = 3e-4  # decoder + MLP; the encoder is never trained in study mode
    lr_mlp: Optional[float] = None  # the point MLP's own rate (None: lr_model)
    milestones: tuple[int, ...] = ()  # epochs where both learning rates are multiplied by 0.1
    latent_reg: float = 1e-3  # lambda of lambda * mean(z^2)
    patience: int = 10
    tolerance: float = 0.01
    checkpoint_every: int = 25  # optimiser steps between checkpoints
    seed: int = 0
    appearance: bool = True  # use the cases' images when the model takes a(p)
    margin_mm: float = 8.0
    spacing_mm: float = 1.0
    # per-case working spacing instead: the case's longest bounding-box side / extent_voxels (mm), at least
    # spacing_mm, for a study whose structures differ widely in size (None: spacing_mm for every case)
    extent_voxels: Optional[float] = None
    device: str = "auto"
    min_island_mm3: float = 10.0  # decoded islands smaller than this are dropped (see refine.drop_islands)
    l2sp: float = 1e-3  # denoise: lambda of lambda * sum((theta - theta_prior)^2)
    refine_preset: str = "default"  # denoise: the refine_mask preset each case is refined with
    # denoise: what each re-distorted annotation is trained back to: "prior", the warm-start prior's own
    # reconstruction of the annotation (its errors already partly removed), or "annotation" itself
    denoise_targets: str = "prior"
    # denoise: the share of training pairs left clean (input = target), as the priors are trained
    # (training_data.SampleSpec.p_clean): the adapted prior learns that a plausible shape stays
    clean_share: float = 0.15
    # denoise: RefineOptions fields of every case's final refinement (``engine_protocol.STUDY_REFINE_OPTIONS``:
    # the do-no-harm settings, e.g. {"keep_threshold": 0.5, "image_opens_gate": False}); the rest is the study's
    refine_options: dict = field(default_factory=dict)

    @classmethod
    def for_recipe(cls, recipe: str, **overrides) -> "StudyConfig":
        """Defaults of ``recipe`` ("denoise", "fast" or "paper") with ``overrides`` applied."""
        if recipe not in RECIPES:
            raise InputError(f"unknown study recipe {recipe!r}: use one of {', '.join(RECIPES)}")
        base = cls()
        if recipe == "denoise":
            base = replace(base, recipe="denoise", epochs=6, batch_cases=4, points=4096, lr_model=1e-4, patience=0)
        if recipe == "paper":
            base = replace(base, recipe="paper", epochs=1500, lr_latent=1e-3, lr_model=1e-3,
                           milestones=(150, 700, 1200), latent_reg=1e-2, patience=0)
        return replace(base, **overrides)

    def to_dict(self) -> dict:
        d = asdict(self)
        d["milestones"] = list(self.milestones)
        return d


@dataclass
class StudyResult:
    """Refined masks and probabilities on each case's source grid ([k, j, i]), and the trained model.

    Under torchrun only rank 0's result holds the masks, probabilities and case seconds (the other
    processes train, then stop: ``info["rank"]`` > 0, those lists empty)."""

    names: list[str]
    masks: list[np.ndarray]  # uint8 0/1
    probabilities: list[np.ndarray]  # float32 in [0, 1]
    latents: torch.Tensor  # (N, latent_dim), CPU
    model: NeARModel  # decoder + MLP trained on the study (encoder as it came)
    losses: list[float]  # one per optimiser step
    epoch_losses: list[float]
    steps: int
    epochs: int
    stopped_early: bool
    seconds: float  # wall-clock of this call (training + decoding)
    train_seconds: float  # training time summed over resumed runs
    case_seconds: list[float]  # per case: its decoding plus an equal share of the training
    mlp_point_evals: int  # MLP point evaluations, training + decoding (forward passes)
    decoder_passes: int  # conv-decoder passes (latent codes decoded), training + decoding
    config: StudyConfig
    warnings: list[str] = field(default_factory=list)
    info: dict = field(default_factory=dict)
    # per case (denoise: every case is refined) its refinement's facts, RefineResult.info (confidence,
    # action, prior, image checks...); empty for the fast and paper recipes, which decode without refine
    case_info: list[dict] = field(default_factory=list)
    # the cases as studied, each mask on its case's grid: a case held as a box of its volume
    # (``load_cases``) may have been read again with a larger box (``case.source.place(mask)``: the whole volume)
    cases: list["StudyCase"] = field(default_factory=list)

    def rows(self, cases: Sequence["StudyCase"]) -> list[dict]:
        """Summary rows of ``cases`` (the study's, in order) in the batch contract (no output files)."""
        cases = self.cases or cases  # the masks' own frames
        infos = self.case_info or [None] * len(self.names)
        return [summary_row(c, m, s, i, self.case_warnings(c.name))
                for c, m, s, i in zip(cases, self.masks, self.case_seconds, infos)]

    def case_warnings(self, name: str) -> list[str]:
        """The study's warnings about case ``name`` (``"case NAME: ..."``), without that prefix."""
        prefix = f"case {name}: "
        return [w[len(prefix):] for w in self.warnings if w.startswith(prefix)]


@dataclass
class _Prepared:
    """A case on its working cube, as tensors on the device."""

    target: torch.Tensor  # (1, 1, n, n, n) soft occupancy
    appearance: Optional[torch.Tensor]  # (1, 1, n, n, n) windowed CT, or None
    context: Optional[Condition]  # model.context of the annotation (per-point inputs, encoder skips)
    work_grid: Grid
    touches_border: bool
    image_hu: Optional[np.ndarray] = None  # the working cube's CT (HU), for the leak errors of re-distortion


# ------------------------------------------------------------------------------------- checks
def check_cases(cases: Sequence[StudyCase]) -> None:
    """Clear errors for a study that cannot run; nothing is modified."""
    from .refine import check_image_voxel_mm, check_inputs

    if not cases:
        raise InputError("a study needs at least one case")
    seen: set[str] = set()
    for c in cases:
        if not c.name:
            raise InputError("every study case needs a name")
        if c.name in seen:
            raise InputError(f"duplicate case name {c.name!r}")
        seen.add(c.name)
        try:
            check_inputs(np.asarray(c.mask), c.grid, c.image)
            check_image_voxel_mm(c.image_voxel_mm)
        except InputError as exc:
            raise InputError(f"case {c.name}: {exc}") from None


def _check_config(cfg: StudyConfig) -> None:
    if cfg.recipe not in RECIPES:
        raise InputError(f"unknown study recipe {cfg.recipe!r}: use one of {', '.join(RECIPES)}")
    if cfg.epochs < 0 or cfg.batch_cases < 1 or cfg.points < 1 or cfg.dense_res < 2:
        raise InputError(f"bad study settings: epochs {cfg.epochs}, batch_cases {cfg.batch_cases}, "
                         f"points {cfg.points}, dense_res {cfg.dense_res}")
    if cfg.recipe == "denoise":
        from .refine import PRESETS

        if cfg.denoise_targets not in DENOISE_TARGETS:
            raise InputError(f"unknown denoise targets {cfg.denoise_targets!r}: "
                             f"use one of {', '.join(DENOISE_TARGETS)}")
        if not 0.0 <= cfg.clean_share < 1.0:
            raise InputError(f"bad study settings: clean_share {cfg.clean_share} (a share in [0, 1))")
        _check_refine_options(cfg.refine_options)
        if cfg.refine_preset not in PRESETS or cfg.l2sp < 0:
            raise InputError(f"bad study settings: refine_preset {cfg.refine_preset!r} (use one of "
                             f"{', '.join(PRESETS)}), l2sp {cfg.l2sp}")
    elif cfg.refine_options:
        raise InputError(f"refine options ({', '.join(sorted(cfg.refine_options))}) apply to the denoise recipe only: "
                         f"the {cfg.recipe} recipe decodes every case from its trained code, without refine")
    if cfg.checkpoint_every < 1 or cfg.patience < 0:
        raise InputError(f"bad study settings: checkpoint_every {cfg.checkpoint_every}, patience {cfg.patience}")


def _check_refine_options(options: dict) -> None:
    """Refuse, before anything trains, refine options a study does not pass on or values refine would refuse."""
    from .engine_protocol import STUDY_REFINE_OPTIONS
    from .refine import RefineOptions, check_do_no_harm

    other = sorted(set(options) - set(STUDY_REFINE_OPTIONS))
    if other:
        raise InputError(f"a study's refine_options take {', '.join(STUDY_REFINE_OPTIONS)}, not {', '.join(other)} "
                         "(the study sets the prior, preset, seed and working scale of every case itself)")
    check_do_no_harm(RefineOptions(**options))


def case_spacing(cfg: StudyConfig, case: StudyCase) -> float:
    """The working spacing (mm) of ``case``: ``cfg.spacing_mm``, or with ``cfg.extent_voxels`` its mask's
    longest bounding-box side (mm, along the grid's axes) / extent_voxels, never finer than
    ``cfg.spacing_mm`` (the cube covers at least the prior's field of view in mm: finer would grow it)."""
    if not cfg.extent_voxels:
        return cfg.spacing_mm
    idx = np.argwhere(np.asarray(case.mask) > 0)
    side = (idx.max(0) - idx.min(0) + 1) * np.asarray(case.grid.spacing, float)[::-1]
    return float(max(cfg.spacing_mm, side.max() / cfg.extent_voxels))


# ------------------------------------------------------------------------------- model set-up
def _initial_model(cfg: StudyConfig, prior_path: Optional[str], any_image: bool,
                   device: torch.device) -> tuple[NeARModel, dict]:
    """The model to train: the prior itself (fast) or a random one of the prior's architecture (paper)."""
    if cfg.recipe in ("fast", "denoise"):
        # a fresh copy: we own and train it; its card's facts (image normalisation, domain, scale) hold for it
        with_image = bool(cfg.appearance and any_image)
        model, meta = load_prior(prior_path, device, with_image=with_image)
        return model, card_meta(resolve_prior(prior_path, with_image), meta)
    arch, meta = ModelConfig(), {}
    path = Path(prior_path) if prior_path else default_prior(False)
    if prior_path or path.is_file():
        arch = load_prior(path)[0].cfg  # only the architecture; the weights are not used
    # the paper's model: the decoder sees only z and the MLP reads features, p and a(p), not the annotation
    arch = ModelConfig.from_dict({**arch.to_dict(), "appearance": bool(cfg.appearance and any_image),
                                  "annotation_sigmas": (), "skips": False})
    # the random initialisation is part of the recipe; fork_rng leaves the caller's global RNG alone
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        model = NeARModel(arch)
    return model.to(device), meta


@torch.no_grad()
def _prepare(cases: Sequence[StudyCase], cfg: StudyConfig, model: NeARModel, fov_mm: float, use_app: bool,
             device: torch.device, norm: str = "window") -> list[_Prepared]:
    """Each case's working cube; a(p) normalised as the prior reads images (``norm``: its card's
    ``appearance_norm``, as ``refine_mask`` does)."""
    out = []
    for c in cases:
        scan = scan_facts(c)  # a box of its scan: beyond the scan is the whole scan's darkest value, not the box's
        w = to_working(np.asarray(c.mask) > 0, c.grid, c.image if use_app else None, margin_mm=cfg.margin_mm,
                       spacing_mm=case_spacing(cfg, c), min_fov_mm=fov_mm, min_component_fraction=0.02,
                       outside=None if scan is None else scan.outside)
        target = torch.from_numpy(np.ascontiguousarray(w.mask, dtype=np.float32))[None, None].to(device)
        app = None
        if w.image is not None:
            a = normalise_image(w.image, w.mask, w.grid.spacing, norm)
            app = torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))[None, None].to(device)
        # a case without an image reads the neutral mid-window a(p) = 0.5 (model.context's rule)
        out.append(_Prepared(target, app, model.context(target, app), w.grid, w.touches_border,
                             None if w.image is None else np.asarray(w.image, np.float32)))
    return out


@torch.no_grad()
def _prior_targets(model: NeARModel, prep: Sequence[_Prepared]) -> list[_Prepared]:
    """Each working cube with its target replaced by the (un-adapted) model's reconstruction of the
    annotation (encoder code, one view, thresholded at 0.5): what the denoise recipe trains towards,
    so that an annotation's own errors are never a training target. Where the reconstruction is
    empty the annotation stays the target (training towards nothing would teach erasing)."""
    out = []
    for p in prep:
        z, context = model.encode(p.target, p.appearance)
        prob = decode_probability(model, z, p.target.shape[-1], context)
        target = (prob >= 0.5).to(p.target.dtype).reshape(p.target.shape)
        out.append(replace(p, target=target) if bool(target.any()) else p)
    return out


def _fingerprint(cfg: StudyConfig, names: Sequence[str], model: NeARModel) -> dict:
    """What a checkpoint must agree on to be resumed (epochs, patience... may change)."""
    keys = ("recipe", "batch_cases", "points", "dense_res", "grid_noise", "lr_latent", "lr_model", "lr_mlp",
            "milestones", "latent_reg", "seed", "appearance", "margin_mm", "spacing_mm")
    d = {k: cfg.to_dict()[k] for k in keys}
    if cfg.extent_voxels:  # only when set, so that older checkpoints still resume
        d["extent_voxels"] = cfg.extent_voxels
    if cfg.recipe == "denoise":  # only here, so that older fast/paper checkpoints still resume
        d["l2sp"] = cfg.l2sp
        if cfg.denoise_targets != "annotation":  # absent in checkpoints of the annotation-target recipe
            d["denoise_targets"] = cfg.denoise_targets
        if cfg.clean_share:  # absent in checkpoints of the recipe before clean pairs (2026-12-06)
            d["clean_share"] = cfg.clean_share
    d["cases"] = list(names)
    d["model"] = model.cfg.to_dict()
    return json.loads(json.dumps(d))  # tuples -> lists, so a loaded copy compares equal


# ------------------------------------------------------------------------------------ one step
def _batch_points(cfg: StudyConfig, prep: Sequence[_Prepared], gen: torch.Generator,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Points (B, P, 3) and BCE targets (B, P) for one batch of cases."""
    if cfg.recipe == "fast":
        pts = torch.cat([sample_fit_points(p.target, cfg.points, gen) for p in prep], 0)
    else:
        grid = voxel_centres(cfg.dense_res).view(1, -1, 3)
        pts = grid + (torch.rand(len(prep), grid.shape[1], 3, generator=gen) * 2 - 1) * cfg.grid_noise
    pts = pts.to(device)
    y = torch.cat([sample_volume(p.target, pts[b:b + 1]) for b, p in enumerate(prep)], 0).clamp(0, 1)
    return pts, y


def _train_step(model: NeARModel, z: torch.Tensor, pts: torch.Tensor, y: torch.Tensor,
                contexts: Sequence[Optional[Condition]], latent_reg: float, chunk_points: int = 65536,
                batch_size: Optional[int] = None) -> float:
    """Accumulate the gradients of mean BCE + latent_reg * mean(z^2) over one batch; returns the loss.

    The decoder runs once for the batch; the MLP runs per case (each case has its own context
    cube) over pieces of points, backpropagated every ``chunk_points`` points so that the dense
    64^3 recipe fits in memory. The gradients equal those of one backward pass of the mean loss.
    ``batch_size``: the whole batch's number of cases when ``z`` holds only this process's share of
    it (torchrun), so that the shares' terms add up to the whole batch's mean.
    """
    maps = model.maps(z, Condition.batch_skips(list(contexts)) if model.cfg.skips else None)
    n_here, P = y.shape
    B = n_here if batch_size is None else batch_size
    pieces = [(b, s) for b in range(n_here) for s in range(0, P, chunk_points)]
    total, pending, pending_points = 0.0, None, 0
    for n, (b, s) in enumerate(pieces):
        logits = model.query([m[b:b + 1] for m in maps], pts[b:b + 1, s:s + chunk_points], contexts[b])
        piece = F.binary_cross_entropy_with_logits(logits, y[b:b + 1, s:s + chunk_points], reduction="sum") / (B * P)
        pending = piece if pending is None else pending + piece
        pending_points += logits.shape[1]
        last = n == len(pieces) - 1
        if last or pending_points >= chunk_points:
            if last:
                # a share's sum over the whole batch's count; the whole batch keeps its plain mean (bit for bit)
                reg = z.pow(2).mean() if B == n_here else z.pow(2).sum() / (B * z.shape[1])
                pending = pending + latent_reg * reg
            pending.backward(retain_graph=not last)
            total += pending.item()
            pending, pending_points = None, 0
    return total


def _lr_factor(cfg: StudyConfig, epoch: int) -> float:
    return 0.1 ** sum(1 for m in cfg.milestones if epoch >= m)


def _epoch_order(cfg: StudyConfig, n: int, epoch: int) -> list[int]:
    """Case order of an epoch: a pure function of (seed, epoch), so resuming needs no extra state."""
    g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + epoch)
    return torch.randperm(n, generator=g).tolist()


def _denoise_batch(cfg: StudyConfig, model: NeARModel, prep: Sequence[_Prepared], idx: Sequence[int], epoch: int,
                   gen: torch.Generator, anchor: dict, device: torch.device, own: Optional[Sequence[int]] = None,
                   regularise: bool = True) -> float:
    """One denoise step: each case's target (``_prior_targets``, or the annotation) re-distorted
    (seeded by seed, epoch, case), the model trained to recover the target from it (see
    ``study_adapt``). ``own``: the batch positions this process computes (None: all);
    ``regularise``: whether this process adds the L2-SP term."""
    mine = set(range(len(idx)) if own is None else own)
    inputs: list[Optional[torch.Tensor]] = []
    for b, (i, p) in enumerate(zip(idx, prep)):
        if b not in mine:
            inputs.append(None)
            continue
        clean = p.target[0, 0].cpu().numpy() > 0.5
        noisy = redistort(clean, float(p.work_grid.spacing[0]), cfg.seed, epoch, i, p.image_hu, cfg.clean_share)
        inputs.append(torch.from_numpy(noisy.astype(np.float32))[None, None].to(device))
    return denoise_step(model, inputs, [p.target for p in prep], [p.appearance for p in prep], cfg.points, gen,
                        anchor, cfg.l2sp if regularise else 0.0)


def _readable_images(cases: Sequence[StudyCase], meta: dict, notes: list[str]) -> list[StudyCase]:
    """The cases, each image that the prior cannot read removed (``modality.accepts``, as ``refine``
    decides: an MR image is not put through a CT window) with a note in ``notes``."""
    out = []
    for c in cases:
        if c.image is not None:
            found = modality_mod.guess(c.image, None, scan_facts(c))
            if not modality_mod.accepts(meta, found.modality):
                notes.append(f"case {c.name}: {modality_mod.refusal(meta, found)}: the image was not used, "
                             "the case was fitted by shape only")
                c = replace(c, image=None)
        out.append(c)
    return out


@dataclass
class _Training:
    """Everything one optimiser step reads and updates."""

    model: NeARModel
    meta: dict
    prep: list[_Prepared]
    latents: list[torch.nn.Parameter]
    opt: torch.optim.Optimizer
    gen: torch.Generator  # the only random stream of training (points, the paper's initial codes)
    anchor: Optional[dict]  # denoise: the prior's weights (L2-SP)
    use_app: bool
    notes: list[str]
    cfg: StudyConfig  # the caller's, with the prior card's working scale filled in (``_card_scale``)
    cases: list[StudyCase]  # the caller's, each box large enough for this study (``_within_reach``)


def _card_scale(cfg: StudyConfig, meta: dict) -> StudyConfig:
    """``cfg`` with the warm-start prior's working scale where ``cfg`` sets none: a prior whose card
    says ``scale: extent`` (the general prior) sees each structure spanning ``extent_voxels`` of its
    cube, in a study as in ``refine_mask``; a spleen on a 1 mm cube would be out of its scale."""
    extent = None if cfg.extent_voxels else working_scale(meta, RefineOptions()).get("extent_voxels")
    return replace(cfg, extent_voxels=extent) if extent else cfg


def _start_training(cases: Sequence[StudyCase], prior_path: Optional[str], cfg: StudyConfig, device: torch.device,
                    report: Progress) -> _Training:
    """The model, working cubes, initial latent codes and optimiser of a study (a pure function of
    the cases, the prior and ``cfg``: every torchrun process builds the same)."""
    any_image = any(c.image is not None for c in cases)
    report(0.0, "loading the model")
    model, meta = _initial_model(cfg, prior_path, any_image, device)
    cfg = _card_scale(cfg, meta)
    cases = reached = _within_reach(cases, meta, cfg)
    if meta.get("domain"):
        # the adapted prior learns these very shapes: a study of a structure no prior knows (what study
        # mode is for) must not be kept whole as out of the warm-start prior's domain
        facts = [shape_facts(np.asarray(c.mask) > 0, c.grid.spacing) for c in cases]
        meta = {**meta, "domain": widen_domain(meta["domain"], facts, f"the {len(cases)} cases of this study")}
    use_app = bool(cfg.appearance and model.cfg.appearance and any_image)
    notes: list[str] = []
    if cfg.appearance and any_image and not model.cfg.appearance:
        # denoise refines every case through refine_mask, which checks the prior's change against its image
        notes.append("this prior is shape-only: the images were not used" + (
            " to shape the segments, only to check the prior's changes" if cfg.recipe == "denoise" else ""))
    if use_app:
        cases = _readable_images(cases, meta, notes)
    if use_app and not all(c.image is not None for c in cases):
        notes.append("some cases have no image: they are fitted shape-only")

    report(0.01, "cropping and resampling every case to its working grid")
    prep = _prepare(cases, cfg, model, float(meta.get("fov_mm", 64.0)), use_app, device,
                    modality_mod.prior_normalisation(meta))
    for c, p in zip(cases, prep):
        if p.touches_border:
            notes.append(f"case {c.name}: the mask touches the border of its volume; the surface there is extrapolated")

    if cfg.recipe == "denoise" and cfg.denoise_targets == "prior":
        prep = _prior_targets(model, prep)
    # latent codes: the prior's encoder (fast) or the paper's small random codes
    gen = torch.Generator().manual_seed(cfg.seed)
    with torch.no_grad():
        if cfg.recipe in ("fast", "denoise"):
            z0 = torch.cat([model.encode(p.target, p.appearance)[0] for p in prep], 0).cpu()
        else:
            z0 = torch.randn(len(prep), model.cfg.latent_dim, generator=gen) * 0.02
    latents = [torch.nn.Parameter(z.clone().to(device)) for z in z0]
    lr_mlp = cfg.lr_model if cfg.lr_mlp is None else cfg.lr_mlp
    anchor = None
    if cfg.recipe == "denoise":
        # the whole model learns to denoise; the codes are the encoder's, never trained
        anchor = prior_snapshot(model)
        model.requires_grad_(True)
        opt = torch.optim.Adam([{"params": list(model.encoder.parameters()) + list(model.decoder.parameters()),
                                 "lr": cfg.lr_model, "base_lr": cfg.lr_model},
                                {"params": list(model.mlp.parameters()), "lr": lr_mlp, "base_lr": lr_mlp}])
    else:
        model.encoder.requires_grad_(False)
        for p in list(model.decoder.parameters()) + list(model.mlp.parameters()):
            p.requires_grad_(True)
        opt = torch.optim.Adam([{"params": latents, "lr": cfg.lr_latent, "base_lr": cfg.lr_latent},
                                {"params": list(model.decoder.parameters()), "lr": cfg.lr_model, "base_lr": cfg.lr_model},
                                {"params": list(model.mlp.parameters()), "lr": lr_mlp, "base_lr": lr_mlp}])
    return _Training(model, meta, prep, latents, opt, gen, anchor, use_app, notes, cfg, reached)


def _trained(tr: _Training) -> list[torch.Tensor]:
    """The parameters the optimiser updates (model weights, and the latent codes of fast/paper)."""
    return [p for g in tr.opt.param_groups for p in g["params"]]


def _batch_gradients(cfg: StudyConfig, tr: _Training, idx: Sequence[int], epoch: int, ctx: Distributed) -> float:
    """Set the gradients of one optimiser step over the cases ``idx`` (and no others); returns its loss.

    Under torchrun (``ctx.world`` > 1) process r computes the batch positions r, r + world, ...
    with the whole batch's normalisation, draws every case's points (one random stream, alike in
    all processes) and adds the L2-SP term only on rank 0; ``Distributed.sum_gradients`` then adds
    the shares' gradients (model weights and latent codes) and losses, so every process holds
    exactly the gradient of the single-process mean loss over the whole batch. Not DDP: the
    latent codes live outside the module and a step runs several backward passes.
    """
    tr.opt.zero_grad(set_to_none=True)  # codes outside this batch get no gradient: Adam skips them
    own = list(range(ctx.rank, len(idx), ctx.world))
    whole = len(own) == len(idx)
    device = tr.prep[0].target.device
    if cfg.recipe == "denoise":
        loss = _denoise_batch(cfg, tr.model, [tr.prep[i] for i in idx], idx, epoch, tr.gen, tr.anchor, device,
                              own=None if whole else own, regularise=ctx.main)
    else:
        pts, y = _batch_points(cfg, [tr.prep[i] for i in idx], tr.gen, device)  # all cases: the stream advances alike
        if not whole:
            pts, y = pts[own], y[own]
        mine = [idx[b] for b in own]
        loss = 0.0
        if mine:
            loss = _train_step(tr.model, torch.stack([tr.latents[i] for i in mine]), pts, y,
                               [tr.prep[i].context for i in mine], cfg.latent_reg, batch_size=len(idx))
    return ctx.sum_gradients(_trained(tr), loss)


# ---------------------------------------------------------------------------------- checkpoints
def _check_fingerprint(path: Path, theirs: dict, fingerprint: dict) -> None:
    """Refuse a checkpoint made for other cases or settings (epochs, patience... may change)."""
    theirs = dict(theirs or {})
    if isinstance(theirs.get("model"), dict):  # fields added to ModelConfig since then take their defaults
        theirs["model"] = json.loads(json.dumps(ModelConfig.from_dict(theirs["model"]).to_dict()))
    if theirs != fingerprint:
        diff = sorted(k for k in set(theirs) | set(fingerprint) if theirs.get(k) != fingerprint.get(k))
        raise InputError(f"checkpoint {path} was made for other cases or settings (differs in: {', '.join(diff)}); "
                         "delete it or start without resuming")


# ------------------------------------------------------------------------------------ the study
def run_study(
    cases: Sequence[StudyCase],
    prior_path: Optional[str] = None,
    cfg: Optional[StudyConfig] = None,
    out_dir: Optional[str] = None,
    checkpoint: Optional[str] = None,
    progress: Optional[Progress] = None,
    cancel: Optional[Callable[[], bool]] = None,
    resume: bool = True,
    overwrite: bool = False,
) -> StudyResult:
    """Train a NeAR model and one latent code per case on ``cases`` jointly, then decode every case.

    ``prior_path``: the prior to warm-start from (fast and denoise recipes) or whose architecture to
    copy (paper recipe); None or "auto": the one ``--prior auto`` gives every case's ``structure``
    (``study_prior_choice``; InputError when they would get different priors). ``checkpoint``: a file written every
    ``cfg.checkpoint_every`` steps and on cancel; when it exists and ``resume`` is true, training
    continues from it (an error if it belongs to other cases or settings). ``out_dir``: if given,
    the outputs are checked before training (``study_output.StudyOutputs``: not the inputs'
    folder, no output an input, existing outputs only replaced with ``overwrite``); each refined
    mask and its summary row are written as soon as the case is decoded, then the trained prior
    and its card. Raises InputError (OutputError), PriorError or Cancelled; the inputs are never
    modified.
    """
    t0 = time.perf_counter()
    cfg = cfg or StudyConfig.for_recipe(DEFAULT_RECIPE)
    report = progress or (lambda f, m: None)
    _check_config(cfg)
    check_cases(cases)
    # auto: the prior refine would give the cases' structure; a study mixing structures of different priors is refused
    any_image = any(c.image is not None for c in cases)
    prior_path = study_prior([c.name for c in cases], [getattr(c, "structure", None) for c in cases], prior_path,
                             bool(cfg.appearance and any_image))
    # under torchrun: this process's rank and device (NCCL on CUDA, gloo on CPU); alone: rank 0 of 1
    ctx = Distributed.from_env(cfg.device)
    if not ctx.main:
        report = lambda f, m: None  # noqa: E731 - only rank 0 reports
    outputs = None
    if out_dir is not None:  # every output is checked before any computation (in every process: same verdict)
        outputs = StudyOutputs(out_dir, cases, overwrite=overwrite, checkpoint=checkpoint, other_inputs=[prior_path])
        if not ctx.main:
            outputs = None  # only rank 0 writes
    if checkpoint is not None:
        check_outputs([checkpoint], [*(p for c in cases for p in (c.mask_path, c.image_path)), prior_path],
                      may_exist=[checkpoint])
    ctx.barrier()  # no process writes before every process has checked
    device = ctx.device
    names = [c.name for c in cases]

    tr = _start_training(cases, prior_path, cfg, device, report)
    cfg, cases = tr.cfg, tr.cases
    model, meta, prep, latents, opt, gen = tr.model, tr.meta, tr.prep, tr.latents, tr.opt, tr.gen
    use_app, notes = tr.use_app, tr.notes

    fingerprint = _fingerprint(cfg, names, model)
    state = {"step": 0, "epoch": 0, "losses": [], "epoch_losses": [], "best": math.inf, "wait": 0,
             "stopped": False, "step_in_epoch": 0, "train_seconds": 0.0, "mlp_point_evals": 0, "decoder_passes": 0}
    ck_path = Path(checkpoint) if checkpoint else None
    resumed_from = None
    if ck_path is not None and ck_path.is_file() and resume:
        # safetensors + JSON (checkpoint.py): a pickled or corrupt file is refused, never loaded
        _, head = load_checkpoint(ck_path)
        extra = (head.get("extra") or {})
        if extra.get("format") != CHECKPOINT_FORMAT:
            raise InputError(f"{ck_path} is not a NeARSlicer study checkpoint")
        _check_fingerprint(ck_path, extra.get("fingerprint"), fingerprint)
        ck = load_training_state(ck_path, model, opt, generators={"gen": gen})
        saved = ck["tensors"].get("latents")
        if saved is None or tuple(saved.shape) != (len(latents), model.cfg.latent_dim):
            raise InputError(f"checkpoint {ck_path} holds no latent codes for these {len(latents)} cases")
        with torch.no_grad():
            for z, code in zip(latents, saved):
                z.copy_(code.to(device))
        state = ck["extra"]["state"]
        resumed_from = state["step"]
        report(0.02, f"resumed from step {state['step']} (epoch {state['epoch']})")
    # every process loaded the same prior (or checkpoint); rank 0's values rule where set-up is not bit-exact
    ctx.broadcast_([*model.parameters(), *latents])

    def save_now() -> None:
        if ck_path is None or not ctx.main:
            return
        # the global RNGs are not saved: training draws only from ``gen``
        save_training_state(ck_path, model, opt, state["step"],
                            extra={"format": CHECKPOINT_FORMAT, "fingerprint": fingerprint, "state": state},
                            generators={"gen": gen},
                            tensors={"latents": torch.stack([z.detach().cpu() for z in latents])})

    # ------------------------------------------------------------------ training
    n = len(prep)
    batches_per_epoch = math.ceil(n / cfg.batch_cases)
    points_per_case = cfg.points if cfg.recipe != "paper" else cfg.dense_res ** 3
    model.train()
    t_train = time.perf_counter()

    def tick() -> None:
        nonlocal t_train
        now = time.perf_counter()
        state["train_seconds"] += now - t_train
        t_train = now

    while state["epoch"] < cfg.epochs and not state["stopped"]:
        epoch, b = state["epoch"], state.get("step_in_epoch", 0)
        # a cancel (Ctrl-C reaches every process, or only one) stops all processes at the same step
        if ctx.agree([float(cancel is not None and bool(cancel()))])[0]:
            tick()
            save_now()
            raise Cancelled(f"study cancelled at step {state['step']}"
                            + (f" (checkpoint saved to {ck_path}: resume from it)" if ck_path else ""))
        for g in opt.param_groups:
            g["lr"] = g["base_lr"] * _lr_factor(cfg, epoch)
        idx = _epoch_order(cfg, n, epoch)[b * cfg.batch_cases:(b + 1) * cfg.batch_cases]
        loss = _batch_gradients(cfg, tr, idx, epoch, ctx)  # under torchrun: summed over the processes
        opt.step()
        state["losses"].append(loss)
        state["step"] += 1
        state["step_in_epoch"] = b + 1
        state["mlp_point_evals"] += len(idx) * points_per_case
        state["decoder_passes"] += len(idx)
        if b + 1 == batches_per_epoch:  # end of an epoch: early stopping on its mean loss
            ep_loss = float(np.mean(state["losses"][-batches_per_epoch:]))
            state["epoch_losses"].append(ep_loss)
            state["epoch"] += 1
            state["step_in_epoch"] = 0
            if ep_loss < state["best"] * (1.0 - cfg.tolerance):
                state["best"], state["wait"] = ep_loss, 0
            else:
                state["wait"] += 1
            # the losses are the processes' sums, so they agree; agree() makes sure of the decision itself
            state["stopped"] = bool(ctx.agree([float(bool(cfg.patience and state["wait"] >= cfg.patience))])[0])
            report(0.03 + (0.5 if cfg.recipe == "denoise" else 0.8) * state["epoch"] / max(1, cfg.epochs),
                   f"epoch {state['epoch']}/{cfg.epochs}, loss {ep_loss:.4f}")
        tick()
        if state["step"] % cfg.checkpoint_every == 0 or state["stopped"] or state["epoch"] >= cfg.epochs:
            save_now()
    if state["step"] == 0:
        save_now()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)

    # ------------------------------------------------------------------ decoding
    probs, masks, case_seconds, case_info = [], [], [], []
    evals, passes = state["mlp_point_evals"], state["decoder_passes"]
    share = state["train_seconds"] / n
    # rank 0 alone decodes and writes every case; the other processes are done after training (no
    # final barrier: a long decoding would outlast the process group's timeout) and return no masks
    if cfg.recipe == "denoise" and ctx.main:
        # every case through refine_mask's own path, with the adapted model as its prior
        def sub(f: float, msg: str) -> None:
            report(0.55 + 0.45 * f, msg)

        warm = resolve_prior(prior_path, use_app).stem  # the warm-start prior's file: anatomy_v1, adrenal_mr_v1...

        def on_case(i: int, c: StudyCase, r) -> None:
            probs.append(r.probability)
            masks.append(r.mask)
            case_seconds.append(r.seconds + share)
            # the prior refine read is a temporary copy of the adapted model: name what it is instead
            case_info.append({**r.info, "prior": None, "prior_name": f"study ({warm})"})
            own = [w for w in r.warnings if "touches the border" not in w and "this prior is shape-only" not in w]
            notes.extend(f"case {c.name}: {w}" for w in own)
            if outputs is not None:
                outputs.case_done(c, r.mask, case_seconds[-1], case_info[-1], own)

        with warnings.catch_warnings():  # each case's notes are gathered into the study's warnings
            warnings.simplefilter("ignore")
            # adapted on the annotations as painted, the model refines them as painted (study_card says so too)
            # with images each case is also checked against its own (a shape-only model reads none: do
            # no harm with the image, and the confidence from it, as for a single refinement)
            with_images = bool(cfg.appearance and any_image)
            refine_with(model, {**meta, "interpolate_slices": False}, cases, cfg.refine_preset, cfg.device,
                        cfg.seed, cfg.margin_mm, [case_spacing(cfg, c) for c in cases], cfg.min_island_mm3,
                        with_images, progress=sub, cancel=cancel, on_case=on_case, options=cfg.refine_options)
    for i, (c, p) in enumerate(zip(cases, prep) if cfg.recipe != "denoise" and ctx.main else ()):
        if cancel is not None and cancel():
            raise Cancelled("study cancelled while decoding")
        t_case = time.perf_counter()
        report(0.85 + 0.15 * i / n, f"decoding {c.name} ({i + 1}/{n})")
        with torch.no_grad():
            z = latents[i].detach()[None]
            logits, count = decode_logits(model_query(model, z, p.context), p.target.shape[-1])
        evals += count
        passes += 1
        prob = to_source(torch.sigmoid(logits).cpu().numpy(), p.work_grid, c.grid).astype(np.float32)
        mask = drop_islands(prob >= 0.5, c.grid.spacing, cfg.min_island_mm3).astype(np.uint8)
        if not mask.any():
            notes.append(f"case {c.name}: the refined mask is empty")
        probs.append(prob)
        masks.append(mask)
        case_seconds.append(time.perf_counter() - t_case + share)
        if outputs is not None:
            outputs.case_done(c, mask, case_seconds[-1])

    for w in notes if ctx.main else ():
        warnings.warn(w, stacklevel=2)
    result = StudyResult(
        names=names, masks=masks, probabilities=probs,
        latents=torch.stack([z.detach().cpu() for z in latents]), model=model,
        losses=list(state["losses"]), epoch_losses=list(state["epoch_losses"]), steps=state["step"],
        epochs=state["epoch"], stopped_early=bool(state["stopped"] and state["epoch"] < cfg.epochs),
        seconds=time.perf_counter() - t0, train_seconds=state["train_seconds"], case_seconds=case_seconds,
        mlp_point_evals=int(evals), decoder_passes=int(passes), config=cfg, warnings=notes, case_info=case_info,
        cases=list(cases),
        info={"device": str(device), "appearance": use_app, "resumed_from_step": resumed_from,
              "prior": str(prior_path or default_prior(use_app)) if cfg.recipe != "paper" else None,
              "prior_meta": meta, "working_shapes": [tuple(p.target.shape[-3:]) for p in prep],
              "processes": ctx.world, "rank": ctx.rank},
    )
    if outputs is not None:
        outputs.finish(result)
    report(1.0, "done")
    return result


# ---------------------------------------------------------------------------- finding the cases
def case_name(path: str | Path) -> str:
    """File name without its image extension: ``case1.nii.gz`` -> ``case1``."""
    from .cases import case_stem

    return case_stem(path)


def find_cases(masks_dir: str, images_dir: Optional[str] = None) -> list[tuple[str, Path, Optional[Path]]]:
    """(name, mask file, image file or None) of every case: ``masks_dir`` alone is read with the case
    rules shared with Slicer's batch (``NeARSlicerLib.cases``: sub-folders, flat image + segmentation
    pairs, or a folder of masks); with ``images_dir`` masks are matched to images by name."""
    from .cases import discover_cases, match_folders, usable_cases

    found = discover_cases(masks_dir) if images_dir is None else match_folders(masks_dir, images_dir)
    return [(c.name, c.segmentation, c.image) for c in usable_cases(found)]


def read_manifest(path: str) -> list[tuple[str, Path, Optional[Path], Optional[str], Optional[str]]]:
    """(name, mask, image or None, label or None, structure or None) rows of a CSV with columns name (or
    case, as ``nearslicer batch``'s manifest: one manifest serves both), mask[, image][, label][, structure];
    relative paths are relative to the CSV's folder. The CSV is read as ``batch.manifest_table`` reads it."""
    from .batch import manifest_table

    p = Path(path)
    if not p.is_file():
        raise InputError(f"manifest not found: {path}")
    cols, raw = manifest_table(p)
    if not ({"name", "case"} & set(cols)) or "mask" not in cols:
        raise InputError(f"manifest {p.name} needs the columns name (or case) and mask (optional: image, label, "
                         f"structure); found {cols}")
    key = "name" if "name" in cols else "case"
    rows, seen = [], set()
    for i, r in enumerate(raw, start=2):
        if not any(r.values()):
            continue
        name, mask = r.get(key, ""), r.get("mask", "")
        if not name or not mask:
            raise InputError(f"manifest {p.name} line {i}: {key} and mask are required")
        if name in seen:
            raise InputError(f"manifest {p.name} line {i}: duplicate case name {name!r}")
        seen.add(name)
        resolve = lambda s: (Path(s) if Path(s).is_absolute() else p.parent / s)  # noqa: E731
        m = resolve(mask)
        img = resolve(r["image"]) if r.get("image") else None
        for f_, what in ((m, "mask"), (img, "image")):
            if f_ is not None and not f_.is_file():
                raise InputError(f"manifest {p.name} line {i}: {what} file not found: {f_}")
        rows.append((name, m, img, r.get("label") or None, r.get("structure") or None))
    if not rows:
        raise InputError(f"manifest {p.name} lists no cases")
    return rows


def load_cases(masks_dir: Optional[str] = None, images_dir: Optional[str] = None, manifest: Optional[str] = None,
               label: Optional[str] = None, structure: Optional[str] = None, prior: Optional[str] = None,
               cfg: Optional[StudyConfig] = None,
               on_read: Optional[Callable[[int, int, str], None]] = None) -> list[StudyCase]:
    """Read the cases of a study from folders (matched by name) or a CSV manifest.

    ``label`` picks one label of multilabel masks (a manifest's label column wins). A mask and its
    image must share their voxels (``batch.read_image_on``). Each case's ``structure`` is its manifest
    row's when given, else ``structure``, else its .seg.nrrd segment's name, else its file name
    (``batch.structure_of``, as ``refine`` reads it).

    Each case is kept as the box of its volume that a study with ``prior`` (None: ``auto`` by the case's
    structure) and ``cfg`` reads (``case_crop``; ``StudyCase.source`` says where it lies), not the whole
    volume: a study of full-resolution CTs then holds boxes, not whole scans. ``run_study`` reads a case
    again when it needs a larger box (another prior or scale). ``on_read(i, n, name)`` is called as each
    case has been read (a full-resolution CT takes seconds).
    """
    from .batch import read_case_inputs, segment_name, several_labels, structure_of

    cfg = cfg or StudyConfig.for_recipe(DEFAULT_RECIPE)
    if manifest:
        entries = read_manifest(manifest)
    elif masks_dir:
        entries = [(n, m, i, None, None) for n, m, i in find_cases(masks_dir, images_dir)]
    else:
        raise InputError("give a masks folder or a manifest")
    # the prior a study adapts reads images when any case has one (run_study's rule)
    with_image = bool(cfg.appearance and any(e[2] is not None for e in entries))
    cases = []
    for name, mpath, ipath, lab, what in entries:
        chosen = lab if lab is not None else label  # a manifest row's own label wins
        try:
            if Path(mpath).is_dir():
                raise InputError(f"its masks are a folder of one file per structure ({mpath}, TotalSegmentator's "
                                 "segmentations/): a study case is one structure, one file per manifest row "
                                 "(nearslicer batch refines the folder)")
            if several_labels(chosen) is not None:
                raise InputError(f"a study case is one structure: give one label per manifest row, not "
                                 f"{chosen!r} (nearslicer batch takes several)")
            mask, grid, image, info = read_case_inputs(str(mpath), None if ipath is None else str(ipath), chosen)
            whole = StudyCase(name, mask, grid, image, str(mpath), str(ipath) if ipath is not None else None,
                              structure_of(str(mpath), what or structure, info),
                              segment=segment_name(info), label=str(info["label"]))
            # the whole scan's checks (NaN anywhere, an empty mask) before only its box is kept
            check_cases([whole])
            lo, hi = study_box(whole, prior, cfg, with_image)
        except InputError as exc:
            raise InputError(f"case {name}: {exc}") from None
        cases.append(_boxed(whole, lo, hi, chosen))
        if on_read is not None:
            on_read(len(cases), len(entries), name)
    return cases


def study_box(case: StudyCase, prior: Optional[str], cfg: StudyConfig, with_image: bool,
              clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """``[lo, hi)`` box of ``case``'s grid ([k, j, i]) that a study of ``cfg`` with ``prior`` (None or
    ``auto``: the one the case's structure gets) reads for it; ``clip=False``: possibly beyond the array."""
    meta = _card(cfg, str(choose_prior(prior, case.structure, with_image)[1]), with_image)
    return _study_box(case, meta, _card_scale(cfg, meta), clip=clip)


def _card(cfg: StudyConfig, prior_path: Optional[str], with_image: bool) -> dict:
    """The card a study of ``cfg`` reads its working scale from: the warm-start prior's (fast, denoise);
    the paper's recipe trains a fresh model at the default field of view."""
    if cfg.recipe not in ("fast", "denoise"):
        return {}
    from .refine import get_prior

    path = resolve_prior(prior_path, with_image)
    return card_meta(path, get_prior(str(path), "cpu")[1])


def _study_box(case: StudyCase, meta: dict, cfg: StudyConfig, clip: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """The box of ``case``'s grid that a study of ``cfg`` (its card's scale filled in) reads."""
    return needed_box(np.asarray(case.mask) > 0, case.grid, meta, cfg.margin_mm, case_spacing(cfg, case),
                      cfg.recipe == "denoise", clip=clip)


def _boxed(case: StudyCase, lo, hi, label: Optional[str]) -> StudyCase:
    """``case`` (a whole volume) as its box ``[lo, hi)``."""
    mask, grid, image, source = crop(np.asarray(case.mask), case.grid, case.image, lo, hi, label)
    return replace(case, mask=mask, grid=grid, image=image, source=source)


def _within_reach(cases: Sequence[StudyCase], meta: dict, cfg: StudyConfig) -> list[StudyCase]:
    """The cases, each box (``load_cases``) too small for this study's prior and scale read again from its
    files with the box the study needs (a study run with another prior or scale than it was loaded for)."""
    out = []
    for c in cases:
        if getattr(c, "source", None) is not None:  # cases may be any objects with a study case's fields
            lo, hi = _study_box(c, meta, cfg, clip=False)
            if not c.source.holds(lo, hi):
                if not c.mask_path:
                    raise InputError(f"case {c.name}: its box is smaller than this study reads, and it has no "
                                     "file to read it again from")
                start = np.asarray(c.source.lo)
                want_lo = np.minimum(np.maximum(start + lo, 0), start)
                want_hi = np.maximum(np.minimum(start + hi, c.source.grid.shape), start + c.source.shape)
                from .batch import read_case_inputs

                mask, grid, image, _ = read_case_inputs(c.mask_path, c.image_path, c.source.label)
                c = _boxed(replace(c, mask=mask, grid=grid, image=image), want_lo, want_hi, c.source.label)
        out.append(c)
    return out


__all__ = ["StudyCase", "StudyConfig", "StudyResult", "run_study", "write_study", "study_card", "save_study_prior",
           "load_cases", "study_box", "case_spacing",
           "find_cases", "read_manifest", "case_name", "check_cases", "RECIPES"]
