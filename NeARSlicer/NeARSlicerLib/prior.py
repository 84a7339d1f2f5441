"""Saving and loading a NeAR prior: weights in one safetensors file, architecture and
training facts in its metadata (and in a human-readable JSON card beside it)."""
from __future__ import annotations

import json
import re
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from .errors import PriorError
from .model import ModelConfig, NeARModel
from .output_safety import atomic_write

PRIOR_DIR = Path(__file__).resolve().parent / "priors"
DEFAULT_PRIOR = PRIOR_DIR / "adrenal_v2.safetensors"  # shape-only (S)
# shape + appearance (S+A): per-case intensity normalisation, reads CT and MR. It replaced the CT-window
# adrenal_sa_v1 (still shipped, by path) after the real CT's adrenals: README "Which S+A prior reads CT"
DEFAULT_SA_PRIOR = PRIOR_DIR / "adrenal_mr_v1.safetensors"
CT_WINDOW_SA_PRIOR = PRIOR_DIR / "adrenal_sa_v1.safetensors"
# the general prior, trained on procedurally generated anatomy (``anatomy_shapes``); shipped separately
ANATOMY_PRIOR = PRIOR_DIR / "anatomy_v1.safetensors"
ANATOMY_SA_PRIOR = PRIOR_DIR / "anatomy_sa_v1.safetensors"
ADRENAL_MR_PRIOR = DEFAULT_SA_PRIOR  # the adrenal's any-modality prior (NAME-mr) is its S+A prior
FORMAT = "nearslicer-prior-1"


@dataclass(frozen=True)
class PriorPair:
    """The shipped priors of one anatomy: shape-only (S) and, optionally, shape + appearance (S+A)."""

    shape: Path
    appearance: Optional[Path] = None
    # S+A for images that are not CT: reads intensities relative to the annotation (per-case
    # normalisation), trained on CT and MR-like images; used when ``appearance`` refuses the image
    any_modality: Optional[Path] = None


# name -> files. Each name NAME is addressable as NAME (S+A with an image when installed, else S),
# NAME-s, NAME-sa and NAME-mr; a new anatomy is one more entry here.
PRIORS: dict[str, PriorPair] = {
    "adrenal": PriorPair(DEFAULT_PRIOR, DEFAULT_SA_PRIOR, ADRENAL_MR_PRIOR),
    "anatomy": PriorPair(ANATOMY_PRIOR, ANATOMY_SA_PRIOR),
}
AUTO = "auto"  # the default: chosen from the structure's name (``choose_prior``)
DEFAULT_NAME = AUTO
ADRENAL_NAME, GENERAL_NAME = "adrenal", "anatomy"

# What names an adrenal gland: English, TotalSegmentator (adrenal_gland_left), Latin, German,
# French, Spanish, and the SNOMED CT code of "Adrenal gland" in Slicer terminology strings. Not a
# bare "suprarenal": the suprarenal aorta is no gland.
_ADRENAL_WORDS = ("adrenal", "suprarenal gland", "glandula suprarenalis", "glandula suprarrenal", "nebenniere",
                  "surrenale", "23451007")
# ... unless it names a lesion of it: an adrenal adenoma is a round nodule, not a gland's Y shape.
_LESION_WORDS = ("tumor", "tumour", "mass", "lesion", "nodule", "adenoma", "metasta", "carcinoma", "cyst",
                 "pheochromocytoma", "incidentaloma")


def is_adrenal_structure(structure: Optional[str]) -> bool:
    """Whether a segment name / terminology text / label name names an adrenal gland (not a lesion)."""
    if not structure:
        return False
    plain = unicodedata.normalize("NFKD", str(structure)).encode("ascii", "ignore").decode()  # é -> e
    text = re.sub(r"[\s_\-]+", " ", plain.lower())
    return any(w in text for w in _ADRENAL_WORDS) and not any(w in text for w in _LESION_WORDS)


def prior_names() -> list[str]:
    """Every name ``resolve_prior`` accepts."""
    names = [AUTO]
    for name, pair in PRIORS.items():
        names += [name, f"{name}-s"] + ([f"{name}-sa"] if pair.appearance is not None else [])
        names += [f"{name}-mr"] if pair.any_modality is not None else []
    return names


def _installed(pair: PriorPair, with_image: bool) -> bool:
    """Whether ``resolve_prior_named`` can serve this pair's plain name."""
    return pair.shape.is_file() or (with_image and pair.appearance is not None and pair.appearance.is_file())


