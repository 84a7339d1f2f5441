"""Study mode under torchrun: two gloo processes add up each step's gradients (model weights and
latent codes) exactly as one process computes them on the whole batch, and a two-process
``nearslicer study`` writes one set of outputs, from rank 0 only, close to the single-process ones."""

import csv
import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as tmp_mp
from safetensors.torch import load_file, save_file

from NeARSlicerLib.cli import main
from NeARSlicerLib.distort import distort
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.io import read_mask, write_mask
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.model import ModelConfig, NeARModel
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.prior import save_prior
from NeARSlicerLib.study import StudyCase, StudyConfig

ROOT = Path(__file__).resolve().parents[2]
TINY = ModelConfig(latent_dim=16, channels=(16, 8, 8, 4), mlp_hidden=16, mlp_layers=2, encoder_res=16,
                   encoder_channels=(4, 4, 8, 8), annotation_sigmas=(0.0, 1.0))
GRID = Grid((32, 40, 40), (1.0, 1.0, 1.5), (0.0, 0.0, 0.0))
L2SP = 1.0  # large, so that counting the L2-SP term twice would show in the gradients

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def tiny_prior(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("prior") / "tiny.safetensors"
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        model = NeARModel(TINY)
    save_prior(path, model, {"fov_mm": 40.0})
    return str(path)


def _cases(n: int = 3) -> list[StudyCase]:
    out = []
    for s in range(n):
        clean = adrenal_phantom(seed=60 + s, shape=GRID.shape, spacing=GRID.spacing)
        out.append(StudyCase(f"case{s}", distort(clean, seed=s).astype(np.uint8), GRID))
    return out


def _config(recipe: str) -> StudyConfig:
    # one step over 3 cases: 2 processes take uneven shares (2 + 1)
    return StudyConfig.for_recipe(recipe, batch_cases=3, points=256, l2sp=L2SP, device="cpu", seed=0)


def _step_gradients(prior: str, recipe: str, ctx) -> tuple[dict, float, dict]:
    """The gradients and loss of the first step of a study, and the L2-SP term's own gradient."""
    from NeARSlicerLib.study import _batch_gradients, _epoch_order, _start_training

    cfg = _config(recipe)
    tr = _start_training(_cases(), prior, cfg, ctx.device, lambda f, m: None)
    if tr.anchor is not None:  # move the weights off the prior's, so that the L2-SP term has a gradient
        with torch.no_grad():
            for k, p in tr.model.named_parameters():
                p.add_(0.02 * torch.cos(torch.arange(p.numel(), dtype=p.dtype)).view_as(p))
    idx = _epoch_order(cfg, len(tr.prep), 0)[:3]
    loss = _batch_gradients(cfg, tr, idx, 0, ctx)
    grads = {f"model.{k}": p.grad.clone() for k, p in tr.model.named_parameters() if p.grad is not None}
    grads.update({f"latent{i}": z.grad.clone() for i, z in enumerate(tr.latents) if z.grad is not None})
    reg = {}
    if tr.anchor is not None:
        reg = {f"model.{k}": 2 * L2SP * (p.detach() - tr.anchor[k]) for k, p in tr.model.named_parameters()}
    return grads, loss, reg


def _rank_main(rank: int, world: int, port: int, prior: str, out: str) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), WORLD_SIZE=str(world), RANK=str(rank),
                      LOCAL_RANK=str(rank))
    torch.set_num_threads(1)
    from NeARSlicerLib.distributed import Distributed, exit_process

    ctx = Distributed.from_env("cpu")
    for recipe in ("denoise", "fast"):
        grads, loss, _ = _step_gradients(prior, recipe, ctx)
        # every process must hold the same (summed) gradients: each writes its own copy
        save_file({k: v.contiguous() for k, v in grads.items()}, f"{out}.{recipe}.{rank}.safetensors",
                  metadata={"loss": repr(loss)})
    ctx.barrier()
    exit_process(0)  # what the CLI does under torchrun: no teardown of gloo's threads (it can abort)


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    return torch.allclose(a, b, rtol=1e-4, atol=1e-7)


def test_two_gloo_processes_add_up_to_the_single_process_gradient(tmp_path, tiny_prior):
    from NeARSlicerLib.distributed import Distributed

    out = str(tmp_path / "grads")
    tmp_mp.spawn(_rank_main, args=(2, _free_port(), tiny_prior, out), nprocs=2, join=True)
    for recipe in ("denoise", "fast"):
        single, loss, reg = _step_gradients(tiny_prior, recipe, Distributed())
        # denoise trains every weight and no code; fast the decoder, the MLP and the batch's 3 codes
        assert sum(k.startswith("latent") for k in single) == (0 if recipe == "denoise" else 3)
        assert any(k.startswith("model.encoder") for k in single) is (recipe == "denoise")
        for rank in (0, 1):
            path = f"{out}.{recipe}.{rank}.safetensors"
            shared = load_file(path)
            assert set(shared) == set(single), (recipe, rank)
            for k, g in single.items():
                assert _close(shared[k], g), (recipe, rank, k, (shared[k] - g).abs().max().item())
            from safetensors import safe_open

            with safe_open(path, "pt") as f:
                assert abs(float(f.metadata()["loss"]) - loss) <= 1e-5 * abs(loss), recipe
        if reg:  # the test can tell the penalty counted once from counted twice
            assert any(not _close(single[k] + reg[k], single[k]) for k in reg)


