#!/bin/bash
# Training throughput of a GPT-J slice on one GPU: the full width (d_model 4096, 16 heads,
# rotary 64, vocabulary 50400, 2048-token sequences, bf16 autocast) with N_LAYER of the 28
# blocks, through the normal runner on the synthetic C4. Prints the sequences/s of each
# block of 10 steps (the first includes start-up); the 6B model's time per sequence is about
# (embedding + head) + 28/N_LAYER x (the slice's block time). Usage:
#   bench/gpu_gptj_slice.sh [DATA_DIR] [N_LAYER] [LOCAL_BATCH] [CHECKPOINTING]
set -euo pipefail
data=${1:-/tmp/c4-synth}
layers=${2:-8}
batch=${3:-4}
checkpointing=${4:-false}
[ -d "$data/en" ] || mlbench synth gptj "$data" --samples 20000
mlbench train gptj --device cuda --data-dir "$data" \
    --set model.n_layer="$layers" --set model.n_embd=4096 --set model.n_head=16 \
    --set model.rotary_dim=64 --set model.n_positions=2048 --set model.vocab_size=50400 \
    --set model.activation_checkpointing="$checkpointing" --set data.seq_len=2048 \
    --set data.global_batch_size="$batch" --set data.eval_subset="$batch" \
    --set data.train_shards=[] --set training.amp=true --set training.target=null --set training.n_epochs=4 \
    --set training.steps_per_epoch=10 \
    | grep -E '"key": "(mlbench_throughput|mlbench_peak_memory|mlbench_num_parameters)"'
