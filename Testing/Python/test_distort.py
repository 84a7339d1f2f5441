"""The paper-style distortion: deterministic, and about as harmful as the paper's (Dice ~0.70)."""
import numpy as np

from NeARSlicerLib.distort import distort
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.phantom import adrenal_phantom


def test_distort_deterministic_and_input_untouched():
    m = adrenal_phantom(seed=3)
    before = m.copy()
    a = distort(m, seed=7)
    b = distort(m, seed=7)
    c = distort(m, seed=8)
    assert np.array_equal(m, before)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_distort_mean_dice_near_paper(shared_data):
    val = np.load(shared_data / "alan64" / "alan64_trainval.npz")["val_shapes"][:30]
    scores = [dice(distort(v, seed=100 + i), v) for i, v in enumerate(val)]
    assert 0.6 < float(np.mean(scores)) < 0.8
