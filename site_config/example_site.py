"""A centre's own systems, kept outside the package: ``reframe -C site_config/settings.py
-C example_site.py ...``. Copy this file, rename the systems and fill in your values.

ReFrame merges the two files: the systems here are tried first when it matches the host name
against ``hostnames``, and the logging, modes and perflog format of ``settings.py`` still
apply. Nothing in the package needs editing: references go under ``RFM_REFERENCE_PREFIX``
(docs/reframe.md).

- ``mysite-gpu``: 4 GPUs and 2 x 32 cores per node; exclusive nodes with all their memory,
  an account, a QoS and a reservation; PyTorch from the site's module system.
- ``mysite-cpu``: 2 x 64-core nodes, 8 NUMA nodes each; a venv on the shared file system;
  opted in to full-scale CPU runs with the ``full_scale_cpu`` feature.
"""

ACCOUNT = 'proj123'


def _numa_masks(cpus_per_domain: int, domains: int) -> list[str]:
    mask = (1 << cpus_per_domain) - 1
    return [hex(mask << (cpus_per_domain * index)) for index in range(domains)]


MYSITE_GPU = {
    'name': 'mysite-gpu',
    'descr': 'GPU cluster: 4 x H100 per node',
    'hostnames': [r'^gpulogin\d+$'],
    # With 'lmod' (or 'tmod4'...) ReFrame loads an environment's 'modules' itself; the
    # 'module load' line below works whatever modules_system says.
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'h100',
            'scheduler': 'slurm',
            'launcher': 'srun',
            # Account, QoS and reservation; exclusive nodes with all their memory.
            'access': ['--partition=gpu', f'--account={ACCOUNT}', '--qos=normal',
                       '--reservation=mlbench', '--exclusive', '--mem=0'],
            'sched_options': {'use_nodes_option': True},
            'environs': ['mlbench-modules'],
            'features': ['gpu'],
            'processor': {
                'num_cpus': 64,
                'num_cpus_per_core': 1,
                'num_sockets': 2,
                'num_cpus_per_socket': 32,
                'topology': {'numa_nodes': _numa_masks(32, 2)},
            },
            'devices': [{'type': 'gpu', 'arch': 'sm_90', 'num_devices': 4}],
            'resources': [
                {'name': '_rfm_gpu', 'options': ['--gpus-per-node={num_gpus_per_node}']},
            ],
            'max_jobs': 8,
            'extras': {
                'datasets': {'resnet50': '/scratch/mlperf/imagenet',
                             'bert_large': '/scratch/mlperf/bert'},
                'max_nodes': 16,
                # srun --cpu-bind=cores --gpu-bind=closest: each rank on its cores and the
                # GPU nearest them (use 'single:1' for exactly one GPU per task).
                'cpu_bind': 'cores',
                'gpu_bind': 'closest',
            },
        },
    ],
}

MYSITE_CPU = {
    'name': 'mysite-cpu',
    'descr': 'CPU cluster: 2 x 64 cores per node',
    'hostnames': [r'^cpulogin\d+$'],
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'standard',
            'scheduler': 'slurm',
            'launcher': 'srun',
            'access': ['--partition=standard', f'--account={ACCOUNT}', '--qos=standard',
                       '--mem=240G', '--hint=nomultithread'],
            'sched_options': {'use_nodes_option': True},
            # The project's venv on a file system the compute nodes mount.
            'prepare_cmds': ['source /work/proj123/mlbench/venv/bin/activate'],
            'environs': ['mlbench'],
            # full_scale_cpu: list the full-scale CPU variants here too (opt-in).
            'features': ['cpu', 'full_scale_cpu'],
            'processor': {
                'num_cpus': 128,
                'num_cpus_per_core': 1,
                'num_sockets': 2,
                'num_cpus_per_socket': 64,
                'topology': {'numa_nodes': _numa_masks(16, 8)},
            },
            'max_jobs': 16,
            'extras': {'datasets': {'resnet50': '/work/mlperf/imagenet'}, 'max_nodes': 64,
                       'cpu_bind': 'cores'},
        },
    ],
}

site_configuration = {
    'systems': [MYSITE_GPU, MYSITE_CPU],
    'environments': [
        {
            # PyTorch from the module system, mlbench from the project's checkout.
            'name': 'mlbench-modules',
            'features': ['pytorch'],
            'prepare_cmds': ['module load PyTorch/2.5.1-foss-2023b-CUDA-12.4.0'],
            'env_vars': [['PYTHONPATH', '/work/proj123/mlbench-reframe:$PYTHONPATH']],
            'target_systems': ['mysite-gpu'],
        },
    ],
}
