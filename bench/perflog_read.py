"""Time and peak memory of the perflog reader next to ``pandas.read_csv`` on the same file.

    python bench/perflog_read.py [--rows 1000000] [--repeat 3] [--file PATH]

Generates a synthetic perflog in this project's format (4 performance variables, ~5 % failed
runs with ``None`` values) unless ``--file`` names one, then parses it with each reader in a
fresh subprocess, alternating the two, so that each peak RSS is clean. ``read_csv`` with
``sep='|'`` is the floor: it only splits the file into a wide frame, while ``read_perflogs``
also builds the tidy one-row-per-variable frame (4x the rows). Reports the best wall time, the
CPU time (Arrow parses on several threads, read_csv on one), the peak RSS and its growth over
the interpreter with its imports loaded.
"""

from __future__ import annotations

import argparse
import json
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--rows', type=int, default=1_000_000, help='perflog lines to generate')
    parser.add_argument('--repeat', type=int, default=3, help='runs per reader (best is kept)')
    parser.add_argument('--file', type=Path, help='existing perflog to read instead')
    args = parser.parse_args(argv)

    with tempfile.TemporaryDirectory(prefix='perflog-bench-') as scratch:
        path = args.file or write_perflog(Path(scratch) / 'bench.log', args.rows)
        size_mib = path.stat().st_size / 2**20
        print(f'file: {path} ({size_mib:.0f} MiB)')
        runs: dict[str, list[dict]] = {reader: [] for reader in READERS}
        for _ in range(args.repeat):
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
    print(f'ratio read_perflogs / read_csv: time {ours["seconds"] / floor["seconds"]:.2f}x '
          f'(CPU {ours["cpu_seconds"] / floor["cpu_seconds"]:.2f}x), '
          f'peak RSS {ours["peak_mib"] / floor["peak_mib"]:.2f}x, '
          f'growth {ours["growth_mib"] / floor["growth_mib"]:.2f}x '
          f'(goal: at most 2x time, 1.5x memory)')
    return 0


if __name__ == '__main__':
    sys.exit(main())
