"""AlphaFold2 on OpenProteinSet + PDB (``benchmarks/alphafold2``), trained to its lDDT-Ca target."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class alphafold2_train(MLBenchTest):
    benchmark = 'alphafold2'
    smoke_data = smoke_data_fixture('alphafold2')

    # Indexed like resnet50_train's: ('$partition', 'device', 'num_nodes'). No measured
    # references yet: performance is logged and compared over time by perflogs_parsers.
    reference = {'$index': ('$partition', 'device', 'num_nodes')}
