"""Perflogs written by real ReFrame 4.10 runs, read back and compared with what the tests printed.

One module fixture runs ReFrame three times (a few seconds each) on a local-scheduler system,
with a tiny test class written here. The class prints made-up numbers for this project's four
performance variables and appends them to a ledger; its ``num_nodes=2 %scale=full`` variant
prints nothing and fails sanity, so its perflog rows hold ``None``. Handlers:

* run 1: this project's format, ReFrame's built-in default format, a custom format, and the
  httpjson handler of :mod:`perflogs_parsers.formats` pointed at a receiver on 127.0.0.1;
* run 2: ``perflog_multiline`` with a multiline format;
* run 3: this project's format again (appended), and httpjson again.

A fourth folder gets a different header in each run, so ReFrame rotates it to ``.log.h0`` and
``.log.h1``.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import textwrap
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pandas as pd
import pytest

from perflogs_parsers import cli
from perflogs_parsers.formats import PERFORMANCE_VARIABLES, perflog_header
from perflogs_parsers.reader import read_perflogs
from tests.reframe_helpers import local_system, reframe_executable

SYSTEM, PARTITION = 'tinysys', 'cpus'
TEST_CLASS = 'tiny_bench'
#: The performance variables of tiny_bench: the first four of the project's, in order.
VARIABLES = {var: PERFORMANCE_VARIABLES[var]
             for var in ('time_to_target', 'throughput', 'throughput_per_device', 'epoch_time')}
FAILING = f'{TEST_CLASS} %num_nodes=2 %device=cpu %scale=full'
TOKEN = 'not-a-real-secret'

TEST_SOURCE = '''
import json

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import (parameter, performance_function, run_after,
                                   sanity_function, variable)


@rfm.simple_test
class tiny_bench(rfm.RunOnlyRegressionTest):
    valid_systems = ['*']
    valid_prog_environs = ['*']
    num_nodes = parameter([1, 2])
    device = parameter(['cpu'])
    scale = parameter(['smoke', 'full'])
    launcher = variable(str, value='local')
    run_tag = variable(int, value=0)
    ledger = variable(str, value='')
    executable = 'echo'
    reference = {'*': {'throughput': (90.0, -0.5, None, 'samples/s')}}

    @run_after('init')
    def print_numbers(self):
        if self.num_nodes == 2 and self.scale == 'full':
            self.executable_opts = ['no numbers today']
            return
        tag = self.run_tag
        throughput = 90.0 * self.num_nodes + 1.25 * tag + (0.5 if self.scale == 'full' else 0)
        values = {'time_to_target': 10.0 / self.num_nodes + 0.01 * tag,
                  'throughput': throughput,
                  'throughput_per_device': throughput / self.num_nodes,
                  'epoch_time': 1.5 + tag / 8}
        self.executable_opts = [' '.join(f'{name}={value!r}' for name, value in values.items())]
        entry = json.dumps({'run': tag, 'display_name': self.display_name, **values})
        self.postrun_cmds = [f"echo '{entry}' >> {self.ledger}"]

    @sanity_function
    def numbers_printed(self):
        return sn.assert_found(r'throughput=', self.stdout)

    def number(self, name):
        return sn.extractsingle(rf'\\b{name}=(\\S+)', self.stdout, 1, float)

    @performance_function('s')
    def time_to_target(self):
        return self.number('time_to_target')

    @performance_function('samples/s')
    def throughput(self):
        return self.number('throughput')

    @performance_function('samples/s')
    def throughput_per_device(self):
        return self.number('throughput_per_device')

    @performance_function('s')
    def epoch_time(self):
        return self.number('epoch_time')
'''

CONFIG_SOURCE = '''
from reframe.core.settings import site_configuration as builtin
from perflogs_parsers.formats import filelog_handler, httpjson_handlers_from_env

RUN = {run}
PERFLOGS = {perflogs!r}


def default_format_handler(basedir):
    handler = dict(builtin['logging'][0]['handlers_perflog'][0])
    handler['basedir'] = basedir
    return handler


def custom_format_handler(basedir):
    return {{'type': 'filelog', 'prefix': '%(check_system)s/%(check_partition)s',
             'basedir': basedir, 'level': 'info', 'append': True,
             'format': ('%(check_job_completion_time)s|reframe %(version)s|%(check_jobid)s|'
                        '%(check_num_tasks)s|%(check_perfvalues)s|%(check_display_name)s|'
                        '%(check_system)s|%(check_partition)s|%(check_environ)s|'
                        '%(check_result)s'),
             'format_perfvars': ('%(check_perf_value)s|%(check_perf_unit)s|%(check_perf_ref)s|'
                                 '%(check_perf_lower_thres)s|%(check_perf_upper_thres)s|')}}


MULTILINE_FORMAT = ('%(check_job_completion_time)s|%(check_system)s|%(check_partition)s|'
                    '%(check_environ)s|%(check_display_name)s|%(check_result)s|'
                    '%(check_perf_var)s|%(check_perf_value)s|%(check_perf_unit)s|'
                    '%(check_perf_ref)s|%(check_perf_lower_thres)s|%(check_perf_upper_thres)s')


def rotated_handler(basedir):
    """A different header in each run, so ReFrame renames the file to .h0, .h1."""
    handler = filelog_handler(basedir)
    if RUN == 2:
        handler['format'] = MULTILINE_FORMAT + '|%(hostname)s'
        handler.pop('format_perfvars')
    elif RUN == 3:
        handler['format_perfvars'] += '%(check_perf_result)s|'
    return handler


if RUN == 2:
    handlers = [{{'type': 'filelog', 'prefix': '%(check_system)s/%(check_partition)s',
                  'basedir': PERFLOGS + '/multiline', 'level': 'info', 'append': True,
                  'format': MULTILINE_FORMAT}}]
else:
    handlers = [filelog_handler(PERFLOGS + '/project')] + httpjson_handlers_from_env()
if RUN == 1:
    handlers += [default_format_handler(PERFLOGS + '/default'),
                 custom_format_handler(PERFLOGS + '/custom')]
handlers.append(rotated_handler(PERFLOGS + '/rotated'))

site_configuration = {{
    **{local!r},
    'logging': [{{
        'perflog_multiline': RUN == 2,
        'handlers': [{{'type': 'file', 'name': {log!r}, 'level': 'debug2',
                       'append': True}}],
        'handlers_perflog': handlers,
    }}],
}}
'''


class Receiver(BaseHTTPRequestHandler):
    """Collects the JSON documents ReFrame's httpjson handler posts."""

    received: list[tuple[dict, dict]] = []

    def do_POST(self) -> None:  # noqa: N802 (name fixed by BaseHTTPRequestHandler)
        body = self.rfile.read(int(self.headers['Content-Length']))
        Receiver.received.append((json.loads(body), dict(self.headers)))
        self.send_response(200)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


