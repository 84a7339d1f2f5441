"""The do-no-harm gate on grids finer than the prior's: what counts as a thick change, and what as a
thick-slice painting (benchmarks/full_resolution_harm.py, README "Do no harm on a full-resolution CT")."""
from __future__ import annotations

import numpy as np
import pytest


def _ball(shape, centre, radius):
    k, j, i = np.indices(shape)
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius ** 2


def test_a_mask_resampled_from_a_coarser_grid_is_not_a_thick_slice_painting():
    """A mask made on a 3 mm grid and copied onto a 0.75 mm one repeats its slices along all three axes:
    no axis was painted slice by slice. Repeated along one axis only, it was."""
    from NeARSlicerLib.confidence import painted_slices

    coarse = _ball((16, 16, 16), (8, 8, 8), 6.3)  # 3 mm voxels: a structure of about 38 mm
    every_axis = coarse.repeat(4, 0).repeat(4, 1).repeat(4, 2)
    assert painted_slices(every_axis, (0.75, 0.75, 0.75)) is None
    fine = _ball((64, 64, 64), (32, 32, 32), 25.3)
    along_k = fine[2::4].repeat(4, 0)  # each 3 mm axial slice painted from its middle fine slice
    found = painted_slices(along_k, (0.75, 0.75, 0.75))
    assert found is not None and found.axis == 0 and found.thickness_mm == pytest.approx(3.0, rel=0.15)


def test_a_thick_change_holds_a_millimetre_ball_on_a_fine_grid():
    """On a 0.7 mm grid a layer 3 voxels (2.1 mm) thick is the thin kind of change (on the 1 mm grid the
    gate was calibrated on, 3 voxels is 3 mm); one of 6 voxels (4.2 mm) is thick."""
    from NeARSlicerLib.confidence import thick_changes

    spacing = (0.7, 0.7, 0.7)
    annotation = np.zeros((40, 40, 40), bool)
    annotation[5:35, 5:35, 5:35] = True
    for layer, thick in ((3, False), (6, True)):
        refined = annotation.copy()
        refined[5:35, 5:35, 35:35 + layer] = True
        assert thick_changes(annotation, refined, spacing).any() == thick, layer


def test_a_clean_liver_stays_when_the_prior_works_on_coarser_voxels(shared_data):
    """The general prior sees a liver on ~5 mm voxels: its surface is off by about that much all round,
    which on a 1 mm grid is a change several voxels thick. The gate measures thickness at the prior's
    voxel, so a clean liver comes back as it was (it lost 5 DSC when thickness was measured at 1 mm)."""
    import SimpleITK as sitk

    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    seg = sitk.ReadImage(str(shared_data / "totalseg_example" / "seg.nii.gz"))
    size = [int(round(n * s)) for n, s in zip(seg.GetSize(), seg.GetSpacing())]  # 1 mm voxels
    liver = sitk.Resample(sitk.Cast(seg == 5, sitk.sitkFloat32), size, sitk.Transform(), sitk.sitkLinear,
                          seg.GetOrigin(), (1.0, 1.0, 1.0), seg.GetDirection(), 0.0, sitk.sitkFloat32)
    clean = sitk.GetArrayFromImage(liver) > 0.5
    res = refine_mask(clean.astype(np.uint8), Grid.from_sitk(liver), None,
                      options=RefineOptions(preset="fast", appearance=False, seed=0))
    assert dice(res.mask > 0, clean) >= 0.99
    assert res.info["working_spacing_mm"] > 3.0
    assert res.info["thick_radius_mm"] == pytest.approx(res.info["working_spacing_mm"])
