"""CosmoFlow on the cosmoUniverse volumes (``benchmarks/cosmoflow``), trained to its MAE target."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class cosmoflow_train(MLBenchTest):
    benchmark = 'cosmoflow'
    smoke_data = smoke_data_fixture('cosmoflow')

    # Indexed like resnet50_train's: ('$partition', 'device', 'num_nodes'). No measured
    # references yet: performance is logged and compared over time by perflogs_parsers.
    reference = {'$index': ('$partition', 'device', 'num_nodes')}
