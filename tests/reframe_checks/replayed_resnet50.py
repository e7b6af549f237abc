"""Test-only check: ``resnet50_smoke`` whose job replays a recorded output instead of training.

Lets the tests drive ReFrame's sanity and performance stages (external references, perflog
columns) in seconds. ``replay_stdout`` and ``replay_stderr`` name the files the job prints.
"""

import os
import shlex

import reframe as rfm
import reframe.utility as util
from reframe.core.builtins import parameter, run_after, variable

HERE = os.path.dirname(os.path.abspath(__file__))
resnet50 = util.import_module_from_file(
    os.path.join(HERE, os.pardir, os.pardir, 'reframe_tests', 'resnet50.py'), load_parents=True)


@rfm.simple_test
class resnet50_replayed(resnet50.resnet50_smoke):
    num_nodes = parameter([1])
    device = parameter(['cpu'])
    replay_stdout = variable(str)
    replay_stderr = variable(str)

    @run_after('setup')
    def replay(self):
        self.executable = 'bash'
        self.executable_opts = ['-c', shlex.quote(
            f'cat {shlex.quote(self.replay_stdout)}; cat {shlex.quote(self.replay_stderr)} >&2')]
