"""Masks painted on thick slices and resampled to a finer grid: their slices are interpolated
(shape-based) before the prior sees them, closer to the truth than the staircase."""
import numpy as np
import pytest

from NeARSlicerLib.annotation_errors import thick_slice
from NeARSlicerLib.bench import identity_grid
from NeARSlicerLib.cli import main as cli_main
from NeARSlicerLib.confidence import painted_slices
from NeARSlicerLib.io import read_mask, write_mask
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.refine import RefineOptions, refine_mask
from NeARSlicerLib.slice_interpolation import interpolate_painted_slices


def ellipsoid() -> np.ndarray:
    k, j, i = np.mgrid[:48, :48, :48]
    return ((k - 23.5) / 14) ** 2 + ((j - 23.5) / 9) ** 2 + ((i - 23.5) / 7) ** 2 <= 1


def slabs(truth: np.ndarray, run: int) -> np.ndarray:
    """``truth`` painted on slabs of ``run`` slices (each the slab's mean occupancy >= 0.5), repeated."""
    out = np.zeros_like(truth)
    for s in range(0, truth.shape[0], run):
        out[s:s + run] = truth[s:s + run].mean(0) >= 0.5
    return out


@pytest.mark.parametrize("seed", range(3))
def test_interpolated_slices_are_closer_to_truth(seed):
    truth = ellipsoid()
    stairs = thick_slice(truth, (1.0, 1.0, 1.0), np.random.default_rng(seed), severity=0.0, thickness_mm=5.0,
                         p_missed=0.0, p_doubled=0.0)
    found = painted_slices(stairs, (1.0, 1.0, 1.0))
    assert found is not None and found.axis == 0 and found.thickness_mm == pytest.approx(5.0)
    before = stairs.copy()
    smooth = interpolate_painted_slices(stairs, (1.0, 1.0, 1.0), found.axis)
    assert np.array_equal(stairs, before)  # the input is not modified
    assert dice(smooth, truth) > dice(stairs, truth) + 0.005
    # the structure's extent along the slices is the annotator's
    rows = np.flatnonzero(smooth.any(axis=(1, 2)))
    painted_rows = np.flatnonzero(stairs.any(axis=(1, 2)))
    assert rows.min() == painted_rows.min() and rows.max() == painted_rows.max()


def test_missed_slice_is_bridged():
    truth = ellipsoid()
    full = slabs(truth, 4)
    missed = full.copy()
    missed[24:28] = False  # one interior painted slice left empty
    out = interpolate_painted_slices(missed, (1.0, 1.0, 1.0), 0)
    rows = np.flatnonzero(truth.any(axis=(1, 2)))
    assert all(out[z].any() for z in range(rows.min() + 2, rows.max() - 2))
    assert dice(out, truth) > dice(full, truth) > dice(missed, truth)


def test_axis_and_anisotropic_spacing():
    """Slices along i on a grid of 0.7 mm in-plane pixels: the same result as along k, transposed."""
    stairs = slabs(ellipsoid(), 4)
    along_k = interpolate_painted_slices(stairs, (0.7, 0.7, 1.0), 0)
    along_i = interpolate_painted_slices(np.ascontiguousarray(np.moveaxis(stairs, 0, 2)), (1.0, 0.7, 0.7), 2)
    assert np.array_equal(np.moveaxis(along_k, 0, 2), along_i)


def thick_cases():
    """Adrenal-like phantoms painted on 4-5 mm slices (no jitter, none missed) on a 1 mm grid."""
    out = []
    for seed in range(3):
        truth = adrenal_phantom(seed=seed)
        stairs = thick_slice(truth, (1.0, 1.0, 1.0), np.random.default_rng(100 + seed), severity=0.0,
                             thickness_mm=4.0 + seed % 2, p_missed=0.0, p_doubled=0.0)
        out.append((truth, stairs))
    return out


def test_refine_sees_interpolated_slices():
    """refine gives the prior the interpolated slices (info says so) and, on these cases, gets closer to
    the truth than from the staircase (each case); ``interpolate_slices=False`` gives the staircase as before."""
    gains = []
    for truth, stairs in thick_cases():
        before = stairs.copy()
        grid = identity_grid(stairs.shape)
        on = refine_mask(stairs, grid, options=RefineOptions(preset="fast", structure="left adrenal gland"))
        off = refine_mask(stairs, grid, options=RefineOptions(preset="fast", structure="left adrenal gland",
                                                              interpolate_slices=False))
        assert np.array_equal(stairs, before)
        assert on.info["slices_interpolated"] and on.info["painted_slices_mm"] in (4.0, 5.0)
        assert not off.info["slices_interpolated"]
        gains.append(dice(on.mask, truth) - dice(off.mask, truth))
    assert min(gains) > 0.0


def test_cli_keep_staircase(tmp_path):
    truth, stairs = thick_cases()[0]
    src = tmp_path / "stairs.nii.gz"
    write_mask(str(src), stairs.astype(np.uint8), identity_grid(stairs.shape))
    outs = {}
    for flag in ([], ["--keep-staircase"]):
        out = tmp_path / f"out{len(flag)}.nii.gz"
        assert cli_main(["refine", "--mask", str(src), "--out", str(out), "--preset", "fast",
                         "--prior", "adrenal", *flag]) == 0
        outs[len(flag)] = read_mask(str(out))[0] > 0
    direct = refine_mask(stairs, identity_grid(stairs.shape),
                         options=RefineOptions(prior="adrenal", preset="fast", interpolate_slices=False)).mask > 0
    assert np.array_equal(outs[1], direct)
    assert not np.array_equal(outs[0], outs[1])
