"""The perflog reader on hand-written and generated files: malformed lines, times, merging, export.

Real ReFrame output is covered by test_perflogs_reframe.py; these files exercise what ReFrame
rarely writes but a reader meets in the wild (truncated lines, edited files, time zones).
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from perflogs_parsers.errors import PerflogError
from perflogs_parsers.formats import PERFLOG_LEADING_COLUMNS, PERFORMANCE_VARIABLES, perflog_header
from perflogs_parsers.reader import export_frame, find_perflog_files, read_perflogs
from perflogs_parsers.synthetic import write_perflog

# Four of the project's variables keep the lines short; the reader reads any number.
VARIABLES = ['time_to_target', 'throughput', 'throughput_per_device', 'epoch_time']
HEADER = perflog_header(VARIABLES)
FIELDS = len(HEADER.split('|'))


def line(when: str = '2025-03-01T10:00:00+01:00', nodes: int = 1, values=(10, 100, 25, 1),
         result: str = 'pass', display: str | None = None) -> str:
    """One record in this project's format."""
    display = display or f'bench %num_nodes={nodes} %device=gpu %scale=smoke'
    values_of = {'job_completion_time': when, 'system': 'sys', 'partition': 'part',
                 'environ': 'env', 'display_name': display, 'result': result,
                 'fail_phase': 'null', 'num_nodes': str(nodes), 'device': 'gpu',
                 'scale': 'smoke', 'num_tasks': str(4 * nodes), 'jobid': '1234',
                 'job_nodelist': 'nid001', 'version': '4.10.4', 'launcher': 'srun',
                 'batch_size': '64', 'num_ranks': str(4 * nodes), 'torch_version': '2.14.1'}
    leading = [values_of.get(name, 'null') for name in PERFLOG_LEADING_COLUMNS]
    perf = []
    for var, value in zip(VARIABLES, values, strict=True):
        perf += [str(value), PERFORMANCE_VARIABLES[var], '0', 'None', 'None']
    return '|'.join(leading + perf)


def write(path: Path, *lines: str, newline_at_end: bool = True) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text('\n'.join(lines) + ('\n' if newline_at_end else ''))
    return path


def test_malformed_lines_are_reported_with_line_numbers_and_skipped(tmp_path):
    good = line(values=(10, 100, 25, 1))
    path = write(
        tmp_path / 'bench.log', HEADER,
        good,                                              # 2
        good.rsplit('|', 7)[0],                            # 3: truncated write
        '',                                                # 4: blank, ignored
        good + '|extra',                                   # 5: one field too many
        line(values=(10, 'abc', 25, 1)),                   # 6: not a number
        line(when='yesterday'),                            # 7: not a time
        line(values=(11, 110, 27.5, 0.9), nodes=2),        # 8
        line(values=(12, 'None', 'None', 'None'), result='fail'),  # 9: failed run
        line(values=(13, 130, 32.5, 0.8)),                 # 10: no newline at the end
        newline_at_end=False)

    frame, report = read_perflogs(path)

    assert [(bad.line, bad.reason) for bad in report.malformed] == [
        (3, f'{FIELDS - 7} fields where the header has {FIELDS}'),
        (5, f'{FIELDS + 1} fields where the header has {FIELDS}'),
        (6, "throughput_value: not a number: 'abc'"),
        (7, "job_completion_time: not an ISO 8601 time: 'yesterday'"),
    ]
    assert str(report.malformed[0]) == (
        f'{path}:3: {FIELDS - 7} fields where the header has {FIELDS}')
    assert report.records == 4 and len(frame) == 16
    throughput = frame[frame['variable'] == 'throughput']['value'].tolist()
    assert throughput[:2] == [100.0, 110.0] and math.isnan(throughput[2])
    assert throughput[3] == 130.0
    assert frame.loc[frame['variable'] == 'time_to_target', 'value'].tolist() == [10, 11, 12, 13]
    assert frame['num_nodes'].tolist() == [1] * 4 + [2] * 4 + [1] * 8


def test_lines_that_are_not_utf8_are_reported(tmp_path):
    path = tmp_path / 'bench.log'
    path.write_bytes('\n'.join([HEADER, line(), line(nodes=2), line(nodes=4)]).encode()
                     .replace(b'nodes=2 ', b'nodes=2\xff ') + b'\n')
    frame, report = read_perflogs(path)
    assert [str(bad) for bad in report.malformed] == [f'{path}:3: not UTF-8 text']
    assert frame['num_nodes'].unique().tolist() == [1, 4]


def test_clean_file_reports_nothing_and_keeps_every_column(tmp_path):
    path = write(tmp_path / 'sys' / 'part' / 'bench.log', HEADER, line(), line(nodes=2))
    frame, report = read_perflogs(tmp_path)
    assert report.malformed == [] and report.skipped_files == []
    assert list(frame.columns[:10]) == ['timestamp', 'system', 'partition', 'environ', 'test',
                                        'display_name', 'num_nodes', 'device', 'scale',
                                        'variable']
    assert {'launcher', 'num_tasks', 'jobid', 'job_nodelist', 'version', 'fail_phase',
            'file'} <= set(frame.columns)
    assert frame['timestamp'].iloc[0] == pd.Timestamp('2025-03-01T09:00:00Z')
    assert frame['file'].astype(str).unique().tolist() == [str(path)]
    assert frame['unit'].astype(str).tolist()[:4] == ['s', 'samples/s', 'samples/s', 's']


