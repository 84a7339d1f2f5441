"""The annotation-error library: each family's defining property, sizes in mm on any grid,
determinism per seed, inputs untouched."""

import numpy as np
import pytest
from scipy import ndimage as ndi

from NeARSlicerLib.annotation_errors import (
    ALL_FAMILIES,
    FAMILIES,
    _dilate,
    _element,
    apply_family,
    corrupt,
    missing_part,
    mixture,
    oversmooth,
    thick_slice,
)
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom


def _ball(shape, spacing, radius_mm, centre_mm=None):
    vox = np.asarray(spacing, float)[::-1]
    c = [np.arange(n) * v for n, v in zip(shape, vox)]
    centre = np.array([n * v / 2 for n, v in zip(shape, vox)]) if centre_mm is None else centre_mm
    k, j, i = np.meshgrid(*c, indexing="ij")
    return (k - centre[0]) ** 2 + (j - centre[1]) ** 2 + (i - centre[2]) ** 2 <= radius_mm ** 2


@pytest.fixture(scope="module")
def gland():
    return adrenal_phantom(seed=3) > 0


@pytest.mark.parametrize("family", ALL_FAMILIES + ("mixture",))
def test_deterministic_per_seed_and_input_untouched(gland, family):
    before = gland.copy()
    a = corrupt(gland, (1.0, 1.0, 1.0), family, seed=5)
    b = corrupt(gland, (1.0, 1.0, 1.0), family, seed=5)
    assert np.array_equal(gland, before)
    assert np.array_equal(a, b)
    assert a.shape == gland.shape and a.dtype == bool
    others = [corrupt(gland, (1.0, 1.0, 1.0), family, seed=s) for s in (6, 7, 8)]
    assert any(not np.array_equal(a, o) for o in others), "the seed must matter"
    # every family makes a visible error at benchmark severity, yet keeps the structure recognisable
    ds = [dice(o, gland) for o in [a] + others]
    assert np.mean(ds) < 0.985 and min(ds) > 0.2


@pytest.mark.parametrize("family", ALL_FAMILIES)
def test_every_family_runs_on_thick_anisotropic_grid(family):
    spacing = (0.8, 0.8, 3.0)  # (i, j, k): a 3 mm slice CT
    mask = _ball((20, 64, 64), spacing, 14.0)
    out = apply_family(mask, spacing, family, np.random.default_rng(1), severity=0.8)
    assert out.shape == mask.shape
    assert 0.2 < dice(out, mask) < 1.0


def test_dilation_radius_is_in_mm_on_any_grid():
    """The same 2 mm dilation grows a 10 mm ball to the same physical volume on an isotropic and
    on an anisotropic grid (a size in voxels would not)."""
    volumes = []
    for spacing in ((1.0, 1.0, 1.0), (0.5, 0.5, 2.0)):
        vox = np.asarray(spacing)[::-1]
        shape = tuple(int(40 / v) for v in vox)
        ball = _ball(shape, spacing, 10.0)
        grown = _dilate(ball, 2.0, spacing, "ball")
        volumes.append(grown.sum() * np.prod(vox))
    expected = 4 / 3 * np.pi * 12.0 ** 3
    for v in volumes:
        assert abs(v - expected) / expected < 0.12
    # in-plane only: no growth along k
    spacing = (1.0, 1.0, 1.0)
    ball = _ball((40, 40, 40), spacing, 10.0)
    grown = _dilate(ball, 2.0, spacing, "inplane")
    assert np.array_equal(grown.any(axis=(1, 2)), ball.any(axis=(1, 2)))
    assert grown.sum() > ball.sum()


