"""The perflog format and handlers that site_config/settings.py takes from formats.py."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import reframe

from perflogs_parsers import formats
from perflogs_parsers.rules import DIRECTIONS

PLACEHOLDER = re.compile(r'%\((\w+)\)s')


def test_format_names_every_required_column():
    placeholders = PLACEHOLDER.findall(formats.PERFLOG_FORMAT)
    assert placeholders[-1] == 'check_perfvalues'
    for column in ('job_completion_time', 'system', 'partition', 'environ', 'display_name',
                   'result', 'num_nodes', 'device', 'scale', 'launcher', 'jobid',
                   'job_nodelist'):
        assert f'check_{column}' in placeholders
    assert PLACEHOLDER.findall(formats.PERFLOG_FORMAT_PERFVARS) == [
        'check_perf_value', 'check_perf_unit', 'check_perf_ref', 'check_perf_lower_thres',
        'check_perf_upper_thres']
    assert formats.PERFLOG_FORMAT_PERFVARS.endswith('|')
    assert formats.PERFLOG_DATEFMT == '%FT%T%:z'


def test_header_has_five_columns_per_variable():
    header = formats.perflog_header(['throughput', 'epoch_time']).split('|')
    assert header[:len(formats.PERFLOG_LEADING_COLUMNS)] == list(formats.PERFLOG_LEADING_COLUMNS)
    assert header[-10:] == [
        'throughput_value', 'throughput_unit', 'throughput_ref', 'throughput_lower_thres',
        'throughput_upper_thres', 'epoch_time_value', 'epoch_time_unit', 'epoch_time_ref',
        'epoch_time_lower_thres', 'epoch_time_upper_thres']
    assert formats.PERFORMANCE_VARIABLES == {
        'time_to_target': 's', 'throughput': 'samples/s', 'throughput_per_device': 'samples/s',
        'epoch_time': 's', 'epochs_to_target': 'epochs', 'staging_time': 's',
        'energy_to_target': 'J', 'energy_per_sample': 'J/sample', 'average_power': 'W',
        'slurm_energy': 'J'}
    assert set(DIRECTIONS) == set(formats.PERFORMANCE_VARIABLES)
    assert DIRECTIONS['throughput'] == 'higher' and DIRECTIONS['energy_to_target'] == 'lower'


def reframe_schema() -> dict:
    return json.loads((Path(reframe.__file__).parent / 'schemas' / 'config.json').read_text())


def test_handlers_are_valid_reframe_configuration(monkeypatch):
    monkeypatch.setenv(formats.PERFLOG_URL_ENV, 'https://elastic.example.org:9200/perflogs/_doc')
    monkeypatch.setenv(formats.PERFLOG_TOKEN_ENV, 'secret-token')
    handlers = [formats.filelog_handler('/scratch/perflogs'),
                *formats.httpjson_handlers_from_env()]
    config = {'systems': [{'name': 'sys', 'hostnames': ['.*'], 'partitions': [
                  {'name': 'p', 'scheduler': 'local', 'launcher': 'local',
                   'environs': ['builtin']}]}],
              'environments': [{'name': 'builtin'}],
              'logging': [{'handlers_perflog': handlers}]}
    jsonschema.validate(config, reframe_schema())
    assert handlers[0]['basedir'] == '/scratch/perflogs'
    assert handlers[0]['format'] == formats.PERFLOG_FORMAT


def test_no_http_handler_without_url(monkeypatch):
    monkeypatch.delenv(formats.PERFLOG_URL_ENV, raising=False)
    assert formats.httpjson_handlers_from_env() == []
    monkeypatch.setenv(formats.PERFLOG_URL_ENV, '  ')
    assert formats.httpjson_handlers_from_env() == []


def test_token_becomes_an_authorization_header_read_at_send_time(monkeypatch):
    monkeypatch.setenv(formats.PERFLOG_URL_ENV, 'http://127.0.0.1:9/x')
    monkeypatch.delenv(formats.PERFLOG_TOKEN_ENV, raising=False)
    (plain,) = formats.httpjson_handlers_from_env()
    assert 'authorization_header' not in plain and plain['url'] == 'http://127.0.0.1:9/x'

    monkeypatch.setenv(formats.PERFLOG_TOKEN_ENV, 'secret-token')
    (handler,) = formats.httpjson_handlers_from_env()
    assert 'secret-token' not in repr(handler)
    assert handler['authorization_header']() == 'Bearer secret-token'
    monkeypatch.setenv(formats.PERFLOG_AUTH_SCHEME_ENV, 'ApiKey')
    assert handler['authorization_header']() == 'ApiKey secret-token'


@pytest.mark.parametrize('module', ['formats', 'rules', 'cli'])
def test_light_modules_do_not_load_pandas(module):
    # settings.py imports formats and `mlbench` imports cli on every start.
    code = (f'import sys, perflogs_parsers.{module}; '
            "sys.exit(int(any(m in sys.modules for m in ('pandas', 'pyarrow', 'plotly'))))")
    assert subprocess.run([sys.executable, '-c', code], timeout=60).returncode == 0
