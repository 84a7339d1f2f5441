"""boundary_sample: a large mask's boundary read from a sample of tiles and moved by a ball. ``near`` gives
a distance transform's voxels; the tiles are the cells the boundary crosses, within the budget; and the
margin fit of a large box (``image_margin``) reads at each sampled voxel what the whole box reads there."""
from collections import Counter

import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib import boundary_sample, image_margin


def _random_mask(rng, shape):
    return ndimage.gaussian_filter(rng.normal(size=shape), 2.0) > 0.02


def test_near_is_a_distance_transform_threshold_and_moves_a_boundary_as_the_fit_does():
    rng = np.random.default_rng(0)
    for _ in range(25):
        shape = tuple(int(n) for n in rng.integers(6, 28, 3))
        sp = rng.uniform(0.4, 2.5, 3)
        radius = float(rng.uniform(0.3, 4.0))
        a = _random_mask(rng, shape)
        src = rng.random(shape) < 0.02
        assert np.array_equal(boundary_sample.near(src, sp, radius),
                              ndimage.distance_transform_edt(~src, sampling=sp) <= radius + 1e-6)
        # the nearest voxel across the boundary is in the layer next to it: the array's faces are not outside
        dout = ndimage.distance_transform_edt(~a, sampling=sp)
        din = ndimage.distance_transform_edt(a, sampling=sp)
        assert np.array_equal(a | boundary_sample.near(boundary_sample.inner_layer(a), sp, radius),
                              a | (dout <= radius + 1e-6))
        assert np.array_equal(a & ~boundary_sample.near(boundary_sample.outer_layer(a), sp, radius),
                              a & ~(din <= radius + 1e-6))


def test_the_ball_is_in_mm_on_an_anisotropic_grid():
    offsets = boundary_sample.ball_offsets((2.5, 0.8, 0.8), 1.7)  # k j i mm
    assert np.abs(offsets[:, 0]).max() == 0 and np.abs(offsets[:, 1]).max() == 2 == np.abs(offsets[:, 2]).max()
    assert [0, 2, 1] not in offsets.tolist() and [0, 1, 1] in offsets.tolist()  # 1.79 mm out, 1.13 mm in


def test_tiles_are_the_crossed_cells_within_the_budget_and_the_same_on_every_run():
    k, j, i = np.indices((60, 70, 80))
    ball = (k - 30) ** 2 + (j - 35) ** 2 + (i - 40) ** 2 <= 22 ** 2
    sp, halo = np.array([1.0, 1.0, 1.0]), np.array([3, 3, 3])
    tiles = boundary_sample.boundary_tiles(ball, sp, halo, budget_voxels=10 ** 9, tile_mm=10.0)
    covered = np.zeros(ball.shape, bool)
    for tile in tiles:
        cell = tuple(slice(w.start + c.start, w.start + c.stop) for w, c in zip(tile.window, tile.core))
        part = ball[cell]
        assert part.any() and not part.all()  # the boundary crosses every cell
        assert not covered[cell].any()  # cells do not overlap
        covered[cell] = True
        for w, c, n in zip(tile.window, tile.core, ball.shape):  # the halo, or the array's face
            assert c.start == min(3, w.start + c.start) and w.stop == min(w.start + c.stop + 3, n)
    for cell in np.ndindex(6, 7, 8):  # budget unbounded: every cell that holds both sides is a tile
        part = ball[tuple(slice(10 * c, 10 * c + 10) for c in cell)]
        assert covered[tuple(slice(10 * c, 10 * c + 10) for c in cell)].all() == (part.any() and not part.all())
    assert all(t.weight == 1.0 for t in tiles)
    for by_side in (True, False):
        few = boundary_sample.boundary_tiles(ball, sp, halo, budget_voxels=12 * 16 ** 3, tile_mm=10.0, by_side=by_side)
        assert len(few) == 12 and all((t.window, t.core) in [(u.window, u.core) for u in tiles] for t in few)
        assert sum(t.weight for t in few) == pytest.approx(len(tiles))  # each stands for its stratum's share
        assert few == boundary_sample.boundary_tiles(ball, sp, halo, budget_voxels=12 * 16 ** 3, tile_mm=10.0,
                                                     by_side=by_side)
    # by side: two cells facing each of the six directions (from the ball's centre), whatever their numbers
    facing = []
    for t in boundary_sample.boundary_tiles(ball, sp, halo, 12 * 16 ** 3, 10.0, by_side=True):
        centre = np.array([w.start + (c.start + c.stop) / 2 for w, c in zip(t.window, t.core)]) - (30, 35, 40)
        axis = int(np.argmax(np.abs(centre)))
        facing.append((axis, bool(centre[axis] > 0)))
    assert sorted(Counter(facing).values()) == [2] * 6


