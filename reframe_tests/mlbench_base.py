"""The shared base of every mlbench ReFrame test.

A benchmark file only names its benchmark, its smoke-data fixture and its references::

    import reframe as rfm
    from mlbench_base import MLBenchTest, smoke_data_fixture

    @rfm.simple_test
    class resnet50_train(MLBenchTest):
        benchmark = 'resnet50'
        smoke_data = smoke_data_fixture('resnet50')
        reference = {'$index': ('$partition', 'device', 'num_nodes'), ...}

Everything else lives here: the parameters (``num_nodes``, ``device``, ``scale``), the ranks
derived from the partition (one per GPU, or one per node/socket/NUMA node on CPUs), the two
launch modes (``srun``: one task per rank; ``torchrun``: one task per node), the visible skips
for combinations a partition cannot run, and the sanity and performance functions that read
the ``:::MLLOG`` lines of ``mlbench train``.

ReFrame loads every ``*.py`` file of the ``-c`` folder, this one included: it defines no
``@simple_test`` class, so it adds no test, and it imports nothing heavier than the perflog
format (``-l`` must stay fast).
"""

from __future__ import annotations

import json
import os
import re
import shlex
import statistics
from dataclasses import dataclass, field

import reframe as rfm
import reframe.utility.sanity as sn
import reframe.utility.typecheck as typ
from reframe.core.builtins import (
    fixture,
    parameter,
    performance_function,
    run_after,
    sanity_function,
    variable,
)
from reframe.core.exceptions import SanityError
from reframe.core.meta import make_test

from perflogs_parsers.formats import PERFORMANCE_VARIABLES

#: Job time limit when ``-S time_limit=...`` is not given.
DEFAULT_TIME_LIMITS = {'smoke': '15m', 'full': '12h'}

LAUNCH_MODES = ('srun', 'torchrun')
CPU_RANK_UNITS = ('node', 'socket', 'numa')

#: Schedulers whose jobs know their node list from ``SLURM_JOB_NODELIST`` (torchrun rendezvous).
SLURM_SCHEDULERS = ('slurm', 'squeue')

MLLOG_LINE = re.compile(r':::MLLOG (\{.*\})\s*$')
RANK_LINE = re.compile(r'\[mlbench\] rank (\d+)/(\d+) local_rank \d+ node (\S+)')
ERROR_LINE = re.compile(r'^mlbench \w+: error: (.+)$', re.MULTILINE)
SRUN_TASK_ERROR = re.compile(r'^srun: error: (\S+: tasks? [\d,-]+: .+)$', re.MULTILINE)
TORCHRUN_FAILURE = re.compile(r'^\s*exitcode\s*:\s*(-?\d+)\s*\(pid: \d+\)', re.MULTILINE)
TIME_LIMIT_LINE = re.compile(r'CANCELLED AT \S+ DUE TO TIME LIMIT')
NON_FINITE = re.compile(r'\b(nan|inf)\b', re.IGNORECASE)
QUALITY_KEYS = ('eval_accuracy', 'eval_error')


@dataclass
class RunSummary:
    """What one ``mlbench train`` job wrote: MLLOG events of rank 0, ranks from stderr."""

    status: str | None = None
    abort_reason: str | None = None
    epochs_run: int | None = None
    time_to_target_s: float | None = None
    throughputs: list[float] = field(default_factory=list)
    epoch_times: list[float] = field(default_factory=list)
    target: float | None = None
    lower_is_better: bool = False
    metric: str = 'quality'
    quality: list[float] = field(default_factory=list)
    rank_nodes: dict[int, str] = field(default_factory=dict)
    world_size: int = 0

    @property
    def nodes(self) -> list[str]:
        return sorted(set(self.rank_nodes.values()))

    @property
    def reached_target(self) -> bool:
        if self.target is None:
            return True
        if not self.quality:
            return False
        last = self.quality[-1]
        return last <= self.target if self.lower_is_better else last >= self.target

    @property
    def steady_throughput(self) -> float | None:
        """Mean samples/s over the epochs after the first (warm-up), or the only epoch."""
        return _steady_mean(self.throughputs)

    @property
    def steady_epoch_time(self) -> float | None:
        return _steady_mean(self.epoch_times)


