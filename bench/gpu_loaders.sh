#!/bin/bash
# The GPU side of the input pipelines, on one GPU:
# 1. the per-batch device transforms of CosmoFlow and DeepCAM (int16 -> float, log1p,
#    min/max normalisation, transposes, label casts) at full sample size, in ms per sample
#    ("transform ms" column), next to the loaders' CPU rates;
# 2. ResNet50 JPEG decoding with data.decode_device: cuda (decode_jpeg on the GPU, crop and
#    normalise there) against the CPU decoders, in images/s; decode_device stays cpu by
#    default until this shows the GPU path ahead on the machine at hand.
# Usage: bench/gpu_loaders.sh [SAMPLES] [IMAGES]
set -euo pipefail
samples=${1:-8}
images=${2:-512}
python bench/hdf5_loaders.py --device cuda --only cosmoflow deepcam --samples "$samples" \
    --batch 8 --repeats 5
python bench/jpeg_decode.py --device cuda --images "$images" --repeats 3
