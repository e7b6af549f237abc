#!/bin/bash
# Training throughput of full-size BERT-Large (336M parameters with the next-sentence head,
# 512 tokens, bf16 autocast)
# on one GPU, through the normal runner, on synthetic shards in the real layout. Prints the
# samples/s of each block of 20 steps (the first includes start-up). Usage:
#   bench/gpu_bert_large.sh [DATA_DIR] [LOCAL_BATCH]
# Note: the synthetic sentences are short, so the prediction head sees about 15 masked
# positions per sample instead of the real data's up to 76 (the encoder always runs on 512).
set -euo pipefail
data=${1:-/tmp/bert-synth}
batch=${2:-48}
[ -d "$data/training" ] || mlbench synth bert_large "$data" --samples 8000
mlbench train bert_large --device cuda --data-dir "$data" \
    --set data.global_batch_size="$batch" --set data.eval_subset="$batch" \
    --set training.target=null --set training.n_epochs=4 --set training.steps_per_epoch=20 \
    | grep -E '"key": "(mlbench_throughput|mlbench_peak_memory|mlbench_num_parameters)"'
