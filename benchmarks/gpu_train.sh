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
export PYTHONPATH=$PWD/NeARSlicer${PYTHONPATH:+:$PYTHONPATH} PYTHONUNBUFFERED=1 OMP_NUM_THREADS=1
DATA=.gpu/alan64_trainval.npz
P=NeARSlicer/NeARSlicerLib/priors
nvidia-smi -L 2>&1 | head -2
python3 -c "import torch, scipy, skimage, safetensors, tqdm; print('torch', torch.__version__, 'cuda', torch.cuda.is_available())"
STEPS=100000; VAL=250; REUSE=${REUSE:-4}
if [ "$MODE" = smoke ]; then STEPS=90; VAL=45; fi
common=(--data "$DATA" --minutes "$MIN" --max-steps "$STEPS" --val-every "$VAL" --device auto --threads 2
        --points 8192 --errors library)
run() {  # name, workers, extra args...
  local name=$1 workers=$2; shift 2
  python3 -m NeARSlicerLib.cli train-prior "${common[@]}" --workers "$workers" --out "$OUT/$name.safetensors" --overwrite "$@" \
    >"$OUT/$name.log" 2>&1 &
}
# each run continues the shipped prior it would replace (warm start; new image inputs start at zero)
W=${WORKERS:-4}
run adrenal_s "$W" --reuse "$REUSE" --lr 5e-4 --init-from "$P/adrenal_v2.safetensors"
run adrenal_mr "$W" --reuse "$REUSE" --lr 5e-4 --appearance --appearance-norm case --p-mr 0.5 \
  --init-from "$P/adrenal_mr_v1.safetensors"
# half the general prior's annotations painted with error sizes in voxels (a large organ's 1-2 voxel brush; README
# "Rough annotations of a coarse CT"): check it with `voxel_errors_prior.py voxel` beside the mm bench
run anatomy_s "$W" --reuse "$REUSE" --lr 5e-4 --source anatomy --p-voxel-errors "${P_VOXEL:-0.5}" \
  --init-from "$P/anatomy_v1.safetensors"
run anatomy_mr "$W" --reuse "$REUSE" --lr 5e-4 --source anatomy --appearance --appearance-norm case --p-mr 0.3 \
  --init-from "$P/anatomy_v1.safetensors"
(sleep 150; nvidia-smi --query-gpu=utilization.gpu,memory.used --format=csv,noheader 2>&1; uptime) &
wait
for f in "$OUT"/*.log; do
  echo "== $f"; tr '\r' '\n' <"$f" | grep -v "it/s\]\|s/it\]\|^\s*$" | tail -8; tr '\r' '\n' <"$f" | grep "it/s\]\|s/it\]" | tail -1
done
nvidia-smi --query-gpu=memory.used,utilization.gpu --format=csv 2>&1 | tail -1
tar czf "$OUT/logs.tgz" -C "$OUT" $(cd "$OUT" && ls *.log) && rm -f "$OUT"/*.log
ls -la "$OUT"
# the device's results come back through $OUT in files of at most 16 MiB: half precision, as shipped
python3 - "$OUT" <<'PY'
import sys, pathlib, torch
from NeARSlicerLib.prior import load_prior, save_prior
for p in pathlib.Path(sys.argv[1]).glob("*.safetensors"):
    m, meta = load_prior(p); save_prior(p, m, meta, dtype=torch.float16)
PY
# one CUDA check of the fit path (no SimpleITK there): the shipped S prior on cuda and on cpu
python3 benchmarks/cuda_check.py "$DATA" adrenal "${CHECK_CASES:-6}" 2>&1 | tail -3
ls -la "$OUT"
