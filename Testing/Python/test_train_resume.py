"""Prior training: a resumed run continues bit-identically; pickled or corrupt checkpoints are refused."""

import math

import numpy as np
import pytest
import torch

from NeARSlicerLib.checkpoint import CheckpointError, load_checkpoint
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.train import TrainConfig, train_prior


@pytest.fixture(scope="module")
def tiny_data(tmp_path_factory):
    shapes = np.stack([adrenal_phantom(seed=s) > 0 for s in range(6)])
    path = tmp_path_factory.mktemp("alan") / "tiny.npz"
    np.savez(path, train_shapes=shapes[:4], val_shapes=shapes[4:])
    return path


@pytest.fixture(scope="module")
def uninterrupted(tiny_data, tmp_path_factory):
    """The training state of 4 steps run without a stop: what every interrupted and resumed run must equal."""
    folder = tmp_path_factory.mktemp("uninterrupted")
    rng_before = torch.random.get_rng_state()
    train_prior(_cfg(tiny_data, folder / "a.safetensors", folder / "a.ckpt", 4), log=lambda *_: None)
    assert torch.equal(rng_before, torch.random.get_rng_state()), "training must not reseed the global RNG"
    return load_checkpoint(folder / "a.ckpt")


def _cfg(data, out, resume, steps):
    return TrainConfig(data=str(data), out=str(out), minutes=math.inf, max_steps=steps, batch=2, points=256,
                       val_every=2, val_cases=2, threads=1, resume=str(resume))


def test_resumed_training_is_bit_identical(tiny_data, tmp_path, uninterrupted):
    def killed_at_step_4(msg):  # the process dies after step 4, before its checkpoint is written
        if '"step": 4' in str(msg):
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        train_prior(_cfg(tiny_data, tmp_path / "b.safetensors", tmp_path / "b.ckpt", 4), log=killed_at_step_4)
    assert load_checkpoint(tmp_path / "b.ckpt")[1]["step"] == 2
    train_prior(_cfg(tiny_data, tmp_path / "b.safetensors", tmp_path / "b.ckpt", 4), log=lambda *_: None)
    a, sa = uninterrupted
    b, sb = load_checkpoint(tmp_path / "b.ckpt")
    assert sa["step"] == sb["step"] == 4
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k
    # the weights did train (the comparison is not between two untouched models)
    assert any(k.startswith("optim/") for k in b)


def test_a_stopped_training_saves_its_state_at_that_step_and_resumes_bit_identically(tiny_data, tmp_path,
                                                                                    uninterrupted):
    """A first Ctrl-C or SIGTERM (``cancel``) stops before the next step with the state saved there,
    not at the last validation (before, the steps since it were lost): here after step 3 of a run that
    validates every 2. The resumed run ends exactly where an uninterrupted one does."""
    from NeARSlicerLib.errors import Cancelled

    asked = []

    def after_three_steps() -> bool:  # asked before each step: the fourth time, three are done
        asked.append(1)
        return len(asked) == 4

    with pytest.raises(Cancelled, match=r"training stopped at step 3 \(state saved to .*b.ckpt: --resume continues"):
        train_prior(_cfg(tiny_data, tmp_path / "b.safetensors", tmp_path / "b.ckpt", 4), log=lambda *_: None,
                    cancel=after_three_steps)
    assert load_checkpoint(tmp_path / "b.ckpt")[1]["step"] == 3
    train_prior(_cfg(tiny_data, tmp_path / "b.safetensors", tmp_path / "b.ckpt", 4), log=lambda *_: None)
    a, sa = uninterrupted
    b, sb = load_checkpoint(tmp_path / "b.ckpt")
    assert sa["step"] == sb["step"] == 4 and a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pickled_checkpoint_is_refused(tiny_data, tmp_path):
    ck = tmp_path / "old.ckpt"
    torch.save({"model": {}, "step": 3}, ck)
    before = ck.read_bytes()
    with pytest.raises(CheckpointError, match="never loads pickle"):
        train_prior(_cfg(tiny_data, tmp_path / "p.safetensors", ck, 4), log=lambda *_: None)
    assert ck.read_bytes() == before
    assert not (tmp_path / "p.safetensors").exists()


def test_corrupt_checkpoint_is_refused(tiny_data, tmp_path):
    ck = tmp_path / "bad.ckpt"
    ck.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json")
    with pytest.raises(CheckpointError, match="corrupt or truncated"):
        train_prior(_cfg(tiny_data, tmp_path / "c.safetensors", ck, 4), log=lambda *_: None)
