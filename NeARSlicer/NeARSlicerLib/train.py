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
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from .annotation_errors import ALL_FAMILIES, corrupt
from .appearance import normalise
from .distort import distort
from .errors import Cancelled
from .metrics import dice
from .model import Condition, ModelConfig, NeARModel, box_max, gaussian_blur, sample_volume, voxel_centres
from .phantom import ct_phantom
from .prior import save_prior
from .training_data import BatchStream, DataSpec, RawBatch, make_sample


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
    appearance: bool = False  # train S+A on synthetic images around each shape
    appearance_dropout: float = 0.3  # share of samples trained with a constant image, so S+A priors also serve S
    appearance_sigmas: tuple[float, ...] = (0.0, 1.0)  # a(p) channels (see ModelConfig)
    encoder_appearance: bool = True  # the encoder sees the image too
    appearance_gain: float = 4.0  # see ModelConfig
    init_from: str | None = None  # warm start from another prior (e.g. the shape-only one)
    annotation_sigmas: tuple[float, ...] = (0.0, 1.0, 2.0)  # () trains the paper's MLP
    skips: bool = True  # encoder -> decoder skips; False trains the paper's decoder
    errors: str = "library"  # "library": annotation_errors.mixture; "paper": distort.py only (the v1 priors)
    families: tuple[str, ...] = ALL_FAMILIES  # error families drawn in training (leave one out: drop it here)
    source: str = "alan"  # alan: ALAN shapes at 1 mm; anatomy: generated anatomy + rescaled ALAN (extent scale)
    appearance_norm: str = "window"  # window (HU, CT only) | case (any modality; see appearance.py)
    p_mr: float = 0.3  # with case normalisation: share of MR-like training images
    p_voxel_errors: float = 0.0  # share of samples with error sizes in the cube's voxels (DataSpec)
    device: str = "auto"  # auto | cpu | cuda
    workers: int = 0  # processes making batches (0: one background thread)
    reuse: int = 1  # each batch made on CPU serves this many steps, mirrored differently (when CPUs lag a GPU)
    meta: dict | None = None  # extra card entries (name, data, license...) written with the prior

    def data_spec(self) -> DataSpec:
        return DataSpec(source=self.source, appearance=self.appearance, appearance_norm=self.appearance_norm,
                        families=tuple(self.families) if self.errors == "library" else None, p_mr=self.p_mr,
                        p_voxel_errors=self.p_voxel_errors)

    def card(self) -> dict:
        """What the prior's card states about its working scale and image domain (see refine)."""
        scale = ({"mode": "extent", "extent_voxels": 40} if self.source == "anatomy"
                 else {"mode": "fixed", "spacing_mm": 1.0})
        out = {"scale": scale, "fov_mm": 64.0 if self.source == "alan" else None, "source": self.source,
               "errors": self.errors, "families": list(self.families) if self.errors == "library" else ["paper"]}
        if self.p_voxel_errors > 0:
            out["p_voxel_errors"] = self.p_voxel_errors
        if self.appearance:
            out["appearance_norm"] = self.appearance_norm
            out["modalities"] = ["CT"] if self.appearance_norm == "window" else ["CT", "MR"]
        out = {k: v for k, v in out.items() if v is not None}
        return {**out, **(self.meta or {})}


def _val_case(shape: np.ndarray, seed: int, families: Sequence[str]) -> np.ndarray:
    """A fixed validation annotation: one of ``families`` (cycled by seed) at a set severity."""
    fam = list(families)[seed % len(families)]
    return corrupt(shape, (1.0, 1.0, 1.0), fam, seed)


