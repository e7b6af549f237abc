"""GPT-J 6B on C4 (``benchmarks/gptj``), trained to its validation log-perplexity target."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class gptj_train(MLBenchTest):
    benchmark = 'gptj'
    smoke_data = smoke_data_fixture('gptj')

    # Indexed like resnet50_train's: ('$partition', 'device', 'num_nodes'). No measured
    # references yet: performance is logged and compared over time by perflogs_parsers.
    reference = {'$index': ('$partition', 'device', 'num_nodes')}
