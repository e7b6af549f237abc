"""CosmoFlow on the cosmoUniverse volumes (``benchmarks/cosmoflow``), trained to its MAE target."""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class cosmoflow_smoke(MLBenchSmokeTest):
    benchmark = 'cosmoflow'
    smoke_data = smoke_data_fixture('cosmoflow')


@rfm.simple_test
class cosmoflow_full(MLBenchFullTest):
    benchmark = 'cosmoflow'
