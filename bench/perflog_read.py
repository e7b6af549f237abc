"""Time and peak memory of the perflog reader next to ``pandas.read_csv`` on the same file.

    python bench/perflog_read.py [--rows 1000000] [--repeat 3] [--file PATH]

Generates two synthetic perflogs unless ``--file`` names one: this project's format (26
leading columns and 10 performance variables, ~5 % failed runs with ``None`` values) and
another tool's custom format (23 columns, one performance variable, local times without UTC
offset as ReFrame's default ``datefmt`` writes them). Each file is parsed by each reader in a
fresh subprocess, the two readers back to back in every repeat, so that each peak RSS is
clean and each pair of times saw the same machine load. ``read_csv`` with ``sep='|'`` is the
floor: it only splits the file into a wide frame, while ``read_perflogs`` also builds the tidy
one-row-per-variable frame (10x the rows for this project's format).

Reports per file the best wall time, the CPU time (Arrow parses on several threads, read_csv
on one), the peak RSS and its growth over the interpreter with its imports loaded, and the
ratio read_perflogs / read_csv: of the best times and, steadier on a loaded machine, the
median of the ratios of each back-to-back pair. The goal: at most 2x the time.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from perflogs_parsers.synthetic import write_perflog

_MEASURE = r'''
import json, resource, sys, time
import pandas as pd
from perflogs_parsers.reader import read_perflogs
which, path = sys.argv[1], sys.argv[2]
before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
start, cpu_start = time.perf_counter(), time.process_time()
if which == 'read_csv':
    rows = len(pd.read_csv(path, sep='|'))
else:
    frame, report = read_perflogs([path])
    rows = len(frame)
seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
print(json.dumps({'seconds': seconds, 'cpu_seconds': cpu_seconds, 'peak_mib': after / 1024,
                  'growth_mib': (after - before) / 1024, 'rows': rows}))
'''

READERS = ('read_csv', 'read_perflogs')


def measure(reader: str, path: Path) -> dict:
    """One parse in a fresh interpreter: seconds, CPU time, peak RSS and its growth."""
    done = subprocess.run([sys.executable, '-c', _MEASURE, reader, str(path)],
                          capture_output=True, text=True, check=True)
    return json.loads(done.stdout)


def compare(path: Path, repeat: int) -> dict[str, float]:
    """Measure both readers ``repeat`` times on ``path``, print the table, return the ratios."""
    size_mib = path.stat().st_size / 2**20
    print(f'\nfile: {path.name} ({size_mib:.0f} MiB)')
    runs: dict[str, list[dict]] = {reader: [] for reader in READERS}
    for _ in range(repeat):
        for reader in READERS:
            runs[reader].append(measure(reader, path))

    best = {reader: {'seconds': min(r['seconds'] for r in results),
                     'cpu_seconds': min(r['cpu_seconds'] for r in results),
                     'peak_mib': min(r['peak_mib'] for r in results),
                     'growth_mib': min(r['growth_mib'] for r in results),
                     'rows': results[0]['rows']}
            for reader, results in runs.items()}
    print(f'{"reader":<14} {"rows out":>10} {"best s":>8} {"CPU s":>7} {"peak RSS MiB":>13} '
          f'{"growth MiB":>11}   all times (s)')
    for reader, result in best.items():
        times = ' '.join(f'{r["seconds"]:.2f}' for r in runs[reader])
        print(f'{reader:<14} {result["rows"]:>10} {result["seconds"]:>8.2f} '
              f'{result["cpu_seconds"]:>7.2f} {result["peak_mib"]:>13.0f} '
              f'{result["growth_mib"]:>11.0f}   {times}')
    floor, ours = best['read_csv'], best['read_perflogs']
    paired = statistics.median(ours_run['seconds'] / floor_run['seconds'] for floor_run, ours_run
                               in zip(runs['read_csv'], runs['read_perflogs'], strict=True))
    paired_cpu = statistics.median(
        ours_run['cpu_seconds'] / floor_run['cpu_seconds'] for floor_run, ours_run
        in zip(runs['read_csv'], runs['read_perflogs'], strict=True))
    ratios = {'best': ours['seconds'] / floor['seconds'], 'paired': paired,
              'paired_cpu': paired_cpu}
    print(f'ratio read_perflogs / read_csv: time {ratios["best"]:.2f}x best, '
          f'{paired:.2f}x median of pairs (CPU {paired_cpu:.2f}x), '
          f'peak RSS {ours["peak_mib"] / floor["peak_mib"]:.2f}x, '
          f'growth {ours["growth_mib"] / floor["growth_mib"]:.2f}x (goal: at most 2x time)')
    return ratios


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=1_000_000, help='perflog lines to generate')
    parser.add_argument('--repeat', type=int, default=3, help='runs per reader and file')
    parser.add_argument('--file', type=Path, help='existing perflog to read instead')
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix='perflog-bench-') as scratch:
        if args.file:
            files = {'given': args.file}
        else:
            files = {'this project\'s format': write_perflog(Path(scratch) / 'own.log',
                                                             args.rows),
                     'custom format': write_perflog(Path(scratch) / 'custom.log', args.rows,
                                                    custom=True)}
        ratios = {name: compare(path, args.repeat) for name, path in files.items()}

    print('\nsummary (read_perflogs / read_csv, median of back-to-back pairs):')
    for name, ratio in ratios.items():
        print(f'  {name}: {ratio["paired"]:.2f}x wall, {ratio["paired_cpu"]:.2f}x CPU '
              f'(best times: {ratio["best"]:.2f}x)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
