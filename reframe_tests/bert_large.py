"""BERT-Large on the MLPerf Wikipedia shards (``benchmarks/bert_large``), to its MLM accuracy."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class bert_large_train(MLBenchTest):
    benchmark = 'bert_large'
    smoke_data = smoke_data_fixture('bert_large')

    # Indexed like resnet50_train's: ('$partition', 'device', 'num_nodes'). No measured
    # references yet: performance is logged and compared over time by perflogs_parsers.
    reference = {'$index': ('$partition', 'device', 'num_nodes')}
