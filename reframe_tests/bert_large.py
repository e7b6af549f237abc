"""BERT-Large on the MLPerf Wikipedia shards (``benchmarks/bert_large``), to its MLM accuracy.

Its MLPerf rules count ``epoch_num`` in samples: ``epochs_to_target`` is in samples.
"""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class bert_large_smoke(MLBenchSmokeTest):
    benchmark = 'bert_large'
    epochs_unit = 'samples'
    smoke_data = smoke_data_fixture('bert_large')


@rfm.simple_test
class bert_large_full(MLBenchFullTest):
    benchmark = 'bert_large'
    epochs_unit = 'samples'
