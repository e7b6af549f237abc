"""Test-only ReFrame checks that must end as FAIL, with the reason in the failure message.

Not in ``reframe_tests/`` so users never run them; ``tests/test_reframe_slurm.py`` loads this
file next to ``reframe_tests/``. Each class pins one variant of ``resnet50_smoke``.
"""

import os

import reframe as rfm
import reframe.utility as util
from reframe.core.builtins import parameter, run_after

HERE = os.path.dirname(os.path.abspath(__file__))
# The same module object the loader registers, so the subclasses share its smoke fixture.
resnet50 = util.import_module_from_file(
    os.path.join(HERE, os.pardir, os.pardir, 'reframe_tests', 'resnet50.py'), load_parents=True)


@rfm.simple_test
class resnet50_unreachable_target(resnet50.resnet50_smoke):
    """Top-1 accuracy above 1.0 can never be reached: FAIL with 'target missed'."""

    num_nodes = parameter([1])
    device = parameter(['cpu'])
    target = 1.01
    epochs = 2


@rfm.simple_test
class resnet50_crashing_rank(resnet50.resnet50_smoke):
    """Rank 1 exits with code 17 at start-up: FAIL with the crash, not a hang."""

    num_nodes = parameter([2])
    device = parameter(['cpu'])

    @run_after('setup')
    def crash_rank_one(self):
        wrapper = os.path.join(HERE, 'rank1_exits.sh')
        if self.executable == 'mlbench':
            self.executable, self.executable_opts = wrapper, ['mlbench', *self.executable_opts]
        else:
            position = self.executable_opts.index('mlbench')
            self.executable_opts.insert(position, wrapper)
