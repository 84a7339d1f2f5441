"""Held-out annotation errors: kept out of training, each process's defining property in mm on any
grid, determinism per seed, inputs untouched; the shipped default on one of them, end to end."""
import json
from pathlib import Path

import numpy as np
import pytest
from scipy import ndimage as ndi

from NeARSlicerLib import annotation_errors
from NeARSlicerLib.heldout_errors import (
    HELD_OUT_ERRORS,
    HELD_OUT_MIXTURE,
    corrupt_heldout,
    fill_between,
    heldout_mixture,
    polygon,
    shift,
)
from NeARSlicerLib.metrics import dice

ENGINE = Path(__file__).resolve().parents[2] / "NeARSlicer" / "NeARSlicerLib"


def _ball(shape, spacing, radius_mm):
    vox = np.asarray(spacing, float)[::-1]
    k, j, i = np.meshgrid(*[(np.arange(n) - n / 2) * v for n, v in zip(shape, vox)], indexing="ij")
    return k ** 2 + j ** 2 + i ** 2 <= radius_mm ** 2


def _centroid_mm(mask, spacing):
    return np.argwhere(mask).mean(0) * np.asarray(spacing, float)[::-1]


def _mean_surface_distance_mm(a, b, spacing):
    """Average symmetric distance between the two masks' surfaces, in mm."""
    sampling = tuple(float(v) for v in np.asarray(spacing, float)[::-1])

    def surface(m):
        return m & ~ndi.binary_erosion(m)

    da = ndi.distance_transform_edt(~surface(b), sampling=sampling)[surface(a)]
    db = ndi.distance_transform_edt(~surface(a), sampling=sampling)[surface(b)]
    return float(np.concatenate([da, db]).mean())


def test_no_training_path_can_draw_a_heldout_process():
    assert not set(HELD_OUT_ERRORS) & set(annotation_errors.ALL_FAMILIES)
    m = _ball((24, 24, 24), (1.0, 1.0, 1.0), 6)
    for family in HELD_OUT_ERRORS + (HELD_OUT_MIXTURE,):
        with pytest.raises(ValueError, match="unknown error family"):
            annotation_errors.corrupt(m, (1.0, 1.0, 1.0), family, seed=0)
    # what trains a prior or adapts a study never imports the held-out processes
    for name in ("train.py", "training_data.py", "study_adapt.py", "annotation_errors.py", "anatomy_shapes.py"):
        assert "heldout" not in (ENGINE / name).read_text(), name


@pytest.mark.parametrize("family", HELD_OUT_ERRORS + (HELD_OUT_MIXTURE,))
def test_deterministic_per_seed_and_input_untouched(family):
    m = _ball((40, 48, 48), (0.8, 0.8, 1.5), 14)
    before = m.copy()
    a = corrupt_heldout(m, (0.8, 0.8, 1.5), family, seed=4)
    assert np.array_equal(a, corrupt_heldout(m, (0.8, 0.8, 1.5), family, seed=4))
    assert np.array_equal(m, before)
    assert a.shape == m.shape and a.dtype == bool and a.any()
    assert not np.array_equal(a, m)
    others = [corrupt_heldout(m, (0.8, 0.8, 1.5), family, seed=s) for s in (5, 6, 7)]
    assert any(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_shift_moves_the_whole_mask_by_its_size_in_mm(spacing):
    m = _ball((48, 96, 96) if spacing[2] == 1.0 else (20, 96, 96), spacing, 15)
    vox = np.asarray(spacing, float)[::-1]
    for severity, length in ((0.0, 0.5), (1.0, 3.0)):
        out = shift(m, spacing, np.random.default_rng(1), severity)
        d = np.random.default_rng(1).standard_normal(3)
        want = d / np.linalg.norm(d) * length
        moved = _centroid_mm(out, spacing) - _centroid_mm(m, spacing)
        # a mask holds its surface to half a voxel: along each axis the move is the asked one to that
        assert np.all(np.abs(moved - want) <= 0.5 * vox + 0.05), (severity, moved, want)
        assert abs(np.linalg.norm(moved) - length) <= 0.5 * np.linalg.norm(vox)
        assert abs(int(out.sum()) - int(m.sum())) < 0.06 * m.sum()


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.7, 0.7, 2.5)])
def test_elastic_moves_the_surface_by_millimetres_on_any_grid(spacing):
    m = _ball((48, 72, 72) if spacing[2] == 1.0 else (20, 96, 96), spacing, 18)
    sampling = np.asarray(spacing, float)[::-1]

    def moved(severity):
        return [_mean_surface_distance_mm(corrupt_heldout(m, spacing, "elastic", s, severity=severity), m, spacing)
                for s in range(3)]

    mild, severe = moved(0.0), moved(1.0)
    # root-mean-square displacement 0.5 mm vs 2 mm; a surface voxel moves only where that passes half a voxel
    assert np.mean(mild) < 0.25 and 0.3 < np.mean(severe) < 1.5, (mild, severe)
    assert np.mean(severe) > 3 * np.mean(mild)
    worst = corrupt_heldout(m, spacing, "elastic", 0, severity=1.0)
    far = ndi.distance_transform_edt(~m, sampling=sampling)[worst].max()
    near = ndi.distance_transform_edt(m, sampling=sampling)[~worst & m].max()
    assert max(far, near) < 8.0  # a smooth field: a few millimetres, never a jump across the structure


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (0.8, 0.8, 2.5)])
def test_fill_between_keeps_key_slices_and_fills_only_between_them(spacing):
    m = _ball((40, 64, 64), spacing, 22)
    for severity in (0.0, 1.0):
        out = fill_between(m, spacing, np.random.default_rng(3), severity, axis=0)
        painted = np.nonzero(out.any(axis=(1, 2)))[0]
        truth_slices = np.nonzero(m.any(axis=(1, 2)))[0]
        first, last = painted.min(), painted.max()
        assert truth_slices.min() <= first and last <= truth_slices.max()
        # the outermost painted slices are key slices, drawn as the truth's sections
        assert np.array_equal(out[first], m[first]) and np.array_equal(out[last], m[last])
        assert np.all(out[first:last + 1].any(axis=(1, 2)))  # every slice between is filled
        # key slices every 3 mm (severity 0) or 12 mm (severity 1), at least two slices apart
        gap = max(2, int(round((3.0 + 9.0 * severity) / spacing[2])))
        assert (last - first) % gap == 0
        assert all(np.array_equal(out[k], m[k]) for k in range(first, last + 1, gap))
        # between the keys, the interpolated sections of a ball stay within a slice of the truth's
        assert dice(out[first:last + 1], m[first:last + 1]) > 0.9