def band(vol: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Voxels within ``width`` of the surface of a (B, 1, n, n, n) binary volume."""
    return (box_max(vol, width) + box_max(-vol, width)) > 0.5  # max - min over the box


def sample_points(clean: torch.Tensor, noisy: torch.Tensor, n: int, gen: torch.Generator) -> torch.Tensor:
    """(B, n, 3) normalised points: 45% near the clean surface, 25% near the input's, 30% uniform.
    ``gen`` lives on the volumes' device."""
    B, _, r = clean.shape[:3]
    dev = clean.device
    n_clean, n_noisy = int(0.45 * n), int(0.25 * n)
    n_uni = n - n_clean - n_noisy
    out = []
    for b_vol, count in ((band(clean, 1), n_clean), (band(noisy, 1), n_noisy)):
        w = b_vol.view(B, -1).float() + 1e-6
        flat = torch.multinomial(w, count, replacement=True, generator=gen)
        k, j, i = flat // (r * r), (flat // r) % r, flat % r
        ijk = torch.stack([i, j, k], -1).float() + torch.rand(B, count, 3, generator=gen, device=dev)
        out.append(ijk * (2.0 / r) - 1.0)
    out.append(torch.rand(B, n_uni, 3, generator=gen, device=dev) * 2 - 1)
    return torch.cat(out, 1)


def finish_batch(raw: RawBatch, device: torch.device, flip: tuple[int, ...] = ()
                 ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """(clean, noisy, image) tensors (B, 1, n, n, n) on ``device``, each sample zoomed by ``raw.zoom``,
    all mirrored along the tensor dims ``flip`` (a batch used again is seen in another view)."""
    parts = [torch.from_numpy(raw.clean), torch.from_numpy(raw.noisy)]
    if raw.image is not None:
        parts.append(torch.from_numpy(raw.image))
    t = torch.stack(parts, 1).to(device, non_blocking=True).float()
    if flip:
        t = t.flip(flip)
    b = t.shape[0]
    theta = torch.zeros(b, 3, 4, device=device)
    zoom = torch.from_numpy(raw.zoom).to(device)
    theta[:, 0, 0] = theta[:, 1, 1] = theta[:, 2, 2] = zoom
    grid = F.affine_grid(theta, list(t.shape), align_corners=False)
    t = F.grid_sample(t, grid, align_corners=False, padding_mode="border")
    return (t[:, :1] > 0.5).float(), t[:, 1:2], (t[:, 2:3] if raw.image is not None else None)


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


def validate(model: NeARModel, val_clean: np.ndarray, val_noisy: np.ndarray, val_img: np.ndarray | None = None) -> float:
    """Mean Dice of the codes the encoder gives the validation annotations (no fitting)."""
    device = next(model.parameters()).device
    model.eval()
    with torch.no_grad():
        x = torch.from_numpy(val_noisy[:, None].astype(np.float32)).to(device)
        img = torch.from_numpy(val_img[:, None].astype(np.float32)).to(device) if val_img is not None else None
        z, cond = model.encode(x, img)
        prob = decode_grid(model, z, context=cond).cpu().numpy()
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


def _step_gen(seed: int, step: int, device: torch.device, rank: int = 0) -> torch.Generator:
    """The torch stream of one training step (on ``device``), from (seed, step, rank) alone."""
    return torch.Generator(device=device).manual_seed(seed * 1_000_003 + step + rank * 7_919_111)


class TrainLoss(torch.nn.Module):
    """The loss of one batch as a module (so that DistributedDataParallel can wrap it): occupancy
    BCE against the clean shape at ``pts`` plus ``latent_reg`` * mean ||z||^2."""

    def __init__(self, model: NeARModel, latent_reg: float):
        super().__init__()
        self.model, self.latent_reg = model, latent_reg

    def forward(self, noisy: torch.Tensor, image: torch.Tensor | None, context: torch.Tensor | None,
                pts: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        m = self.model
        z, feats = m.encoder.features(noisy, image if m.cfg.encoder_appearance else None)
        logits = m(z, pts, Condition(context, feats if m.cfg.skips else None))
        return F.binary_cross_entropy_with_logits(logits, target) + self.latent_reg * z.pow(2).mean()


def validation_set(cfg: TrainConfig, val: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """Fixed (clean, annotation, a(p) or None) cases for choosing the checkpoint, on the trained
    error families only (a held-out family stays unseen)."""
    spec = cfg.data_spec()
    if cfg.source == "anatomy":
        from dataclasses import replace

        rng = np.random.default_rng([cfg.seed, 10_000])
        cases = [make_sample(val, replace(spec, p_clean=0.0), rng) for _ in range(cfg.val_cases)]
        clean, noisy, img, _ = zip(*cases)
        return np.stack(clean), np.stack(noisy), (np.stack(img) if cfg.appearance else None)
    clean = val[: cfg.val_cases]
    if cfg.errors == "library":
        noisy = np.stack([_val_case(v, 10_000 + i, cfg.families) for i, v in enumerate(clean)])
    else:
        noisy = np.stack([distort(v, seed=10_000 + i) for i, v in enumerate(clean)])
    img = None
    if cfg.appearance:
        img = np.stack([normalise(_val_image(v, 10_000 + i, cfg), n, (1.0, 1.0, 1.0), cfg.appearance_norm)
                        for i, (v, n) in enumerate(zip(clean, noisy))])
    return clean, noisy, img


def _val_image(shape: np.ndarray, seed: int, cfg: TrainConfig) -> np.ndarray:
    """A fixed validation image: the CT phantom, or with per-case normalisation every other case
    MR-like (the training generator's), so that the checkpoint is chosen on both modalities."""
    if cfg.appearance_norm == "case" and cfg.p_mr > 0 and seed % 2:
        from .anatomy_context import synthetic_context

        return synthetic_context(shape, 1.0, np.random.default_rng(seed), modality="MR", tissue="soft")
    return ct_phantom(shape, seed=seed)


def train_prior(cfg: TrainConfig, model_cfg: ModelConfig | None = None, log=print,
                cancel: Callable[[], bool] | None = None) -> dict:
    """Train and save the prior; returns the training facts written to its metadata.

    With ``cfg.resume`` a checkpoint (safetensors + JSON: weights, Adam state, step, best, history,
    elapsed time) is written every ``val_every`` steps and resumed from when present; the resumed
    run continues bit-identically (same device and threads) when the schedule is step-based
    (``minutes`` = inf). ``cancel`` (a Ctrl-C or SIGTERM asked) stops the run before its next step,
    the training state saved there for ``--resume``, and raises ``Cancelled``. The global torch RNG
    is left alone. Batches are made on CPU (``workers``
    processes), the model trains on ``device`` (CUDA when present with ``auto``).
    """
    from .checkpoint import load_training_state, save_training_state
    from .distributed import Distributed

    torch.set_num_threads(cfg.threads)
    ctx = Distributed.from_env(cfg.device)  # under torchrun: this process's rank and device
    device = ctx.device
    if not ctx.main:
        log = lambda *_: None  # noqa: E731 - only rank 0 reports
    data = np.load(cfg.data)
    val_clean, val_noisy, val_img = validation_set(cfg, data["val_shapes"])

    mcfg = model_cfg or ModelConfig(appearance=cfg.appearance, annotation_sigmas=tuple(cfg.annotation_sigmas),
                                    skips=cfg.skips, appearance_sigmas=tuple(cfg.appearance_sigmas),
                                    encoder_appearance=cfg.encoder_appearance, appearance_gain=cfg.appearance_gain)
    with torch.random.fork_rng(devices=[]):  # the initial weights are seeded without touching the global RNG
        torch.manual_seed(cfg.seed)
        model = NeARModel(mcfg)
    if cfg.init_from and not (cfg.resume and Path(cfg.resume).is_file()):
        warm_start(model, cfg.init_from)
        log(f"warm start from {cfg.init_from}")
    model.to(device)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    step0, best, elapsed0 = 0, -1.0, 0.0
    history: list[dict] = []
    ema_loss = None
    if cfg.resume and Path(cfg.resume).is_file():
        info = load_training_state(cfg.resume, model, opt)
        step0, extra = info["step"], info["extra"]
        best, elapsed0, history, ema_loss = extra["best"], extra["seconds"], extra["history"], extra["ema_loss"]
        log(f"resumed at step {step0} (best val Dice {best:.4f})")
    card = cfg.card()
    budget = cfg.minutes * 60.0
    t0 = time.time() - elapsed0
    stream = BatchStream(cfg.data if cfg.source in ("alan", "anatomy") else None, "train_shapes",
                         cfg.data_spec(), cfg.seed, cfg.batch, workers=cfg.workers, rank=ctx.rank)
    loss_fn = ctx.wrap(TrainLoss(model, cfg.latent_reg))
    sigmas = tuple(model.cfg.annotation_sigmas)
    app_sigmas = tuple(model.cfg.appearance_sigmas) if model.cfg.appearance else ()

    def save_best(v: float, step: int) -> None:
        save_prior(cfg.out, model, {**card, "step": step, "val_dice_direct": v, "processes": ctx.world})

    def save_state(step: int) -> None:
        save_training_state(cfg.resume, model, opt, step,
                            extra={"best": best, "seconds": time.time() - t0, "history": history,
                                   "ema_loss": ema_loss})

    step = step0
    bar = tqdm(total=cfg.max_steps, initial=step0, desc="train-prior", mininterval=5, disable=not ctx.main)
    try:
        while step < cfg.max_steps:
            # cosine decay over the steps, or over the time budget when that is the binding limit;
            # every process takes the same rate and stops at the same step
            frac = step / max(1, cfg.max_steps)
            if math.isfinite(budget):
                frac = max(frac, (time.time() - t0) / budget)
            frac, stop, cancelled = ctx.agree([frac, float(time.time() - t0 >= budget),
                                               float(cancel is not None and bool(cancel()))])
            if cancelled:  # every process stops at the same step
                if cfg.resume and ctx.main:
                    save_state(step)
                raise Cancelled(f"training stopped at step {step}" + (
                    f" (state saved to {cfg.resume}: --resume continues)" if cfg.resume else
                    "; no --resume file was given, so there is no state to continue from"))
            if stop:
                break
            raw = stream.get(step // max(1, cfg.reuse))
            gen = _step_gen(cfg.seed, step, device, ctx.rank)
            flip = ()
            if step % max(1, cfg.reuse):  # a re-used batch: another mirror image of it
                bits = int(torch.randint(1, 8, (1,), generator=gen, device=device).item())
                flip = tuple(d for d, bit in zip((2, 3, 4), (1, 2, 4)) if bits & bit)
            for g in opt.param_groups:
                g["lr"] = cfg.lr * (0.05 + 0.95 * 0.5 * (1 + math.cos(math.pi * min(1.0, frac))))
            clean, noisy, image = finish_batch(raw, device, flip)
            if cfg.appearance:
                # some samples see a constant image (half of them the neutral 0.5 of shape-only use):
                # a flat image then carries no information and the S+A prior also serves S
                b = image.shape[0]
                drop = (torch.rand(b, generator=gen, device=device) < cfg.appearance_dropout).view(b, 1, 1, 1, 1)
                level = torch.where(torch.rand(b, generator=gen, device=device) < 0.5,
                                    torch.full((b,), 0.5, device=device),
                                    torch.rand(b, generator=gen, device=device)).view(b, 1, 1, 1, 1)
                image = torch.where(drop, level.expand_as(image), image)
            chans = [gaussian_blur(noisy, s) for s in sigmas]
            chans += [gaussian_blur(image, s, replicate=True) for s in app_sigmas]
            context = torch.cat(chans, 1) if chans else None
            pts = sample_points(clean, noisy, cfg.points, gen)
            target = sample_volume(clean, pts).clamp(0, 1)
            loss = loss_fn(noisy, image, context, pts, target)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            step += 1
            ema_loss = loss.item() if ema_loss is None else 0.98 * ema_loss + 0.02 * loss.item()
            bar.update(1)
            if step % cfg.val_every == 0 and ctx.main:
                v = validate(model, val_clean, val_noisy, val_img)
                history.append({"step": step, "minutes": round((time.time() - t0) / 60, 2),
                                "loss": round(ema_loss, 4), "val_dice": round(v, 4)})
                log(json.dumps(history[-1]))
                if v > best:
                    best = v
                    save_best(v, step)
                if cfg.resume:
                    save_state(step)
    finally:
        bar.close()
        stream.close()
    if ctx.main and not (history and history[-1]["step"] == step):  # else the last step was just validated
        v = validate(model, val_clean, val_noisy, val_img)
        if v > best:
            best = v
            save_best(v, step)
    ctx.barrier()
    facts = {"steps": step, "minutes": round((time.time() - t0) / 60, 1), "best_val_dice_direct": best,
             "errors": cfg.errors, "families": list(cfg.families) if cfg.errors == "library" else ["paper"],
             "source": cfg.source, "device": str(device), "processes": ctx.world, "history": history}
    log(json.dumps({k: v for k, v in facts.items() if k != "history"}))
    return facts
