#!/bin/bash
# GPU energy per training sample from NVML, through the normal runner, on one GPU: the ResNet50
# smoke config, then a slice of full-size ResNet50 (224 px crops, bf16 autocast, channels_last,
# the MLPerf recipe's model and optimizer) on synthetic ImageNet-format JPEGs. For each run it
# prints the mlbench_energy lines (source, J, s, samples per epoch and for the run), J/sample
# over the training epochs, the run's average power, and, as a cross-check, the GPU's own
# counter read around the whole process (start-up and evaluation included, so larger).
# Usage:
#   bench/gpu_energy.sh [DATA_DIR] [LOCAL_BATCH] [STEPS_PER_EPOCH] [NUM_WORKERS]
# The synthetic images are 48 px JPEGs, cheaper to decode than ImageNet's; where the loader
# still cannot keep the GPU busy, the J/sample includes the GPU's idle power while it waits.
set -euo pipefail
data=${1:-/tmp/resnet50-energy-synth}
batch=${2:-256}
steps=${3:-100}
workers=${4:-12}
out=$(mktemp -d /tmp/gpu_energy.XXXXXX)
python3 -c "import pynvml" 2>/dev/null || {
    echo "gpu_energy.sh: error: pynvml is missing (pip install nvidia-ml-py)" >&2; exit 2; }
[ -d "$data/train" ] || mlbench synth resnet50 "$data" --samples 12800 >/dev/null

gpu_joules() {  # NVML total energy of the GPU CUDA calls device 0, in J
    python3 - <<'EOF'
import pynvml, torch
p = torch.cuda.get_device_properties(0)
pynvml.nvmlInit()
handle = pynvml.nvmlDeviceGetHandleByPciBusId(
    f"{p.pci_domain_id:08x}:{p.pci_bus_id:02x}:{p.pci_device_id:02x}.0")
print(pynvml.nvmlDeviceGetTotalEnergyConsumption(handle) / 1e3)
EOF
}

summarize() {  # MLLOG file, process-wide NVML joules
    python3 - "$1" "$2" <<'EOF'
import json, sys
events = [json.loads(line.split(":::MLLOG", 1)[1]) for line in open(sys.argv[1])
          if line.startswith(":::MLLOG")]
energy = [e for e in events if e["key"] == "mlbench_energy"]
for e in energy:
    m = e["metadata"]
    print(f"  {m['scope']:>5} {m.get('epoch_num', ''):>2} source={m['source']} "
          f"J={e['value']} s={m['duration_s']} samples={m['samples']:.0f} {m.get('reason', '')}")
epochs = [e for e in energy if e["metadata"]["scope"] == "epoch" and e["value"] is not None]
run = [e for e in energy if e["metadata"]["scope"] == "run"]
if epochs and run and run[0]["value"] is not None:
    samples = sum(e["metadata"]["samples"] for e in epochs)
    joules = sum(e["value"] for e in epochs)
    speed = samples / max(sum(e["metadata"]["duration_s"] for e in epochs), 1e-3)
    print(f"  energy_per_sample {joules / samples:.4f} J/sample at {speed:.0f} samples/s; "
          f"average_power {run[0]['value'] / run[0]['metadata']['duration_s']:.0f} W; "
          f"energy_to_target {run[0]['value']:.0f} J; whole process {float(sys.argv[2]):.0f} J")
else:
    print("  energy unknown (see the reason above)")
EOF
}

measure() {  # NAME, then mlbench train arguments
    local name=$1; shift
    local before after
    before=$(gpu_joules)
    mlbench train resnet50 --device cuda --data-dir "$data" \
        --set training.log_file="$out/$name.log" "$@" >/dev/null
    after=$(gpu_joules)
    echo "$name:"
    summarize "$out/$name.log" "$(python3 -c "print($after - $before)")"
}

measure smoke --config smoke --set training.target=null --set training.n_epochs=3
measure resnet50-224px --set data.global_batch_size="$batch" --set data.num_workers="$workers" \
    --set training.target=null --set training.n_epochs=3 --set training.steps_per_epoch="$steps"
echo "MLLOG files in $out"
