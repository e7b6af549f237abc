"""GPT-J 6B on C4 (``benchmarks/gptj``), trained to its validation log-perplexity target.

Its MLPerf rules count ``epoch_num`` in samples: ``epochs_to_target`` is in samples.
"""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class gptj_smoke(MLBenchSmokeTest):
    benchmark = 'gptj'
    epochs_unit = 'samples'
    smoke_data = smoke_data_fixture('gptj')


@rfm.simple_test
class gptj_full(MLBenchFullTest):
    benchmark = 'gptj'
    epochs_unit = 'samples'
