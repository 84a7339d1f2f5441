"""Study mode's ``"denoise"`` recipe: adapt a prior to a study's shape class without learning the
annotations' own errors, then refine every case with the adapted prior exactly as ``refine_mask`` does.

Training pairs are (re-distorted target -> target), the target being the warm-start prior's own
reconstruction of each working-cube annotation (``StudyConfig.denoise_targets = "prior"``, the
default) or the annotation itself (``"annotation"``, the first recipe): each step, every target is
corrupted again by the annotation-error library (``annotation_errors.mixture``, seeded by (seed,
epoch, case), so resuming needs no extra state) and the whole model (encoder, decoder, point MLP)
learns to recover it. With the prior's reconstructions as targets the annotations' errors are never
learnt (trained towards the annotations, the adapted prior learnt to reproduce them and refined
less than the prior itself: README "Study mode"); an L2-SP penalty
``l2sp * sum((theta - theta_prior)^2)`` keeps the weights near the prior's so a few steps cannot
forget what it knew.

Arrays are ``[k, j, i]``; the working cubes are isotropic (``spacing_mm``), points normalised (x, y, z)
in [-1, 1].
"""
from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Callable, Optional, Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .annotation_errors import FAMILIES, mixture
from .fit import sample_fit_points
from .model import NeARModel, sample_volume

Progress = Callable[[float, str], None]


def prior_snapshot(model: NeARModel) -> dict[str, torch.Tensor]:
    """A detached copy of every trainable weight: the L2-SP anchor."""
    return {k: p.detach().clone() for k, p in model.named_parameters()}


def l2sp_penalty(model: NeARModel, anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    """sum over weights of (theta - theta_prior)^2."""
    return sum((p - anchor[k]).pow(2).sum() for k, p in model.named_parameters() if p.requires_grad)


def redistort(mask: np.ndarray, spacing_mm: float, seed: int, epoch: int, case: int,
              image: Optional[np.ndarray] = None, p_clean: float = 0.0) -> np.ndarray:
    """The working-cube annotation ``mask`` (bool) corrupted again by the error library's mixture, or
    left as it is with probability ``p_clean``; a pure function of (seed, epoch, case)."""
    rng = np.random.default_rng([int(seed), int(epoch), int(case), 0x5EED])
    out, _ = mixture(mask, (spacing_mm,) * 3, rng, FAMILIES, image=image, p_clean=p_clean)
    return out


def denoise_step(model: NeARModel, inputs: Sequence[Optional[torch.Tensor]], targets: Sequence[torch.Tensor],
                 appearances: Sequence[Optional[torch.Tensor]], points: int, gen: torch.Generator,
                 anchor: dict[str, torch.Tensor], l2sp: float) -> float:
    """Accumulate the gradients of mean BCE(model(encode(input)), target) + l2sp * ||theta - theta_prior||^2
    over one batch (each ``inputs[b]``/``targets[b]`` a (1, 1, n, n, n) cube); returns the loss.

    Under torchrun a process computes only its share of the batch: ``inputs[b]`` is None for the
    cases of the other processes. Their points are drawn all the same (so that ``gen`` advances
    alike in every process) and each case's term is divided by the whole batch's size, so that the
    shares add up to the single-process loss; the caller passes ``l2sp = 0`` to all processes but
    one, so that the penalty is counted once.
    """
    total = 0.0
    B = len(inputs)
    for x, y_vol, app in zip(inputs, targets, appearances):
        # points near the target's surface (where the errors to undo are) and uniform in the cube
        pts = sample_fit_points(y_vol, points, gen)
        if x is None:
            continue
        z, cond = model.encode(x, app)
        y = sample_volume(y_vol, pts).clamp(0, 1)
        loss = F.binary_cross_entropy_with_logits(model(z, pts, cond), y) / B
        loss.backward()
        total += loss.item()
    if l2sp > 0:
        reg = l2sp * l2sp_penalty(model, anchor)
        reg.backward()
        total += reg.item()
    return total


def refine_with(model: NeARModel, meta: dict, cases: Sequence, preset: str, device: str, seed: int,
                margin_mm: float, spacing_mm: Sequence[float], min_island_mm3: float, appearance: bool,
                progress: Optional[Progress] = None, cancel: Optional[Callable[[], bool]] = None,
                on_case: Optional[Callable[[int, object, object], None]] = None,
                options: Optional[dict] = None) -> list:
    """``refine_mask`` of every case (``StudyCase``) with ``model`` as its prior: the model is written to
    a temporary prior file that ``refine_mask`` loads like any other (same encode + latent fit + flips
    + decode + map back), case i on a working spacing of ``spacing_mm[i]``. ``appearance``: each case's
    image is given (read by an S+A model; with a shape-only one it only checks the change, as in
    ``refine_mask``). ``on_case(i, case, result)`` is called as each case finishes; returns the
    ``RefineResult`` of each case. ``options``: further RefineOptions fields of every case (the
    do-no-harm settings, ``StudyConfig.refine_options``); a case's ``image_voxel_mm`` is its own."""
    from .case_crop import scan_facts
    from .prior import save_prior
    from .refine import RefineOptions, refine_mask

    report = progress or (lambda f, m: None)
    results = []
    with tempfile.TemporaryDirectory(prefix="nearslicer-study-") as tmp:
        path = save_prior(Path(tmp) / "adapted.safetensors", model, meta)
        for i, c in enumerate(cases):
            # the image's own voxel is the case's (its image may have been resampled), not the study's
            opts = RefineOptions(prior=str(path), appearance=appearance, preset=preset, device=device, seed=seed,
                                 margin_mm=margin_mm, spacing_mm=spacing_mm[i], min_island_mm3=min_island_mm3,
                                 image_voxel_mm=getattr(c, "image_voxel_mm", None), **(options or {}))
            def sub(f: float, msg: str, _i: int = i) -> None:
                report((_i + f) / len(cases), f"refining {cases[_i].name} ({_i + 1}/{len(cases)}): {msg}")

            # a case held as a box of its volume (study.load_cases) refines as the whole scan would
            results.append(refine_mask(np.asarray(c.mask), c.grid, c.image if appearance else None, opts,
                                       progress=sub, cancel=cancel, scan=scan_facts(c)))
            if on_case is not None:
                on_case(i, c, results[-1])
    return results


__all__ = ["prior_snapshot", "l2sp_penalty", "redistort", "denoise_step", "refine_with"]
