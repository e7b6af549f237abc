#!/bin/bash
# Rank placement on one GPU node: the ResNet50 smoke run with every GPU visible to every rank
# (torchrun), and with one GPU per rank (a wrapper sets CUDA_VISIBLE_DEVICES, as
# --gpus-per-task=1 or --gpu-bind=single:1 do), then the ReFrame smoke test on the local
# system in both launch modes. Prints each rank's placement line and the environment event.
# Usage: bench/gpu_placement.sh [WORKDIR]
set -euo pipefail
work=${1:-/tmp/mlbench-gpu-placement}
gpus=$(python -c 'import torch; print(torch.cuda.device_count())')
mkdir -p "$work"
[ -d "$work/data" ] || mlbench synth resnet50 "$work/data"
train=(mlbench train resnet50 --config smoke --device cuda --data-dir "$work/data"
       --set training.n_epochs=1 --set training.target=null)

echo "== all $gpus GPUs visible to every rank (torchrun --nproc_per_node=$gpus)"
torchrun --standalone --nproc_per_node="$gpus" --no-python "${train[@]}" 2>&1 |
    grep -E '\[mlbench\] rank=|mlbench_environment'

echo "== one GPU per rank (CUDA_VISIBLE_DEVICES=\$LOCAL_RANK)"
torchrun --standalone --nproc_per_node="$gpus" --no-python \
    bash -c 'CUDA_VISIBLE_DEVICES=$LOCAL_RANK exec "$@"' one-gpu "${train[@]}" 2>&1 |
    grep -E '\[mlbench\] rank=|Error|error'

echo "== ReFrame GPU smoke on this node, srun-less local system (torchrun mode)"
cd "$work"
reframe -C "$OLDPWD/site_config/settings.py" -c "$OLDPWD/reframe_tests/resnet50.py" \
    -n '^resnet50_smoke%num_nodes=1%device=gpu$' -S launcher=torchrun -r || true
