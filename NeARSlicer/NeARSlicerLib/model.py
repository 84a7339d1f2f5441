"""The NeAR occupancy model: latent code -> multi-scale 3D feature maps -> point MLP.

Query points are normalised coordinates in [-1, 1]^3 of the working cube, given in
(x, y, z) = (i, j, k) order, the order ``torch.nn.functional.grid_sample`` expects for
volumes stored [k, j, i]. ``align_corners=False`` throughout: voxel ``i`` of an ``n``-voxel
axis sits at ``(2 i + 1) / n - 1``.
"""
from __future__ import annotations

import itertools
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .appearance import WINDOW_HU


@dataclass(frozen=True)
class ModelConfig:
    """Architecture hyper-parameters; stored with every prior so it can be rebuilt."""

    latent_dim: int = 256
    base_res: int = 4  # coarsest feature map (voxels per side)
    channels: tuple[int, ...] = (128, 64, 32, 16)  # feature channels at 4^3, 8^3, 16^3, 32^3
    mlp_hidden: int = 128
    mlp_layers: int = 3
    appearance: bool = False  # MLP also takes a(p), the windowed CT intensity at p
    # a(p) read at p after Gaussian blurs of these sigmas (working-grid voxels); (0,) is the paper's a(p)
    appearance_sigmas: tuple[float, ...] = (0.0,)
    # the encoder also sees the windowed CT (a second input channel), so the initial code and the
    # decoder's skip features follow image edges, not only the annotation
    encoder_appearance: bool = False
    # a(p) enters the MLP and the encoder as (a - 0.5) * appearance_gain: a neutral (mid-window)
    # image adds exactly nothing, and inputs of a few units let zero-initialised weights for the
    # image grow quickly when an S+A prior is warm-started from a shape-only one
    appearance_gain: float = 1.0
    # The MLP also reads the annotation itself at p, blurred with these Gaussian sigmas
    # (working-grid voxels). () gives the paper's MLP (features, p[, a(p)]) only.
    annotation_sigmas: tuple[float, ...] = ()
    # The decoder adds the amortised encoder's feature maps of the annotation at each scale
    # (U-Net-like skips). False gives the paper's decoder, a function of z alone.
    skips: bool = False
    encoder_res: int = 32  # the encoder sees the working mask resampled to this many voxels per side
    encoder_channels: tuple[int, ...] = (16, 32, 64, 128)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "ModelConfig":
        d = dict(d)
        for key in ("channels", "encoder_channels", "annotation_sigmas", "appearance_sigmas"):
            if key in d:
                d[key] = tuple(d[key])
        return cls(**{k: v for k, v in d.items() if k in cls.__dataclass_fields__})


class Decoder(nn.Module):
    """z (B, latent_dim) -> list of feature maps (B, C_s, r_s, r_s, r_s), r_s = base_res * 2^s."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        c0 = cfg.channels[0]
        self.cfg = cfg
        self.fc = nn.Linear(cfg.latent_dim, c0 * cfg.base_res**3)
        self.ups = nn.ModuleList()
        self.refine = nn.ModuleList()
        for s, (cin, cout) in enumerate(zip(cfg.channels[:-1], cfg.channels[1:])):
            self.ups.append(nn.ConvTranspose3d(cin, cout, kernel_size=2, stride=2))
            last = s == len(cfg.channels) - 2
            # the finest level skips the 3x3x3 conv: it dominates the cost and adds little
            self.refine.append(nn.Identity() if last else nn.Conv3d(cout, cout, 3, padding=1))
        self.skip_proj = nn.ModuleList()
        if cfg.skips:
            # encoder maps (finest first) -> decoder levels (coarsest first); zero-initialised so
            # that a decoder warm-started from a skip-less prior starts out unchanged
            for cenc, cdec in zip(cfg.encoder_channels[::-1], cfg.channels):
                proj = nn.Conv3d(cenc, cdec, 1)
                nn.init.zeros_(proj.weight)
                nn.init.zeros_(proj.bias)
                self.skip_proj.append(proj)

    def forward(self, z: torch.Tensor, skips: list[torch.Tensor] | None = None) -> list[torch.Tensor]:
        """Feature maps coarsest first; ``skips``: the encoder's maps of the annotation, finest first."""
        r = self.cfg.base_res
        x = F.leaky_relu(self.fc(z), 0.1).view(z.shape[0], self.cfg.channels[0], r, r, r)
        enc = skips[::-1] if (skips is not None and len(self.skip_proj)) else None
        if enc is not None:
            x = x + self.skip_proj[0](enc[0])
        maps = [x]
        for level, (up, ref) in enumerate(zip(self.ups, self.refine), start=1):
            x = F.leaky_relu(up(x), 0.1)
            if enc is not None:
                x = x + self.skip_proj[level](enc[level])
            if not isinstance(ref, nn.Identity):
                x = F.leaky_relu(ref(x), 0.1) + x
            maps.append(x)
        return maps