def _steady_mean(values: list[float]) -> float | None:
    if not values:
        return None
    return statistics.fmean(values[1:] if len(values) > 1 else values)


def parse_mllog(text: str) -> list[dict]:
    """Every ``:::MLLOG {...}`` event in ``text``; lines that are not valid JSON are skipped."""
    events = []
    for line in text.splitlines():
        match = MLLOG_LINE.search(line)
        if not match:
            continue
        try:
            events.append(json.loads(match.group(1)))
        except json.JSONDecodeError:
            continue
    return events


def summarise_run(stdout: str, stderr: str) -> RunSummary:
    """Condense a job's stdout (rank 0's MLLOG lines) and stderr (rank lines) into a summary."""
    summary = RunSummary()
    run_start_ms = None
    for event in parse_mllog(stdout):
        key, value, metadata = event.get('key'), event.get('value'), event.get('metadata') or {}
        if key == 'run_start':
            run_start_ms = event.get('time_ms')
        elif key == 'run_stop':
            summary.status = metadata.get('status')
            summary.abort_reason = metadata.get('reason')
            summary.epochs_run = metadata.get('epoch_num')
            if summary.status == 'success' and run_start_ms is not None:
                summary.time_to_target_s = (event['time_ms'] - run_start_ms) / 1000.0
        elif key == 'mlbench_throughput':
            summary.throughputs.append(float(value))
            if 'epoch_time_s' in metadata:
                summary.epoch_times.append(float(metadata['epoch_time_s']))
        elif key == 'mlbench_target':
            summary.target = None if value is None else float(value)
            summary.lower_is_better = bool(metadata.get('lower_is_better', False))
            summary.metric = metadata.get('metric', summary.metric)
        elif key in QUALITY_KEYS and value is not None:
            summary.quality.append(float(value))

    for rank, world_size, node in RANK_LINE.findall(stderr):
        summary.rank_nodes[int(rank)] = node
        summary.world_size = max(summary.world_size, int(world_size))
    return summary


def _crash_detail(summary: RunSummary, stderr: str) -> str:
    """The most telling lines of a crash: the runner's error, srun's or torchrun's verdict."""
    details = []
    if summary.abort_reason:
        details.append(summary.abort_reason)
    details += [line for line in ERROR_LINE.findall(stderr) if line not in details]
    details += SRUN_TASK_ERROR.findall(stderr)
    details += [f'torchrun worker exit code {code}' for code in TORCHRUN_FAILURE.findall(stderr)]
    if not details:
        lines = [line.strip() for line in stderr.splitlines() if line.strip()]
        details.append(lines[-1] if lines else 'no output on stderr')
    return '; '.join(dict.fromkeys(details))


def _quality_text(summary: RunSummary) -> str:
    last = f'{summary.quality[-1]:g}' if summary.quality else 'never evaluated'
    direction = 'lower' if summary.lower_is_better else 'higher'
    return (f'{summary.metric} {last} after {summary.epochs_run or len(summary.throughputs)} '
            f'epoch(s), target {summary.target:g} ({direction} is better)')


def failure_reason(summary: RunSummary, stderr: str, *, job_state: str | None = None,
                   exit_code: int | None = None, expected_ranks: int = 0,
                   expected_nodes: int = 0, time_limit_s: float | None = None) -> str | None:
    """Why the run failed (target missed, NaN, crash, time limit), or ``None`` if it passed."""
    if job_state == 'TIMEOUT' or TIME_LIMIT_LINE.search(stderr):
        limit = f' ({time_limit_s:g} s)' if time_limit_s else ''
        progress = _quality_text(summary) if summary.target is not None else 'no target logged'
        return f'time limit{limit} reached before run_stop: {progress}'
    if summary.status is None:
        state = f', job state {job_state}' if job_state not in (None, 'COMPLETED') else ''
        return (f'crashed before run_stop (exit code {exit_code}{state}): '
                f'{_crash_detail(summary, stderr)}')
    if summary.status != 'success':
        if summary.abort_reason and NON_FINITE.search(summary.abort_reason):
            return f'non-finite loss (NaN): {summary.abort_reason}'
        if summary.abort_reason:
            return f'crashed: {_crash_detail(summary, stderr)}'
        if summary.target is not None:
            return f'target missed: {_quality_text(summary)}'
        return f'run_stop status {summary.status!r} without a reason'
    if not summary.reached_target:
        return f'run_stop says success but the target was missed: {_quality_text(summary)}'
    if exit_code not in (None, 0):
        return f'run_stop says success but the job exited with code {exit_code}: ' + (
            _crash_detail(summary, stderr))
    if expected_ranks and len(summary.rank_nodes) != expected_ranks:
        return (f'{len(summary.rank_nodes)} of {expected_ranks} ranks reported in '
                f'(world size {summary.world_size})')
    if expected_nodes and len(summary.nodes) != expected_nodes:
        return (f'ranks ran on {len(summary.nodes)} node(s) ({", ".join(summary.nodes)}), '
                f'expected {expected_nodes}')
    return None


