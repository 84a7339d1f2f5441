"""Saving and loading a NeAR prior: weights in one safetensors file, architecture and
training facts in its metadata (and in a human-readable JSON card beside it)."""
from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PriorError
from .model import ModelConfig, NeARModel
from .output_safety import atomic_write

PRIOR_DIR = Path(__file__).resolve().parent / "priors"
DEFAULT_PRIOR = PRIOR_DIR / "adrenal_v1.safetensors"  # shape-only (S)
DEFAULT_SA_PRIOR = PRIOR_DIR / "adrenal_sa_v1.safetensors"  # shape + appearance (S+A)
FORMAT = "nearslicer-prior-1"


def default_prior(with_image: bool) -> Path:
    """The shipped prior to use: S+A when an image is used (and that prior is installed), else S."""
    return DEFAULT_SA_PRIOR if with_image and DEFAULT_SA_PRIOR.is_file() else DEFAULT_PRIOR


def save_prior(path: str | Path, model: NeARModel, meta: dict | None = None,
               dtype: torch.dtype = torch.float32) -> Path:
    """Write ``model`` to ``path`` (.safetensors) atomically, with its config and ``meta``.

    ``dtype=torch.float16`` halves the file (used for the shipped prior); loading always
    gives float32 weights.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)  # training writes into a new folder
    tensors = {k: v.detach().to(dtype).cpu().contiguous() for k, v in model.state_dict().items()}
    header = {
        "format": FORMAT,
        "config": json.dumps(model.cfg.to_dict()),
        "meta": json.dumps(meta or {}),
    }
    # a unique temporary name (concurrent trainings never collide), fsync, then rename
    atomic_write(path, lambda tmp: save_file(tensors, tmp, metadata=header))
    return path


def load_prior(path: str | Path | None = None, device: torch.device | str = "cpu") -> tuple[NeARModel, dict]:
    """Load a prior (``None``: the shipped adrenal prior). Raises PriorError with the reason."""
    path = Path(path) if path else DEFAULT_PRIOR
    if not path.is_file():
        raise PriorError(f"prior file not found: {path}")
    try:
        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            header = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise PriorError(f"prior file {path} is not a readable safetensors file ({exc})") from None
    if header.get("format") != FORMAT:
        raise PriorError(f"prior file {path} is not a NeARSlicer prior (format {header.get('format')!r})")
    try:
        cfg = ModelConfig.from_dict(json.loads(header["config"]))
        meta = json.loads(header.get("meta", "{}"))
        model = NeARModel(cfg)
        model.load_state_dict(tensors)
    except (KeyError, TypeError, ValueError, RuntimeError) as exc:
        raise PriorError(f"prior file {path} does not match the model ({str(exc).splitlines()[0]})") from None
    model.eval()
    return model.to(device), meta
