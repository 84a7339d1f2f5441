"""Copy a trained prior into the package as a shipped one: float16 weights, metadata, JSON card.

    .venv/bin/python benchmarks/ship_prior.py runs/adrenal_skip.safetensors card_facts.json
    .venv/bin/python benchmarks/ship_prior.py runs/adrenal_sa.safetensors sa_facts.json \
        NeARSlicer/NeARSlicerLib/priors/adrenal_sa_v1.safetensors
"""
import json
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "NeARSlicer"))
from NeARSlicerLib.prior import DEFAULT_PRIOR, load_prior, save_prior  # noqa: E402

src, facts = sys.argv[1], json.loads(Path(sys.argv[2]).read_text())
dest = Path(sys.argv[3]) if len(sys.argv) > 3 else DEFAULT_PRIOR
model, meta = load_prior(src)
meta = {**meta, **facts.get("meta", {})}
if meta.get("scale", {}).get("mode", "fixed") == "fixed":
    meta["fov_mm"] = 64.0  # a fixed-scale prior's working cube (an extent-scale prior sizes it per case)
save_prior(dest, model, meta, dtype=torch.float16)
card = {**facts, "file": dest.name, "architecture": model.cfg.to_dict(),
        "parameters": sum(p.numel() for p in model.parameters()), "meta": meta}
dest.with_suffix(".json").write_text(json.dumps(card, indent=1) + "\n")
print(f"wrote {dest} ({dest.stat().st_size / 2**20:.1f} MiB) and its card")
