#!/usr/bin/env bash
# One call that measures everything issue 22 asks of a GPU, side by side with PyTorch on the
# same device: trainer bench for the cifar10 preset (batch 64, T = 5: pre-training, stage 2,
# stage 1 exact and paper) and the mnist preset, on the GPU and on the machine's CPU, and
# NVlabs/edm's own network in PyTorch eager on the same steps (scripts/torch_train_bench.py).
#
#   scripts/gpu_bench.sh TRAINER EDM_CHECKOUT [PYTHON]
#
# TRAINER: a release trainer built with --features cuda (or vulkan; DEVICE=vulkan), e.g.
#   python3 scripts/fetch_llvm.py && cargo build --release -p trainer --features cuda
# built where the registries are reachable and copied to the GPU machine (the GPU machines
# lent to sessions reach nothing outside). EDM_CHECKOUT: NVlabs/edm. PYTHON: one with torch
# (CUDA) and numpy, requests; the PyTorch rows are skipped without it. Writes to stdout.
set -u
TRAINER=${1:?trainer binary}
EDM=${2:?NVlabs/edm checkout}
PY=${3:-python3}
DEVICE=${DEVICE:-cuda}
HERE=$(cd "$(dirname "$0")" && pwd)

echo "## device"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>/dev/null || true
nproc
echo
echo "## fewstep, cifar10 preset, $DEVICE, batch 64"
"$TRAINER" bench --device "$DEVICE" --preset cifar10 --batch 64 --t 5 --steps 3 \
    --traj-refresh 0 || echo "(failed)"
echo
echo "## PyTorch eager, NVlabs/edm DDPM++ CIFAR-10, $DEVICE, batch 64"
"$PY" "$HERE/torch_train_bench.py" "$EDM" --device cuda --batch 64 --t 5 --steps 3 \
    || echo "(failed or no torch)"
echo
echo "## fewstep, mnist preset, $DEVICE then flex (this machine's CPU), batch 64"
"$TRAINER" bench --device "$DEVICE" --preset mnist --batch 64 --t 5 --steps 3 \
    --traj-refresh 0 || echo "(failed)"
"$TRAINER" bench --device flex --preset mnist --batch 64 --t 5 --steps 3 \
    --traj-refresh 0 || echo "(failed)"
