"""The shared bases of every mlbench ReFrame test.

A benchmark file names its benchmark twice, once per scale::

    @rfm.simple_test
    class resnet50_smoke(MLBenchSmokeTest):
        benchmark = 'resnet50'
        smoke_data = smoke_data_fixture('resnet50')

    @rfm.simple_test
    class resnet50_full(MLBenchFullTest):
        benchmark = 'resnet50'

Two classes, not a ``scale`` parameter: ReFrame fixtures belong to a class, so only the smoke
class depends on the ``<benchmark>_smoke_data`` job (``mlbench synth`` on the host running
ReFrame) and a full-scale run never needs it (``-t full``, ``--ci-generate``). ``scale`` stays
a loggable variable: the perflog column and the references index keep it.

The named hooks below call one function per concern in ``mlbench_hooks`` (partition choice,
ranks, command, launcher options, references); ``mlbench_results`` parses each job's output
once into a summary and holds the verdicts. This file defines no ``@simple_test`` class.
"""

from __future__ import annotations

import os

import mlbench_hooks as hooks
import mlbench_results as results
import reframe as rfm
import reframe.utility.sanity as sn
import reframe.utility.typecheck as typ
from reframe.core.builtins import (
    fixture,
    parameter,
    run_after,
    run_before,
    sanity_function,
    variable,
)
from reframe.core.exceptions import SanityError
from reframe.core.meta import make_test

from benchmarks.core import constants
from perflogs_parsers.formats import ENVIRONMENT_COLUMNS, PERFORMANCE_VARIABLES

MAINTAINERS = ['mlbench-reframe developers']


