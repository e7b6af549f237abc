"""The one definition of this project's perflog format and its ReFrame log handlers.

``site_config/settings.py`` builds its ``logging[].handlers_perflog`` from this module and the
reader in :mod:`perflogs_parsers.reader` recognises the columns it names, so the format is
written down exactly once. This module is imported by ReFrame while it loads the site
configuration: keep it free of heavy imports (no pandas, no plotting).
"""

from __future__ import annotations

import os

#: Environment variable holding the URL of an HTTP JSON receiver (Elasticsearch, a Grafana
#: data source, VictoriaMetrics...). Unset or empty: no HTTP handler, perflogs go to files only.
PERFLOG_URL_ENV = 'MLBENCH_PERFLOG_URL'
#: Optional secret sent as ``Authorization: <scheme> <token>``; read at send time so it never
#: appears in ``reframe --show-config``.
PERFLOG_TOKEN_ENV = 'MLBENCH_PERFLOG_TOKEN'
#: Authorization scheme for the token: ``Bearer`` (default) or e.g. ``ApiKey`` for Elasticsearch.
PERFLOG_AUTH_SCHEME_ENV = 'MLBENCH_PERFLOG_AUTH_SCHEME'

#: ISO 8601 with the UTC offset, so timestamps from different sites compare without guessing.
PERFLOG_DATEFMT = '%FT%T%:z'

#: Columns before the performance variables, in order, as ReFrame names them in the header.
#: ``num_nodes``, ``device`` and ``scale`` are the parameters of every benchmark class;
#: ``fail_phase`` says where a failed run stopped. :data:`SETTINGS_COLUMNS` and
#: :data:`ENVIRONMENT_COLUMNS` follow them.
RUN_COLUMNS = (
    'job_completion_time',
    'system',
    'partition',
    'environ',
    'display_name',
    'result',
    'fail_phase',
    'num_nodes',
    'device',
    'scale',
    'num_tasks',
    'jobid',
    'job_nodelist',
    'version',
)

#: Test variables that change a run's numbers: runs compare only with runs of equal settings.
#: ``num_ranks`` is the number of training processes; ``overrides`` the ``--set`` list.
SETTINGS_COLUMNS = (
    'launcher',
    'batch_size',
    'cpu_rank_unit',
    'num_ranks',
    'overrides',
)

#: The run's software and hardware, from the ``mlbench_environment`` MLLOG event (the same
#: names as ``benchmarks.core.constants.ENVIRONMENT_FIELDS``, minus ``world_size``, which is
#: ``num_ranks``). A change here is shown beside a regression, not hidden by it.
ENVIRONMENT_COLUMNS = (
    'mlbench_version',
    'torch_version',
    'cuda_version',
    'cudnn_version',
    'nccl_version',
    'gpu_model',
    'gpu_driver',
)

PERFLOG_LEADING_COLUMNS = RUN_COLUMNS + SETTINGS_COLUMNS + ENVIRONMENT_COLUMNS

#: Column suffixes written for every performance variable, in order.
PERFVAR_SUFFIXES = ('value', 'unit', 'ref', 'lower_thres', 'upper_thres')

HIGHER = 'higher'
LOWER = 'lower'

#: Performance variables of every benchmark class: unit, and which way is better. The one
#: table of both; :data:`PERFORMANCE_VARIABLES` and ``rules.DIRECTIONS`` are read from it.
#: ``epochs_to_target`` is counted in samples where the benchmark's MLPerf rules count
#: samples (its unit says which). Lower power is better: the energy to reach the target
#: says whether a faster, hungrier run paid off.
PERFORMANCE_VARIABLE_TABLE = {
    'time_to_target': ('s', LOWER),
    'throughput': ('samples/s', HIGHER),
    'throughput_per_device': ('samples/s', HIGHER),
    'epoch_time': ('s', LOWER),
    'epochs_to_target': ('epochs', LOWER),
    'staging_time': ('s', LOWER),
    'energy_to_target': ('J', LOWER),
    'energy_per_sample': ('J/sample', LOWER),
    'average_power': ('W', LOWER),
    'slurm_energy': ('J', LOWER),
}

