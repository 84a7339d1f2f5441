#!/usr/bin/env bash
# Train the priors on a lent GPU machine in one call (see README "Training the priors").
# Usage (repo root): bash benchmarks/gpu_train.sh MINUTES [smoke]
# Needs .gpu/alan64_trainval.npz (a copy of ../shared/data/alan64, carried: ../shared does not travel).
# Each prior trains in its own process (CUDA for the model, CPU worker processes for the batches);
# priors and logs land in $OUT (or ./gpu_out).
set -u
MIN=${1:-7}
MODE=${2:-full}
OUT=${OUT:-gpu_out}
mkdir -p "$OUT"
export PYTHONPATH=$PWD/NeARSlicer PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DATA=.gpu/alan64_trainval.npz
P=NeARSlicer/NeARSlicerLib/priors
nvidia-smi -L 2>&1 | head -2
python3 -c "import torch, scipy, skimage, safetensors, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
STEPS=100000; VAL=250; REUSE=${REUSE:-3}
if [ "$MODE" = smoke ]; then STEPS=90; VAL=45; fi
common=(--data "$DATA" --minutes "$MIN" --max-steps "$STEPS" --val-every "$VAL" --device auto --threads 2
        --points 8192 --errors library)
run() {  # name, workers, extra args...
  local name=$1 workers=$2; shift 2
  python3 -m NeARSlicerLib.cli train-prior "${common[@]}" --workers "$workers" --out "$OUT/$name.safetensors" "$@" \
    >"$OUT/$name.log" 2>&1 &
}
run adrenal_s 3 --reuse "$REUSE" --lr 5e-4 --init-from "$P/adrenal_v1.safetensors"
run adrenal_sa 4 --reuse "$REUSE" --lr 5e-4 --appearance --init-from "$P/adrenal_sa_v1.safetensors"
if [ -f NeARSlicer/NeARSlicerLib/anatomy_shapes.py ]; then
  run anatomy_s 2 --reuse "$REUSE" --lr 5e-4 --source anatomy --init-from "$P/adrenal_v1.safetensors"
  run anatomy_sa 6 --reuse "$REUSE" --lr 5e-4 --source anatomy --appearance --appearance-norm case \
    --init-from "$P/adrenal_sa_v1.safetensors"
fi
wait
for f in "$OUT"/*.log; do
  echo "== $f"; tr '\r' '\n' <"$f" | grep -v "it/s\]\|s/it\]\|^\s*$" | tail -8; tr '\r' '\n' <"$f" | grep "it/s\]\|s/it\]" | tail -1
done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>&1 | tail -1
ls -la "$OUT"
# the device's results come back through $OUT in files of at most 16 MiB: half precision, as shipped
python3 - "$OUT" <<'PY'
import sys, pathlib, torch
from NeARSlicerLib.prior import load_prior, save_prior
for p in pathlib.Path(sys.argv[1]).glob("*.safetensors"):
    m, meta = load_prior(p); save_prior(p, m, meta, dtype=torch.float16)
PY
python3 - <<'PY' 2>&1 | tail -3
# one CUDA check of the refine path: the same rough phantom refined on cuda and on cpu
import numpy as np
from NeARSlicerLib.phantom import adrenal_phantom
from NeARSlicerLib.annotation_errors import corrupt
from NeARSlicerLib.geometry import Grid
from NeARSlicerLib.metrics import dice
from NeARSlicerLib.refine import RefineOptions, refine_mask
clean = adrenal_phantom(seed=3)
rough = corrupt(clean, (1.0, 1.0, 1.0), "mixture", 5)
grid = Grid(shape=clean.shape, spacing=(1.0, 1.0, 1.0), origin=(0.0, 0.0, 0.0))
out = {d: refine_mask(rough, grid, options=RefineOptions(device=d)) for d in ("cuda", "cpu")}
print("cuda check: input", round(dice(rough, clean), 4), "cuda", round(dice(out["cuda"].mask, clean), 4),
      "cpu", round(dice(out["cpu"].mask, clean), 4), "cuda vs cpu", round(dice(out["cuda"].mask, out["cpu"].mask), 4),
      "seconds cuda/cpu", round(out["cuda"].seconds, 2), round(out["cpu"].seconds, 2))
PY
ls -la "$OUT"
