"""Single-case latent fitting: optimise z (and optionally, briefly, the decoder) so that the
model's occupancy matches the annotator's mask, with BCE + lambda * ||z||^2.

The shape prior cannot represent high-frequency annotation errors, so the fitted surface
keeps what is plausible and drops spurs, holes and slabs; the initial z comes from the
amortised encoder, so a few dozen steps suffice.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from .errors import Cancelled
from .model import Condition, NeARModel, sample_volume, surface_band


@dataclass(frozen=True)
class FitConfig:
    steps: int = 40
    lr: float = 0.02
    latent_reg: float = 1e-3  # lambda of the ||z||^2 term (mean over latent dimensions)
    anchor_reg: float = 0.0  # weight of ||z - z0||^2: keeps z near the encoder's denoised estimate
    points: int = 8192
    decoder_steps: int = 0
    decoder_lr: float = 1e-5


MULTINOMIAL_MAX = 2 ** 24  # torch.multinomial's limit on the number of categories


def sample_fit_points(target: torch.Tensor, n_points: int, gen: torch.Generator,
                      band: torch.Tensor | None = None) -> torch.Tensor:
    """(1, N, 3) points: 60% near the annotation's surface, 40% uniform in the cube.

    ``band``: ``surface_band(target)`` flattened on the CPU, when the caller draws many times from
    one target (the same draws, without recomputing it: two 3^3 max-pools of the whole cube).
    """
    r = target.shape[-1]
    n_band = int(0.6 * n_points)
    if band is None:
        band = surface_band(target).view(-1).cpu()
    if band.numel() <= MULTINOMIAL_MAX:
        flat = torch.multinomial(band.float()[None] + 1e-6, n_band, replacement=True, generator=gen)
    else:
        # torch.multinomial takes at most 2^24 categories: draw uniformly among the band's voxels
        where = band.nonzero().squeeze(1)
        if where.numel() == 0:
            where = torch.arange(band.numel())
        flat = where[torch.randint(where.numel(), (1, n_band), generator=gen)]
    k, j, i = flat // (r * r), (flat // r) % r, flat % r
    ijk = torch.stack([i, j, k], -1).float() + torch.rand(1, n_band, 3, generator=gen)
    pts = torch.cat([ijk * (2.0 / r) - 1.0, torch.rand(1, n_points - n_band, 3, generator=gen) * 2 - 1], 1)
    return pts.to(target.device)


def fit_latent(
    model: NeARModel,
    target: torch.Tensor,
    z0: torch.Tensor,
    cfg: FitConfig,
    context: Condition | None = None,
    seed: int = 0,
    progress: Callable[[float, str], None] | None = None,
    cancel: Callable[[], bool] | None = None,
) -> tuple[torch.Tensor, NeARModel, list[float]]:
    """Fit a latent code to ``target`` (1, 1, n, n, n) soft occupancy; ``context`` from ``model.context``.

    Returns (z, model, losses); ``model`` is a tuned copy when ``cfg.decoder_steps > 0``,
    the given model otherwise (never modified in place).
    """
    gen = torch.Generator().manual_seed(seed)
    z_init = z0.detach()
    context = context.detach() if context is not None else None  # the annotation's inputs are constants here
    z = z_init.clone().requires_grad_(True)
    losses: list[float] = []
    total = cfg.steps + cfg.decoder_steps
    for p in model.parameters():
        p.requires_grad_(False)

    band = surface_band(target).view(-1).cpu()  # the target is fixed: its band is drawn from at every step

    def run(m: NeARModel, opt: torch.optim.Optimizer, steps: int, done: int, what: str) -> None:
        for step in range(steps):
            if cancel is not None and cancel():
                raise Cancelled("refinement cancelled")
            pts = sample_fit_points(target, cfg.points, gen, band)
            y = sample_volume(target, pts).clamp(0, 1)
            loss = F.binary_cross_entropy_with_logits(m(z, pts, context), y) + cfg.latent_reg * z.pow(2).mean()
            if cfg.anchor_reg > 0:
                loss = loss + cfg.anchor_reg * (z - z_init).pow(2).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if progress is not None:
                progress((done + step + 1) / max(1, total), f"{what} ({step + 1}/{steps})")

    run(model, torch.optim.Adam([z], lr=cfg.lr), cfg.steps, 0, "fitting latent code")
    if cfg.decoder_steps > 0:
        model = copy.deepcopy(model)
        params = list(model.decoder.parameters()) + list(model.mlp.parameters())
        for p in params:
            p.requires_grad_(True)
        run(model, torch.optim.Adam(params + [z], lr=cfg.decoder_lr), cfg.decoder_steps, cfg.steps, "tuning decoder")
        for p in model.parameters():
            p.requires_grad_(False)
    return z.detach(), model, losses
