"""AlphaFold2 on OpenProteinSet + PDB (``benchmarks/alphafold2``), trained to its lDDT-Ca target.

Its MLPerf rules count ``epoch_num`` in samples: ``epochs_to_target`` is in samples.
"""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class alphafold2_smoke(MLBenchSmokeTest):
    benchmark = 'alphafold2'
    epochs_unit = 'samples'
    smoke_data = smoke_data_fixture('alphafold2')


@rfm.simple_test
class alphafold2_full(MLBenchFullTest):
    benchmark = 'alphafold2'
    epochs_unit = 'samples'
