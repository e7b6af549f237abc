"""``mlbench perflogs references``: the rule, the settings group, and real ReFrame 4.10 loading
the file: a run inside the band passes, one outside FAILs in the performance stage."""

from __future__ import annotations

import json
import os
import subprocess
import textwrap
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import yaml

from perflogs_parsers import cli
from perflogs_parsers.formats import PERFLOG_LEADING_COLUMNS, perflog_header
from perflogs_parsers.reader import read_perflogs
from perflogs_parsers.references import INDEX, build_references
from perflogs_parsers.rules import Settings
from tests.reframe_helpers import local_system, reframe_executable

REPOSITORY = Path(__file__).resolve().parents[1]
CHECK = REPOSITORY / 'tests' / 'reframe_checks' / 'references_check.py'
SYSTEM, PARTITION = 'refsys', 'default'
TEST_CLASS = 'references_check'
DISPLAY = f'{TEST_CLASS} %num_nodes=1 %device=cpu %scale=smoke'
START = datetime(2026, 11, 1, tzinfo=timezone.utc)


def history_line(day: int, throughput: float, time_to_target: float, *, batch_size: str = '256',
                 result: str = 'pass', driver: str = '580.65.06') -> str:
    """One run of references_check in this project's format."""
    known = {'job_completion_time': (START + timedelta(days=day)).isoformat(),
             'system': SYSTEM, 'partition': PARTITION, 'environ': 'builtin',
             'display_name': DISPLAY, 'result': result, 'num_nodes': '1', 'device': 'cpu',
             'scale': 'smoke', 'version': '4.10.4', 'launcher': 'local',
             'batch_size': batch_size, 'gpu_driver': driver}
    leading = [known.get(column, 'null') for column in PERFLOG_LEADING_COLUMNS]
    return '|'.join(leading + [f'{throughput}', 'samples/s', '0', 'None', 'None',
                               f'{time_to_target}', 's', '0', 'None', 'None'])