#: Unit of each performance variable, in the order every benchmark class defines them.
PERFORMANCE_VARIABLES = {var: unit for var, (unit, _) in PERFORMANCE_VARIABLE_TABLE.items()}
_VARIABLE_RANK = {var: rank for rank, var in enumerate(PERFORMANCE_VARIABLES)}


def variable_sort_key(name: str) -> tuple[int, str]:
    """Sorts this project's performance variables first, in their order, then any others by
    name, so every table and file lists a benchmark's variables the same way."""
    return _VARIABLE_RANK.get(name, len(_VARIABLE_RANK)), name


def _placeholder(column: str) -> str:
    # ``version`` is a logger-wide field; every other column is an attribute of the test.
    return f'%({column})s' if column == 'version' else f'%(check_{column})s'


PERFLOG_FORMAT = '|'.join(_placeholder(col) for col in PERFLOG_LEADING_COLUMNS) + (
    '|%(check_perfvalues)s'
)
PERFLOG_FORMAT_PERFVARS = (
    '%(check_perf_value)s|%(check_perf_unit)s|%(check_perf_ref)s|'
    '%(check_perf_lower_thres)s|%(check_perf_upper_thres)s|'
)


def perflog_header(perf_variables: list[str] | tuple[str, ...]) -> str:
    """The header line ReFrame writes for this format and these performance variables."""
    perf_columns = [f'{var}_{suffix}' for var in perf_variables for suffix in PERFVAR_SUFFIXES]
    return '|'.join([*PERFLOG_LEADING_COLUMNS, *perf_columns])


def filelog_handler(basedir: str) -> dict:
    """The ``filelog`` perflog handler writing this format under ``basedir``.

    Files land in ``<basedir>/<system>/<partition>/<TestClass>.log``; ReFrame renames a file
    to ``.log.h0``, ``.log.h1``... when its header changes.
    """
    return {
        'type': 'filelog',
        'prefix': '%(check_system)s/%(check_partition)s',
        'basedir': basedir,
        'level': 'info',
        'format': PERFLOG_FORMAT,
        'format_perfvars': PERFLOG_FORMAT_PERFVARS,
        'datefmt': PERFLOG_DATEFMT,
        'append': True,
    }


def _authorization_from_env() -> str:
    scheme = os.environ.get(PERFLOG_AUTH_SCHEME_ENV, '').strip() or 'Bearer'
    return f'{scheme} {os.environ.get(PERFLOG_TOKEN_ENV, "").strip()}'


def httpjson_handlers_from_env() -> list[dict]:
    """An ``httpjson`` perflog handler when ``MLBENCH_PERFLOG_URL`` is set, else nothing.

    Each record is one JSON document per test case with every test attribute (parameters
    included, as ``check_<name>``) and ``check_perf_<var>_value|_unit|_ref|_lower_thres|
    _upper_thres|_result`` per performance variable, as ReFrame's default JSON formatter
    writes them. ReFrame skips the handler with a warning when the receiver is unreachable.
    """
    url = os.environ.get(PERFLOG_URL_ENV, '').strip()
    if not url:
        return []

    handler = {
        'type': 'httpjson',
        'url': url,
        'level': 'info',
        'extras': {'facility': 'mlbench', 'data_version': '1'},
        'ignore_keys': ['check_perf_var', 'check_perf_value', 'check_perf_unit',
                        'check_perf_ref', 'check_perf_lower_thres',
                        'check_perf_upper_thres', 'check_perf_result'],
    }
    if os.environ.get(PERFLOG_TOKEN_ENV, '').strip():
        handler['authorization_header'] = _authorization_from_env

    return [handler]
