"""Training the shipped shape prior on clean ALAN adrenal shapes (64^3, 1 mm, arrays [k, j, i]).

Recipe (amortised, not transductive): each step draws clean training shapes, flips them
along random axes (left and right glands, any crop orientation), shifts them a little,
distorts most of them with randomly strong annotation errors, encodes the distorted mask
to z and trains encoder + decoder + MLP so that the decoded occupancy matches the *clean*
shape at points sampled near both surfaces and uniformly. A small ||z||^2 term keeps the
latent space centred so that refinement-time latent fitting with lambda*||z||^2 is well posed.
The checkpoint with the best Dice on a fixed distorted validation subset is kept.
"""
from __future__ import annotations

import json
import math
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np
import torch
from scipy import ndimage as ndi
import torch.nn.functional as F
from tqdm import tqdm

from .annotation_errors import ALL_FAMILIES, corrupt, mixture
from .distort import DistortionParams, distort
from .metrics import dice
from .model import Condition, ModelConfig, NeARModel, sample_volume, voxel_centres
from .phantom import ct_phantom
from .prior import save_prior


@dataclass
class TrainConfig:
    data: str = "../shared/data/alan64/alan64_trainval.npz"
    out: str = "NeARSlicer/NeARSlicerLib/priors/adrenal_v1.safetensors"
    minutes: float = 60.0  # wall-clock budget
    max_steps: int = 100000
    batch: int = 16
    points: int = 4096
    lr: float = 1e-3
    latent_reg: float = 1e-3
    val_every: int = 150
    val_cases: int = 24
    seed: int = 0
    threads: int = 2
    resume: str | None = None
    appearance: bool = False  # train S+A on synthetic CT phantoms around each shape
    appearance_dropout: float = 0.3  # share of samples trained with a constant image, so S+A priors also serve S
    appearance_sigmas: tuple[float, ...] = (0.0, 1.0)  # a(p) channels (see ModelConfig)
    encoder_appearance: bool = True  # the encoder sees the image too
    appearance_gain: float = 4.0  # see ModelConfig
    init_from: str | None = None  # warm start from another prior (e.g. the shape-only one)
    annotation_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0)  # () trains the paper's MLP
    skips: bool = True  # encoder -> decoder skips; False trains the paper's decoder
    errors: str = "library"  # "library": annotation_errors.mixture; "paper": distort.py only (the v1 priors)
    families: tuple[str, ...] = ALL_FAMILIES  # error families drawn in training (leave one out: drop it here)


def random_distortion(rng: np.random.Generator) -> DistortionParams:
    """A random error strength, from almost clean to worse than the benchmark's default."""
    hi = int(rng.integers(0, 15))
    return DistortionParams(
        n_cubes=(0, hi),
        cube_size=(3, int(rng.integers(4, 10))),
        p_morph=float(rng.uniform(0.0, 0.8)),
        noise_fraction=float(rng.uniform(0.0, 0.012)),
        noise_band=int(rng.integers(2, 9)),
    )