class SmokeDataset(rfm.RunOnlyRegressionTest):
    """``mlbench synth BENCHMARK data``: the small real-format dataset of the smoke scale.

    A session-scoped fixture of the smoke classes: it runs once per benchmark and session, on
    the host that runs ReFrame (``local``); its stage folder must be visible from the nodes.
    """

    benchmark = variable(str)
    samples = variable(int, value=0)
    valid_systems = ['*']
    valid_prog_environs = ['+pytorch']
    local = True
    executable = 'mlbench'
    env_vars = {'OMP_NUM_THREADS': '1'}
    maintainers = MAINTAINERS

    @run_after('init')
    def set_arguments(self):
        self.executable_opts = ['synth', self.benchmark, 'data']
        if self.samples:
            self.executable_opts += ['--samples', str(self.samples)]

    @sanity_function
    def wrote_dataset(self):
        return sn.assert_found(constants.dataset_written_pattern(self.benchmark), self.stdout)

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
    """Train one benchmark to its quality target; report time, throughput, energy, epochs.

    Variables are overridable with ``-S``, e.g. ``-S launcher=torchrun``, or turned into
    parameters with ``-P``, e.g. ``-P launcher=srun,torchrun`` or ``-P num_nodes=1,2,4,8``.
    """

    num_nodes = parameter([1, 2], type=int)
    device = parameter(['cpu', 'gpu'], type=str)

    #: Benchmark name, as for ``mlbench train NAME`` (set by the benchmark file).
    benchmark = variable(str)
    #: ``smoke`` or ``full`` (set by the scale's base class; a perflog column and index key).
    scale = variable(typ.Str[r'^(smoke|full)$'])
    #: Unit of ``epochs_to_target``: ``samples`` where the benchmark's rules count samples.
    epochs_unit = variable(typ.Str[r'^(epochs|samples)$'], value='epochs')
    #: ``srun``: the partition's launcher starts one task per rank (ranks from Slurm's
    #: variables). ``torchrun``: one task per node runs torchrun, which starts the ranks.
    launcher = variable(typ.Str[r'^(srun|torchrun)$'], value='srun')
    #: CPU partitions: one rank per ``node``, ``socket`` or ``numa`` node.
    cpu_rank_unit = variable(typ.Str[r'^(node|socket|numa)$'], value='node')
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
    #: External references file, under ``general/reference_prefix`` (``RFM_REFERENCE_PREFIX``)
    #: when set, else next to this file.
    reference_file = variable(str, value='mlbench_references.yaml')

    # Outputs, logged in the perflog: the training processes, and the run's environment
    # from its ``mlbench_environment`` event (None where the run never logged it).
    num_ranks = variable(int, value=0)
    mlbench_version = variable(str, type(None), value=None)
    torch_version = variable(str, type(None), value=None)
    cuda_version = variable(str, type(None), value=None)
    cudnn_version = variable(str, type(None), value=None)
    nccl_version = variable(str, type(None), value=None)
    gpu_model = variable(str, type(None), value=None)
    gpu_driver = variable(str, type(None), value=None)

    valid_prog_environs = ['+pytorch']
    env_vars = {'PYTHONUNBUFFERED': '1'}
    maintainers = MAINTAINERS

    @run_after('init')
    def select_partitions(self):
        hooks.filter_valid_systems_by_device(self)

    @run_after('init')
    def set_tags(self):
        hooks.set_tags(self)

    @run_after('init')
    def set_references(self):
        hooks.set_references(self)

    @run_after('init')
    def set_performance_variables(self):
        """All ten variables on every variant (None where not measured): stable headers."""
        for name, unit in PERFORMANCE_VARIABLES.items():
            unit = self.epochs_unit if name == 'epochs_to_target' else unit
            self.perf_variables[name] = sn.make_performance_function(
                self._performance_value, unit, name)

    @run_after('setup')
    def assign_ranks(self):
        cpus_per_node = hooks.require_processor(self)
        self._ranks_per_node, gpus = hooks.ranks_per_node(self)
        hooks.skip_unreachable_node_count(self)
        hooks.assign_tasks(self, self._ranks_per_node, gpus, cpus_per_node)

    @run_after('setup')
    def set_command(self):
        hooks.set_command(self, self.data_dir or self.dataset_dir(), self._ranks_per_node)

    @run_after('setup')
    def set_job_options(self):
        hooks.set_job_options(self)

    @run_after('setup')
    def set_launcher_options(self):
        hooks.set_launcher_options(self)

    def dataset_dir(self) -> str:
        """Dataset of this scale when ``-S data_dir`` is not given."""
        raise NotImplementedError

    @run_before('sanity')
    def summarise_output(self):
        """Parse the job's output once; fill the perflog's environment columns."""
        stderr = hooks.read_output(self, self.job.stderr)
        self.summary = results.summarise_run(hooks.read_output(self, self.job.stdout), stderr)
        self._job_stderr = stderr
        self._perf_values = results.performance_values(self.summary, self.num_ranks)
        for column, value in results.environment_columns(self.summary,
                                                         ENVIRONMENT_COLUMNS).items():
            setattr(self, column, value)

    @sanity_function
    def reached_target(self):
        """run_stop success with the target reached, every rank up, on every node."""
        reason = results.failure_reason(
            self.summary, self._job_stderr, job_state=self.job.state, exit_code=self.job.exitcode,
            expected_ranks=self.num_ranks, expected_nodes=self.num_nodes,
            time_limit_s=self.time_limit)
        if reason:
            raise SanityError(f'{self.benchmark}: {reason}')
        return True

    @run_before('performance')
    def read_slurm_energy(self):
        """sacct (up to 30 s) only for runs that passed sanity: only ``slurm_energy`` reads it."""
        self._perf_values['slurm_energy'] = hooks.slurm_energy(self)

    def _performance_value(self, name: str):
        """The measured value, or ``NOT_MEASURED`` (logged as None; see mlbench_results)."""
        value = self._perf_values[name]
        return results.NOT_MEASURED if value is None else value


class MLBenchSmokeTest(MLBenchTest):
    """Smoke scale: ``smoke.yaml`` on the fixture's synthetic data; the subclass declares
    ``smoke_data = smoke_data_fixture(benchmark)``."""

    scale = 'smoke'
    time_limit = '15m'

    def dataset_dir(self) -> str:
        return self.smoke_data.data_dir


class MLBenchFullTest(MLBenchTest):
    """Full scale: ``config.yaml`` on the partition's dataset; ``epochs_to_target`` is checked
    against the MLCommons RCP where one exists for the run's global batch size."""

    scale = 'full'
    time_limit = '12h'

    def dataset_dir(self) -> str:
        return hooks.full_scale_dataset(self)

    @run_before('performance')
    def add_rcp_reference(self):
        hooks.add_rcp_reference(self)