def test_a_ball_dilation_is_the_ball_elements_dilation():
    """The ball's dilation (a distance transform, whatever the radius) is exactly the dilation by
    ``_element``'s ball: random masks, single voxels, anisotropic grids and radii under one in-plane
    voxel (the element's smallest), so the error library's outputs do not depend on how it is computed."""
    rng = np.random.default_rng(7)
    for trial in range(60):
        shape = tuple(int(n) for n in rng.integers(6, 24, 3))
        mask = rng.random(shape) < rng.uniform(0.001, 0.05)
        if trial % 6 == 0:
            mask[:] = False
            mask[tuple(int(n) // 2 for n in shape)] = trial % 12 == 0  # one voxel, or none
        spacing = tuple(float(v) for v in rng.choice([0.25, 0.5, 0.8, 1.0, 1.5, 3.0], 3))
        radius = float(rng.choice([rng.uniform(0.1, 6.0), 1.0, 2.0, 2.5]))
        expected = ndi.binary_dilation(mask, _element(radius, spacing, "ball"))
        assert np.array_equal(_dilate(mask, radius, spacing, "ball"), expected), (shape, spacing, radius)


def test_overpaint_changes_stay_within_two_mm(gland):
    spacing = (1.0, 1.0, 1.0)
    outside = ndi.distance_transform_edt(~gland)
    inside = ndi.distance_transform_edt(gland)
    for seed in range(6):
        out = apply_family(gland, spacing, "overpaint", np.random.default_rng(seed), severity=1.0)
        added, removed = out & ~gland, gland & ~out
        assert added.any() or removed.any()
        assert outside[added].max(initial=0) <= 2.0 * np.sqrt(3) + 1e-6  # a box element's corner
        assert inside[removed].max(initial=0) <= 2.0 * np.sqrt(3) + 1.0 + 1e-6


def test_thick_slice_is_constant_within_each_slab(gland):
    """Painting on 4 mm slices and resampling by nearest neighbour: the fine slices change only at
    slab boundaries, 4 slices apart on a 1 mm grid."""
    out = thick_slice(gland, (1.0, 1.0, 1.0), np.random.default_rng(2), severity=0.6, thickness_mm=4.0,
                      p_missed=0.0, p_doubled=0.0)
    changes = [k for k in range(out.shape[0] - 1) if not np.array_equal(out[k], out[k + 1])]
    assert len(changes) >= 3
    gaps = np.diff(changes)
    assert np.all(gaps % 4 == 0), gaps
    assert dice(out, gland) > 0.4


def test_thick_slice_missed_and_doubled_slices(gland):
    spacing = (1.0, 1.0, 1.0)
    base = thick_slice(gland, spacing, np.random.default_rng(4), 0.5, thickness_mm=5.0, p_missed=0.0, p_doubled=0.0)
    missed = thick_slice(gland, spacing, np.random.default_rng(4), 0.5, thickness_mm=5.0, p_missed=1.0, p_doubled=0.0)
    assert base.any() and not missed.any()  # every slice missed: nothing painted
    doubled = thick_slice(gland, spacing, np.random.default_rng(4), 0.5, thickness_mm=5.0, p_missed=0.0, p_doubled=1.0)
    # every slab repeats the painting of the slab before it: the same sections, one slab later
    assert not np.array_equal(doubled, base)
    assert {d.tobytes() for d in doubled} <= {b.tobytes() for b in base}
    first = min(k for k in range(base.shape[0]) if base[k].any())
    assert not doubled[first].any() or not np.array_equal(doubled[first], base[first])


def test_missing_part_only_removes(gland):
    for seed in range(5):
        out = missing_part(gland, (1.0, 1.0, 1.0), np.random.default_rng(seed), 0.8)
        assert not (out & ~gland).any()
        assert out.sum() < gland.sum()


def test_oversmooth_erases_a_thin_plate():
    spacing = (1.0, 1.0, 1.0)
    ball = _ball((48, 48, 48), spacing, 9.0)
    plate = np.zeros_like(ball)
    plate[23:25, 10:38, 24:44] = True  # a 2 mm thick fin sticking out of the ball
    mask = ball | plate
    fin_outside = plate & ~ball
    kept = [oversmooth(mask, spacing, np.random.default_rng(s), 1.0)[fin_outside].mean() for s in range(6)]
    assert np.mean(kept) < 0.5
    assert min(dice(oversmooth(mask, spacing, np.random.default_rng(s), 1.0), ball) for s in range(3)) > 0.8


def test_holes_family_adds_specks_outside_and_holes_near_surface(gland):
    out = apply_family(gland, (1.0, 1.0, 1.0), "holes", np.random.default_rng(0), severity=1.0)
    added, removed = out & ~gland, gland & ~out
    assert added.any() and removed.any()
    outside = ndi.distance_transform_edt(~gland)
    assert outside[added].max() <= 7.0  # specks and pepper stay near the surface


def test_leak_with_image_follows_similar_tissue():
    """A region-growing leak spreads into the neighbour that looks like the structure, not into fat."""
    spacing = (1.0, 1.0, 1.0)
    mask = _ball((48, 48, 48), spacing, 8.0)
    image = np.full(mask.shape, -100.0)  # fat
    image[mask] = 40.0
    neighbour = _ball((48, 48, 48), spacing, 8.0, centre_mm=np.array([24.0, 24.0, 40.0])) & ~mask
    image[neighbour] = 45.0
    flooded = 0
    for s in range(8):
        out = apply_family(mask, spacing, "leak", np.random.default_rng(s), 0.8, image=image)
        flooded += int((out & neighbour).sum())
    assert flooded > 50


def test_mixture_reports_what_it_applied(gland):
    rng = np.random.default_rng(0)
    out, applied = mixture(gland, (1.0, 1.0, 1.0), rng)
    assert applied and all(f in ALL_FAMILIES for f, _ in applied)
    assert not np.array_equal(out, gland)
    same, none = mixture(gland, (1.0, 1.0, 1.0), np.random.default_rng(0), p_clean=1.0)
    assert none == [] and np.array_equal(same, gland)
    # a family left out (leave-one-family-out training) is never drawn
    for s in range(20):
        _, applied = mixture(gland, (1.0, 1.0, 1.0), np.random.default_rng(s), [f for f in FAMILIES if f != "leak"])
        assert "leak" not in [f for f, _ in applied]


def test_unknown_family_is_a_clear_error(gland):
    with pytest.raises(ValueError, match="unknown error family 'smudge'"):
        corrupt(gland, (1.0, 1.0, 1.0), "smudge", seed=0)


def test_a_small_mask_errs_on_its_box_as_on_the_whole_volume(monkeypatch):
    """A mask small in its volume errs on the box each family reaches, in the volume's coordinates: the
    same voxels as the family on the whole volume, for every family (and the mixture, whose families
    each take the previous one's output), with and without a CT, on anisotropic grids, with masks at
    the volume's faces. ``FAMILY_REACH_MM`` beyond the volume turns the box off: the whole volume."""
    import NeARSlicerLib.annotation_errors as ae
    from NeARSlicerLib.phantom import ct_phantom

    reach = ae.FAMILY_REACH_MM
    rng = np.random.default_rng(11)
    boxed = 0
    for trial in range(24):
        shape = tuple(int(n) for n in rng.integers(50, 110, 3))
        spacing = tuple(float(v) for v in rng.choice([0.5, 0.8, 1.0, 1.5, 3.0], 3))
        vox = np.asarray(spacing)[::-1]
        centre = np.array([rng.integers(0, n) for n in shape]) * vox  # near a face now and then
        mask = _ball(shape, spacing, float(rng.uniform(3.0, 14.0)), centre_mm=centre)
        if not mask.any():
            continue
        image = ct_phantom(mask, seed=trial) if trial % 2 else None
        for family in ALL_FAMILIES + ("mixture",):
            monkeypatch.setattr(ae, "FAMILY_REACH_MM", reach)
            box = ae._family_box(mask, spacing, family) if family != "mixture" else None
            boxed += box is not None
            got = corrupt(mask, spacing, family, seed=trial, image=image)
            monkeypatch.setattr(ae, "FAMILY_REACH_MM", 1e6)
            whole = corrupt(mask, spacing, family, seed=trial, image=image)
            assert np.array_equal(got, whole), (trial, family, shape, spacing)
    assert boxed > 80  # the boxes were used, not the whole volumes
