"""DeepCAM (DeepLabV3+) on CAM5 climate data (``benchmarks/deepcam``), trained to its IoU target."""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class deepcam_smoke(MLBenchSmokeTest):
    benchmark = 'deepcam'
    smoke_data = smoke_data_fixture('deepcam')


@rfm.simple_test
class deepcam_full(MLBenchFullTest):
    benchmark = 'deepcam'