def _organ(shape=(60, 84, 90), spacing_kji=(1.2, 0.9, 0.9), seed=3, axes_mm=(22.0, 20.0, 24.0)):
    rng = np.random.default_rng(seed)
    k, j, i = np.meshgrid(*[(np.arange(n) - n / 2) * s for n, s in zip(shape, spacing_kji)], indexing="ij")
    a, b, c = axes_mm
    organ = (k / a) ** 2 + (j / b) ** 2 + (i / c) ** 2 + 0.1 * np.sin(k / 5) * np.cos(i / 7) < 1
    image = ndimage.gaussian_filter(np.where(organ, 60.0, -90.0), 0.8) + rng.normal(0, 12, shape)
    return organ, image.astype(np.float32)


def test_a_sampled_voxel_reads_what_the_whole_box_reads_there(monkeypatch):
    """Distances (up to the halo's 5 mm), edge strength, surface and sides at the cells' voxels equal the
    whole box's."""
    organ, image = _organ()
    sp = np.array([1.2, 0.9, 0.9])  # k j i
    whole = image_margin._evidence(organ, image, sp[::-1])
    surface = whole.a & ~ndimage.binary_erosion(whole.a)
    side_of = image_margin._sides(whole.a, surface, sp)
    monkeypatch.setattr(boundary_sample, "SAMPLE_VOXELS", 300_000)  # a sample of the cells
    monkeypatch.setattr(image_margin, "MAX_BOX_VOXELS", 0)
    sampled = image_margin._evidence(organ, image, sp[::-1])
    tiles = boundary_sample.boundary_tiles(whole.a, sp, image_margin.sample_halo(sp), 300_000)
    assert 1 < len(tiles) < len(boundary_sample.boundary_tiles(whole.a, sp, image_margin.sample_halo(sp), 10 ** 9))
    cells = [tuple(slice(w.start + c.start, w.start + c.stop) for w, c in zip(t.window, t.core)) for t in tiles]
    for name, full in (("a", whole.a), ("din", whole.din), ("dout", whole.dout), ("strength", whole.strength),
                       ("surface", surface), ("side_of", side_of)):
        expected, got = np.concatenate([full[cell].ravel() for cell in cells]), getattr(sampled, name)
        if name in ("din", "dout"):  # exact up to the halo's 5 mm; beyond it a window sees less, never nearer
            far = expected > 5.0
            assert far.any() and (got[far] >= expected[far] - 1e-9).all()
            expected, got = expected[~far], got[~far]
        if name == "side_of":  # read only within the largest margin and its step of the boundary (halo: 5 mm)
            near = np.maximum(*[np.concatenate([d[cell].ravel() for cell in cells]) for d in (whole.din, whole.dout)])
            assert (near > 4.0).any()
            expected, got = expected[near <= 4.0], got[near <= 4.0]
        np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4, err_msg=name)


@pytest.fixture(scope="module")
def large_organ():
    """An organ of about 90 x 80 x 100 mm on a 0.9 x 0.9 x 1.2 mm grid: some 120 cells cross its boundary."""
    return _organ(shape=(96, 120, 136), axes_mm=(44.0, 40.0, 50.0))


def _sampled_fit(monkeypatch, painted, image, spacing):
    """``image_margin.fit`` through a sample of 24 cells (as a 242 mm organ at 0.7 mm gets: 24 of 292)."""
    sp = np.asarray(spacing, float)[::-1]
    halo = image_margin.sample_halo(sp)
    cell = np.maximum(1, np.round(boundary_sample.TILE_MM / sp)).astype(int)
    budget = 24 * int(np.prod(cell + 2 * halo))
    box = image_margin.bounding_box(painted, painted, image_margin.box_pad(sp))
    assert len(boundary_sample.boundary_tiles(painted[box], sp, halo, 10 ** 12)) > 2 * 24  # a sample, under half
    monkeypatch.setattr(boundary_sample, "SAMPLE_VOXELS", budget)
    monkeypatch.setattr(image_margin, "MAX_BOX_VOXELS", 0)
    found = image_margin.fit(painted, image, spacing)
    monkeypatch.undo()
    return found


