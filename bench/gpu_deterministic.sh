#!/bin/bash
# training.deterministic on a GPU: each benchmark's smoke recipe, 2 epochs, twice, with
# deterministic algorithms on; the two runs' per-epoch losses and metrics must be equal, and
# an operation without a deterministic CUDA implementation shows up as a failed run.
# Usage: bench/gpu_deterministic.sh [BENCHMARK ...]   (default: all six; DEVICE=cpu to try)
set -uo pipefail
device=${DEVICE:-cuda}
work=${TMPDIR:-/tmp}/mlbench-deterministic
benchmarks=("$@")
[ ${#benchmarks[@]} -gt 0 ] || benchmarks=(resnet50 bert_large gptj cosmoflow deepcam alphafold2)
mkdir -p "$work"
status=0
for benchmark in "${benchmarks[@]}"; do
    [ -d "$work/$benchmark-data" ] || mlbench synth "$benchmark" "$work/$benchmark-data" \
        > /dev/null 2> "$work/$benchmark-synth.err" || { status=1; continue; }
    for run in 1 2; do
        mlbench train "$benchmark" --config smoke --device "$device" \
            --data-dir "$work/$benchmark-data" --set training.deterministic=true \
            --set training.n_epochs=2 --set training.target=null \
            2> "$work/$benchmark-$run.err" > /dev/null
        echo "$benchmark run $run: exit $?"
        grep -E '^\[mlbench\] epoch [0-9]+(/|:)' "$work/$benchmark-$run.err" \
            | sed -E 's/, [0-9.]+ samples\/s, [0-9.]+ s$//' > "$work/$benchmark-$run.txt"
    done
    if [ -s "$work/$benchmark-1.txt" ] && cmp -s "$work/$benchmark-1.txt" "$work/$benchmark-2.txt"
    then
        echo "$benchmark: identical"
    else
        echo "$benchmark: DIFFERENT or failed; see $work/$benchmark-*.err"
        grep -h "error:" "$work/$benchmark"-*.err | sort -u
        status=1
    fi
done
exit $status