def run_reframe(workdir: Path, run: int, environment: dict[str, str]) -> None:
    config = workdir / f'settings_run{run}.py'
    config.write_text(CONFIG_SOURCE.format(
        run=run, perflogs=str(workdir / 'perflogs'), local=local_system(SYSTEM, PARTITION),
        log=str(workdir / 'reframe.log')))
    done = subprocess.run(
        [reframe_executable(), '-C', str(config), '-c', str(workdir / 'checks'), '-r',
         '--prefix', str(workdir / 'rfm'), '--report-file', str(workdir / f'report{run}.json'),
         '-S', f'run_tag={run}', '-S', f'ledger={workdir / "ledger.jsonl"}'],
        cwd=workdir, env=environment, capture_output=True, text=True, timeout=300)
    # Exit code 1: the failing variant; anything else is a broken setup.
    assert done.returncode in (0, 1), done.stdout[-3000:] + done.stderr[-3000:]
    assert 'FAILED' in done.stdout and 'Ran 4/4 test case(s)' in done.stdout, done.stdout[-3000:]


@pytest.fixture(scope='module')
def reframe_runs(tmp_path_factory):
    workdir = tmp_path_factory.mktemp('reframe')
    (workdir / 'checks').mkdir()
    (workdir / 'checks' / 'tiny_bench.py').write_text(textwrap.dedent(TEST_SOURCE))
    server = ThreadingHTTPServer(('127.0.0.1', 0), Receiver)
    Receiver.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    environment = {key: value for key, value in os.environ.items()
                   if not key.startswith(('RFM_', 'MLBENCH_PERFLOG'))}
    environment.update(HOME=str(workdir), OMP_NUM_THREADS='1')
    with_receiver = {**environment,
                     'MLBENCH_PERFLOG_URL': f'http://127.0.0.1:{server.server_port}/perflogs',
                     'MLBENCH_PERFLOG_TOKEN': TOKEN}
    windows = {}
    try:
        for run, env in ((1, with_receiver), (2, environment), (3, with_receiver)):
            started = datetime.now(timezone.utc)
            run_reframe(workdir, run, env)
            windows[run] = (started.replace(microsecond=0), datetime.now(timezone.utc))
            # Perflog times have whole seconds: a pause keeps the runs apart.
            time.sleep(1.0)
    finally:
        server.shutdown()
        server.server_close()
    ledger = [json.loads(line) for line in (workdir / 'ledger.jsonl').read_text().splitlines()]
    return {'perflogs': workdir / 'perflogs', 'ledger': ledger, 'received': Receiver.received,
            'windows': windows}