def test_a_rank_share_alone_is_not_the_whole_gradient(tiny_prior):
    """Counter-check of the test above: without adding up the shares, process 1's share (1 of 3
    cases) is not the whole gradient, so that test can tell a sum from no sum."""
    from NeARSlicerLib.distributed import Distributed

    class NoSum(Distributed):
        def sum_gradients(self, params, value=0.0):
            return value

    whole, _, _ = _step_gradients(tiny_prior, "fast", Distributed())
    share, _, _ = _step_gradients(tiny_prior, "fast", NoSum(rank=1, world=2))
    assert sum(k.startswith("latent") for k in share) == 1  # the code of its one case only
    assert any(not _close(share[k], g) for k, g in whole.items() if k.startswith("model."))


def _write_cases(folder: Path, n: int = 3) -> None:
    folder.mkdir()
    for c in _cases(n):
        write_mask(str(folder / f"{c.name}.nii.gz"), c.mask, c.grid)


RECORD_WRITES = """
import os, sys
real = os.replace
log = os.path.join({log!r}, "writes.%s.txt" % os.environ.get("RANK", "-"))
def replace(src, dst, *a, **k):
    with open(log, "a") as f:
        f.write(os.path.basename(str(dst)) + "\\n")
    return real(src, dst, *a, **k)
os.replace = replace  # every output of NeARSlicer is committed by an os.replace (output_safety)
from NeARSlicerLib.cli import run
run(sys.argv[1:])
"""


def _torchrun(script: Path, nproc: int, args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "NeARSlicer"), "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)]
    return subprocess.run(cmd + [str(script), *args], env=env, cwd=cwd, capture_output=True, text=True, timeout=600)


@pytest.mark.skipif(sys.platform != "linux", reason="torchrun with gloo on loopback is exercised on Linux")
def test_torchrun_study_writes_one_set_of_outputs_from_rank_0(tmp_path, tiny_prior, capsys):
    masks = tmp_path / "masks"
    _write_cases(masks)
    logs = tmp_path / "logs"
    logs.mkdir()
    script = tmp_path / "study_run.py"
    script.write_text(RECORD_WRITES.format(log=str(logs)))
    common = ["--masks", str(masks), "--prior", tiny_prior, "--recipe", "fast", "--epochs", "2", "--device", "cpu"]
    proc = _torchrun(script, 2, ["study", "--out", str(tmp_path / "out2"), *common], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    out2 = tmp_path / "out2"
    # one set of outputs: one summary with one row per case, one prior and card, one checkpoint
    rows = list(csv.DictReader(open(out2 / "summary.csv")))
    assert sorted(r["case"] for r in rows) == ["case0", "case1", "case2"]
    assert sorted(p.name for p in out2.iterdir()) == sorted(
        ["case0.nii.gz", "case1.nii.gz", "case2.nii.gz", "summary.csv", "study_prior.safetensors",
         "study_prior.json", "checkpoint.safetensors"])
    card = json.loads((out2 / "study_prior.json").read_text())
    assert card["steps"] == 2  # 3 cases in one batch of 8: one step per epoch
    # written by rank 0 alone, the checkpoint once (at the end: checkpoint_every 25 > 2 steps)
    assert not (logs / "writes.1.txt").exists()
    written = (logs / "writes.0.txt").read_text().split()
    assert written.count("checkpoint.safetensors") == 1 and written.count("study_prior.safetensors") == 1
    assert all(written.count(f"case{s}.nii.gz") == 1 for s in range(3))
    # rank 0 reported once; rank 1 printed nothing
    assert proc.stdout.count("study of 3 cases") == 1
    assert proc.stdout.count("study: 3 cases, recipe fast, up to 2 epochs, 2 processes (torchrun)") == 1

    # the same study in one plain process: the same steps up to rounding, so (nearly) the same masks
    assert main(["study", "--out", str(tmp_path / "out1"), *common]) == 0
    single = json.loads((tmp_path / "out1" / "study_prior.json").read_text())
    assert single["final_loss"] == pytest.approx(card["final_loss"], rel=1e-4)
    for s in range(3):
        a = read_mask(str(tmp_path / "out1" / f"case{s}.nii.gz"))[0]
        b = read_mask(str(out2 / f"case{s}.nii.gz"))[0]
        assert b.any() and dice(a, b) > 0.99, s

    # a checkpoint written under torchrun resumes in one process (it holds no process count)
    capsys.readouterr()
    resumed = ["--masks", str(masks), "--prior", tiny_prior, "--recipe", "fast", "--epochs", "3", "--device", "cpu"]
    assert main(["study", "--out", str(out2), *resumed, "--resume", "--overwrite"]) == 0
    assert "resuming from" in capsys.readouterr().out
    assert json.loads((out2 / "study_prior.json").read_text())["steps"] == 3


def test_torchrun_misconfigured_is_one_clear_error(tmp_path, tiny_prior, capsys, monkeypatch):
    masks = tmp_path / "masks"
    _write_cases(masks, 1)
    monkeypatch.setenv("WORLD_SIZE", "2")
    for v in ("RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(v, raising=False)
    rc = main(["study", "--masks", str(masks), "--out", str(tmp_path / "out"), "--prior", tiny_prior,
               "--device", "cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 2 and len(err) == 1
    assert "WORLD_SIZE=2 but RANK, LOCAL_RANK, MASTER_ADDR, MASTER_PORT not set" in err[0] and "torchrun" in err[0]
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
