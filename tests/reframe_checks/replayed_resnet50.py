"""Test-only check: a resnet50 smoke test whose job replays a recorded output instead of training.

Lets the tests drive ReFrame's sanity and performance stages (external references, perflog
columns) in seconds. ``replay_stdout`` and ``replay_stderr`` name the files the job prints.
It derives from ``MLBenchSmokeTest``, not ``resnet50_smoke``, so no ``mlbench synth`` fixture
job writes a dataset the replay never reads.
"""

import os
import shlex

import reframe as rfm
import reframe.utility as util
from reframe.core.builtins import parameter, run_after, variable

HERE = os.path.dirname(os.path.abspath(__file__))
mlbench_base = util.import_module_from_file(
    os.path.join(HERE, os.pardir, os.pardir, 'reframe_tests', 'mlbench_base.py'),
    load_parents=True)


@rfm.simple_test
class resnet50_replayed(mlbench_base.MLBenchSmokeTest):
    benchmark = 'resnet50'
    num_nodes = parameter([1])
    device = parameter(['cpu'])
    replay_stdout = variable(str)
    replay_stderr = variable(str)

    def dataset_dir(self) -> str:
        """No dataset: the replay reads none (the command line still names one)."""
        return os.devnull

    @run_after('setup')
    def replay(self):
        self.executable = 'bash'
        self.executable_opts = ['-c', shlex.quote(
            f'cat {shlex.quote(self.replay_stdout)}; cat {shlex.quote(self.replay_stderr)} >&2')]
