"""Prior training under torchrun: two gloo processes average gradients exactly as one process on the
combined batch; a torchrun run of two processes trains, and only rank 0 writes the prior."""

import json
import math
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp
from safetensors.torch import load_file, save_file

from NeARSlicerLib.model import ModelConfig, NeARModel
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.train import TrainLoss

ROOT = Path(__file__).resolve().parents[2]
CFG = ModelConfig(latent_dim=16, channels=(16, 8, 8, 4), mlp_hidden=16, encoder_channels=(4, 8, 8, 8),
                  annotation_sigmas=(0.0, 1.0), skips=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _batch() -> dict:
    """A fixed batch of 4 cases: rough masks, their context channels, query points and targets."""
    g = torch.Generator().manual_seed(7)
    clean = torch.from_numpy(np.stack([adrenal_phantom(seed=s, shape=(32, 32, 32)) for s in range(4)])).float()[:, None]
    noisy = (clean + (torch.rand(clean.shape, generator=g) < 0.05).float()).clamp(0, 1)
    context = torch.cat([noisy, torch.nn.functional.avg_pool3d(noisy, 3, 1, 1)], 1)
    pts = torch.rand(4, 300, 3, generator=g) * 2 - 1
    target = torch.rand(4, 300, generator=g)
    return {"noisy": noisy, "context": context, "pts": pts, "target": target}


def _model() -> NeARModel:
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(3)
        return NeARModel(CFG)


def _grads(loss_module: torch.nn.Module, model: NeARModel, b: dict, part: slice) -> dict:
    loss = loss_module(b["noisy"][part], None, b["context"][part], b["pts"][part], b["target"][part])
    loss.backward()
    return {k: p.grad.detach().clone() for k, p in model.named_parameters() if p.grad is not None}


def _rank_main(rank: int, world: int, port: int, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from NeARSlicerLib.distributed import Distributed, exit_process

    ctx = Distributed.from_env("cpu")
    model = _model()
    grads = _grads(ctx.wrap(TrainLoss(model, 1e-3)), model, _batch(), slice(2 * rank, 2 * rank + 2))
    if ctx.main:
        save_file(grads, out)
    ctx.barrier()
    exit_process(0)  # what the CLI does under torchrun: no teardown of gloo's threads (it can abort)


def test_two_gloo_processes_average_gradients_like_one_process_on_the_whole_batch(tmp_path):
    model = _model()
    single = _grads(TrainLoss(model, 1e-3), model, _batch(), slice(0, 4))
    out = tmp_path / "ddp_grads.safetensors"
    tmp_mp.spawn(_rank_main, args=(2, _free_port(), str(out)), nprocs=2, join=True)
    ddp = load_file(str(out))
    assert set(ddp) == set(single) and len(single) > 10
    for name, g in single.items():
        assert torch.allclose(ddp[name], g, rtol=1e-4, atol=1e-6), name
    # and the halves alone differ from the whole: the test can tell averaging from no averaging
    other = _model()
    half = _grads(TrainLoss(other, 1e-3), other, _batch(), slice(0, 2))
    assert any(not torch.allclose(half[k], single[k], rtol=1e-4, atol=1e-6) for k in single)


def _meta(path: Path) -> dict:
    raw = path.read_bytes()
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(json.loads(raw[8:8 + n])["__metadata__"]["meta"])


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is exercised on Linux")
def test_torchrun_two_processes_train_and_only_rank_0_writes(tmp_path):
    shapes = np.stack([adrenal_phantom(seed=s) > 0 for s in range(6)])
    data = tmp_path / "tiny.npz"
    np.savez(data, train_shapes=shapes[:4], val_shapes=shapes[4:])
    out = tmp_path / "p.safetensors"
    script = tmp_path / "run.py"
    script.write_text(
        "import math, sys\n"
        "from NeARSlicerLib.distributed import exit_process\n"
        "from NeARSlicerLib.train import TrainConfig, train_prior\n"
        f"train_prior(TrainConfig(data={str(data)!r}, out={str(out)!r}, minutes=math.inf, max_steps=2, batch=2,"
        " points=128, val_every=2, val_cases=1, threads=1, device='cpu'))\n"
        "exit_process(0)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeARSlicer"), "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    cmd = [str(torchrun)] if torchrun.is_file() else [sys.executable, "-m", "torch.distributed.run"]
    proc = subprocess.run(cmd + ["--standalone", "--nproc-per-node", "2", str(script)], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert out.is_file()
    assert _meta(out)["processes"] == 2
    # one prior, one card line per validation: rank 1 wrote and logged nothing
    assert proc.stdout.count('"steps": 2') == 1, proc.stdout
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".safetensors"] == ["p.safetensors"]
    assert math.isfinite(_meta(out)["val_dice_direct"])


def test_exit_process_flushes_the_output_and_keeps_the_exit_status():
    # os._exit alone would drop what is still buffered in a pipe: the final report of a torchrun run
    code = "import sys\nfrom NeARSlicerLib.distributed import exit_process\nsys.stdout.write('done')\nexit_process(3)\n"
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeARSlicer")}
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert (proc.returncode, proc.stdout) == (3, "done"), proc.stderr[-2000:]
