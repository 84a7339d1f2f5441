"""The shipped adrenal prior on real, held-out (val) ALAN shapes distorted the paper's way:
NeAR must beat both the input and the best smoothing baseline on mean DSC and NSD.
The ambitious targets (85 / 90) are the benchmark's (``nearslicer bench``), not this test's."""
import numpy as np
import pytest

from NeARSlicerLib.annotation_errors import FAMILIES
from NeARSlicerLib.baselines import BASELINES
from NeARSlicerLib.bench import run_bench
from NeARSlicerLib.refine import RefineOptions

N_CASES = 10


def test_prior_beats_input_and_smoothing(shared_data):
    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"]
    cases = val[np.linspace(0, len(val) - 1, N_CASES).astype(int)]
    # the prior itself: every change it proposes (the do-no-harm default is measured in keep_or_refine.py),
    # from its encoder's code in one view (``fast``): the default preset's latent fit and mirrored views
    # cost 12x the time and are tested on their own (test_no_harm: a rough mask repaired by the default)
    result = run_bench(cases, RefineOptions(structure="adrenal gland", change_policy="all", preset="fast"),
                       log=lambda *_: None)
    t = result["table"]
    near = t["NeAR"]
    best_dsc = max(t[name]["dsc_mean"] for name in BASELINES)
    best_nsd = max(t[name]["nsd_mean"] for name in BASELINES)
    assert near["dsc_mean"] > t["input"]["dsc_mean"] and near["nsd_mean"] > t["input"]["nsd_mean"]
    assert near["dsc_mean"] > best_dsc, (near, best_dsc)
    assert near["nsd_mean"] > best_nsd, (near, best_nsd)


def test_clean_annotation_is_left_nearly_alone(shared_data):
    """Refining an already clean annotation must do no harm: the default (change policy ``gated``)
    applies none of the prior's thin reshaping of a correct boundary (mean Dice to itself >= 0.98;
    every change applied gave >= 0.93)."""
    from NeARSlicerLib.bench import identity_grid
    from NeARSlicerLib.metrics import dice
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"]
    cases = val[np.linspace(3, len(val) - 4, 6).astype(int)]
    scores = [dice(refine_mask(c, identity_grid(c.shape), options=RefineOptions(preset="fast")).mask, c) for c in cases]
    assert np.mean(scores) >= 0.98, scores


@pytest.mark.slow
@pytest.mark.parametrize("family", (*FAMILIES, "mixture"))
def test_shipped_default_beats_its_input_on_every_error_family(shared_data, family):
    """Issue 8: the shipped shape-only prior with the product's default (``default`` preset, the gated
    change policy) beats its input on both DSC and NSD (1 mm) for every family of the error library,
    on the robustness benchmark's 16 ALAN val shapes (bench seeds; ``benchmarks/near_gate.py``).
    Slow (about 35 s per family, 5 min in all), so outside the default suite:
    ``bash scripts/test.sh -m slow``. Fewer shapes do not show it: on the first 4 or 8 the default keeps
    some families' inputs exactly (over-painting, over-smoothing), neither better nor worse."""
    from NeARSlicerLib.bench import alan_cases

    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"][:16]
    t = run_bench(alan_cases(val, family=family), RefineOptions(structure="adrenal gland"), baselines={},
                  log=lambda *_: None)["table"]
    near, given = t["NeAR"], t["input"]
    assert near["dsc_mean"] > given["dsc_mean"] and near["nsd_mean"] > given["nsd_mean"], (family, near, given)
