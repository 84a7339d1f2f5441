"""Choosing the torch device: CUDA when present, the CPU otherwise."""
from __future__ import annotations

import torch

from .errors import InputError


def pick_device(name: str = "auto") -> torch.device:
    """``auto`` -> cuda if available else cpu; ``cuda`` without a GPU is an error, not a silent fallback."""
    name = (name or "auto").lower()
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda"):
        if not torch.cuda.is_available():
            raise InputError("device 'cuda' was requested but no CUDA GPU is available (use --device auto or cpu)")
        return torch.device(name)
    if name == "cpu":
        return torch.device("cpu")
    raise InputError(f"unknown device {name!r}: use auto, cpu or cuda")