def choose_prior(name: Optional[str], structure: Optional[str], with_image: bool) -> tuple[Optional[str], Path, str]:
    """(registry name or None for a file, prior file, note) for a prior name, path or ``auto``.

    ``auto`` (also None or ""): the adrenal pair when ``structure`` (a segment name, Slicer
    terminology text or label name) names an adrenal gland, else the general ``anatomy`` pair; while
    no anatomy prior is installed, the adrenal pair with a ``note`` saying so. Any other name or
    path is resolved as given (``resolve_prior_named``), with an empty note. Raises PriorError."""
    key = "" if name is None else str(name).strip()
    if key.lower() not in ("", AUTO):
        got_name, path = _resolve_given(key, with_image)
        return got_name, path, ""
    if is_adrenal_structure(structure):
        return (*_resolve_given(ADRENAL_NAME, with_image), "")
    general = PRIORS[GENERAL_NAME]
    if _installed(general, with_image):
        return (*_resolve_given(GENERAL_NAME, with_image), "")
    what = f"'{structure}' is not named as an adrenal gland" if structure else "the structure is not named"
    note = (f"{what} and no general anatomy prior is installed (missing {general.shape}): the adrenal "
            "prior was used, which knows adrenal-gland shapes only")
    return (*_resolve_given(ADRENAL_NAME, with_image), note)


def resolve_prior_named(name_or_path: str | Path | None, with_image: bool,
                        structure: Optional[str] = None) -> tuple[Optional[str], Path]:
    """(registry name or None for a file, prior file) for a name, a path or None / ``auto``.

    None / ``auto`` choose from ``structure`` (``choose_prior``). A pair name gives its S+A prior
    when ``with_image`` and that file is installed, else its S prior; NAME-s / NAME-sa force one.
    Names are looked up before paths (write ``./adrenal`` for a file of that name). Raises
    PriorError for an unknown name, a missing file or a forced prior that is not installed."""
    return choose_prior(None if name_or_path is None else str(name_or_path), structure, with_image)[:2]


def _resolve_given(text: str, with_image: bool) -> tuple[Optional[str], Path]:
    key = text.lower()
    base, variant = key, None
    for suffix in ("-sa", "-mr", "-s"):
        if key.endswith(suffix) and key[: -len(suffix)] in PRIORS:
            base, variant = key[: -len(suffix)], suffix[1:]
            break
    if base in PRIORS:
        pair = PRIORS[base]
        sa_installed = pair.appearance is not None and pair.appearance.is_file()
        if variant == "sa":
            if not sa_installed:
                raise PriorError(f"prior {key!r} is not installed (missing {pair.appearance})")
            return key, pair.appearance
        if variant == "mr":
            if pair.any_modality is None or not pair.any_modality.is_file():
                raise PriorError(f"prior {key!r} is not installed (missing {pair.any_modality})")
            return key, pair.any_modality
        if variant is None and with_image and sa_installed:
            return f"{base}-sa", pair.appearance
        if not pair.shape.is_file():
            raise PriorError(f"prior {base + '-s'!r} is not installed (missing {pair.shape})")
        return f"{base}-s", pair.shape
    path = Path(text).expanduser()
    if path.is_file():
        return None, path
    if path.suffix or "/" in text or "\\" in text:
        raise PriorError(f"prior file not found: {path}")
    raise PriorError(f"unknown prior {text!r}: use one of {', '.join(prior_names())} or a .safetensors path")


def any_modality_prior(name: Optional[str]) -> Optional[tuple[str, Path]]:
    """(NAME-mr, file) of the installed any-modality S+A prior of registry prior ``name``
    (``adrenal``, ``adrenal-sa``...), or None when it has none or ``name`` is a file."""
    if not name:
        return None
    key = str(name).lower()
    base = next((key[: -len(sfx)] for sfx in ("-sa", "-mr", "-s") if key.endswith(sfx)), key)
    pair = PRIORS.get(base)
    if pair is None or pair.any_modality is None or not pair.any_modality.is_file():
        return None
    return f"{base}-mr", pair.any_modality


def resolve_prior(name_or_path: str | Path | None, with_image: bool, structure: Optional[str] = None) -> Path:
    """The prior file for a name (see ``prior_names``), a path, or None (``auto``)."""
    return resolve_prior_named(name_or_path, with_image, structure)[1]


def default_prior(with_image: bool) -> Path:
    """The prior ``auto`` gives for an unnamed structure: S+A when an image is used (and that prior
    is installed), else S."""
    return resolve_prior(None, with_image)


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


def load_prior(path: str | Path | None = None, device: torch.device | str = "cpu",
               with_image: bool = False) -> tuple[NeARModel, dict]:
    """Load a prior by path or name (``None``: ``auto`` for an unnamed structure; S+A only when
    ``with_image``, see ``resolve_prior``). Raises PriorError with the reason."""
    path = resolve_prior(path, with_image)
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
