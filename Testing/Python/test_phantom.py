"""The synthetic adrenal phantom and its CT context."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib.errors import InputError
from NeARSlicerLib.phantom import adrenal_phantom, ct_phantom

SEEDS = range(6)


@pytest.mark.parametrize("seed", SEEDS)
def test_gland_is_a_thin_connected_centred_body_of_the_right_size(seed):
    m = adrenal_phantom(seed)
    assert m.dtype == bool and m.shape == (64, 64, 64)
    assert 2800 <= m.sum() <= 6000
    assert ndimage.label(m, structure=np.ones((3, 3, 3)))[1] == 1
    nz = np.argwhere(m)
    centre = (nz.min(0) + nz.max(0)) / 2.0
    assert np.all(np.abs(centre - 31.5) <= 3.0), centre
    assert not (m[0].any() or m[-1].any() or m[:, 0].any() or m[:, -1].any() or m[:, :, 0].any() or m[:, :, -1].any())
    # Thin: no voxel deeper than 3.5 mm inside (thickness <= ~7 mm); a sheet, not a blob: its
    # volume is far below that of the ball spanning its extent.
    depth = ndimage.distance_transform_edt(m)
    assert depth.max() <= 3.5
    extent = (nz.max(0) - nz.min(0) + 1).max()
    assert extent >= 30 and m.sum() < 0.25 * (np.pi / 6) * extent ** 3


def _convex_hull_area(points: np.ndarray) -> float:
    from scipy.spatial import ConvexHull
    return float(ConvexHull(points).volume)  # in 2D, "volume" is the area


@pytest.mark.parametrize("seed", SEEDS)
def test_gland_is_v_or_y_shaped_not_a_plain_blob(seed):
    # Seen face-on (projected onto its two main axes), two diverging limbs leave a notch, so the
    # silhouette fills clearly less than its convex hull (an ellipse or slab would fill ~100%).
    m = adrenal_phantom(seed)
    pts = np.argwhere(m).astype(float)
    pts -= pts.mean(0)
    _, _, vt = np.linalg.svd(pts, full_matrices=False)
    ij = np.round(pts @ vt[:2].T + 45).astype(int)
    img = np.zeros((90, 90), bool)
    img[ij[:, 0], ij[:, 1]] = True
    img = ndimage.binary_fill_holes(ndimage.binary_closing(img))
    fill = img.sum() / _convex_hull_area(np.argwhere(img))
    assert fill < 0.93, f"seed {seed}: silhouette fills {fill:.2f} of its hull"  # measured 0.77-0.90


def test_deterministic_per_seed_and_seeds_differ():
    assert np.array_equal(adrenal_phantom(3), adrenal_phantom(3))
    assert not np.array_equal(adrenal_phantom(3), adrenal_phantom(4))


def test_physical_size_is_kept_on_coarser_grids():
    fine = adrenal_phantom(5).sum()
    coarse = adrenal_phantom(5, shape=(32, 32, 32), spacing=2.0).sum() * 8.0
    assert abs(coarse - fine) < 0.25 * fine
    aniso = adrenal_phantom(5, shape=(26, 90, 90), spacing=(0.7, 0.7, 2.5))
    assert aniso.shape == (26, 90, 90)
    assert abs(aniso.sum() * 0.7 * 0.7 * 2.5 - fine) < 0.25 * fine


def test_ct_phantom_intensities():
    m = adrenal_phantom(0)
    ct = ct_phantom(m, seed=0)
    assert ct.dtype == np.float32 and ct.shape == m.shape
    assert np.array_equal(ct, ct_phantom(m, seed=0))
    core = ndimage.binary_erosion(m)                   # away from partial volume with fat
    far = ~ndimage.binary_dilation(m, iterations=25)
    assert 15 <= np.median(ct[core]) <= 55             # soft tissue
    assert -130 <= np.median(ct[far]) <= 20            # mostly fat, some neighbour organ
    fat_noise = ct[far][ct[far] < -50]
    assert -125 <= np.median(fat_noise) <= -75
    # A neighbouring organ at ~55 HU touches part (not all) of the gland's boundary.
    shell = ndimage.binary_dilation(m) & ~m
    touching = (ct[shell] > 20).mean()
    assert 0.05 < touching < 0.6, touching  # measured 0.16 for seed 0
    # Noise of 10-20 HU: differences of adjacent fat voxels have std ~ sqrt(2) * sigma.
    flat = ct[40:60, 0:10, 0:10] if not m[40:60, 0:10, 0:10].any() else ct[:10, :10, :10]
    diffs = np.diff(flat, axis=2).ravel()
    assert 10 * np.sqrt(2) * 0.8 <= diffs.std() <= 20 * np.sqrt(2) * 1.1


def test_ct_phantom_rejects_empty_or_flat_masks():
    with pytest.raises(InputError, match="mask is empty"):
        ct_phantom(np.zeros((16, 16, 16), bool))
    with pytest.raises(InputError, match="expected a 3D mask"):
        ct_phantom(np.ones((16, 16), bool))


@pytest.mark.parametrize("seed", SEEDS)
def test_neighbour_organ_touches_every_phantom(seed):
    m = adrenal_phantom(seed)
    ct = ct_phantom(m, seed=seed)
    shell = ndimage.binary_dilation(m) & ~m
    assert 0.01 < (ct[shell] > 20).mean() < 0.6
