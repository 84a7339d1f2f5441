"""Which imaging modality an image is, and whether an appearance prior may read it.

An appearance prior trained on CT reads the image through a fixed HU window (``model.window_hu``):
given an MR image (no Hounsfield units, arbitrary scale, fat bright or dark, a bias field), that
window produces nonsense and the refinement can collapse. So refine asks ``check_image``:

* the modality is taken from what the caller declares (DICOM ``Modality``, a Slicer volume's
  attribute) when known, otherwise ``detect`` guesses it from intensity statistics: a CT in HU
  holds fat near -100 HU or air near -1000 HU beside soft tissue at 0-80 HU (or, in a head,
  soft tissue and bone); an MR magnitude image has no such negative values, and a normalised MR
  (z-scores) spans a few units, not hundreds;
* a prior card's ``appearance_norm`` says how the prior reads intensities: ``"window"`` (the CT
  HU window, the default) accepts only the modalities in ``modalities`` (default ``["CT"]``);
  ``"case"`` normalises each case's intensities (``appearance.normalise_case``) and accepts any modality
  listed (default: any).

Images are float arrays [k, j, i]; HU for CT.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

CT, MR, OTHER = "CT", "MR", "other"
# DICOM Modality codes of tomographic images read as CT (HU); everything else is "not CT"
_CT_CODES = {"CT"}
_MR_CODES = {"MR", "MRI"}
MAX_SAMPLES = 2_000_000  # statistics are read on a strided subsample of larger images


@dataclass(frozen=True)
class ModalityGuess:
    modality: str  # "CT", "MR" or "other"
    source: str  # "declared" or "intensities"
    reason: str  # one phrase, for messages


def normalise_declared(value: Optional[str]) -> Optional[str]:
    """A declared modality (DICOM code or free text) as CT / MR / other; None when unknown."""
    if value is None:
        return None
    code = str(value).strip().upper()
    if code in ("", "AUTO", "UNKNOWN", "NONE"):
        return None
    if code in _CT_CODES or code.startswith("CT"):
        return CT
    if code in _MR_CODES or code.startswith("MR"):
        return MR
    return OTHER


def _sample(image: np.ndarray) -> np.ndarray:
    flat = np.asarray(image).reshape(-1)
    step = max(1, flat.size // MAX_SAMPLES)
    return flat[::step].astype(np.float32, copy=False)


def detect(image: np.ndarray) -> ModalityGuess:
    """Guess CT or not from intensities alone (see the module docstring)."""
    v = _sample(image)
    if v.size == 0:
        return ModalityGuess(OTHER, "intensities", "the image is empty")
    frac = lambda lo, hi: float(np.mean((v >= lo) & (v <= hi)))  # noqa: E731
    air = frac(-1100.0, -850.0)
    fat = frac(-160.0, -40.0)
    soft = frac(-20.0, 120.0)
    bone = frac(400.0, 3100.0)
    in_hu_range = frac(-3100.0, 4100.0)  # CT padding values (-3024, -2048, -1024) included
    p5, p95 = np.percentile(v, [5, 95])
    spread = float(p95 - p5)
    if in_hu_range > 0.999 and soft >= 0.01 and (air + fat) >= 0.01 and spread >= 80.0:
        return ModalityGuess(CT, "intensities", "air/fat and soft tissue at Hounsfield values")
    if in_hu_range > 0.999 and soft >= 0.5 and bone >= 0.005 and spread >= 30.0:
        return ModalityGuess(CT, "intensities", "soft tissue and bone at Hounsfield values")
    if float(np.mean(v < -40.0)) < 0.001:
        why = "no negative intensities (no fat or air in Hounsfield units)"
    elif spread < 80.0:
        why = f"an intensity spread of {spread:.3g}, far below a CT's hundreds of HU"
    else:
        why = "intensities that do not show fat, air and soft tissue at Hounsfield values"
    return ModalityGuess(MR if float(v.min()) >= 0.0 or spread < 80.0 else OTHER, "intensities", why)


def guess(image: np.ndarray, declared: Optional[str] = None, scan: Optional["ScanFacts"] = None) -> ModalityGuess:
    """The declared modality when known, else ``detect``: of the whole scan (``scan``) when ``image`` is
    a crop of it (a box around an organ may hold no air or fat to tell CT by)."""
    known = normalise_declared(declared)
    if known is not None:
        return ModalityGuess(known, "declared", f"declared {str(declared).strip()}")
    return scan.detected if scan is not None else detect(image)


@dataclass(frozen=True)
class ScanFacts:
    """What a crop of a scan cannot tell of the whole scan: the modality its intensities show
    (``detect``) and its darkest value, the value beyond the scan when resampling (HU for CT)."""

    detected: ModalityGuess
    outside: float

    @classmethod
    def of(cls, image: np.ndarray) -> "ScanFacts":
        return cls(detect(image), float(np.min(image)))

    def to_dict(self) -> dict:
        """Plain JSON values (an engine request from an application that holds only a crop)."""
        return {"modality": self.detected.modality, "source": self.detected.source, "reason": self.detected.reason,
                "outside": self.outside}

    @classmethod
    def from_dict(cls, values: Optional[dict]) -> Optional["ScanFacts"]:
        """``to_dict``'s inverse; None for None."""
        if values is None:
            return None
        return cls(ModalityGuess(str(values["modality"]), str(values["source"]), str(values["reason"])),
                   float(values["outside"]))


def prior_normalisation(meta: dict) -> str:
    """How a prior whose card is ``meta`` reads intensities: ``"window"`` (the default) or ``"case"``."""
    return str(meta.get("appearance_norm") or "window").lower()


def refusal(meta: dict, found: ModalityGuess) -> str:
    """Why a prior whose card is ``meta`` does not read an image guessed as ``found`` (one phrase)."""
    trained = ", ".join(meta.get("modalities") or [CT])
    how = "per-case intensities" if prior_normalisation(meta) == "case" else "a fixed HU window"
    return (f"the image does not look like CT ({found.reason}; read as {found.modality}) but this appearance "
            f"prior reads {trained} ({how})")


def accepts(meta: dict, modality: str) -> bool:
    """Whether a prior whose card is ``meta`` may read an image of ``modality``."""
    norm = prior_normalisation(meta)
    listed = meta.get("modalities")
    if norm == "case":
        return listed is None or modality in [normalise_declared(m) for m in listed]
    allowed = [normalise_declared(m) for m in (listed or [CT])]
    return modality in allowed and modality == CT  # a fixed HU window only means something in HU


