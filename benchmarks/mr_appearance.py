"""MR and other non-CT images: is reading the image better than shape only, and never worse?

    PYTHONPATH=NeARSlicer python benchmarks/mr_appearance.py [--prior-mr PATH] [--cases 24]
        -> benchmarks/results/mr_appearance.json

Cases: ALAN val shapes 64.. (1 mm; none is in the training set or the checkpoint's selection set),
each with the error library's mixture (``annotation_errors.corrupt(..., "mixture", seed)``), in an
image of one of three generators:

* ``mr_heldout``: ``no_harm.mr_phantom``, an MR-like image that the any-modality prior never saw:
  the CT phantom's layout (fat, organs, gland) with arbitrary positive levels (fat bright or dark,
  organ contrast drawn either side of the gland's), a smooth bias field, Rician noise, any scale;
* ``mr_context``: ``anatomy_context`` MR (the training generator's family, other seeds);
* ``mr_isointense``: the ``mr_heldout`` image with the gland's voxels replaced by values drawn
  from the ring around it: the image no longer carries the gland's own boundary (only where fat
  or another tissue touches it), so reading it should not help, and must not harm;
* ``ct``: the CT phantom in HU (for reference: also read by the CT-window prior ``adrenal_sa_v1``,
  the adrenal S+A default until 2026-11-28).

Each case is refined shape only (``adrenal-s``) and with the image by the any-modality prior
(``adrenal-mr``); for ``ct`` also by ``adrenal_sa_v1``. ``default`` preset, every change applied
(``change_policy="all"``); the default ``gated`` policy is applied afterwards to the same
refinement (``confidence.apply_changes``; these val shapes are inside the prior's domain, so that
is what refine's default does). "Where the image carries the boundary": the case's contrast is
|median(gland) - median(1.5-4 mm ring outside it)| over the pooled robust SD, from the clean
shape, reported per kind for the cases above and below the kind's median contrast.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
from scipy import ndimage as ndi

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "NeARSlicer"))
sys.path.insert(0, str(HERE))

OUT = HERE / "results" / "mr_appearance.json"
SHARED = HERE.parent.parent / "shared" / "data"
FIRST_SHAPE = 64
SEED = 53_000
POLICIES = ("all", "gated")
KINDS = ("mr_heldout", "mr_isointense", "mr_context", "ct")


def contrast(image: np.ndarray, clean: np.ndarray) -> float:
    """|median inside - median of the 1.5-4 mm ring| / pooled robust SD (1 mm voxels)."""
    m = clean.astype(bool)
    ring = _ring(m)
    inner = ndi.binary_erosion(m) if ndi.binary_erosion(m).sum() >= 8 else m
    a, b = image[inner], image[ring]
    ma, mb = float(np.median(a)), float(np.median(b))
    sd = np.hypot(1.4826 * np.median(np.abs(a - ma)), 1.4826 * np.median(np.abs(b - mb))) / np.sqrt(2.0)
    return abs(ma - mb) / max(float(sd), 1e-6)


def _ring(clean: np.ndarray) -> np.ndarray:
    dist = ndi.distance_transform_edt(~clean.astype(bool))
    return (dist > 1.5) & (dist <= 4.0)


def make_image(kind: str, clean: np.ndarray, seed: int) -> np.ndarray:
    from no_harm import mr_phantom

    from NeARSlicerLib.anatomy_context import synthetic_context
    from NeARSlicerLib.phantom import ct_phantom

    if kind == "mr_heldout":
        return mr_phantom(clean, seed)
    if kind == "mr_isointense":
        img = mr_phantom(clean, seed).copy()
        m = clean.astype(bool)
        img[m] = np.random.default_rng(seed).choice(img[_ring(clean)], size=int(m.sum()))
        return img
    if kind == "mr_context":
        return synthetic_context(clean, 1.0, np.random.default_rng(seed), modality="MR", tissue="soft")
    return ct_phantom(clean, seed=seed, vary=True)


def run(prior_mr: str, n_cases: int) -> dict:
    from NeARSlicerLib.annotation_errors import corrupt
    from NeARSlicerLib.confidence import apply_changes
    from NeARSlicerLib.geometry import Grid
    from NeARSlicerLib.metrics import dice, normalized_surface_dice
    from NeARSlicerLib.prior import CT_WINDOW_SA_PRIOR, resolve_prior
    from NeARSlicerLib.refine import RefineOptions, refine_mask

    val = np.load(SHARED / "alan64" / "alan64_trainval.npz")["val_shapes"]
    sp = (1.0, 1.0, 1.0)
    priors = {"shape": str(resolve_prior("adrenal-s", False)), "mr": prior_mr,
              "sa_window": str(CT_WINDOW_SA_PRIOR)}  # by file: the name adrenal-sa is adrenal_mr_v1 now
    rows = []
    for kind in KINDS:
        for c in range(n_cases):
            i = FIRST_SHAPE + c
            clean = val[i].astype(bool)
            seed = SEED + 101 * i + {"mr_heldout": 0, "mr_context": 1, "ct": 2, "mr_isointense": 0}[kind]
            rough = corrupt(clean, sp, "mixture", seed)
            image = make_image(kind, clean, seed)
            grid = Grid(shape=clean.shape, spacing=sp, origin=(0.0, 0.0, 0.0))
            row = {"kind": kind, "shape": i, "contrast": round(contrast(image, clean), 3),
                   "input": [dice(rough, clean), normalized_surface_dice(rough, clean, sp, 1.0)]}
            for name in (("shape", "mr", "sa_window") if kind == "ct" else ("shape", "mr")):
                t = time.perf_counter()
                res = refine_mask(rough, grid, image=None if name == "shape" else image,
                                  options=RefineOptions(prior=priors[name], change_policy="all", keep_threshold=0.0))
                for pol in POLICIES:
                    out = apply_changes(rough, res.mask, sp, pol)
                    row[f"{name}_{pol}"] = [dice(out, clean), normalized_surface_dice(out, clean, sp, 1.0)]
                row[f"{name}_seconds"] = round(time.perf_counter() - t, 2)
                row[f"{name}_image_read"] = bool(res.info.get("appearance"))
            rows.append(row)
            print(json.dumps({k: (np.round(v, 4).tolist() if isinstance(v, list) else v) for k, v in row.items()}),
                  flush=True)
    return summarise(rows, priors)


def summarise(rows: list[dict], priors: dict) -> dict:
    def mean(rs, key):
        return [round(100 * float(np.mean([r[key][m] for r in rs])), 2) for m in (0, 1)] if rs else None

    out = {"priors": priors, "first_shape": FIRST_SHAPE, "preset": "default", "errors": "mixture", "by_kind": {}}
    for kind in KINDS:
        rs = [r for r in rows if r["kind"] == kind]
        if not rs:
            continue
        keys = ["input"] + [k for k in rs[0] if k.endswith(POLICIES) and isinstance(rs[0][k], list)]
        mid = float(np.median([r["contrast"] for r in rs]))
        block = {"n": len(rs), "median_contrast": round(mid, 3)}
        for subset, sel in (("all", rs), ("contrast_above_median", [r for r in rs if r["contrast"] > mid]),
                            ("contrast_at_or_below_median", [r for r in rs if r["contrast"] <= mid])):
            block[subset] = {"n": len(sel), **{k: mean(sel, k) for k in keys}}
        for pol in POLICIES:
            diff = [100 * (r[f"mr_{pol}"][0] - r[f"shape_{pol}"][0]) for r in rs]
            block[f"image_minus_shape_dsc_{pol}"] = {"mean": round(float(np.mean(diff)), 2),
                                                     "worst": round(float(np.min(diff)), 2),
                                                     "worse_by_more_than_1": int(sum(d < -1 for d in diff))}
        out["by_kind"][kind] = block
    out["rows"] = rows
    return out


def main() -> None:
    from NeARSlicerLib.prior import ADRENAL_MR_PRIOR

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--prior-mr", default=str(ADRENAL_MR_PRIOR), help="the any-modality S+A prior")
    ap.add_argument("--cases", type=int, default=24)
    ap.add_argument("--out", default=str(OUT))
    args = ap.parse_args()
    result = run(args.prior_mr, args.cases)
    Path(args.out).write_text(json.dumps(result, indent=1))
    print(json.dumps({k: v for k, v in result["by_kind"].items()}, indent=1))


if __name__ == "__main__":
    main()