class Encoder(nn.Module):
    """Amortised inference: a (soft) mask on the working cube -> initial latent code."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        layers: list[nn.Module] = []
        cin = 2 if (cfg.appearance and cfg.encoder_appearance) else 1
        for i, cout in enumerate(cfg.encoder_channels):
            layers += [nn.Conv3d(cin, cout, 3, stride=1 if i == 0 else 2, padding=1), nn.LeakyReLU(0.1)]
            cin = cout
        self.body = nn.Sequential(*layers)
        out_res = cfg.encoder_res // 2 ** (len(cfg.encoder_channels) - 1)
        self.fc = nn.Linear(cin * out_res**3, cfg.latent_dim)

    def features(self, occupancy: torch.Tensor, appearance: torch.Tensor | None = None
                 ) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(z, feature maps finest first); occupancy: (B, 1, n, n, n) in [0, 1], any n.

        ``appearance``: the windowed CT (B, 1, n, n, n) for an encoder that sees the image
        (a neutral 0.5 when None); ignored by a shape-only encoder.
        """
        r = self.cfg.encoder_res
        h = occupancy * 2.0 - 1.0
        if self.body[0].in_channels == 2:
            a = appearance if appearance is not None else torch.full_like(occupancy, 0.5)
            h = torch.cat([h, (a - 0.5) * self.cfg.appearance_gain], 1)
        if h.shape[-1] != r:
            h = F.interpolate(h, size=(r, r, r), mode="trilinear", align_corners=False)
        feats = []
        for layer in self.body:
            h = layer(h)
            if isinstance(layer, nn.LeakyReLU):
                feats.append(h)
        return self.fc(h.flatten(1)), feats

    def forward(self, occupancy: torch.Tensor, appearance: torch.Tensor | None = None) -> torch.Tensor:
        """The initial latent code of a (B, 1, n, n, n) soft mask (and its windowed CT)."""
        return self.features(occupancy, appearance)[0]


class PointMLP(nn.Module):
    """Occupancy logit from concatenated multi-scale features, p and optionally a(p)."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cin = sum(cfg.channels) + 3 + context_channels(cfg)
        layers: list[nn.Module] = []
        for _ in range(cfg.mlp_layers):
            layers += [nn.Linear(cin, cfg.mlp_hidden), nn.LeakyReLU(0.1)]
            cin = cfg.mlp_hidden
        layers.append(nn.Linear(cin, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.net(feats).squeeze(-1)


def sample_maps(maps: list[torch.Tensor], points: torch.Tensor) -> torch.Tensor:
    """Trilinear features of every map at ``points`` (B, N, 3) -> (B, N, sum C)."""
    grid = points[:, :, None, None, :]  # (B, N, 1, 1, 3)
    feats = [
        F.grid_sample(m, grid, mode="bilinear", padding_mode="border", align_corners=False)[..., 0, 0]
        for m in maps
    ]
    return torch.cat(feats, dim=1).transpose(1, 2)


def sample_volume(volume: torch.Tensor, points: torch.Tensor) -> torch.Tensor:
    """Trilinear value of a (B, 1, n, n, n) volume at ``points`` (B, N, 3) -> (B, N); 0 outside."""
    grid = points[:, :, None, None, :]
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode="zeros", align_corners=False)[:, 0, :, 0, 0]


def sample_voxels(volume: torch.Tensor, n: int, index: torch.Tensor | None = None) -> torch.Tensor:
    """Trilinear values of a (1, C, s, s, s) volume at voxel centres of an n^3 cube -> (N, C).

    ``index``: flat [k, j, i] indices of the voxels wanted (None: all n^3, in that order). Equal to
    ``grid_sample`` at those centres with border padding, but without it: ``grid_sample``'s 3D CPU
    kernel runs one thread per batch item, and decoding queries one case. Every voxel: a resize
    (``F.interpolate`` computes the same source coordinate and clamps as border padding); some: the
    eight corners gathered from a channel-last copy.
    """
    s, c = volume.shape[-1], volume.shape[1]
    if index is None:
        full = volume if s == n else F.interpolate(volume, size=(n, n, n), mode="trilinear", align_corners=False)
        return full[0].reshape(c, -1).T
    flat = volume[0].reshape(c, -1).T.contiguous()  # (s^3, C)
    kji = torch.stack([index // (n * n), (index // n) % n, index % n], 1)
    src = ((kji.to(volume.dtype) + 0.5) * (s / n) - 0.5).clamp(0, s - 1)
    lo = src.floor().long()
    hi = (lo + 1).clamp(max=s - 1)
    pick, weight = (lo, hi), (1 - (src - lo), src - lo)
    out = flat.new_zeros(index.shape[0], c)
    for dk, dj, di in itertools.product((0, 1), repeat=3):
        w = weight[dk][:, 0] * weight[dj][:, 1] * weight[di][:, 2]
        # addcmul_: each weighted corner is added in one pass (faster than a product, then a sum)
        out.addcmul_(flat.index_select(0, (pick[dk][:, 0] * s + pick[dj][:, 1]) * s + pick[di][:, 2]), w[:, None])
    return out


def context_channels(cfg: ModelConfig) -> int:
    """Number of per-point inputs read from the context volume (annotation channels, then a(p))."""
    return len(cfg.annotation_sigmas) + (len(cfg.appearance_sigmas) if cfg.appearance else 0)


def box_max(vol: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Maximum over the (2 width + 1)^3 box around each voxel of a (..., n, n, n) volume, voxels
    outside the volume ignored: ``max_pool3d(vol, 2 width + 1, 1, width)``, but as shifted maxima
    along each axis in turn, about 15x faster than that 3D pooling on a CPU."""
    out = vol
    for dim in (-3, -2, -1):
        n = out.shape[dim]
        for _ in range(width if n > 1 else 0):
            grown = out.clone()
            torch.maximum(out.narrow(dim, 1, n - 1), out.narrow(dim, 0, n - 1), out=grown.narrow(dim, 1, n - 1))
            torch.maximum(grown.narrow(dim, 0, n - 1), out.narrow(dim, 1, n - 1), out=grown.narrow(dim, 0, n - 1))
            out = grown
    return out


