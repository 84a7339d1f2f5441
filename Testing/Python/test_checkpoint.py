"""Checkpoints: safetensors + JSON round trip, exact training resume, pickled and corrupt files refused."""
from __future__ import annotations

import os
import pickle

import numpy as np
import pytest
import torch

from NeARSlicerLib.checkpoint import (CheckpointError, is_pickle, load_checkpoint, load_training_state,
                                      save_checkpoint, save_training_state)
from NeARSlicerLib.errors import InputError


def _net(seed: int) -> torch.nn.Module:
    g = torch.Generator().manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g))
    return net


def _train(net, opt, gen, rng, steps):
    """A loop drawing from both a torch and a numpy generator, like train.py does."""
    losses = []
    for _ in range(steps):
        x = torch.randn(16, 4, generator=gen)
        y = torch.from_numpy(rng.normal(size=(16, 1)).astype(np.float32))
        opt.zero_grad()
        loss = torch.nn.functional.mse_loss(net(x), y)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses


def test_round_trip_keeps_tensors_and_json_exactly(tmp_path):
    tensors = {"a": torch.arange(6, dtype=torch.int64).view(2, 3), "b": torch.rand(3, dtype=torch.float64),
               "g": torch.Generator().manual_seed(5).get_state()}
    state = {"losses": [0.1, 1 / 3], "best": float("inf"), "big": 2 ** 100, "name": "x", "nested": {"k": [1, 2]}}
    save_checkpoint(tmp_path / "c.safetensors", tensors, state)
    back, st = load_checkpoint(tmp_path / "c.safetensors")
    assert set(back) == set(tensors) and all(torch.equal(back[k], tensors[k]) for k in tensors)
    assert back["a"].dtype == torch.int64 and back["g"].dtype == torch.uint8
    assert st == state
    assert os.listdir(tmp_path) == ["c.safetensors"]
    with pytest.raises(TypeError, match="not JSON-serialisable"):
        save_checkpoint(tmp_path / "d.safetensors", {}, {"x": object()})
    assert os.listdir(tmp_path) == ["c.safetensors"]


def test_training_resume_is_bit_identical(tmp_path):
    def fresh():
        net = _net(0)
        return net, torch.optim.Adam(net.parameters(), lr=1e-2), torch.Generator().manual_seed(1), np.random.default_rng(2)

    net, opt, gen, rng = fresh()
    whole = _train(net, opt, gen, rng, 10)

    net1, opt1, gen1, rng1 = fresh()
    first = _train(net1, opt1, gen1, rng1, 4)
    path = tmp_path / "train.safetensors"
    save_training_state(path, net1, opt1, 4, extra={"losses": first}, generators={"gen": gen1, "rng": rng1},
                        tensors={"codes": torch.ones(2, 3)})
    # a different process would start from scratch objects with other values
    net2, opt2, gen2, rng2 = fresh()
    gen2.manual_seed(99)
    rng2 = np.random.default_rng(99)
    info = load_training_state(path, net2, opt2, generators={"gen": gen2, "rng": rng2})
    assert info["step"] == 4 and info["extra"]["losses"] == first
    assert torch.equal(info["tensors"]["codes"], torch.ones(2, 3))
    assert opt2.state_dict()["state"][0]["step"].item() == 4
    assert isinstance(opt2.param_groups[0]["betas"], tuple)
    rest = _train(net2, opt2, gen2, rng2, 6)
    assert first + rest == whole
    for a, b in zip(net.state_dict().values(), net2.state_dict().values()):
        assert torch.equal(a, b)


def test_pickled_files_are_refused_with_a_clear_message(tmp_path):
    net = _net(0)
    pt = tmp_path / "old.pt"
    torch.save({"model": net.state_dict()}, pt)
    raw = tmp_path / "raw.ckpt"
    raw.write_bytes(pickle.dumps({"step": 1}))
    for path, kind in ((pt, "torch.save"), (raw, "pickle")):
        before = path.read_bytes()
        with pytest.raises(CheckpointError, match=rf"{path.name} is a {kind}.*never loads pickle.*re-create it"):
            load_checkpoint(path)
        with pytest.raises(CheckpointError, match="never loads pickle"):
            load_training_state(path, net)
        assert path.read_bytes() == before and is_pickle(path)
    assert issubclass(CheckpointError, InputError)  # the CLI reports it as bad input (exit 2)


def test_corrupt_truncated_and_foreign_files_are_refused(tmp_path):
    net = _net(0)
    good = tmp_path / "good.safetensors"
    save_training_state(good, net, torch.optim.Adam(net.parameters()), 0)
    data = good.read_bytes()
    (tmp_path / "trunc.safetensors").write_bytes(data[: len(data) - 20])
    (tmp_path / "junk.safetensors").write_bytes(b"\x00" * 3)
    (tmp_path / "empty.safetensors").write_bytes(b"")
    for name in ("trunc", "junk", "empty"):
        with pytest.raises(CheckpointError, match=rf"{name}\.safetensors is corrupt or truncated"):
            load_checkpoint(tmp_path / f"{name}.safetensors")
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(1)}, str(tmp_path / "other.safetensors"), metadata={"format": "something-else"})
    with pytest.raises(CheckpointError, match="not a NeARSlicer checkpoint"):
        load_checkpoint(tmp_path / "other.safetensors")
    with pytest.raises(CheckpointError, match="checkpoint not found"):
        load_checkpoint(tmp_path / "absent.safetensors")
    # a training state of another architecture: a clear error, the model untouched
    other = torch.nn.Sequential(torch.nn.Linear(4, 3))
    before = [p.clone() for p in other.parameters()]
    with pytest.raises(CheckpointError, match="does not fit this model"):
        load_training_state(good, other)
    assert all(torch.equal(a, b) for a, b in zip(before, other.parameters()))
