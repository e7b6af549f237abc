"""``mlbench perflogs summary|regressions|dashboard``: options, output formats, exit codes."""

from __future__ import annotations

import argparse
import io
import json
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from perflogs_parsers import cli
from perflogs_parsers.formats import PERFORMANCE_VARIABLES
from perflogs_parsers.synthetic import perflog_lines, write_perflog

REPOSITORY = Path(__file__).resolve().parents[1]
RUNS = 16
MEASUREMENTS = 2 * 16 * RUNS * len(PERFORMANCE_VARIABLES)
#: Variables the planted slowdown moves (power, epochs and staging stay the same).
SLOWED = {'time_to_target', 'throughput', 'throughput_per_device', 'epoch_time',
          'energy_to_target', 'energy_per_sample'}


@pytest.fixture(scope='module')
def perflogs(tmp_path_factory) -> Path:
    """Two systems: 'cluster' with a planted 25 % slowdown in its last run, 'steady' without."""
    folder = tmp_path_factory.mktemp('perflogs')
    write_perflog(folder / 'cluster' / 'gpu' / 'resnet50_train.log', 16 * RUNS, seed=2,
                  slowdown_after=RUNS - 1, slowdown=1.25)
    write_perflog(folder / 'steady' / 'cpu' / 'resnet50_train.log', 16 * RUNS, seed=9,
                  system='steady', partition='cpu')
    return folder


def mlbench(*argv: str, capsys) -> tuple[int, str, str]:
    parser = argparse.ArgumentParser(prog='mlbench')
    cli.register(parser.add_subparsers(dest='command', required=True))
    args = parser.parse_args(['perflogs', *argv])
    code = args.func(args)
    out, err = capsys.readouterr()
    return code, out, err


def test_summary_table_csv_and_json_agree(perflogs, capsys):
    code, table, _ = mlbench('summary', str(perflogs), capsys=capsys)
    assert code == 0 and table.splitlines()[0].split()[:5] == [
        'system', 'partition', 'environ', 'display_name', 'variable']
    code, text, _ = mlbench('summary', str(perflogs), '--format', 'csv', capsys=capsys)
    csv = pd.read_csv(io.StringIO(text))
    code, text, _ = mlbench('summary', str(perflogs), '--format', 'json', capsys=capsys)
    records = json.loads(text)
    assert len(csv) == len(records) == 2 * 16 * len(PERFORMANCE_VARIABLES)
    assert len(table.splitlines()) == 1 + len(records)
    assert set(csv['runs']) == {RUNS} and csv['failed'].sum() == sum(r['failed'] for r in records)
    assert {r['unit'] for r in records} == set(PERFORMANCE_VARIABLES.values())


def test_summary_exports_every_measurement(perflogs, tmp_path, capsys):
    code, _, err = mlbench('summary', str(perflogs), '--export', str(tmp_path / 'all.parquet'),
                           capsys=capsys)
    assert code == 0 and f'wrote {MEASUREMENTS} measurements' in err
    assert len(pd.read_parquet(tmp_path / 'all.parquet')) == MEASUREMENTS


def test_regressions_exit_code_follows_the_planted_slowdown(perflogs, capsys):
    code, text, _ = mlbench('regressions', str(perflogs), '--system', 'cluster',
                            '--test', '%device=gpu', '--format', 'json', capsys=capsys)
    verdicts = json.loads(text)
    assert code == 1 and len(verdicts) == 8 * len(PERFORMANCE_VARIABLES)
    assert {v['system'] for v in verdicts} == {'cluster'}
    assert {v['status'] for v in verdicts if v['variable'] in SLOWED} <= {'regression', 'failed'}
    assert sum(v['status'] == 'regression' for v in verdicts) >= 24

    code, text, _ = mlbench('regressions', str(perflogs), '--system', 'steady:cpu',
                            '--format', 'csv', capsys=capsys)
    verdicts = pd.read_csv(io.StringIO(text))
    assert 'regression' not in set(verdicts['status'])
    assert code == int((verdicts['status'] == 'failed').any())


