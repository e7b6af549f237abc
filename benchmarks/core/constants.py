"""Text that crosses layers: written by the benchmarks, read by the ReFrame tests and tools.

One home for each line format and MLLOG key name that more than one layer uses, as the
EESSI test-suite keeps its ``constants.py``. Imports nothing but the standard library, so
ReFrame can load it while listing tests.
"""

from __future__ import annotations

import re

#: Project MLLOG keys (namespaced ``mlbench_``); the standard keys come from mlperf-logging.
THROUGHPUT = "mlbench_throughput"  # samples/s of the epoch just finished; epoch_num, epoch_time_s
TARGET = "mlbench_target"  # the configured target; lower_is_better, metric, steps_per_epoch
PEAK_MEMORY = "mlbench_peak_memory"  # peak bytes on this rank's device
NUM_PARAMETERS = "mlbench_num_parameters"
RESUMED = "mlbench_resumed"
#: The run's software and hardware environment, metadata = :data:`ENVIRONMENT_FIELDS`.
ENVIRONMENT = "mlbench_environment"
#: Joules over a scope (``run``: run_start to run_stop; ``epoch``: one epoch's training
#: steps), summed over ranks and nodes. value None when no counter; metadata ``scope``,
#: ``epoch_num`` (epoch scope), ``source`` (``nvml``, ``rapl``, ``cray_pm`` or None),
#: ``domains``, ``duration_s``, ``samples`` (training samples in the scope) and ``reason``
#: (why the value is None).
ENERGY = "mlbench_energy"
#: Standard MLPerf HPC keys for data staging inside the timed region.
STAGING_START = "staging_start"
STAGING_STOP = "staging_stop"

#: Fields of :data:`ENVIRONMENT`, also perflog columns: what makes two runs comparable.
ENVIRONMENT_FIELDS = (
    "mlbench_version",  # package version, + git commit where the package is a checkout
    "torch_version",
    "cuda_version",
    "cudnn_version",
    "nccl_version",
    "gpu_model",
    "gpu_driver",
    "world_size",
)

#: Every rank prints one placement line to stderr once its process group is up, e.g.
#: ``[mlbench] rank=1/4 local_rank=1 node=nid001 device=cuda:0 launcher=srun backend=nccl
#: threads=16 cpus=16-31 gpu="NVIDIA H200" gpu_pci=00000000:19:00.0``.
RANK_LINE_PREFIX = "[mlbench] rank="
_FIELD = re.compile(r'(\w+)=("[^"]*"|\S+)')


def format_rank_line(fields: dict[str, object]) -> str:
    """``[mlbench] key=value ...``; values with spaces are double-quoted. ``rank`` first."""
    parts = []
    for key, value in fields.items():
        text = str(value)
        parts.append(f'{key}="{text}"' if (" " in text or not text) else f"{key}={text}")
    return "[mlbench] " + " ".join(parts)


def parse_rank_lines(text: str) -> list[dict[str, str]]:
    """The fields of every rank line in ``text`` (quotes removed), in order of appearance;
    also of lines that two ranks' writes ran together on one line."""
    lines = []
    for chunk in text.split(RANK_LINE_PREFIX)[1:]:
        line = "rank=" + chunk.split("\n", 1)[0]
        lines.append({key: value.strip('"') for key, value in _FIELD.findall(line)})
    return lines


#: One-line error of every ``mlbench`` command: ``mlbench NAME: error: REASON``.
ERROR_LINE = re.compile(r"^mlbench [\w-]+: error: (.+)$", re.MULTILINE)


def format_error_line(command: str, reason: str) -> str:
    return f"mlbench {command}: error: {reason}"


#: ``mlbench synth`` prints this when the dataset is complete.
def dataset_written_line(benchmark: str, samples: int, outdir: object) -> str:
    return f"wrote {benchmark} dataset ({samples} training samples) to {outdir}"


def dataset_written_pattern(benchmark: str) -> str:
    return rf"wrote {re.escape(benchmark)} dataset"
