"""Dense decoding of a NeAR model on an n^3 working cube, coarse to fine.

The MLP is evaluated everywhere only on a coarse grid (<= 32^3). Each finer level
(doubling up to n) interpolates the coarser logits and re-evaluates the MLP only where the
surface may pass: voxels whose 3^3 neighbourhood changes sign or whose logit is small.
Arrays are [k, j, i]; points are normalised (x, y, z) in [-1, 1] (see ``model.py``).
"""
from __future__ import annotations

from typing import Callable, Optional

import torch
import torch.nn.functional as F

from .model import Condition, NeARModel, surface_band

# (r, flat [k, j, i] voxel indices of an r^3 cube or None for all of them) -> (N,) logits there
VoxelQuery = Callable[[int, Optional[torch.Tensor]], torch.Tensor]


def _levels(n: int, coarsest: int) -> list[int]:
    sizes = [n]
    while sizes[-1] > coarsest:
        sizes.append((sizes[-1] + 1) // 2)
    return sizes[::-1]


@torch.no_grad()
def decode_logits(
    query: VoxelQuery, n: int, coarsest: int = 32, band_logit: float = 3.0, chunk: int = 65536,
) -> tuple[torch.Tensor, int]:
    """Logits on every voxel centre of an n^3 cube ([k, j, i]); returns (logits, MLP evaluations)."""
    sizes = _levels(n, coarsest)
    r = sizes[0]
    logits = query(r, None).view(r, r, r)
    evaluated = r**3
    for r in sizes[1:]:
        up = F.interpolate(logits[None, None], size=(r, r, r), mode="trilinear", align_corners=False)[0, 0]
        mixed = surface_band((up > 0).float())  # the sign changes within the voxel's 3^3 neighbourhood
        todo = (mixed | (up.abs() < band_logit)).view(-1).nonzero().squeeze(1)
        if todo.numel():
            flat = up.view(-1).clone()
            flat[todo] = torch.cat([query(r, part) for part in todo.split(chunk)])
            up = flat.view(r, r, r)
            evaluated += int(todo.numel())
        logits = up
    return logits, evaluated


def model_query(model: NeARModel, z: torch.Tensor, context: Condition | None = None) -> VoxelQuery:
    """The voxel query of one latent code ``z`` (1, D); ``context`` from ``model.context``."""
    maps = model.maps(z, context)

    def query(r: int, index: Optional[torch.Tensor]) -> torch.Tensor:
        return model.query_voxels(maps, r, index, context)

    return query


@torch.no_grad()
def decode_probability(
    model: NeARModel, z: torch.Tensor, n: int, context: Condition | None = None, coarsest: int = 32
) -> torch.Tensor:
    """Occupancy probability (n, n, n) of latent ``z`` on the working cube, coarse to fine."""
    logits, _ = decode_logits(model_query(model, z, context), n, coarsest=coarsest)
    return torch.sigmoid(logits)
