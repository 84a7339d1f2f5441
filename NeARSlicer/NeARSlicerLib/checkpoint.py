"""Training and study checkpoints without pickle: tensors in a safetensors file, everything else as
JSON in its metadata. Loading a checkpoint can therefore never run code, whoever made the file.

Low level::

    save_checkpoint(path, {"w": tensor}, {"step": 3})      # atomic (output_safety)
    tensors, state = load_checkpoint(path)                 # CheckpointError if pickled/corrupt

High level, for a training loop (model + optimiser + random generators)::

    save_training_state(path, model, opt, step, extra={"best": 0.8}, generators={"gen": gen, "rng": rng})
    info = load_training_state(path, model, opt, generators={"gen": gen, "rng": rng})
    step, extra = info["step"], info["extra"]

``generators`` may hold ``torch.Generator`` (state saved as a uint8 tensor) and
``numpy.random.Generator`` (its bit generator's state, JSON; big integers are exact in Python's
JSON). ``tensors=`` / ``info["tensors"]`` carry any extra tensors (e.g. a study's latent codes).
The optimiser is saved via ``optimizer.state_dict()``: per-parameter state tensors (Adam's
``exp_avg``, ``exp_avg_sq``, ``step``) as tensors, ``param_groups`` as JSON; resuming continues
bit-identically on the same device.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Dict, Mapping, Optional, Tuple, Union

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

from .errors import InputError
from .output_safety import atomic_write

__all__ = ["CheckpointError", "save_checkpoint", "load_checkpoint", "save_training_state", "load_training_state",
           "flatten_optimizer", "unflatten_optimizer", "generator_states", "restore_generators", "FORMAT"]

FORMAT = "nearslicer-checkpoint-1"
Generators = Mapping[str, Union[torch.Generator, np.random.Generator]]


class CheckpointError(InputError):
    """A checkpoint file is missing, pickled, corrupt, truncated or of another kind."""


# ---------------------------------------------------------------------------------- file level
def save_checkpoint(path: Union[str, Path], tensors: Mapping[str, torch.Tensor], state: Mapping) -> Path:
    """Write ``tensors`` and the JSON-serialisable ``state`` to ``path`` (.safetensors) atomically."""
    flat = {str(k): v.detach().cpu().contiguous().clone() for k, v in tensors.items()}
    try:
        meta = {"format": FORMAT, "state": json.dumps(state)}
    except (TypeError, ValueError) as exc:
        raise TypeError(f"checkpoint state is not JSON-serialisable: {exc}") from None
    return atomic_write(path, lambda tmp: save_file(flat, tmp, metadata=meta))


def _sniff(path: Path) -> Optional[str]:
    """What a non-safetensors file looks like, for a useful message."""
    with open(path, "rb") as f:
        head = f.read(8)
    if head[:4] == b"PK\x03\x04":
        return "a torch.save (zip + pickle) file"
    if len(head) >= 2 and head[0] == 0x80 and 1 <= head[1] <= 5:
        return "a pickle file"
    return None


def load_checkpoint(path: Union[str, Path]) -> Tuple[Dict[str, torch.Tensor], dict]:
    """``(tensors, state)`` of a checkpoint written by :func:`save_checkpoint` (tensors on the CPU).

    Raises :class:`CheckpointError` for a missing file, a pickle / ``torch.save`` file (never
    loaded: unpickling can run arbitrary code), a corrupt or truncated file, or another format.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint not found: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        # sniffed only now: a valid safetensors header length can start with pickle's magic bytes
        kind = _sniff(path)
        if kind is not None:
            raise CheckpointError(f"checkpoint {path} is {kind}; NeARSlicer never loads pickle (it can run code). "
                                  "Delete it and re-create it with this version (start without resuming)") from None
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated ({reason}); "
                              "delete it and start without resuming") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a NeARSlicer checkpoint (format {meta.get('format')!r})")
    try:
        state = json.loads(meta["state"])
    except (KeyError, ValueError) as exc:
        raise CheckpointError(f"checkpoint {path} has an unreadable state ({exc})") from None
    return tensors, state


# ---------------------------------------------------------------------------------- optimiser
def flatten_optimizer(optimizer: torch.optim.Optimizer, prefix: str = "optim/") -> Tuple[Dict[str, torch.Tensor], dict]:
    """``optimizer.state_dict()`` as tensors (``prefix<param index>/<name>``) plus a JSON part
    (``param_groups`` and any non-tensor per-parameter values)."""
    sd = optimizer.state_dict()
    tensors: Dict[str, torch.Tensor] = {}
    plain: Dict[str, dict] = {}
    for idx, st in sd["state"].items():
        for name, value in st.items():
            if torch.is_tensor(value):
                tensors[f"{prefix}{idx}/{name}"] = value
            else:
                plain.setdefault(str(idx), {})[name] = value
    return tensors, {"param_groups": sd["param_groups"], "plain_state": plain}