def printed(reframe_runs, runs: set[int]) -> dict[tuple[int, str, str], float]:
    """(run, display name, variable) -> the value the test printed."""
    return {(entry['run'], entry['display_name'], var): entry[var]
            for entry in reframe_runs['ledger'] if entry['run'] in runs
            for var in VARIABLES}


def run_of(frame: pd.DataFrame, reframe_runs) -> list[int]:
    """Which ReFrame run wrote each row, from its completion time."""
    runs = []
    for moment in frame['timestamp']:
        matches = [run for run, (start, end) in reframe_runs['windows'].items()
                   if start <= moment <= end]
        assert len(matches) == 1, (moment, reframe_runs['windows'])
        runs.append(matches[0])
    return runs


def assert_matches_ledger(frame: pd.DataFrame, reframe_runs, runs: set[int]) -> None:
    expected = printed(reframe_runs, runs)
    frame = frame.assign(run=run_of(frame, reframe_runs))
    succeeded = frame[frame['display_name'] != FAILING]
    got = {(row.run, row.display_name, row.variable): row.value
           for row in succeeded.itertuples()}
    assert got == expected
    failed = frame[frame['display_name'] == FAILING]
    assert len(failed) == 4 * len(runs)
    assert failed['value'].isna().all()
    assert set(failed['result'].astype(str)) == {'fail'}
    assert set(succeeded['result'].astype(str)) == {'pass'}


def test_this_projects_format_holds_every_run_value_and_parameter(reframe_runs):
    files = sorted((reframe_runs['perflogs'] / 'project').rglob('*.log*'))
    assert [f.relative_to(reframe_runs['perflogs']).as_posix() for f in files] == [
        f'project/{SYSTEM}/{PARTITION}/{TEST_CLASS}.log']
    assert files[0].read_text().splitlines()[0] == perflog_header(list(VARIABLES))

    frame, report = read_perflogs(reframe_runs['perflogs'] / 'project')
    assert report.malformed == [] and report.skipped_files == []
    assert report.records == 8 and len(frame) == 32
    assert_matches_ledger(frame, reframe_runs, {1, 3})
    assert set(frame['system'].astype(str)) == {SYSTEM}
    assert set(frame['partition'].astype(str)) == {PARTITION}
    assert set(frame['environ'].astype(str)) == {'builtin'}
    assert set(frame['test'].astype(str)) == {TEST_CLASS}
    assert frame['num_nodes'].dtype == 'int64' and set(frame['num_nodes']) == {1, 2}
    assert set(frame['device'].astype(str)) == {'cpu'}
    assert set(frame['scale'].astype(str)) == {'smoke', 'full'}
    assert set(frame['launcher'].astype(str)) == {'local'}
    assert frame['jobid'].notna().all() and frame['job_nodelist'].notna().all()
    failed = frame[frame['display_name'] == FAILING]
    assert set(failed['fail_phase'].astype(str)) == {'sanity'}
    assert frame.loc[frame['display_name'] != FAILING, 'fail_phase'].isna().all()

    units = frame.groupby('variable', observed=True)['unit'].unique()
    assert {var: list(units[var]) for var in units.index} == {
        var: [unit] for var, unit in VARIABLES.items()}
    throughput = frame[frame['variable'] == 'throughput']
    assert (throughput['reference'] == 90.0).all()
    assert (throughput['lower_thres'] == -0.5).all() and throughput['upper_thres'].isna().all()
    others = frame[frame['variable'] != 'throughput']
    assert (others['reference'] == 0).all() and others['lower_thres'].isna().all()
    assert str(frame['timestamp'].dt.tz) == 'UTC'


def test_reframes_default_format(reframe_runs):
    frame, report = read_perflogs(reframe_runs['perflogs'] / 'default')
    assert report.malformed == [] and len(frame) == 16
    assert_matches_ledger(frame, reframe_runs, {1})
    # The default format has no display_name column: test and parameters come from `name`.
    assert set(frame['test'].astype(str)) == {TEST_CLASS}
    assert sorted(frame['num_nodes'].unique()) == [1, 2]


def test_custom_format(reframe_runs):
    path = reframe_runs['perflogs'] / 'custom' / SYSTEM / PARTITION / f'{TEST_CLASS}.log'
    assert path.read_text().splitlines()[0].startswith('job_completion_time|reframe version|')
    frame, report = read_perflogs(path)
    assert report.malformed == [] and len(frame) == 16
    assert_matches_ledger(frame, reframe_runs, {1})
    assert 'reframe version' in frame.columns and 'num_tasks' in frame.columns
    assert set(frame['system'].astype(str)) == {SYSTEM}