def augment(shape: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random flips of each axis and a shift of up to 2 voxels (the gland stays inside the cube)."""
    axes = tuple(a for a in range(3) if rng.random() < 0.5)
    out = np.flip(shape, axes) if axes else shape
    shift = rng.integers(-2, 3, size=3)
    return np.roll(out, tuple(int(s) for s in shift), axis=(0, 1, 2))


def make_batch(shapes: np.ndarray, idx: np.ndarray, rng: np.random.Generator, p_clean: float = 0.15,
               appearance: bool = False, sigmas: tuple[float, ...] = (), app_sigmas: tuple[float, ...] = (0.0,),
               families: Optional[tuple[str, ...]] = None):
    """(clean, noisy, context) tensors (B, C, 64, 64, 64).

    ``context`` holds what ``NeARModel.context`` would compute (the annotation blurred with
    each of ``sigmas``, then the windowed phantom CT blurred with each of ``app_sigmas``), made
    here with scipy in the loader thread because 3D blurs in torch are slow on CPUs; None when
    there is nothing to hold. The phantoms' scanner and tissue values vary (``ct_phantom(vary=True)``).
    ``families``: draw errors from ``annotation_errors.mixture`` over these families (the phantom
    CT is passed so that leaks follow similar-looking tissue); None: the v1 recipe (``distort``).
    """
    clean, noisy, ctx = [], [], []
    for i in idx:
        c = augment(shapes[i], rng)
        hu = ct_phantom(c, seed=int(rng.integers(2**31)), vary=True) if appearance else None
        if rng.random() < p_clean:
            d = c
        elif families is None:
            d = distort(c, seed=int(rng.integers(2**31)), params=random_distortion(rng))
        else:
            d = mixture(c, (1.0, 1.0, 1.0), rng, families, image=hu)[0]
        clean.append(c)
        noisy.append(d)
        chans = [ndi.gaussian_filter(d.astype(np.float32), s, mode="constant", truncate=3.0) if s > 0
                 else d.astype(np.float32) for s in sigmas]
        if appearance:
            a = window_np(hu)
            chans += [ndi.gaussian_filter(a, s, mode="nearest", truncate=3.0) if s > 0 else a for s in app_sigmas]
        if chans:
            ctx.append(np.stack(chans))
    vols = np.concatenate([np.stack(clean)[:, None], np.stack(noisy)[:, None]] + ([np.stack(ctx)] if ctx else []), 1)
    t = torch.from_numpy(vols.astype(np.float32))  # (B, 2 + C, n, n, n)
    # random isotropic zoom: glands vary in size and the working cube need not be exactly 64 mm
    scale = torch.from_numpy(rng.uniform(0.9, 1.1, size=len(idx)).astype(np.float32))
    theta = torch.zeros(len(idx), 3, 4)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = scale
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    t = F.grid_sample(t, grid, align_corners=False, padding_mode="border")
    clean_t = (t[:, :1] > 0.5).float()
    return clean_t, t[:, 1:2], (t[:, 2:] if t.shape[1] > 2 else None)


def _val_case(shape: np.ndarray, seed: int, families: Sequence[str]) -> np.ndarray:
    """A fixed validation annotation: one of ``families`` (cycled by seed) at a set severity."""
    fam = list(families)[seed % len(families)]
    return corrupt(shape, (1.0, 1.0, 1.0), fam, seed)


def window_np(hu: np.ndarray) -> np.ndarray:
    return np.clip((hu + 60.0) / 200.0, 0.0, 1.0)


def band(vol: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Voxels within ``width`` of the surface of a (B, 1, n, n, n) binary volume."""
    k = 2 * width + 1
    dil = F.max_pool3d(vol, k, 1, width)
    ero = -F.max_pool3d(-vol, k, 1, width)
    return (dil - ero) > 0.5


def sample_points(clean: torch.Tensor, noisy: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n, 3) normalised points: 45% near the clean surface, 25% near the input's, 30% uniform."""
    B, _, r = clean.shape[:3]
    n_clean, n_noisy = int(0.45 * n), int(0.25 * n)
    n_uni = n - n_clean - n_noisy
    out = []
    for b_vol, count in ((band(clean, 1), n_clean), (band(noisy, 1), n_noisy)):
        w = b_vol.view(B, -1).float() + 1e-6
        flat = torch.multinomial(w, count, replacement=True, generator=gen)
        k, j, i = flat // (r * r), (flat // r) % r, flat % r
        ijk = torch.stack([i, j, k], -1).float() + torch.rand(B, count, 3, generator=gen)
        out.append(ijk * (2.0 / r) - 1.0)
    out.append(torch.rand(B, n_uni, 3, generator=gen) * 2 - 1)
    return torch.cat(out, 1)


@torch.no_grad()
def decode_grid(model: NeARModel, z: torch.Tensor, n: int = 64, chunk: int = 65536,
                context: Condition | None = None) -> torch.Tensor:
    """Dense occupancy probability (B, n, n, n) of latent codes ``z``; used for validation."""
    maps = model.maps(z, context)
    pts = voxel_centres(n, z.device).view(1, -1, 3)
    out = []
    for s in range(0, pts.shape[1], chunk):
        p = pts[:, s:s + chunk].expand(z.shape[0], -1, -1)
        out.append(torch.sigmoid(model.query(maps, p, context)))
    return torch.cat(out, 1).view(-1, n, n, n)


def validate(model: NeARModel, val_clean: np.ndarray, val_noisy: np.ndarray, val_ct: np.ndarray | None = None) -> float:
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(val_noisy[:, None].astype(np.float32))
        ct = torch.from_numpy(val_ct[:, None].astype(np.float32)) if val_ct is not None else None
        z, cond = model.encode(x, ct)
        prob = decode_grid(model, z, context=cond).numpy()
    model.train()
    return float(np.mean([dice(p > 0.5, c) for p, c in zip(prob, val_clean)]))


def warm_start(model: NeARModel, prior_path: str) -> None:
    """Copy a prior's weights into ``model``; extra MLP inputs start with zero weight."""
    from .prior import load_prior

    src, _ = load_prior(prior_path)
    own = model.state_dict()
    for k, v in src.state_dict().items():
        if k in own and own[k].shape == v.shape:
            own[k] = v.clone()
        elif (k in own and own[k].dim() == v.dim() and own[k].shape[0] == v.shape[0]
              and own[k].shape[1] > v.shape[1] and own[k].shape[2:] == v.shape[2:]):
            # new inputs (MLP: annotation, appearance; encoder: the image channel) come last
            w = torch.zeros_like(own[k])
            w[:, : v.shape[1]] = v
            own[k] = w
    model.load_state_dict(own)


def _step_rng(seed: int, step: int) -> tuple[np.random.Generator, torch.Generator]:
    """The random streams of one training step, derived from (seed, step) alone, so that a resumed
    run draws exactly what an uninterrupted one draws (the next batch is prepared ahead)."""
    return np.random.default_rng([seed, step]), torch.Generator().manual_seed(seed * 1_000_003 + step)


def train_prior(cfg: TrainConfig, model_cfg: ModelConfig | None = None, log=print) -> dict:
    """Train and save the prior; returns the training facts written to its metadata.

    With ``cfg.resume`` a checkpoint (safetensors + JSON: weights, Adam state, step, best, history,
    elapsed time) is written every ``val_every`` steps and resumed from when present; the resumed
    run continues bit-identically (same device and threads) when the schedule is step-based
    (``minutes`` = inf). The global torch RNG is left alone.
    """
    from .checkpoint import load_training_state, save_training_state

    torch.set_num_threads(cfg.threads)
    data = np.load(cfg.data)
    train, val = data["train_shapes"], data["val_shapes"]
    val_clean = val[: cfg.val_cases]
    if cfg.errors == "library":
        # checkpoints are chosen on the trained families only: a held-out family stays unseen
        val_noisy = np.stack([_val_case(v, 10_000 + i, cfg.families) for i, v in enumerate(val_clean)])
    else:
        val_noisy = np.stack([distort(v, seed=10_000 + i) for i, v in enumerate(val_clean)])
    val_ct = (window_np(np.stack([ct_phantom(v, seed=10_000 + i) for i, v in enumerate(val_clean)]))
              if cfg.appearance else None)

    mcfg = model_cfg or ModelConfig(appearance=cfg.appearance, annotation_sigmas=tuple(cfg.annotation_sigmas),
                                    skips=cfg.skips, appearance_sigmas=tuple(cfg.appearance_sigmas),
                                    encoder_appearance=cfg.encoder_appearance, appearance_gain=cfg.appearance_gain)
    with torch.random.fork_rng(devices=[]):  # the initial weights are seeded without touching the global RNG
        torch.manual_seed(cfg.seed)
        model = NeARModel(mcfg)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step0, best, elapsed0 = 0, -1.0, 0.0
    history: list[dict] = []
    ema_loss = None
    if cfg.resume and Path(cfg.resume).is_file():
        info = load_training_state(cfg.resume, model, opt)
        step0, extra = info["step"], info["extra"]
        best, elapsed0, history, ema_loss = extra["best"], extra["seconds"], extra["history"], extra["ema_loss"]
        log(f"resumed at step {step0} (best val Dice {best:.4f})")
    elif cfg.init_from:
        warm_start(model, cfg.init_from)
        log(f"warm start from {cfg.init_from}")
    budget = cfg.minutes * 60.0
    t0 = time.time() - elapsed0
    pool = ThreadPoolExecutor(1)  # the next batch is made while this step runs

    def submit(step: int):
        rng, _ = _step_rng(cfg.seed, step)
        return pool.submit(make_batch, train, rng.integers(len(train), size=cfg.batch), rng, 0.15,
                           cfg.appearance, tuple(cfg.annotation_sigmas), tuple(model.cfg.appearance_sigmas),
                           tuple(cfg.families) if cfg.errors == "library" else None)

    step = step0
    nxt = submit(step)
    bar = tqdm(total=cfg.max_steps, initial=step0, desc="train-prior", mininterval=5)
    while step < cfg.max_steps and time.time() - t0 < budget:
        clean, noisy, context = nxt.result()
        nxt = submit(step + 1)
        _, gen = _step_rng(cfg.seed, step)
        # cosine decay over the steps, or over the time budget when that is the binding limit
        frac = step / max(1, cfg.max_steps)
        if math.isfinite(budget):
            frac = max(frac, (time.time() - t0) / budget)
        for g in opt.param_groups:
            g["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
        pts = sample_points(clean, noisy, cfg.points, gen)
        target = sample_volume(clean, pts).clamp(0, 1)
        image = None
        if cfg.appearance:
            # some samples see a constant image (half of them the neutral 0.5 of shape-only use):
            # a flat image then carries no information and the S+A prior also serves S
            n_app = len(model.cfg.appearance_sigmas)
            b = context.shape[0]
            drop = (torch.rand(b, generator=gen) < cfg.appearance_dropout).view(b, 1, 1, 1, 1)
            level = torch.where(torch.rand(b, generator=gen) < 0.5, torch.full((b,), 0.5),
                                torch.rand(b, generator=gen)).view(b, 1, 1, 1, 1)
            app = context[:, -n_app:]
            context = torch.cat([context[:, :-n_app], torch.where(drop, level.expand_as(app), app)], 1)
            first = context.shape[1] - n_app
            image = context[:, first:first + 1]  # the first a(p) channel (unblurred: sigma 0)
        z, feats = model.encoder.features(noisy, image if model.cfg.encoder_appearance else None)
        logits = model(z, pts, Condition(context, feats if model.cfg.skips else None))
        loss = F.binary_cross_entropy_with_logits(logits, target) + cfg.latent_reg * z.pow(2).mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
        bar.update(1)
        if step % cfg.val_every == 0:
            v = validate(model, val_clean, val_noisy, val_ct)
            history.append({"step": step, "minutes": round((time.time() - t0) / 60, 2), "loss": round(ema_loss, 4),
                            "val_dice": round(v, 4)})
            log(json.dumps(history[-1]))
            if v > best:
                best = v
                save_prior(cfg.out, model, {"step": step, "val_dice_direct": v})
            if cfg.resume:
                save_training_state(cfg.resume, model, opt, step,
                                    extra={"best": best, "seconds": time.time() - t0, "history": history,
                                           "ema_loss": ema_loss})
    bar.close()
    pool.shutdown(cancel_futures=True)
    v = validate(model, val_clean, val_noisy, val_ct)
    if v > best:
        best = v
        save_prior(cfg.out, model, {"step": step, "val_dice_direct": v})
    facts = {"steps": step, "minutes": round((time.time() - t0) / 60, 1), "best_val_dice_direct": best,
             "errors": cfg.errors, "families": list(cfg.families) if cfg.errors == "library" else ["paper"],
             "history": history}
    log(json.dumps({k: v for k, v in facts.items() if k != "history"}))
    return facts
