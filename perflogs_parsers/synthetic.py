"""Synthetic perflogs in this project's format, for the reader benchmark and dashboard demos.

Values follow a simple, known model (throughput grows with nodes at 90 % efficiency per
doubling, GPU 20x CPU, 2 % multiplicative noise) and about one run in twenty fails with
``None`` values, as a real failed ReFrame test writes them.
"""

from __future__ import annotations

import math
import random
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

from perflogs_parsers.formats import PERFORMANCE_VARIABLES, perflog_header

NUM_NODES = (1, 2, 4, 8)
DEVICES = ('cpu', 'gpu')
SCALES = ('smoke', 'full')
SAMPLES_PER_EPOCH = 100_000
_BASE_THROUGHPUT = {'cpu': 250.0, 'gpu': 5000.0}
_REFERENCE_BAND = ('-0.1', '0.1')
_FAILURE_RATE = 0.05
_START = datetime(2025, 1, 1, tzinfo=timezone.utc)


def expected_throughput(device: str, num_nodes: int) -> float:
    """Noise-free throughput (samples/s) of the synthetic model."""
    return _BASE_THROUGHPUT[device] * num_nodes * 0.9 ** math.log2(num_nodes)


def perflog_lines(records: int, *, test: str = 'resnet50_train', system: str = 'cluster',
                  partition: str = 'gpu', seed: int = 0,
                  slowdown_after: int | None = None, slowdown: float = 1.0) -> Iterator[str]:
    """Header plus ``records`` data lines; from run ``slowdown_after`` on, throughput is
    divided by ``slowdown`` (to plant a regression)."""
    rng = random.Random(seed)
    yield perflog_header(list(PERFORMANCE_VARIABLES))
    variants = [(n, d, s) for s in SCALES for d in DEVICES for n in NUM_NODES]
    for index in range(records):
        run, variant = divmod(index, len(variants))
        num_nodes, device, scale = variants[variant]
        finished = _START + timedelta(hours=6 * run, seconds=variant)
        display = f'{test} %num_nodes={num_nodes} %device={device} %scale={scale}'
        failed = rng.random() < _FAILURE_RATE
        leading = [finished.isoformat(timespec='seconds'), system, partition, 'builtin', display,
                   'fail' if failed else 'pass', 'sanity' if failed else 'null',
                   str(num_nodes), device, scale, 'srun', str(num_nodes * 4),
                   str(100_000 + index), f'nid[{index % 500:05d}-{index % 500 + num_nodes:05d}]',
                   '4.10.4']
        yield '|'.join(leading + _perf_fields(rng, failed, device, num_nodes,
                                               slowdown if slowdown_after is not None
                                               and run >= slowdown_after else 1.0))


def _perf_fields(rng: random.Random, failed: bool, device: str, num_nodes: int,
                 slowdown: float) -> list[str]:
    if failed:
        values = dict.fromkeys(PERFORMANCE_VARIABLES, 'None')
    else:
        throughput = expected_throughput(device, num_nodes) / slowdown * rng.gauss(1.0, 0.02)
        epoch_time = SAMPLES_PER_EPOCH / throughput
        values = {
            'time_to_target': f'{epoch_time * 10:.3f}',
            'throughput': f'{throughput:.3f}',
            'throughput_per_device': f'{throughput / (num_nodes * 4):.3f}',
            'epoch_time': f'{epoch_time:.3f}',
        }
    reference = f'{expected_throughput(device, num_nodes):.1f}'
    fields = []
    for var, unit in PERFORMANCE_VARIABLES.items():
        ref, lower, upper = ((reference, *_REFERENCE_BAND) if var == 'throughput'
                             else ('0', 'None', 'None'))
        fields += [values[var], unit, ref, lower, upper]
    return fields


def write_perflog(path: str | Path, records: int, **options) -> Path:
    """Write a synthetic perflog of ``records`` lines (plus header) and return its path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, 'w', encoding='utf-8') as stream:
        for line in perflog_lines(records, **options):
            stream.write(line)
            stream.write('\n')
    return path