def test_unreadable_files_are_skipped_with_a_reason(tmp_path):
    write(tmp_path / 'a' / 'empty.log')
    write(tmp_path / 'a' / 'header_only.log', HEADER)
    write(tmp_path / 'a' / 'sanity_only.log', 'result|job_completion_time|name',
          'pass|2025-01-01T00:00:00|check')
    (tmp_path / 'a' / 'notes.txt').write_text('not a perflog')
    frame, report = read_perflogs(tmp_path / 'a')
    assert len(frame) == 0 and list(frame.columns[:3]) == ['timestamp', 'system', 'partition']
    assert sorted((Path(path).name, why) for path, why in report.skipped_files) == [
        ('empty.log', 'empty file or empty header line'),
        ('sanity_only.log', 'header names no performance variables')]
    assert sorted(Path(p).name for p in report.files) == [
        'empty.log', 'header_only.log', 'sanity_only.log']


def test_missing_paths_and_folders_without_perflogs_are_input_errors(tmp_path):
    with pytest.raises(PerflogError, match='not found'):
        read_perflogs(tmp_path / 'nowhere')
    (tmp_path / 'notes.txt').write_text('x')
    with pytest.raises(PerflogError, match='no perflog files'):
        read_perflogs(tmp_path)


def test_rotated_files_come_oldest_first(tmp_path):
    for name in ('T.log', 'T.log.h10', 'T.log.h2', 'T.log.h0', 'A.log'):
        write(tmp_path / 's' / 'p' / name, HEADER)
    assert [p.name for p in find_perflog_files([tmp_path])] == [
        'A.log', 'T.log.h0', 'T.log.h2', 'T.log.h10', 'T.log']


def test_times_without_offset_are_local_time(tmp_path, monkeypatch):
    monkeypatch.setenv('TZ', 'Europe/Berlin')
    time.tzset()
    try:
        path = write(tmp_path / 'bench.log', HEADER,
                     line(when='2025-01-15T12:00:00'),           # CET, UTC+1
                     line(when='2025-07-15T12:00:00'),           # CEST, UTC+2
                     line(when='2025-07-15T12:00:00+00:00'),     # failed early: with offset
                     line(when='2025-07-15T12:00:00.250Z'))
        frame, report = read_perflogs(path)
    finally:
        monkeypatch.delenv('TZ')
        time.tzset()
    assert report.malformed == []
    assert frame['timestamp'].drop_duplicates().tolist() == [
        pd.Timestamp('2025-01-15T11:00:00Z'), pd.Timestamp('2025-07-15T10:00:00Z'),
        pd.Timestamp('2025-07-15T12:00:00Z'), pd.Timestamp('2025-07-15T12:00:00.250Z')]


def test_files_with_different_columns_merge(tmp_path):
    write(tmp_path / 'a.log', HEADER, line(nodes=4))
    write(tmp_path / 'b.log',
          'job_completion_time|system|partition|name|perf_var|perf_value|perf_unit|extra',
          '2025-01-01T00:00:00+00:00|other|p|check %size=big|bandwidth|5.5|GB/s|x',
          '2025-01-01T00:00:00+00:00|other|p|check %size=big|latency|None|us|x')
    frame, report = read_perflogs([tmp_path / 'a.log', tmp_path / 'b.log'])
    assert report.malformed == [] and len(frame) == 6
    assert frame['num_nodes'].dtype == 'Int64'
    assert frame['num_nodes'].tolist()[:4] == [4] * 4 and frame['num_nodes'].isna().sum() == 2
    assert frame['size'].astype(object).tolist() == [np.nan] * 4 + ['big', 'big']
    assert frame['system'].astype(str).tolist() == ['sys'] * 4 + ['other'] * 2
    assert frame['test'].astype(str).tolist() == ['bench'] * 4 + ['check'] * 2
    assert frame['variable'].astype(str).tolist()[4:] == ['bandwidth', 'latency']
    assert frame['value'].tolist()[4] == 5.5 and math.isnan(frame['value'].tolist()[5])
    assert frame['environ'].isna().tolist() == [False] * 4 + [True] * 2
    assert frame['extra'].astype(object).tolist()[4:] == ['x', 'x']


def test_system_and_partition_come_from_the_path_when_not_logged(tmp_path):
    path = write(tmp_path / 'perflogs' / 'daint' / 'gpu' / 'bench.log',
                 'job_completion_time|speed_value|speed_unit',
                 '2025-01-01T00:00:00+00:00|3.5|img/s')
    frame, _ = read_perflogs(path)
    assert frame[['system', 'partition', 'test', 'variable']].astype(str).values.tolist() == [
        ['daint', 'gpu', 'bench', 'speed']]