def write_history(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    header = perflog_header(['throughput', 'time_to_target'])
    path.write_text('\n'.join([header, *lines]) + '\n')
    return path


def week(rng: np.random.Generator, days: range, level: float, **options) -> list[str]:
    return [history_line(day, round(level * (1 + 0.02 * rng.standard_normal()), 3),
                         round(100_000 / level, 3), **options) for day in days]


def test_the_rule_median_band_and_bad_side_only(tmp_path):
    values = [1000, 1010, 990, 1020, 980, 1005, 995]
    path = write_history(tmp_path / 'h.log', [history_line(day, value, 100.0)
                                              for day, value in enumerate(values)])
    frame, _ = read_perflogs(path)
    document, notes = build_references(frame, Settings(mad_k=4, min_change=0.05), min_runs=5)

    entry = document[TEST_CLASS]
    assert entry['$index'] == list(INDEX)
    throughput = entry[f'{SYSTEM}:{PARTITION}']['cpu'][1]['smoke']['throughput']
    median = float(np.median(values))
    half_width = max(4 * 1.4826 * float(np.median(np.abs(np.array(values) - median))),
                     0.05 * median)
    assert throughput[0] == median and throughput[3] == 'samples/s'
    assert throughput[1] == pytest.approx(-half_width / median, abs=1e-4)
    assert throughput[1] <= -half_width / median and throughput[2] is None
    # Constant values: the band is the 5 % floor, on the upper side for a time.
    assert entry[f'{SYSTEM}:{PARTITION}']['cpu'][1]['smoke']['time_to_target'] == [
        100.0, None, 0.05, 's']
    assert notes == []


def test_only_runs_with_the_latest_settings_feed_a_reference(tmp_path):
    rng = np.random.default_rng(3)
    lines = (week(rng, range(0, 10), 1000.0, batch_size='256')
             + week(rng, range(10, 16), 1500.0, batch_size='512')
             + [history_line(16, 'None', 'None', batch_size='512', result='fail')])
    frame, _ = read_perflogs(write_history(tmp_path / 'h.log', lines))
    document, notes = build_references(frame, min_runs=5)
    reference = document[TEST_CLASS][f'{SYSTEM}:{PARTITION}']['cpu'][1]['smoke']['throughput']
    assert reference[0] == pytest.approx(1500, rel=0.03)
    assert any('10 earlier runs with other settings left out' in note for note in notes)

    document, notes = build_references(frame, min_runs=7)
    assert document == {}
    assert any('6 passed runs, 7 needed' in note for note in notes)


def mlbench(*argv: str) -> int:
    return cli.main(['perflogs', *argv])


def test_output_is_checked_before_anything_is_read(tmp_path, capsys):
    path = write_history(tmp_path / 'h.log', [history_line(day, 1000.0, 100.0)
                                              for day in range(6)])
    for argv in (['references', str(path), '-o', str(tmp_path / 'missing' / 'r.yaml')],
                 ['dashboard', str(path), '-o', str(tmp_path / 'missing' / 'd.html')],
                 ['summary', str(path), '--export', str(tmp_path / 'missing' / 'all.csv')],
                 ['references', str(tmp_path / 'nothing-here'), '-o',
                  str(tmp_path / 'missing' / 'r.yaml')]):
        assert mlbench(*argv) == 2
        err = capsys.readouterr().err
        assert err.count('\n') == 1 and 'missing' in err and 'does not exist' in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ['h.log']

    assert mlbench('references', str(path)) == 0
    assert yaml.safe_load(capsys.readouterr().out)[TEST_CLASS]['$index'] == list(INDEX)


CONFIG = '''
from perflogs_parsers.formats import filelog_handler

site_configuration = {{
    **{local!r},
    'logging': [{{
        'handlers': [{{'type': 'file', 'name': {log!r}, 'level': 'debug', 'append': True}}],
        'handlers_perflog': [filelog_handler({perflogs!r})],
    }}],
}}
'''


def run_check(workdir: Path, references: Path, name: str, *options: str) -> dict:
    """Run references_check once with RFM_REFERENCE_PREFIX=references; its test case."""
    config = workdir / 'settings.py'
    config.write_text(textwrap.dedent(CONFIG.format(
        local=local_system(SYSTEM, PARTITION), log=str(workdir / 'reframe.log'),
        perflogs=str(workdir / 'perflogs'))))
    env = {key: value for key, value in os.environ.items() if not key.startswith('RFM_')}
    env.update(RFM_REFERENCE_PREFIX=str(references), RFM_COLORIZE='n',
               PYTHONPATH=os.pathsep.join([str(REPOSITORY), env.get('PYTHONPATH', '')]))
    report = workdir / f'{name}.json'
    subprocess.run([reframe_executable(), '-C', str(config), '-c', str(CHECK), '-r', '--prefix',
                    str(workdir / 'rfm'), '--report-file', str(report), *options],
                   env=env, cwd=workdir, capture_output=True, text=True, timeout=300)
    cases = json.loads(report.read_text())['runs'][0]['testcases']
    return cases


@pytest.fixture(scope='module')
def reference_file(tmp_path_factory) -> Path:
    """A week and a half of runs at ~1000 samples/s -> mlbench_references.yaml."""
    folder = tmp_path_factory.mktemp('history')
    rng = np.random.default_rng(7)
    write_history(folder / 'perflogs' / SYSTEM / PARTITION / f'{TEST_CLASS}.log',
                  week(rng, range(10), 1000.0))
    references = folder / 'references'
    references.mkdir()
    output = references / 'mlbench_references.yaml'
    assert mlbench('references', str(folder / 'perflogs'), '-o', str(output)) == 0
    return output


def test_reframe_loads_the_file_and_judges_by_it(reference_file, tmp_path):
    document = yaml.safe_load(reference_file.read_text())
    ref, lower, upper, unit = document[TEST_CLASS][f'{SYSTEM}:{PARTITION}']['cpu'][1][
        'smoke']['throughput']
    assert upper is None and unit == 'samples/s' and -0.2 < lower < 0
    inside, outside = ref * (1 + lower / 2), ref * (1 + 2 * lower)

    (passed,) = run_check(tmp_path, reference_file.parent, 'inside', '-S', f'measured={inside}')
    assert passed['result'] == 'pass', passed.get('fail_reason')
    (failed,) = run_check(tmp_path, reference_file.parent, 'outside',
                          '-S', f'measured={outside}')
    assert failed['result'] == 'fail' and failed['fail_phase'] == 'performance'
    assert 'throughput' in failed['fail_reason']

    # The perflog records the reference ReFrame read from the file.
    frame, _ = read_perflogs(tmp_path / 'perflogs')
    throughput = frame[frame['variable'] == 'throughput']
    assert throughput['reference'].tolist() == [ref, ref]
    assert throughput['lower_thres'].tolist() == [lower, lower]


def test_repeated_runs_share_one_display_name(reference_file, tmp_path):
    cases = run_check(tmp_path, reference_file.parent, 'repeat', '--repeat', '2')
    assert sorted(case['display_name'].split()[-1] for case in cases) == [
        '%.repeat_no=0', '%.repeat_no=1']
    frame, _ = read_perflogs(tmp_path / 'perflogs')
    assert frame['display_name'].astype(str).unique().tolist() == [DISPLAY]
    assert isinstance(frame, pd.DataFrame) and len(frame) == 2
