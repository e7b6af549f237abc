#!/bin/bash
# Test-only wrapper: the rank-1 process exits with code 17 before training, every other rank
# runs the command given as arguments. Rank from torchrun (RANK) or srun (SLURM_PROCID).
rank="${RANK:-${SLURM_PROCID:-0}}"
if [[ "$rank" == 1 ]]; then
    echo "rank 1: simulated crash (tests/reframe_checks/rank1_exits.sh)" >&2
    exit 17
fi
exec "$@"
