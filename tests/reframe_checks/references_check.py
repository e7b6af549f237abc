"""A test-only ReFrame check whose references come from a file written by
``mlbench perflogs references``; ``tests/test_perflogs_references.py`` runs it.

It prints the throughput given in ``measured`` and reads its reference through ReFrame's
external references (``RFM_REFERENCE_PREFIX`` names the folder of ``REFERENCES_FILE``), so a
run outside the band written from the history fails in the performance stage.
"""

import reframe as rfm
import reframe.utility.sanity as sn
from reframe.core.builtins import (
    parameter,
    performance_function,
    run_before,
    sanity_function,
    variable,
)

REFERENCES_FILE = 'mlbench_references.yaml'


@rfm.simple_test
class references_check(rfm.RunOnlyRegressionTest):
    """One variant indexed like the benchmark classes: partition, device, num_nodes, scale."""

    num_nodes = parameter([1])
    device = parameter(['cpu'])
    scale = parameter(['smoke'])
    batch_size = variable(int, value=256)
    measured = variable(float, value=1000.0)
    valid_systems = ['*']
    valid_prog_environs = ['*']
    executable = 'echo'
    reference = {'$ref': REFERENCES_FILE}

    @run_before('run')
    def print_measured(self):
        self.executable_opts = [f'throughput: {self.measured}']

    @sanity_function
    def printed_throughput(self):
        return sn.assert_found(r'throughput: \S+', self.stdout)

    @performance_function('samples/s')
    def throughput(self):
        return sn.extractsingle(r'throughput: (\S+)', self.stdout, 1, float)