def surface_band(vol: torch.Tensor, width: int = 1) -> torch.Tensor:
    """Voxels of a (..., n, n, n) soft mask with both sides of its 0.5 level set within ``width``
    voxels (a box): the mask's surface band."""
    b = (vol > 0.5).to(torch.float32)
    return (box_max(b, width) + box_max(-b, width)) > 0.5


def gaussian_blur(vol: torch.Tensor, sigma: float, replicate: bool = False) -> torch.Tensor:
    """Separable Gaussian blur of (B, 1, n, n, n), sigma in voxels (0: unchanged).

    Zero padding (right for masks) or, with ``replicate``, edge padding (right for images: a
    constant image stays constant). Each pass is a 1D convolution over rows (conv3d with one
    channel is very slow on CPUs).
    """
    if sigma <= 0:
        return vol
    r = max(1, int(round(3 * sigma)))
    x = torch.arange(-r, r + 1, dtype=vol.dtype, device=vol.device)
    k = torch.exp(-0.5 * (x / sigma) ** 2)
    k = (k / k.sum()).view(1, 1, -1)
    out = vol[:, 0]
    for _ in range(3):  # blur the last axis, then rotate the axes (k, j, i) -> (i, k, j)
        shape = out.shape
        rows = out.reshape(-1, 1, shape[-1])
        if replicate:
            rows = F.pad(rows, (r, r), mode="replicate")
        out = F.conv1d(rows, k, padding=0 if replicate else r).view(shape)
        out = out.permute(0, 3, 1, 2)
    return out.contiguous()[:, None]


