"""A lesion deep in soft tissue, for the tests that a crop around it is read with its whole scan's facts."""
from __future__ import annotations

import numpy as np


def lesion_in_soft_tissue(shape: tuple, air_voxels: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """(lesion 0/1 uint8, CT float32 HU), both ``[k, j, i]``: an ellipsoid of 4 x 6 x 10 voxels' radii (k, j, i)
    at the centre, 90 HU in soft tissue of 40 HU, noise 8 HU (seed 5). ``air_voxels``: that many voxels of
    air (-1000 HU) on each side along j and i, so that the whole scan reads as CT while a box around the
    lesion holds soft tissue only (on 2 mm voxels, a 40 mm lesion)."""
    k, j, i = np.indices(shape)
    centre = [n // 2 for n in shape]
    lesion = (((k - centre[0]) / 4.0) ** 2 + ((j - centre[1]) / 6.0) ** 2
              + ((i - centre[2]) / 10.0) ** 2 <= 1.0)
    ct = np.full(shape, -1000.0, np.float32)
    ct[:, air_voxels:shape[1] - air_voxels, air_voxels:shape[2] - air_voxels] = 40.0
    ct[lesion] = 90.0
    ct += np.random.default_rng(5).normal(0.0, 8.0, shape).astype(np.float32)
    return lesion.astype(np.uint8), ct
