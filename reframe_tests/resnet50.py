"""ResNet-50 v1.5 on ImageNet (``benchmarks/resnet50``), trained to its top-1 target."""

import reframe as rfm
from mlbench_base import MLBenchTest, smoke_data_fixture


@rfm.simple_test
class resnet50_train(MLBenchTest):
    benchmark = 'resnet50'
    smoke_data = smoke_data_fixture('resnet50')

    # Indexed by partition, device and node count. slurm-ci: smoke scale measured on the
    # 2-core CI machine (both launch modes); its cores are shared, so the bounds are wide
    # and catch only gross regressions. Add your partitions' full-scale numbers here.
    reference = {
        '$index': ('$partition', 'device', 'num_nodes'),
        'slurm-ci:default': {
            'cpu': {
                1: {'time_to_target': (18.0, None, 3.0, 's'),
                    'throughput': (125.0, -0.75, None, 'samples/s')},
                2: {'time_to_target': (12.0, None, 3.0, 's'),
                    'throughput': (150.0, -0.75, None, 'samples/s')},
            },
        },
    }