class SmokeDataset(rfm.RunOnlyRegressionTest):
    """``mlbench synth BENCHMARK data``: the small real-format dataset of the smoke scale.

    Used as a session-scoped fixture, so it runs once per benchmark and session, on the host
    that runs ReFrame (``local``); its stage folder must be visible from the compute nodes.
    """

    benchmark = variable(str)
    samples = variable(int, value=0)
    valid_systems = ['*']
    valid_prog_environs = ['+pytorch']
    local = True
    executable = 'mlbench'
    env_vars = {'OMP_NUM_THREADS': '1'}

    @run_after('init')
    def set_arguments(self):
        self.executable_opts = ['synth', self.benchmark, 'data']
        if self.samples:
            self.executable_opts += ['--samples', str(self.samples)]

    @sanity_function
    def wrote_dataset(self):
        return sn.assert_found(rf'wrote {self.benchmark} dataset', self.stdout)

    @property
    def data_dir(self) -> str:
        return os.path.join(self.stagedir, 'data')


def smoke_data_fixture(benchmark: str):
    """The session-wide synthetic dataset of ``benchmark`` (one ``mlbench synth`` per run).

    A named subclass (``<benchmark>_smoke_data``) rather than fixture variables, so the
    tests' display names (and perflog rows) carry no fixture settings.
    """
    dataset_class = make_test(f'{benchmark}_smoke_data', (SmokeDataset,),
                              {'benchmark': benchmark}, module=__name__)
    return fixture(dataset_class, scope='session')


