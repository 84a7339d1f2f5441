"""Procedural anatomy shapes (training data of the general prior) and their CT / MR-like context."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from NeARSlicerLib.anatomy_shapes import (CLASSES, EXPECTED_HOLES, HELD_OUT_CLASSES, SIZE_RANGE_MM, anatomy_study_cases,
                                          domain_of, elongation, random_anatomy, shape_topology,
                                          synthetic_context)
from NeARSlicerLib.errors import InputError


def _extent(mask: np.ndarray) -> int:
    nz = np.argwhere(mask)
    return int((nz.max(0) - nz.min(0) + 1).max())


@pytest.fixture(scope="module")
def per_class():
    """Four shapes of every class, from one fixed seed."""
    rng = np.random.default_rng(2026)
    return {c: [random_anatomy(rng, [c]) for _ in range(4)] for c in CLASSES}


def test_same_seed_same_shape_other_seed_other_shape():
    a = random_anatomy(np.random.default_rng(7))
    b = random_anatomy(np.random.default_rng(7))
    c = random_anatomy(np.random.default_rng(8))
    assert a.cls == b.cls and a.spacing_mm == b.spacing_mm and np.array_equal(a.mask, b.mask)
    assert not np.array_equal(a.mask, c.mask)


@pytest.mark.parametrize("cls", CLASSES)
def test_each_class_is_one_centred_component_of_its_physical_size(per_class, cls):
    lo_mm, hi_mm = SIZE_RANGE_MM[cls]
    for s in per_class[cls]:
        assert s.cls == cls
        assert s.mask.dtype == bool and s.mask.shape == (64, 64, 64)
        ext = _extent(s.mask)
        assert 32 <= ext <= 48
        # spacing gives the longest side its physical size, within the class's range
        assert s.size_mm == pytest.approx(ext * s.spacing_mm, rel=1e-9)
        assert lo_mm <= s.size_mm <= hi_mm
        assert ndimage.label(s.mask)[1] == 1  # 6-connected: one piece
        # at least 4 voxels of background on every side
        inner = np.zeros_like(s.mask)
        inner[4:-4, 4:-4, 4:-4] = True
        assert not (s.mask & ~inner).any()


def test_topology_of_the_classes(per_class):
    # a vertebra has its canal (one through-hole); organs, kidneys, nodes, sheets and glands have none
    for cls, holes in EXPECTED_HOLES.items():
        for s in per_class[cls]:
            topo = shape_topology(s.mask)
            assert topo["components"] == 1 and topo["cavities"] == 0, cls
            assert holes is None or topo["holes"] == holes, (cls, topo)
    assert EXPECTED_HOLES["vertebra"] == 1 and set(EXPECTED_HOLES) == set(CLASSES)
    # tubes are long and thin, nodes are round
    assert min(elongation(s.mask) for s in per_class["vessel"]) > 3.0
    assert max(elongation(s.mask) for s in per_class["node"]) < 3.0


def test_thin_classes_are_thin_and_compact_classes_are_not(per_class):
    def depth_ratio(s):  # deepest interior point / longest side: a sheet is thin, an organ is not
        return ndimage.distance_transform_edt(s.mask).max() / _extent(s.mask)
    assert max(depth_ratio(s) for s in per_class["plate"] + per_class["shell"]) < 0.12
    assert min(depth_ratio(s) for s in per_class["organ"] + per_class["node"]) > 0.12


def test_every_class_is_drawn_and_custom_grids_are_honoured():
    rng = np.random.default_rng(3)
    seen = {random_anatomy(rng).cls for _ in range(80)}
    assert seen == set(CLASSES)
    s = random_anatomy(rng, ["kidney", "gland"], n=48, extent_voxels=(20, 24))
    assert s.mask.shape == (48, 48, 48) and 20 <= _extent(s.mask) <= 24 and s.cls in ("kidney", "gland")


def test_held_out_classes_are_real_classes_kept_apart():
    assert len(HELD_OUT_CLASSES) == 2 and set(HELD_OUT_CLASSES) < set(CLASSES)


def test_bad_arguments_are_refused_clearly():
    rng = np.random.default_rng(0)
    with pytest.raises(InputError, match="unknown anatomy classes"):
        random_anatomy(rng, ["liverr"])
    with pytest.raises(InputError, match="extent_voxels"):
        random_anatomy(rng, n=64, extent_voxels=(40, 62))
    with pytest.raises(InputError, match="empty"):
        synthetic_context(np.zeros((8, 8, 8), bool), 1.0, rng)
    with pytest.raises(InputError, match="modality"):
        synthetic_context(np.ones((8, 8, 8), bool), 1.0, rng, modality="PET")


def _interior(mask: np.ndarray) -> np.ndarray:
    return ndimage.binary_erosion(mask, iterations=3)


def test_ct_context_spans_fat_soft_tissue_enhancement_bone_and_gas():
    rng = np.random.default_rng(11)
    tissue_of_structure, any_gas, fat_backgrounds = set(), 0, 0
    for _ in range(24):
        s = random_anatomy(rng, ["organ", "node", "kidney"])
        img = synthetic_context(s.mask, s.spacing_mm, rng, modality="CT")
        assert img.dtype == np.float32 and img.shape == s.mask.shape
        assert img.min() >= -1024.0 and img.max() <= 3071.0
        med = float(np.median(img[_interior(s.mask)]))
        # the structure is soft tissue, contrast-enhanced or bone (noise and texture allowed for)
        if 5.0 <= med <= 85.0:
            tissue_of_structure.add("soft")
        elif 85.0 < med <= 270.0:
            tissue_of_structure.add("enhanced")
        elif 270.0 < med <= 1200.0:
            tissue_of_structure.add("bone")
        else:
            pytest.fail(f"structure median {med:.0f} HU is no tissue")
        far = ~ndimage.binary_dilation(s.mask, iterations=6)
        fat_backgrounds += np.mean((img[far] > -135) & (img[far] < -45)) > 0.3
        any_gas += bool((img < -800).any())
    assert tissue_of_structure == {"soft", "enhanced", "bone"}
    assert 12 <= fat_backgrounds < 24   # fat mostly, soft-tissue surroundings now and then
    assert 1 <= any_gas < 24            # gas now and then


def test_ct_context_has_a_neighbour_touching_the_structure_sometimes():
    rng = np.random.default_rng(5)
    touching = 0
    for _ in range(12):
        s = random_anatomy(rng, ["organ"])
        img = synthetic_context(s.mask, s.spacing_mm, rng)
        shell = ndimage.binary_dilation(s.mask, iterations=3) & ~ndimage.binary_dilation(s.mask, iterations=1)
        # a touching non-fat neighbour: part of the structure's surroundings above fat
        touching += np.mean(img[shell] > 0.0) > 0.1
    assert 3 <= touching <= 12


def test_class_tissues_cover_every_class_and_a_vertebra_is_bone():
    from NeARSlicerLib.anatomy_context import CLASS_TISSUE_WEIGHTS, typical_tissue

    assert set(CLASS_TISSUE_WEIGHTS) == set(CLASSES)
    assert all(abs(sum(w) - 1.0) < 1e-9 for w in CLASS_TISSUE_WEIGHTS.values())
    rng = np.random.default_rng(21)
    bone = 0
    for _ in range(6):
        s = random_anatomy(rng, ["vertebra"])
        img = synthetic_context(s.mask, s.spacing_mm, rng, tissue=typical_tissue("vertebra", rng))
        bone += np.median(img[s.mask]) > 270.0
    assert bone >= 4
    s = random_anatomy(rng, ["node"])
    forced = synthetic_context(s.mask, s.spacing_mm, rng, tissue="enhanced")
    assert 85.0 < np.median(forced[_interior(s.mask)]) < 270.0
    with pytest.raises(InputError, match="tissue"):
        synthetic_context(s.mask, s.spacing_mm, rng, tissue="liver")


def test_mr_context_is_not_hu_and_varies_in_scale():
    rng = np.random.default_rng(12)
    medians = []
    for _ in range(10):
        s = random_anatomy(rng, ["organ", "vertebra", "bowel"])
        img = synthetic_context(s.mask, s.spacing_mm, rng, modality="MR")
        assert img.dtype == np.float32 and img.shape == s.mask.shape
        assert img.min() >= 0.0  # magnitude images: no air at -1000, no negative fat
        medians.append(float(np.median(img)))
    assert max(medians) / min(medians) > 3.0  # random global scale


def test_mr_fat_is_sometimes_brighter_and_sometimes_darker_than_the_structure():
    rng = np.random.default_rng(13)
    brighter = 0
    for _ in range(16):
        s = random_anatomy(rng, ["node"])
        img = synthetic_context(s.mask, s.spacing_mm, rng, modality="MR")
        far = ~ndimage.binary_dilation(s.mask, iterations=8)
        brighter += np.median(img[far]) > np.median(img[_interior(s.mask)])
    assert 1 <= brighter <= 15


def test_domain_summary_covers_its_shapes():
    rng = np.random.default_rng(4)
    shapes = [random_anatomy(rng, ["vessel", "vertebra"]) for _ in range(8)]
    d = domain_of(shapes)
    sizes = [s.size_mm for s in shapes]
    assert d["size_mm_range"] == [round(min(sizes), 1), round(max(sizes), 1)]
    assert d["size_mm_range"][0] <= d["size_mm"][0] <= d["size_mm"][1] <= d["size_mm_range"][1]
    assert d["classes"] == ["vertebra", "vessel"] and d["shapes"] == 8 and d["components"] == 1
    assert "vertebra" in d["what"]
    assert 1.0 <= d["elongation"][0] <= d["elongation"][1]
    assert d["holes"] == [0, 1]  # tubes have none, a vertebra its canal
    with pytest.raises(InputError):
        domain_of([])


def test_topology_of_known_solids():
    k, j, i = np.mgrid[:40, :40, :40] - 19.5
    r = np.sqrt(k * k + j * j + i * i)
    ball = r <= 12
    assert shape_topology(ball) == {"components": 1, "holes": 0, "cavities": 0, "euler": 1}
    assert shape_topology(ball & (r >= 8)) == {"components": 1, "holes": 0, "cavities": 1, "euler": 2}
    torus = (np.sqrt(k * k + j * j) - 12) ** 2 + i * i <= 16
    assert shape_topology(torus)["holes"] == 1
    assert elongation(ball) == pytest.approx(1.0, abs=0.05)


def test_study_cases_in_mr():
    cases = anatomy_study_cases(seed=2, n=2, classes=["organ"], modality="MR")
    assert all(c["cls"] == "organ" and c["image"].min() >= 0.0 for c in cases)


def test_study_cases_are_held_out_reproducible_and_have_ct():
    a = anatomy_study_cases(seed=1, n=3)
    b = anatomy_study_cases(seed=1, n=3)
    assert [c["cls"] for c in a] == [c["cls"] for c in b]
    for x, y in zip(a, b):
        assert np.array_equal(x["mask"], y["mask"]) and np.array_equal(x["image"], y["image"])
        assert x["cls"] in HELD_OUT_CLASSES and x["image"].dtype == np.float32
        assert x["size_mm"] == pytest.approx(_extent(x["mask"]) * x["spacing_mm"])
