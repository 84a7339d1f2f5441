"""``bench --real-ct --all-structures`` holds each case of the scan as the boxes of its masks and scores
it on the boxes its methods read (``bench.ScanCase``, ``bench_box``): the scores must be the whole scan's."""
from __future__ import annotations

import numpy as np
import pytest

FAST = dict(preset="fast", seed=0)


@pytest.fixture(scope="module")
def ct_cases():
    from conftest import SHARED_DATA

    folder = SHARED_DATA / "totalseg_example"
    if not folder.is_dir():
        pytest.skip(f"the example CT {folder} is absent (it lives beside the repository, not in it)")
    from NeARSlicerLib.bench import real_ct_structures

    # the liver (general prior) and the two adrenal glands (adrenal prior)
    return real_ct_structures(folder / "ct.nii.gz", folder / "seg.nii.gz", min_voxels=20_000, per_label=1)


def _whole(cases):
    from NeARSlicerLib.bench import BenchCase

    return [BenchCase(c.name, c.truth, c.annotation, c.grid, c.image, c.structure) for c in cases]


def _scores(result):
    return {m: [(r["case"], r["dsc"], r["nsd"], r.get("prior")) for r in rows]
            for m, rows in result["per_case"].items()}


def test_boxed_cases_score_as_the_whole_scan(ct_cases):
    """Smoothing and NeAR S and S+A (``--prior auto``) score each case as the same bench on whole-scan
    arrays does, while an adrenal gland's case is held and scored on a fraction of the scan."""
    from NeARSlicerLib.bench import ScanCase, bench_box, run_bench
    from NeARSlicerLib.refine import RefineOptions

    assert [c.name for c in ct_cases] == ["label5_d0", "label8_d0", "label9_d0"]
    assert all(isinstance(c, ScanCase) for c in ct_cases)
    variants = {"S": RefineOptions(appearance=False, **FAST), "S+A": RefineOptions(**FAST)}
    kw = dict(variants=variants, tolerance_mm=3.0, log=lambda m: None)
    boxed = run_bench(ct_cases, **kw)
    assert _scores(boxed) == _scores(run_bench(_whole(ct_cases), **kw))
    assert {r["prior"] for r in boxed["per_case"]["S+A"]} == {"adrenal-sa", "anatomy-s"}
    adrenal = ct_cases[2]
    lo, hi = bench_box(adrenal, variants.values())
    assert np.prod(np.subtract(hi, lo)) < 0.3 * np.prod(adrenal.grid.shape)
    assert adrenal.truth_box.array.size + adrenal.annotation_box.array.size < 0.01 * np.prod(adrenal.grid.shape)


def test_a_study_of_boxed_cases_scores_as_the_whole_scan(ct_cases):
    """A study (denoise, which refines every case; the glands' adrenal prior) reads each case's box as the
    whole scan."""
    from NeARSlicerLib.bench import run_bench

    glands = ct_cases[1:]
    kw = dict(variants={}, baselines={}, studies={"study": (None, False)}, tolerance_mm=3.0, study_recipe="denoise",
              log=lambda m: None)
    boxed, whole = run_bench(glands, **kw), run_bench(_whole(glands), **kw)
    assert _scores(boxed)["study"] == _scores(whole)["study"]


def test_a_box_of_soft_tissue_reads_as_the_scans_ct():
    """A gland deep in soft tissue, the scan's air far outside its box: the box alone reads as MR and the
    CT prior would refuse it, but the case is read with the whole scan's facts, as on the whole scan."""
    from NeARSlicerLib.bench import ScanCase, bench_box, identity_grid, run_bench
    from NeARSlicerLib.boxed_mask import BoxedMask
    from NeARSlicerLib.modality import ScanFacts, detect
    from NeARSlicerLib.phantom import adrenal_phantom
    from NeARSlicerLib.refine import RefineOptions

    rng = np.random.default_rng(0)
    image = (45.0 + 12.0 * rng.standard_normal((64, 160, 160))).astype(np.float32)
    image[:, :, :12] = -1000.0  # air at one face only
    truth = np.zeros(image.shape, bool)
    truth[:, 48:112, 48:112] = adrenal_phantom(seed=1)[:, :, :] > 0
    image[truth] = 30.0
    annotation = np.roll(truth, 2, axis=2)
    grid = identity_grid(image.shape)
    case = ScanCase("gland_d0", BoxedMask.of(truth), BoxedMask.of(annotation), grid, image, ScanFacts.of(image),
                    structure="left adrenal gland")
    variants = {"S+A": RefineOptions(**FAST)}
    lo, hi = bench_box(case, variants.values())
    assert detect(image[tuple(slice(a, b) for a, b in zip(lo, hi))]).modality != "CT"
    kw = dict(variants=variants, baselines={}, tolerance_mm=1.0, log=lambda m: None)
    boxed = run_bench([case], **kw)
    assert _scores(boxed) == _scores(run_bench(_whole([case]), **kw))
    assert boxed["per_case"]["S+A"][0]["prior"] == "adrenal-sa"