def test_multiline_format(reframe_runs):
    path = reframe_runs['perflogs'] / 'multiline' / SYSTEM / PARTITION / f'{TEST_CLASS}.log'
    lines = path.read_text().splitlines()
    assert len(lines) == 1 + 16 and 'perf_var' in lines[0].split('|')
    frame, report = read_perflogs(path)
    assert report.malformed == [] and report.records == 16 and len(frame) == 16
    assert_matches_ledger(frame, reframe_runs, {2})


def test_rotated_files_with_older_headers(reframe_runs):
    folder = reframe_runs['perflogs'] / 'rotated' / SYSTEM / PARTITION
    names = sorted(p.name for p in folder.iterdir() if not p.name.startswith('.'))
    assert names == [f'{TEST_CLASS}.log', f'{TEST_CLASS}.log.h0', f'{TEST_CLASS}.log.h1']
    headers = {name: (folder / name).read_text().splitlines()[0] for name in names}
    assert len(set(headers.values())) == 3

    frame, report = read_perflogs(reframe_runs['perflogs'] / 'rotated')
    assert [Path(f).name for f in report.files] == [
        f'{TEST_CLASS}.log.h0', f'{TEST_CLASS}.log.h1', f'{TEST_CLASS}.log']
    assert report.malformed == [] and len(frame) == 48
    assert_matches_ledger(frame, reframe_runs, {1, 2, 3})
    assert frame['timestamp'].is_monotonic_increasing
    # Only run 2 logged the host name, only run 3 the per-variable result.
    assert frame['hostname'].notna().sum() == 16
    assert set(frame['perf_result'].dropna().astype(str)) == {'pass'}


def test_httpjson_handler_delivers_every_record(reframe_runs):
    received = reframe_runs['received']
    assert len(received) == 8
    assert {headers['Authorization'] for _, headers in received} == {f'Bearer {TOKEN}'}
    expected = printed(reframe_runs, {1, 3})
    for document, _ in received:
        assert document['facility'] == 'mlbench'
        assert document['check_system'] == SYSTEM
        assert document['check_partition'] == PARTITION
        assert document['check_launcher'] == 'local'
        assert document['check_device'] == 'cpu'
        name = document['check_display_name']
        assert name == (f"{TEST_CLASS} %num_nodes={document['check_num_nodes']} "
                        f"%device=cpu %scale={document['check_scale']}")
        for var, unit in VARIABLES.items():
            value = document[f'check_perf_{var}_value']
            assert document[f'check_perf_{var}_unit'] == unit
            if name == FAILING:
                assert value is None and document['check_result'] == 'fail'
            else:
                assert value == expected[(document['check_run_tag'], name, var)]
        assert document['check_perf_throughput_ref'] == 90.0
    runs = sorted((doc['check_run_tag'], doc['check_display_name']) for doc, _ in received)
    assert len(set(runs)) == 8


def test_regressions_command_on_real_perflogs(reframe_runs, capsys):
    parser = cli_parser()
    args = parser.parse_args(['perflogs', 'regressions', str(reframe_runs['perflogs'] / 'project'),
                              '--format', 'json'])
    assert args.func(args) == 1
    verdicts = json.loads(capsys.readouterr().out)
    assert len(verdicts) == 16
    statuses = {(v['display_name'], v['variable']): v['status'] for v in verdicts}
    assert {s for (name, _), s in statuses.items() if name == FAILING} == {'failed'}
    assert {s for (name, _), s in statuses.items() if name != FAILING} == {'new'}
    smoke_1_node = f'{TEST_CLASS} %num_nodes=1 %device=cpu %scale=smoke'
    throughput_1_node = next(v for v in verdicts if v['variable'] == 'throughput'
                             and v['display_name'] == smoke_1_node)
    assert math.isclose(throughput_1_node['value'], 90.0 + 1.25 * 3)
    assert throughput_1_node['lower_bound'] == 45.0 and throughput_1_node['upper_bound'] is None


def cli_parser():
    import argparse

    parser = argparse.ArgumentParser(prog='mlbench')
    cli.register(parser.add_subparsers(dest='command', required=True))
    return parser


def test_every_column_of_this_projects_format_is_filled(reframe_runs):
    # A misspelt placeholder in formats.PERFLOG_FORMAT would show up as a 'null' column.
    text = (reframe_runs['perflogs'] / 'project' / SYSTEM / PARTITION /
            f'{TEST_CLASS}.log').read_text().splitlines()
    header = text[0].split('|')
    for line in text[1:]:
        fields = dict(zip(header, line.split('|'), strict=True))
        assert all(fields[column] not in ('null', 'None', '') for column in
                   ('job_completion_time', 'system', 'partition', 'environ', 'display_name',
                    'result', 'num_nodes', 'device', 'scale', 'launcher', 'num_tasks', 'jobid',
                    'job_nodelist', 'version'))