def test_duplicate_header_names_are_kept_apart(tmp_path):
    path = write(tmp_path / 'bench.log',
                 'job_completion_time|note|note|speed_value|speed_unit',
                 '2025-01-01T00:00:00+00:00|first|second|3.5|img/s')
    frame, _ = read_perflogs(path)
    assert frame[['note', 'note.1']].astype(str).values.tolist() == [['first', 'second']]


def test_multiline_records_without_a_variable_are_counted(tmp_path):
    path = write(tmp_path / 'bench.log',
                 'job_completion_time|display_name|result|perf_var|perf_value|perf_unit',
                 '2025-01-01T00:00:00+00:00|check|pass|speed|3.5|img/s',
                 '2025-01-01T00:00:00+00:00|sanity_check|pass|null|null|null')
    frame, report = read_perflogs(path)
    assert len(frame) == 1 and report.records == 2 and report.records_without_performance == 1


def test_large_file_matches_a_plain_python_parse(tmp_path):
    # Several Arrow blocks, unique job ids and ~5 % failed runs.
    path = write_perflog(tmp_path / 'big.log', 12_000, seed=3)
    frame, report = read_perflogs(path)
    variables = list(PERFORMANCE_VARIABLES)
    assert report.malformed == [] and len(frame) == 12_000 * len(variables)

    lines = path.read_text().splitlines()
    header = lines[0].split('|')
    expected_values, expected_jobs = [], []
    for text in lines[1:]:
        fields = dict(zip(header, text.split('|'), strict=True))
        for var in variables:
            raw = fields[f'{var}_value']
            expected_values.append(math.nan if raw == 'None' else float(raw))
            expected_jobs.append(fields['jobid'])
    np.testing.assert_array_equal(frame['value'].to_numpy(), np.array(expected_values))
    assert frame['jobid'].astype(str).tolist() == expected_jobs
    assert frame['variable'].astype(str).tolist() == variables * 12_000
    assert frame['display_name'].nunique() == 16 and frame['num_nodes'].dtype == 'int64'
    assert frame['timestamp'].is_monotonic_increasing


def test_export_round_trips_through_parquet_and_csv(tmp_path):
    path = write_perflog(tmp_path / 'log' / 'small.log', 64, seed=1)
    frame, _ = read_perflogs(path)
    export_frame(frame, tmp_path / 'out.parquet')
    export_frame(frame, tmp_path / 'out.csv')
    back = pd.read_parquet(tmp_path / 'out.parquet')
    pd.testing.assert_frame_equal(back, frame, check_categorical=False, check_dtype=False)
    csv = pd.read_csv(tmp_path / 'out.csv')
    assert len(csv) == len(frame) and list(csv.columns) == list(frame.columns)
    np.testing.assert_array_equal(csv['value'].to_numpy(), frame['value'].to_numpy())
    with pytest.raises(PerflogError, match='.csv or .parquet'):
        export_frame(frame, tmp_path / 'out.xlsx')


def test_repeated_runs_join_one_history(tmp_path):
    # `reframe --repeat 2` adds `%.repeat_no=N` to the display name (ReFrame 4.10).
    display = 'bench %num_nodes=1 %device=gpu %scale=smoke'
    path = write(tmp_path / 'bench.log', HEADER, line(display=display),
                 line(display=f'{display} %.repeat_no=0'),
                 line(display=f'{display} %.repeat_no=1'))
    frame, _ = read_perflogs(path)
    assert frame['display_name'].astype(str).unique().tolist() == [display]
    assert '.repeat_no' not in frame.columns and len(frame) == 3 * len(VARIABLES)


@pytest.mark.parametrize('zone', ['Europe/Zurich', 'America/St_Johns', 'Australia/Lord_Howe'])
def test_local_times_are_converted_as_python_converts_them(tmp_path, monkeypatch, zone):
    # Times without offset (ReFrame's default datefmt) in bulk, across DST changes, in zones
    # with half-hour offsets and a half-hour DST step: Arrow's path equals Python's.
    monkeypatch.setenv('TZ', zone)
    time.tzset()
    try:
        rng = np.random.default_rng(5)
        seconds = np.sort(rng.integers(1_700_000_000, 1_800_000_000, 3000))
        texts = [pd.Timestamp(int(s), unit='s').strftime('%Y-%m-%dT%H:%M:%S') for s in seconds]
        path = write(tmp_path / 'bench.log', HEADER, *(line(when=text) for text in texts))
        frame, report = read_perflogs(path)
        expected = [pd.Timestamp(datetime.fromisoformat(text).astimezone(timezone.utc))
                    for text in texts]
    finally:
        monkeypatch.delenv('TZ')
        time.tzset()
    assert report.malformed == []
    assert frame['timestamp'].iloc[::len(VARIABLES)].tolist() == expected


def test_the_package_does_not_import_benchmarks():
    code = ('import sys, perflogs_parsers.cli, perflogs_parsers.reader, '
            'perflogs_parsers.regressions, perflogs_parsers.references, '
            'perflogs_parsers.dashboard, perflogs_parsers.summary; '
            "sys.exit(int(any(m.split('.')[0] == 'benchmarks' for m in sys.modules)))")
    assert subprocess.run([sys.executable, '-c', code], timeout=120).returncode == 0