class MLBenchTest(rfm.RunOnlyRegressionTest):
    """Train one benchmark to its quality target and report time and throughput.

    Subclasses set ``benchmark`` and ``smoke_data`` (see the module docstring) and may set
    ``reference``. Variables are overridable with ``-S``, e.g. ``-S launcher=torchrun``, or
    turned into parameters with ``-P``, e.g. ``-P launcher=srun,torchrun``.
    """

    # Typed, so that ``-P num_nodes=1,2,4,8`` can replace the values for a scaling study.
    num_nodes = parameter([1, 2], type=int)
    device = parameter(['cpu', 'gpu'], type=str)
    scale = parameter(['smoke', 'full'], type=str)

    #: Benchmark name, as for ``mlbench train NAME`` (set by the subclass).
    benchmark = variable(str)
    #: ``srun``: the partition's launcher starts one task per rank (ranks from Slurm's
    #: variables). ``torchrun``: one task per node runs torchrun, which starts the ranks.
    launcher = variable(str, value='srun')
    #: Global batch size (``data.global_batch_size``); 0 keeps the config's.
    batch_size = variable(int, value=0)
    #: Maximum epochs (``training.n_epochs``); 0 keeps the config's.
    epochs = variable(int, value=0)
    #: Quality target (``training.target``); unset keeps the config's.
    target = variable(float, type(None), value=None)
    #: Dataset folder; empty: the smoke fixture's data, or the partition's
    #: ``extras.datasets[benchmark]`` at full scale.
    data_dir = variable(str, value='')
    #: ``--config`` of ``mlbench train``; empty: ``smoke`` at smoke scale, else config.yaml.
    config = variable(str, value='')
    #: Further ``--set KEY=VALUE`` overrides, e.g. ``-S overrides=training.amp=true``.
    overrides = variable(typ.List[str], value=[])
    #: CPU partitions: one rank per ``node``, ``socket`` or ``numa`` node.
    cpu_rank_unit = variable(str, value='node')

    valid_systems = ['*']
    valid_prog_environs = ['+pytorch']
    time_limit = None
    env_vars = {'PYTHONUNBUFFERED': '1'}

    @run_after('init')
    def add_tags(self):
        self.tags |= {self.benchmark, self.scale}
        self.descr = f'{self.benchmark} to its quality target ({self.scale} scale)'

    @run_after('setup')
    def configure_job(self):
        """Ranks, tasks, CPUs and GPUs from the partition; the command for the launch mode."""
        # Checked here, not at init: ``-P launcher=srun,torchrun`` sets it after init hooks.
        if self.launcher not in LAUNCH_MODES:
            raise ValueError(f'launcher={self.launcher!r}: choose one of {LAUNCH_MODES}')
        if self.cpu_rank_unit not in CPU_RANK_UNITS:
            raise ValueError(f'cpu_rank_unit={self.cpu_rank_unit!r}: choose one of '
                             f'{CPU_RANK_UNITS}')
        ranks_per_node, gpus_per_node, cpus_per_rank = self._ranks_per_node()
        self._skip_unreachable_node_count()
        data_dir = self._dataset()
        self.num_ranks = self.num_nodes * ranks_per_node

        if self.time_limit is None:
            self.time_limit = DEFAULT_TIME_LIMITS[self.scale]
        # ReFrame joins the command into the job script unquoted: quote what comes from
        # users (paths with spaces or quotes, -S overrides) so the shell passes it verbatim.
        train_command = ['mlbench', *map(shlex.quote, self._train_arguments(data_dir))]
        if self.launcher == 'srun':
            self.skip_if(
                ranks_per_node > 1 and self._partition_launcher() == 'local',
                f'{ranks_per_node} ranks per node need a parallel launcher, partition '
                f'{self.current_partition.fullname} has launcher local: use -S launcher=torchrun')
            self.num_tasks_per_node = ranks_per_node
            self.num_cpus_per_task = cpus_per_rank
            self.executable, *self.executable_opts = train_command
        else:
            self.num_tasks_per_node = 1
            self.num_cpus_per_task = cpus_per_rank * ranks_per_node if cpus_per_rank else None
            self.executable = 'torchrun'
            self.executable_opts = [*self._torchrun_arguments(ranks_per_node), '--no-python',
                                    *train_command]
        self.num_tasks = self.num_nodes * self.num_tasks_per_node
        if gpus_per_node:
            self.num_gpus_per_node = gpus_per_node
        if self._partition_launcher() == 'srun':
            # A rank that dies ends the step at once instead of leaving the others waiting
            # in a collective until the time limit.
            self.job.launcher.options += ['--kill-on-bad-exit=1']

    def _partition_launcher(self) -> str:
        return self.current_partition.launcher_type.registered_name

    def _ranks_per_node(self) -> tuple[int, int, int | None]:
        """(ranks per node, GPUs per node, CPUs per rank) for this device on this partition."""
        partition = self.current_partition
        processor = partition.processor
        self.skip_if(self.device not in partition.features,
                     f'partition {partition.fullname} has no {self.device!r} feature')
        if self.device == 'gpu':
            gpus = partition.select_devices('gpu')
            self.skip_if(not gpus or not gpus[0].num_devices,
                         f'partition {partition.fullname} declares no gpu devices')
            ranks = gpus[0].num_devices
            gpus_per_node = ranks
        else:
            ranks = {'node': 1, 'socket': processor.num_sockets,
                     'numa': processor.num_numa_nodes}[self.cpu_rank_unit]
            self.skip_if(not ranks, f'cpu_rank_unit={self.cpu_rank_unit}: partition '
                                    f'{partition.fullname} does not describe its processor')
            gpus_per_node = 0
        cpus_per_rank = processor.num_cpus // ranks if processor.num_cpus else None
        return ranks, gpus_per_node, cpus_per_rank

    def _skip_unreachable_node_count(self) -> None:
        partition = self.current_partition
        scheduler = partition.scheduler.registered_name
        max_nodes = 1 if scheduler == 'local' else partition.extras.get('max_nodes')
        self.skip_if(max_nodes is not None and self.num_nodes > max_nodes,
                     f'num_nodes={self.num_nodes}: partition {partition.fullname} has '
                     f'{max_nodes} node(s)')
        self.skip_if(self.launcher == 'torchrun' and self.num_nodes > 1 and
                     scheduler not in SLURM_SCHEDULERS,
                     f'launcher=torchrun on several nodes needs a Slurm partition '
                     f'({partition.fullname} uses {scheduler})')

    def _dataset(self) -> str:
        if self.data_dir:
            return self.data_dir
        if self.scale == 'smoke':
            return self.smoke_data.data_dir
        datasets = self.current_partition.extras.get('datasets', {})
        self.skip_if(self.benchmark not in datasets,
                     f'full scale needs the {self.benchmark} dataset: set extras.datasets.'
                     f'{self.benchmark} in partition {self.current_partition.fullname} '
                     f'or -S data_dir=PATH')
        return datasets[self.benchmark]

    def _train_arguments(self, data_dir: str) -> list[str]:
        config = self.config or ('smoke' if self.scale == 'smoke' else '')
        args = ['train', self.benchmark, '--data-dir', data_dir,
                '--device', 'cuda' if self.device == 'gpu' else 'cpu']
        if config:
            args += ['--config', config]
        overrides = list(self.overrides)
        if self.batch_size:
            overrides.append(f'data.global_batch_size={self.batch_size}')
        if self.epochs:
            overrides.append(f'training.n_epochs={self.epochs}')
        if self.target is not None:
            overrides.append(f'training.target={self.target}')
        for override in overrides:
            args += ['--set', override]
        return args

    def _torchrun_arguments(self, ranks_per_node: int) -> list[str]:
        """One torchrun per node; c10d rendezvous on the first node, port from the job id."""
        if self.num_nodes == 1 and self.current_partition.scheduler.registered_name == 'local':
            return ['--standalone', '--nnodes=1', f'--nproc_per_node={ranks_per_node}']
        # torchrun picks the agent that hosts the c10d store by comparing the endpoint with
        # its own host name and addresses: give it the first node's address, which matches
        # even where node names differ from host names (as on the slurm-ci cluster).
        self.prerun_cmds += [
            'rdzv_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
            'rdzv_addr=$(getent ahostsv4 "$rdzv_node" | head -n 1 | cut -d " " -f 1)',
            'export MLBENCH_RDZV_HOST=${rdzv_addr:-$rdzv_node}',
            'export MLBENCH_RDZV_PORT=$((29500 + SLURM_JOB_ID % 20000))',
        ]
        return [f'--nnodes={self.num_nodes}', f'--nproc_per_node={ranks_per_node}',
                '--rdzv_backend=c10d', '--rdzv_id=$SLURM_JOB_ID',
                '--rdzv_endpoint=$MLBENCH_RDZV_HOST:$MLBENCH_RDZV_PORT']

    def _read_output(self, name: str) -> str:
        try:
            with open(os.path.join(self.stagedir, name), errors='replace') as stream:
                return stream.read()
        except FileNotFoundError:
            return ''

    def _summary(self) -> RunSummary:
        return summarise_run(self._read_output(self.job.stdout),
                             self._read_output(self.job.stderr))

    @sanity_function
    def reached_target(self):
        """run_stop success with the target reached, every rank up, on every node."""
        reason = failure_reason(
            self._summary(), self._read_output(self.job.stderr), job_state=self.job.state,
            exit_code=self.job.exitcode, expected_ranks=self.num_ranks,
            expected_nodes=self.num_nodes, time_limit_s=self.time_limit)
        if reason:
            raise SanityError(f'{self.benchmark}: {reason}')
        return True

    @performance_function(PERFORMANCE_VARIABLES['time_to_target'])
    def time_to_target(self):
        """run_stop - run_start of a successful run, in seconds."""
        return self._summary().time_to_target_s

    @performance_function(PERFORMANCE_VARIABLES['throughput'])
    def throughput(self):
        """Training samples/s over all ranks, mean over the epochs after the first."""
        return self._summary().steady_throughput

    @performance_function(PERFORMANCE_VARIABLES['throughput_per_device'])
    def throughput_per_device(self):
        """``throughput`` divided by the number of ranks (one per GPU or CPU unit)."""
        summary = self._summary()
        return summary.steady_throughput / max(1, summary.world_size or self.num_ranks)

    @performance_function(PERFORMANCE_VARIABLES['epoch_time'])
    def epoch_time(self):
        """Seconds of training per epoch (evaluation excluded), mean after the first."""
        return self._summary().steady_epoch_time
