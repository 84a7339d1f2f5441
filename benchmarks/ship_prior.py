"""Copy a trained prior into the package as the shipped one: float16 weights, metadata, JSON card.

    .venv/bin/python benchmarks/ship_prior.py runs/adrenal_skip.safetensors card_facts.json
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeARSlicer"))
from NeARSlicerLib.prior import DEFAULT_PRIOR, load_prior, save_prior  # noqa: E402

src, facts = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
model, meta = load_prior(src)
meta = {**meta, **facts.get("meta", {}), "fov_mm": 64.0}
save_prior(DEFAULT_PRIOR, model, meta, dtype=torch.float16)
card = {**facts, "file": DEFAULT_PRIOR.name, "architecture": model.cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()), "meta": meta}
DEFAULT_PRIOR.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
print(f"wrote {DEFAULT_PRIOR} ({DEFAULT_PRIOR.stat().st_size / 2**20:.1f} MiB) and its card")
