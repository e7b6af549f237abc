"""Synthetic perflogs, for the reader benchmark, the tests and dashboard demos.

Values follow a simple, known model (throughput grows with nodes at 90 % efficiency per
doubling, GPU 20x CPU, 2 % multiplicative noise, 300 W per CPU rank and 700 W per GPU) and
about one run in twenty fails with ``None`` values, as a real failed ReFrame test writes them.
:func:`perflog_lines` writes this project's format; :func:`custom_perflog_lines` another
tool's (23 columns, one performance variable, local times without UTC offset, which is what
ReFrame writes under its default ``datefmt``).
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from perflogs_parsers.formats import PERFLOG_LEADING_COLUMNS, PERFORMANCE_VARIABLES, perflog_header

NUM_NODES = (1, 2, 4, 8)
DEVICES = ('cpu', 'gpu')
SCALES = ('smoke', 'full')
SAMPLES_PER_EPOCH = 100_000
EPOCHS_TO_TARGET = 10
RANKS_PER_NODE = 4
_BASE_THROUGHPUT = {'cpu': 250.0, 'gpu': 5000.0}
_WATTS_PER_RANK = {'cpu': 300.0, 'gpu': 700.0}
_REFERENCE_BAND = ('-0.1', '0.1')
_FAILURE_RATE = 0.05
_START = datetime(2025, 1, 1, tzinfo=timezone.utc)

#: The environment every synthetic run reports, unless a caller gives its own.
ENVIRONMENT = {
    'mlbench_version': '0.4.0', 'torch_version': '2.14.1', 'cuda_version': '13.0',
    'cudnn_version': '9.10.2', 'nccl_version': '2.27.7', 'gpu_model': 'NVIDIA H200',
    'gpu_driver': '580.65.06',
}

#: Header of :func:`custom_perflog_lines`: 18 leading columns and one performance variable.
CUSTOM_COLUMNS = (
    'job_completion_time', 'version', 'display_name', 'system', 'partition', 'environ',
    'jobid', 'num_tasks', 'num_cpus_per_task', 'num_tasks_per_node', 'num_gpus_per_node',
    'job_nodelist', 'result', 'fail_phase', 'spack_spec', 'short_name', 'tags', 'maintainers',
    'flops_value', 'flops_unit', 'flops_ref', 'flops_lower_thres', 'flops_upper_thres',
)


def expected_throughput(device: str, num_nodes: int) -> float:
    """Noise-free throughput (samples/s) of the synthetic model."""
    return _BASE_THROUGHPUT[device] * num_nodes * 0.9 ** math.log2(num_nodes)


def _variants(test: str) -> list[tuple[int, str, str, str]]:
    return [(n, d, s, f'{test} %num_nodes={n} %device={d} %scale={s}')
            for s in SCALES for d in DEVICES for n in NUM_NODES]


def perflog_lines(records: int, *, test: str = 'resnet50_train', system: str = 'cluster',
                  partition: str = 'gpu', seed: int = 0,
                  slowdown_after: int | None = None, slowdown: float = 1.0,
                  environment: dict[str, str] | None = None,
                  start: datetime = _START) -> Iterator[str]:
    """Header plus ``records`` data lines; from run ``slowdown_after`` on, throughput is
    divided by ``slowdown`` (to plant a regression). ``environment`` replaces values of the
    environment columns."""
    rng = random.Random(seed)
    yield perflog_header(list(PERFORMANCE_VARIABLES))
    variants = _variants(test)
    environment = {**ENVIRONMENT, **(environment or {})}
    for index in range(records):
        run, variant = divmod(index, len(variants))
        num_nodes, device, scale, display = variants[variant]
        finished = start + timedelta(hours=6 * run, seconds=variant)
        failed = rng.random() < _FAILURE_RATE
        ranks = num_nodes * RANKS_PER_NODE
        run_settings = {'launcher': 'srun', 'batch_size': '256', 'cpu_rank_unit': 'null',
                        'num_ranks': str(ranks), 'overrides': '[]'}
        leading = {
            'job_completion_time': finished.isoformat(timespec='seconds'), 'system': system,
            'partition': partition, 'environ': 'builtin', 'display_name': display,
            'result': 'fail' if failed else 'pass', 'fail_phase': 'sanity' if failed else 'null',
            'num_nodes': str(num_nodes), 'device': device, 'scale': scale,
            'num_tasks': str(ranks), 'jobid': str(100_000 + index),
            'job_nodelist': f'nid[{index % 500:05d}-{index % 500 + num_nodes:05d}]',
            'version': '4.10.4', **run_settings, **environment,
        }
        slower = slowdown if slowdown_after is not None and run >= slowdown_after else 1.0
        yield '|'.join([*(leading[name] for name in PERFLOG_LEADING_COLUMNS),
                        *_perf_fields(rng, failed, device, num_nodes, slower)])


def _perf_fields(rng: random.Random, failed: bool, device: str, num_nodes: int,
                 slowdown: float) -> list[str]:
    if failed:
        values = dict.fromkeys(PERFORMANCE_VARIABLES, 'None')
    else:
        throughput = expected_throughput(device, num_nodes) / slowdown * rng.gauss(1.0, 0.02)
        epoch_time = SAMPLES_PER_EPOCH / throughput
        power = _WATTS_PER_RANK[device] * num_nodes * RANKS_PER_NODE * rng.gauss(1.0, 0.01)
        time_to_target = epoch_time * EPOCHS_TO_TARGET
        values = {
            'time_to_target': f'{time_to_target:.3f}',
            'throughput': f'{throughput:.3f}',
            'throughput_per_device': f'{throughput / (num_nodes * RANKS_PER_NODE):.3f}',
            'epoch_time': f'{epoch_time:.3f}',
            'epochs_to_target': str(EPOCHS_TO_TARGET),
            'staging_time': f'{rng.uniform(1, 2):.3f}',
            'energy_to_target': f'{power * time_to_target:.1f}',
            'energy_per_sample': f'{power / throughput:.5f}',
            'average_power': f'{power:.1f}',
            'slurm_energy': 'None',
        }
    reference = f'{expected_throughput(device, num_nodes):.1f}'
    fields = []
    for var, unit in PERFORMANCE_VARIABLES.items():
        ref, lower, upper = ((reference, *_REFERENCE_BAND) if var == 'throughput'
                             else ('0', 'None', 'None'))
        fields += [values[var], unit, ref, lower, upper]
    return fields


def custom_perflog_lines(records: int, *, seed: int = 0) -> Iterator[str]:
    """Header plus ``records`` lines of :data:`CUSTOM_COLUMNS`, the way a site's own format
    with ReFrame's default ``datefmt`` (``%FT%T``, local time) writes them."""
    rng = random.Random(seed)
    yield '|'.join(CUSTOM_COLUMNS)
    variants = _variants('stream_bench')
    for index in range(records):
        run, variant = divmod(index, len(variants))
        num_nodes, device, scale, display = variants[variant]
        finished = _START.replace(tzinfo=None) + timedelta(minutes=17 * run, seconds=variant)
        failed = rng.random() < _FAILURE_RATE
        bandwidth = expected_throughput(device, num_nodes) * rng.gauss(1.0, 0.02)
        value = 'None' if failed else f'{bandwidth:.3f}'
        yield '|'.join([
            finished.isoformat(timespec='seconds'), '4.10.4', display, 'archer2', 'compute',
            'PrgEnv-gnu', str(200_000 + index), str(num_nodes * 128), '1', '128', '0',
            f'nid{index % 5000:06d}', 'fail' if failed else 'pass',
            'performance' if failed else 'null', 'stream@5.10%gcc@13', 'stream_bench',
            'performance,memory', 'hpc-team', value, 'MB/s', '0', 'None', 'None'])


def write_perflog(path: str | Path, records: int, *, custom: bool = False, **options) -> Path:
    """Write a synthetic perflog of ``records`` lines (plus header) and return its path;
    ``custom``: in :data:`CUSTOM_COLUMNS` instead of this project's format."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = custom_perflog_lines(records, **options) if custom else perflog_lines(records,
                                                                                  **options)
    with open(path, 'w', encoding='utf-8') as stream:
        for line in lines:
            stream.write(line)
            stream.write('\n')
    return path