def test_fill_between_along_other_axes():
    m = _ball((40, 40, 40), (1.0, 1.0, 1.0), 14)
    for axis in (1, 2):
        out = fill_between(m, (1.0, 1.0, 1.0), np.random.default_rng(0), 0.5, axis=axis)
        lines = np.nonzero(np.moveaxis(out, axis, 0).any(axis=(1, 2)))[0]
        assert np.array_equal(np.moveaxis(out, axis, 0)[lines[0]], np.moveaxis(m, axis, 0)[lines[0]])
        assert dice(out, m) > 0.85


def test_polygon_redraws_each_axial_section_only():
    spacing = (0.7, 0.7, 2.0)
    m = _ball((24, 80, 80), spacing, 20) & ~_ball((24, 80, 80), spacing, 7)  # a shell: sections with holes
    fine = polygon(m, spacing, np.random.default_rng(0), severity=0.0)  # clicks every 3 mm, exact
    coarse = polygon(m, spacing, np.random.default_rng(0), severity=1.0)  # every 10 mm, 0.8 mm off
    assert dice(fine, m) > 0.97 > dice(coarse, m) > 0.75
    for out in (fine, coarse):
        assert np.array_equal(out.any(axis=(1, 2)), m.any(axis=(1, 2)))  # no slice gained or lost
    # even-odd filling: the sections' holes stay holes
    centre = tuple(n // 2 for n in m.shape)
    assert not coarse[centre] and not fine[centre]
    # polygons through contour points cut the convex outline's corners: mostly under-painting
    outer = _ball((24, 80, 80), spacing, 20)
    assert (outer & ~coarse & ~_ball((24, 80, 80), spacing, 12)).sum() > (coarse & ~outer).sum()


def test_mixture_reports_what_it_applied_and_keeps_most_of_the_structure():
    m = _ball((40, 48, 48), (1.0, 1.0, 1.0), 14)
    for seed in range(6):
        out, applied = heldout_mixture(m, (1.0, 1.0, 1.0), np.random.default_rng(seed))
        assert 1 <= len(applied) <= 3 and {f for f, _ in applied} <= set(HELD_OUT_ERRORS)
        assert all(0.35 <= s <= 1.0 for _, s in applied)
        assert out.sum() >= 0.2 * m.sum()
        if "fill_between" in [f for f, _ in applied]:
            assert applied[0][0] == "fill_between"


def test_bench_on_a_heldout_process_keeps_or_beats_the_input(tmp_path, shared_data, capsys):
    """The shipped default on errors it never trained on: a shifted annotation in its phantom CT is
    moved back by the image (S+A), and the shape-only prior, which cannot see a shift, does no harm."""
    from NeARSlicerLib.cli import main

    out = tmp_path / "b.json"
    alan = shared_data / "alan64" / "alan64_trainval.npz"
    assert main(["bench", "--data", str(alan), "--appearance", "--cases", "3", "--errors", "shift",
                 "--json", str(out)]) == 0
    table = json.loads(out.read_text())["table"]
    assert table["NeAR S+A"]["dsc_mean"] > table["input"]["dsc_mean"] + 3
    assert table["NeAR S"]["dsc_mean"] > table["input"]["dsc_mean"] - 1
    assert "errors: shift" in capsys.readouterr().out


def test_bench_names_the_heldout_processes_when_errors_are_unknown(capsys):
    from NeARSlicerLib.cli import main

    assert main(["bench", "--errors", "wobble"]) == 2
    err = capsys.readouterr().err
    assert "elastic, fill_between, shift, polygon, heldout_mixture or heldout" in err