def unflatten_optimizer(optimizer: torch.optim.Optimizer, tensors: Mapping[str, torch.Tensor], meta: dict,
                        prefix: str = "optim/") -> None:
    """Load what :func:`flatten_optimizer` produced into ``optimizer`` (same parameter layout)."""
    state: Dict[int, dict] = {}
    for key, value in tensors.items():
        if key.startswith(prefix):
            idx, name = key[len(prefix):].split("/", 1)
            state.setdefault(int(idx), {})[name] = value
    for idx, values in (meta.get("plain_state") or {}).items():
        state.setdefault(int(idx), {}).update(values)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if isinstance(g.get("betas"), list):  # JSON has no tuples
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    optimizer.load_state_dict({"state": state, "param_groups": groups})


# ---------------------------------------------------------------------------- random generators
def generator_states(generators: Generators, prefix: str = "rng/") -> Tuple[Dict[str, torch.Tensor], dict]:
    """States of torch (uint8 tensors) and numpy (JSON) generators, by name."""
    tensors, plain = {}, {}
    for name, g in generators.items():
        if isinstance(g, torch.Generator):
            tensors[prefix + name] = g.get_state()
        elif isinstance(g, np.random.Generator):
            plain[name] = g.bit_generator.state
        else:
            raise TypeError(f"generator {name!r} is a {type(g).__name__}; expected torch.Generator or "
                            "numpy.random.Generator")
    return tensors, plain


def restore_generators(generators: Generators, tensors: Mapping[str, torch.Tensor], plain: dict,
                       prefix: str = "rng/") -> None:
    """Set each generator of ``generators`` to its saved state; a missing one is an error."""
    for name, g in generators.items():
        if isinstance(g, torch.Generator):
            if prefix + name not in tensors:
                raise CheckpointError(f"checkpoint holds no state for the random generator {name!r}")
            g.set_state(tensors[prefix + name])
        else:
            if name not in plain:
                raise CheckpointError(f"checkpoint holds no state for the random generator {name!r}")
            g.bit_generator.state = plain[name]


# ----------------------------------------------------------------------------- training state
def save_training_state(path: Union[str, Path], model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer],
                        step: int, extra: Optional[Mapping] = None, generators: Optional[Generators] = None,
                        tensors: Optional[Mapping[str, torch.Tensor]] = None) -> Path:
    """Save everything needed to continue training exactly: model weights, optimiser state, step,
    random generator states, ``extra`` (JSON: losses, best score, config fingerprint...) and extra
    ``tensors`` (e.g. latent codes). Atomic; no pickle."""
    flat: Dict[str, torch.Tensor] = {f"model/{k}": v for k, v in model.state_dict().items()}
    state: dict = {"step": int(step), "extra": dict(extra or {})}
    if optimizer is not None:
        opt_t, opt_meta = flatten_optimizer(optimizer)
        flat.update(opt_t)
        state["optimizer"] = opt_meta
    gen_t, gen_plain = generator_states(generators or {})
    flat.update(gen_t)
    state["generators"] = gen_plain
    for k, v in (tensors or {}).items():
        flat[f"extra/{k}"] = v
    return save_checkpoint(path, flat, state)


def load_training_state(path: Union[str, Path], model: torch.nn.Module, optimizer: Optional[torch.optim.Optimizer] = None,
                        generators: Optional[Generators] = None) -> dict:
    """Restore ``model``, ``optimizer`` and ``generators`` in place from :func:`save_training_state`'s
    file; returns ``{"step", "extra", "tensors"}`` (``tensors``: the extra tensors, on the CPU).

    Raises :class:`CheckpointError` if the file is pickled, corrupt, or does not fit the model."""
    flat, state = load_checkpoint(path)
    if "step" not in state:
        raise CheckpointError(f"{path} is a checkpoint but not a training state")
    weights = {k[len("model/"):]: v for k, v in flat.items() if k.startswith("model/")}
    try:
        model.load_state_dict(weights)
        if optimizer is not None:
            if "optimizer" not in state:
                raise CheckpointError(f"checkpoint {path} holds no optimiser state")
            unflatten_optimizer(optimizer, flat, state["optimizer"])
    except (RuntimeError, ValueError, KeyError) as exc:
        raise CheckpointError(f"checkpoint {path} does not fit this model or optimiser "
                              f"({str(exc).splitlines()[0]})") from None
    restore_generators(generators or {}, flat, state.get("generators") or {})
    return {"step": int(state["step"]), "extra": state.get("extra") or {},
            "tensors": {k[len("extra/"):]: v for k, v in flat.items() if k.startswith("extra/")}}


def is_pickle(path: Union[str, os.PathLike]) -> bool:
    """True if ``path`` looks like a pickle or torch.save file (which NeARSlicer refuses to load)."""
    path = Path(path)
    if not path.is_file() or _sniff(path) is None:
        return False
    try:
        with safe_open(str(path), framework="pt"):
            return False  # a safetensors file whose header length happens to look like pickle's magic
    except (SafetensorError, OSError, ValueError, RuntimeError):
        return True