class NeARModel(nn.Module):
    """Decoder + point MLP (the NeAR model) and the amortised encoder used to initialise z."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg or ModelConfig()
        self.encoder = Encoder(self.cfg)
        self.decoder = Decoder(self.cfg)
        self.mlp = PointMLP(self.cfg)

    def context(self, mask: torch.Tensor, appearance: torch.Tensor | None = None) -> "Condition":
        """What the model reads from one annotation besides z (see ``Condition``).

        ``mask``: (B, 1, n, n, n) soft annotation; ``appearance``: (B, 1, n, n, n) windowed CT in
        [0, 1] or None (a shape-only use of an S+A model reads a neutral 0.5).
        """
        return self.encode(mask, appearance)[1]

    def encode(self, mask: torch.Tensor, appearance: torch.Tensor | None = None) -> tuple[torch.Tensor, "Condition"]:
        """The initial latent code and the ``Condition`` of an annotation, in one encoder pass."""
        if self.cfg.appearance and appearance is None:
            appearance = torch.full_like(mask, 0.5)  # shape-only use: no image, a neutral value
        z, feats = self.encoder.features(mask, appearance)
        chans = [gaussian_blur(mask, s) for s in self.cfg.annotation_sigmas]
        if self.cfg.appearance:
            chans += [gaussian_blur(appearance, s, replicate=True) for s in self.cfg.appearance_sigmas]
        return z, Condition(torch.cat(chans, 1) if chans else None, feats if self.cfg.skips else None)

    def maps(self, z: torch.Tensor, cond: "Condition | None" = None) -> list[torch.Tensor]:
        """Decoded multi-scale feature maps of latent codes ``z`` (B, D)."""
        return self.decoder(z, cond.skips if cond is not None else None)

    def query(self, maps: list[torch.Tensor], points: torch.Tensor, cond: "Condition | None" = None) -> torch.Tensor:
        """Occupancy logits (B, N) at ``points`` (B, N, 3)."""
        parts = [sample_maps(maps, points), points]
        if cond is not None and cond.volume is not None:
            grid = points[:, :, None, None, :]
            at_p = F.grid_sample(cond.volume, grid, mode="bilinear", padding_mode="border",
                                 align_corners=False)[..., 0, 0].transpose(1, 2)
            parts.append(self._scaled_context(at_p))
        return self.mlp(torch.cat(parts, dim=-1))

    def _scaled_context(self, at_p: torch.Tensor) -> torch.Tensor:
        """The per-point volume's values (..., C) as the MLP reads them: the last channels, a(p),
        centred and scaled (see ``ModelConfig``)."""
        if not self.cfg.appearance:
            return at_p
        n_app = len(self.cfg.appearance_sigmas)
        return torch.cat([at_p[..., :-n_app], (at_p[..., -n_app:] - 0.5) * self.cfg.appearance_gain], -1)

    def query_voxels(self, maps: list[torch.Tensor], n: int, index: torch.Tensor | None = None,
                     cond: "Condition | None" = None) -> torch.Tensor:
        """Logits (N,) at voxel centres of an n^3 working cube: ``query`` at those points for one
        case, computed without ``grid_sample`` (see ``sample_voxels``); ``index`` as there."""
        parts = [sample_voxels(m, n, index) for m in maps]
        if index is None:
            points = voxel_centres(n, maps[0].device).view(-1, 3)
        else:
            centres = (torch.arange(n, device=maps[0].device, dtype=maps[0].dtype) * 2 + 1) / n - 1
            points = torch.stack([centres[index % n], centres[(index // n) % n], centres[index // (n * n)]], -1)
        parts.append(points)
        if cond is not None and cond.volume is not None:
            parts.append(self._scaled_context(sample_voxels(cond.volume, n, index)))
        if index is None:  # (C, N) blocks stacked as rows: plain copies, and the MLP reads the transpose
            return self.mlp(torch.cat([p.T for p in parts], dim=0).T)
        return self.mlp(torch.cat(parts, dim=-1))

    def forward(self, z: torch.Tensor, points: torch.Tensor, cond: "Condition | None" = None) -> torch.Tensor:
        return self.query(self.maps(z, cond), points, cond)


@dataclass
class Condition:
    """Per-case inputs other than z: ``volume`` (B, C, n, n, n) read by the MLP at each point
    (blurred annotation channels, then a(p)), and the encoder's ``skips`` for the decoder."""

    volume: torch.Tensor | None = None
    skips: list[torch.Tensor] | None = None

    def detach(self) -> "Condition":
        """The same inputs as constants (no autograd history)."""
        return Condition(self.volume.detach() if self.volume is not None else None,
                         [f.detach() for f in self.skips] if self.skips is not None else None)

    @staticmethod
    def batch_skips(conds: list["Condition"]) -> "Condition":
        """The encoder skips of several cases as one batch for the decoder (per-point volumes,
        whose cube sizes may differ between cases, are left out)."""
        return Condition(None, [torch.cat(level, 0) for level in zip(*[c.skips for c in conds])])


def voxel_centres(n: int, device: torch.device | str = "cpu") -> torch.Tensor:
    """Normalised (x, y, z) coordinates of every voxel of an n^3 cube, shape (n, n, n, 3), [k, j, i]."""
    c = (torch.arange(n, device=device, dtype=torch.float32) * 2 + 1) / n - 1
    kk, jj, ii = torch.meshgrid(c, c, c, indexing="ij")
    return torch.stack([ii, jj, kk], dim=-1)


def window_hu(image: torch.Tensor, lo: float = WINDOW_HU[0], hi: float = WINDOW_HU[1]) -> torch.Tensor:
    """CT appearance a(p): HU clipped to [lo, hi] and scaled to [0, 1] (the paper's window; the same
    constants as ``appearance.window_ct``, which prepares training data)."""
    return ((image - lo) / (hi - lo)).clamp(0.0, 1.0)