@pytest.mark.parametrize("painted_mm", [1.8, -1.2])
def test_a_large_box_gets_about_the_whole_box_s_margin(monkeypatch, large_organ, painted_mm):
    """Painted too thick or too thin all round: the sample finds a margin the same way round as the whole
    box, at most one distance level apart (a shell's share is a sample's; on this anisotropic grid the
    levels are 0.3-0.4 mm apart), and moves the whole mask by it as the whole box's fit would."""
    from NeARSlicerLib.metrics import dice

    organ, image = large_organ
    spacing = (0.9, 0.9, 1.2)
    sp = np.array(spacing[::-1])
    if painted_mm > 0:
        painted = ndimage.distance_transform_edt(~organ, sampling=sp) <= painted_mm
    else:
        painted = ndimage.distance_transform_edt(organ, sampling=sp) > -painted_mm
    out_whole, fit_whole = image_margin.fit(painted, image, spacing)
    out, found = _sampled_fit(monkeypatch, painted, image, spacing)
    assert found.judged and np.sign(found.mm) == np.sign(fit_whole.mm) == -np.sign(painted_mm), (found, fit_whole)
    assert abs(found.mm - fit_whole.mm) <= 0.4 and not found.sides
    din, dout = (ndimage.distance_transform_edt(m, sampling=sp) for m in (painted, ~painted))
    moved = painted | (dout <= found.mm + 1e-6) if found.mm > 0 else painted & ~(din <= -found.mm + 1e-6)
    assert np.array_equal(out, moved)
    assert dice(out, organ) > dice(painted, organ) + 0.01 and dice(out, organ) >= dice(out_whole, organ) - 0.01
    clean, kept = _sampled_fit(monkeypatch, organ, image, spacing)
    assert kept.judged and not kept.moved and np.array_equal(clean, organ)


def test_a_large_box_painted_too_thick_on_one_side_is_moved_on_that_side(monkeypatch, large_organ):
    """The side is found and taken in as the whole box's fit takes it in (the sample may misjudge another
    side by a distance level: ``benchmarks/large_margin_fit.py``)."""
    from NeARSlicerLib.metrics import dice

    organ, image = large_organ
    spacing = (0.9, 0.9, 1.2)
    painted = organ | np.roll(organ, 2, axis=2)  # 1.8 mm too far along +i
    whole_out, whole_fit = image_margin.fit(painted, image, spacing)
    out, found = _sampled_fit(monkeypatch, painted, image, spacing)
    plus = [s for s in whole_fit.sides if s[0] == "+i"]
    assert found.mm == 0.0 == whole_fit.mm and len(plus) == 1 and plus[0][1] < -1.0, whole_fit
    assert plus[0] in found.sides, (found, whole_fit)
    assert not (out & ~painted).any()  # only taken in
    # the +i side's voxels: the same but for ties (a voxel with equidistant surface voxels on two sides)
    plus_i = painted & ~organ
    assert (plus_i & (out ^ whole_out)).sum() <= 0.05 * (plus_i & ~whole_out).sum()
    assert (plus_i & ~out).sum() >= 0.3 * plus_i.sum()
    assert dice(out, organ) > dice(painted, organ) and dice(out, organ) >= dice(whole_out, organ) - 0.005


def test_the_surface_s_sides_read_at_its_voxels_are_the_whole_box_s():
    """``_surface_sides`` reads the normals at the surface voxels alone (the array's faces included): the
    same sides as ``_sides``'s whole-box sobel there."""
    rng = np.random.default_rng(4)
    for _ in range(10):
        shape = tuple(int(n) for n in rng.integers(10, 30, 3))
        sp = rng.uniform(0.5, 2.0, 3)
        a = _random_mask(rng, shape)
        a[0] |= rng.random(a[0].shape) < 0.5  # cut by the array's face
        surface = a & ~ndimage.binary_erosion(a)
        at, sides = image_margin._surface_sides(a, boundary_sample.inner_layer(a), sp)
        assert np.array_equal(at, np.argwhere(surface))
        assert np.array_equal(sides, image_margin._sides(a, surface, sp)[surface])