def test_regressions_settings_come_from_options(perflogs, capsys):
    code, text, _ = mlbench('regressions', str(perflogs), '--system', 'steady',
                            '--min-samples', '50', '--format', 'json', capsys=capsys)
    assert {v['status'] for v in json.loads(text)} <= {'new', 'failed', 'unmeasured'}
    code, _, err = mlbench('regressions', str(perflogs), '--direction', 'throughput=up',
                           capsys=capsys)
    assert code == 2 and '--direction' in err


def test_since_filters_by_completion_time(perflogs, capsys):
    # Synthetic runs are 6 h apart from 2025-01-01: the last 2 of 16 runs remain.
    code, text, _ = mlbench('summary', str(perflogs), '--since', '2025-01-04T12:00:00+00:00',
                            '--format', 'json', capsys=capsys)
    assert code == 0 and {r['runs'] for r in json.loads(text)} == {2}
    code, _, err = mlbench('summary', str(perflogs), '--since', '30d', capsys=capsys)
    assert code == 2 and 'match the --system/--test/--since filters' in err


def test_parse_since():
    now = datetime(2025, 6, 1, 12, tzinfo=timezone.utc)
    assert cli.parse_since('2d', now) == pd.Timestamp('2025-05-30T12:00:00Z')
    assert cli.parse_since('3h', now) == pd.Timestamp('2025-06-01T09:00:00Z')
    assert cli.parse_since('1w', now) == pd.Timestamp('2025-05-25T12:00:00Z')
    assert cli.parse_since('2025-05-01T00:00:00+02:00') == pd.Timestamp('2025-04-30T22:00Z')
    with pytest.raises(cli.PerflogError, match='--since'):
        cli.parse_since('last tuesday')


def test_bad_input_exits_2_with_one_line(tmp_path, capsys):
    code, _, err = mlbench('summary', str(tmp_path / 'missing'), capsys=capsys)
    assert code == 2 and err.strip().count('\n') == 0 and 'perflog path not found' in err
    code, _, err = mlbench('summary', str(tmp_path), capsys=capsys)
    assert code == 2 and 'no perflog files' in err
    code, _, err = mlbench('summary', str(tmp_path), '--test', '(', capsys=capsys)
    assert code == 2


def test_malformed_lines_are_warned_about(tmp_path, capsys):
    lines = list(perflog_lines(3))
    path = tmp_path / 'bench.log'
    path.write_text('\n'.join([lines[0], lines[1], 'garbage', lines[2]]) + '\n')
    code, _, err = mlbench('summary', str(path), capsys=capsys)
    assert code == 0
    fields = len(lines[0].split('|'))
    assert f'warning: {path}:3: 1 fields where the header has {fields}' in err


def test_dashboard_writes_the_file(perflogs, tmp_path, capsys):
    output = tmp_path / 'report.html'
    code, _, err = mlbench('dashboard', str(perflogs), '-o', str(output), '--title', 'Nightly',
                           capsys=capsys)
    assert code == 0 and f'wrote {output}' in err
    assert '<title>Nightly</title>' in output.read_text()


def test_module_runs_standalone(perflogs):
    done = subprocess.run([sys.executable, '-m', 'perflogs_parsers.cli', 'perflogs',
                           'regressions', str(perflogs), '--system', 'cluster'],
                          capture_output=True, text=True, timeout=120, cwd=REPOSITORY)
    assert done.returncode == 1, done.stderr
    assert 'regression' in done.stdout


def test_reader_benchmark_runs(tmp_path):
    done = subprocess.run([sys.executable, str(REPOSITORY / 'bench' / 'perflog_read.py'),
                           '--rows', '2000', '--repeat', '1'],
                          capture_output=True, text=True, timeout=300, cwd=REPOSITORY)
    assert done.returncode == 0, done.stderr
    rows = [line.split() for line in done.stdout.splitlines()
            if line.startswith(('read_csv ', 'read_perflogs '))]
    # This project's format (a row per variable), then the custom one (one variable).
    assert [(row[0], row[1]) for row in rows] == [
        ('read_csv', '2000'), ('read_perflogs', str(2000 * len(PERFORMANCE_VARIABLES))),
        ('read_csv', '2000'), ('read_perflogs', '2000')]
    assert 'ratio read_perflogs / read_csv: time' in done.stdout
