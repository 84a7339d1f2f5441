"""Dense decoding of a NeAR model on an n^3 working cube, coarse to fine.

The MLP is evaluated everywhere only on a coarse grid (<= 32^3). Each finer level
(doubling up to n) interpolates the coarser logits and re-evaluates the MLP only where the
surface may pass: voxels whose 3^3 neighbourhood changes sign or whose logit is small.
Arrays are [k, j, i]; points are normalised (x, y, z) in [-1, 1] (see ``model.py``).
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F

from .model import Condition, NeARModel, voxel_centres

QueryFn = Callable[[torch.Tensor], torch.Tensor]  # (1, N, 3) points -> (1, N) logits


def _levels(n: int, coarsest: int) -> list[int]:
    sizes = [n]
    while sizes[-1] > coarsest:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes[::-1]


def _eval_chunked(query: QueryFn, pts: torch.Tensor, chunk: int) -> torch.Tensor:
    out = [query(pts[None, s:s + chunk])[0] for s in range(0, pts.shape[0], chunk)]
    return torch.cat(out) if out else pts.new_zeros(0)


@torch.no_grad()
def decode_logits(
    query: QueryFn, n: int, device: torch.device | str = "cpu", coarsest: int = 32,
    band_logit: float = 3.0, chunk: int = 131072,
) -> tuple[torch.Tensor, int]:
    """Logits on every voxel centre of an n^3 cube ([k, j, i]); returns (logits, MLP evaluations)."""
    sizes = _levels(n, coarsest)
    r = sizes[0]
    logits = _eval_chunked(query, voxel_centres(r, device).view(-1, 3), chunk).view(r, r, r)
    evaluated = r**3
    for r in sizes[1:]:
        up = F.interpolate(logits[None, None], size=(r, r, r), mode="trilinear", align_corners=False)[0, 0]
        pos = (up > 0).float()[None, None]
        mixed = (F.max_pool3d(pos, 3, 1, 1) - (-F.max_pool3d(-pos, 3, 1, 1)))[0, 0] > 0
        todo = (mixed | (up.abs() < band_logit)).view(-1).nonzero().squeeze(1)
        if todo.numel():
            centres = (torch.arange(r, device=device, dtype=torch.float32) * 2 + 1) / r - 1
            k, j, i = todo // (r * r), (todo // r) % r, todo % r
            pts = torch.stack([centres[i], centres[j], centres[k]], -1)
            flat = up.view(-1).clone()
            flat[todo] = _eval_chunked(query, pts, chunk)
            up = flat.view(r, r, r)
            evaluated += int(todo.numel())
        logits = up
    return logits, evaluated


def model_query(model: NeARModel, z: torch.Tensor, context: Condition | None = None) -> QueryFn:
    """A query function for one latent code ``z`` (1, D); ``context`` from ``model.context``."""
    maps = model.maps(z, context)

    def query(points: torch.Tensor) -> torch.Tensor:
        return model.query(maps, points, context)

    return query


@torch.no_grad()
def decode_probability(
    model: NeARModel, z: torch.Tensor, n: int, context: Condition | None = None, coarsest: int = 32
) -> torch.Tensor:
    """Occupancy probability (n, n, n) of latent ``z`` on the working cube, coarse to fine."""
    logits, _ = decode_logits(model_query(model, z, context), n, z.device, coarsest=coarsest)
    return torch.sigmoid(logits)
