"""ResNet-50 v1.5 on ImageNet (``benchmarks/resnet50``), trained to its top-1 target."""

import reframe as rfm
from mlbench_base import MLBenchFullTest, MLBenchSmokeTest, smoke_data_fixture


@rfm.simple_test
class resnet50_smoke(MLBenchSmokeTest):
    benchmark = 'resnet50'
    smoke_data = smoke_data_fixture('resnet50')


@rfm.simple_test
class resnet50_full(MLBenchFullTest):
    benchmark = 'resnet50'
