"""DeepCAM (DeepLabV3+) on CAM5 climate data (``benchmarks/deepcam``), trained to its IoU target."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class deepcam_train(MLBenchTest):
    benchmark = 'deepcam'
    smoke_data = smoke_data_fixture('deepcam')

    # Indexed like resnet50_train's: ('$partition', 'device', 'num_nodes'). No measured
    # references yet: performance is logged and compared over time by perflogs_parsers.
    reference = {'$index': ('$partition', 'device', 'num_nodes')}
