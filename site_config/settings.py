"""ReFrame configuration of the mlbench suite: ``reframe -C site_config/settings.py ...``.

Systems, tried in this order (the first whose ``hostnames`` match the host is used, unless
``--system NAME`` picks one):

- ``example-cpu`` and ``example-gpu``: templates for real clusters. Copy one, rename it, set
  ``hostnames`` to your login nodes and fill in partition names, processor, GPUs, dataset
  paths and how to get PyTorch (the ``mlbench`` environment). ``reframe --system NAME
  --dry-run -r`` then shows the job scripts without submitting anything.
- ``slurm-ci``: the two-node Slurm cluster of ``ci/slurm/start.sh`` (docs/slurm-ci.md); its
  host name is arbitrary, so select it with ``--system slurm-ci``.
- ``local``: any other host, the default: the local scheduler runs the smoke scale on this
  machine (``reframe -C site_config/settings.py -c reframe_tests -r``).

Everything ReFrame writes goes under the working folder: ``stage/``, ``output/``,
``perflogs/`` and ``reports/`` (use ``--prefix`` to move stage, output and perflogs).
Perflogs use the project's format (``perflogs_parsers/formats.py``); with
``MLBENCH_PERFLOG_URL`` set, each record is also posted as JSON to that URL.

Partition conventions the tests rely on (``reframe_tests/mlbench_hooks.py``):
``features`` ``cpu`` and/or ``gpu`` (GPU tests list only ``+gpu`` partitions, CPU tests only
``+cpu`` ones; full scale on a CPU partition also needs the ``full_scale_cpu`` feature); GPUs
in ``devices`` (one rank per GPU) and requested through the ``_rfm_gpu`` resource; a
``processor`` block (its CPUs are split between the ranks of a node; a partition without one
is skipped); ``extras.datasets.<benchmark>``: the dataset folder of each full-scale
benchmark; ``extras.max_nodes``: node counts above it are skipped; ``extras.cpu_bind`` and
``extras.gpu_bind``: srun's ``--cpu-bind`` and ``--gpu-bind`` values.

Modes: ``--mode ci-smoke`` (every benchmark at smoke scale), ``--mode nightly`` (full scale,
node counts 1 and 2 where the partition has them), ``--mode scaling`` (full scale on 1, 2, 4
and 8 nodes). A site adds its own systems in a file of its own: ``-C site_config/settings.py
-C mysite.py`` (``site_config/example_site.py``, docs/reframe.md).
"""

import os
import shutil
import subprocess
import sys

REPO_ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), os.pardir))
# The one line that lets a ReFrame installed outside the project's venv (its own Python) import
# the project's modules, here and in reframe_tests/ (docs/reframe.md, "Central ReFrame").
sys.path.insert(0, REPO_ROOT)

from perflogs_parsers.formats import filelog_handler, httpjson_handlers_from_env  # noqa: E402

TESTS_DIR = os.path.join(REPO_ROOT, 'reframe_tests')


def _datasets(root: str) -> dict[str, str]:
    """Dataset folder of each full-scale benchmark (``extras.datasets``) under ``root``."""
    return {
        'resnet50': f'{root}/imagenet',
        'bert_large': f'{root}/bert',
        'gptj': f'{root}/c4',
        'cosmoflow': f'{root}/cosmoflow',
        'deepcam': f'{root}/deepcam',
        'alphafold2': f'{root}/openfold',
    }


def _cpu_masks(cpus_per_domain: int, domains: int) -> list[str]:
    """Hex CPU sets of consecutive domains (NUMA nodes), as ReFrame's topology expects."""
    mask = (1 << cpus_per_domain) - 1
    return [hex(mask << (cpus_per_domain * index)) for index in range(domains)]


# ARCHER2-like CPU cluster: 2 x 64-core AMD EPYC per node, SMT not used.
EXAMPLE_CPU_SYSTEM = {
    'name': 'example-cpu',
    'descr': 'Template: CPU cluster, 128 cores per node (edit before use)',
    'hostnames': [r'^example-cpu-login\d+$'],
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'standard',
            'descr': 'CPU compute nodes',
            'scheduler': 'slurm',
            'launcher': 'srun',
            'access': ['--partition=standard', '--qos=standard', '--hint=nomultithread',
                       '--distribution=block:block'],
            'sched_options': {'use_nodes_option': True},
            'environs': ['mlbench'],
            'features': ['cpu'],
            'processor': {
                'num_cpus': 128,
                'num_cpus_per_core': 1,
                'num_sockets': 2,
                'num_cpus_per_socket': 64,
                'topology': {'numa_nodes': _cpu_masks(16, 8)},
            },
            'max_jobs': 16,
            'extras': {'datasets': _datasets('/work/mlbench/datasets'), 'max_nodes': 1024,
                       'cpu_bind': 'cores'},
        },
    ],
}

# GPU cluster: 4 GPUs and 64 cores per node; one rank per GPU.
EXAMPLE_GPU_SYSTEM = {
    'name': 'example-gpu',
    'descr': 'Template: GPU cluster, 4 GPUs per node (edit before use)',
    'hostnames': [r'^example-gpu-login\d+$'],
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'gpu',
            'descr': 'GPU compute nodes',
            'scheduler': 'slurm',
            'launcher': 'srun',
            'access': ['--partition=gpu'],
            'sched_options': {'use_nodes_option': True},
            'environs': ['mlbench'],
            'features': ['gpu'],
            'processor': {
                'num_cpus': 64,
                'num_cpus_per_core': 1,
                'num_sockets': 1,
                'num_cpus_per_socket': 64,
            },
            'devices': [{'type': 'gpu', 'arch': 'sm_90', 'num_devices': 4}],
            'resources': [
                {'name': '_rfm_gpu', 'options': ['--gres=gpu:{num_gpus_per_node}']},
            ],
            'max_jobs': 16,
            # srun binds each rank to its cores and to the GPU closest to them.
            'extras': {'datasets': _datasets('/scratch/mlbench/datasets'), 'max_nodes': 64,
                       'cpu_bind': 'cores', 'gpu_bind': 'closest'},
        },
    ],
}


def _usable_cpus() -> int:
    """CPUs this process may run on, as ``nproc`` counts them (all of them on macOS)."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count() or 1


# CPUs per emulated node, worked out as ci/slurm/common.sh does: MLBENCH_SLURM_CPUS, else the
# CPUs `nproc` counts rounded down to an even count (at least 2); 2 sockets per node.
SLURM_CI_CPUS = int(os.environ.get('MLBENCH_SLURM_CPUS') or max(2, _usable_cpus() // 2 * 2))

SLURM_CI_SYSTEM = {
    'name': 'slurm-ci',
    'descr': 'Local two-node Slurm cluster of ci/slurm/start.sh (docs/slurm-ci.md)',
    'hostnames': [r'^slurm-ci$'],
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'default',
            'descr': 'node1 and node2 on this host, 2 sockets (NUMA nodes) each',
            'scheduler': 'slurm',
            'launcher': 'srun',
            'access': ['--partition=debug'],
            'sched_options': {'use_nodes_option': True},
            'environs': ['mlbench'],
            'features': ['cpu'],
            'processor': {
                'num_cpus': SLURM_CI_CPUS,
                'num_cpus_per_core': 1,
                'num_sockets': 2,
                'num_cpus_per_socket': SLURM_CI_CPUS // 2,
                'topology': {'numa_nodes': _cpu_masks(SLURM_CI_CPUS // 2, 2)},
            },
            'max_jobs': 4,
            'extras': {'max_nodes': 2, 'cpu_bind': 'cores'},
        },
    ],
}

def _local_gpus() -> int:
    """NVIDIA GPUs of this host (``nvidia-smi -L``), 0 without the tool."""
    if not shutil.which('nvidia-smi'):
        return 0
    try:
        listing = subprocess.run(['nvidia-smi', '-L'], capture_output=True, text=True,
                                 timeout=30, check=False)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(line.startswith('GPU ') for line in listing.stdout.splitlines())


LOCAL_GPUS = _local_gpus()

LOCAL_SYSTEM = {
    'name': 'local',
    'descr': 'This machine, local scheduler: the smoke scale on a laptop or workstation',
    'hostnames': ['.*'],
    'modules_system': 'nomod',
    'partitions': [
        {
            'name': 'default',
            'descr': 'Processes on this host, one at a time (processor detected by ReFrame)',
            'scheduler': 'local',
            'launcher': 'local',
            'environs': ['mlbench'],
            # A workstation with NVIDIA GPUs also runs the GPU smoke variants (one rank per
            # GPU: use -S launcher=torchrun when it has more than one).
            'features': ['cpu', 'gpu'] if LOCAL_GPUS else ['cpu'],
            'devices': [{'type': 'gpu', 'num_devices': LOCAL_GPUS}] if LOCAL_GPUS else [],
            'max_jobs': 1,
        },
    ],
}

site_configuration = {
    'systems': [EXAMPLE_CPU_SYSTEM, EXAMPLE_GPU_SYSTEM, SLURM_CI_SYSTEM, LOCAL_SYSTEM],
    'environments': [
        {
            # The Python environment where `pip install -e .` put mlbench and PyTorch. Jobs
            # inherit the submitting shell's environment; on a real cluster load it here,
            # e.g. 'prepare_cmds': ['source /work/mlbench/venv/bin/activate'] or 'modules'.
            'name': 'mlbench',
            'features': ['pytorch'],
            'target_systems': ['*'],
        },
    ],
    # reframe --mode NAME -r: the suite's three ways to run.
    'modes': [
        {'name': 'ci-smoke', 'options': ['-t', '^smoke$']},
        {'name': 'nightly', 'options': ['-t', '^full$']},
        {'name': 'scaling', 'options': ['-t', '^full$', '-P', 'num_nodes=1,2,4,8']},
    ],
    'general': [
        {
            'report_file': 'reports/run-report-{sessionid}.json',
            'topology_prefix': 'reports/topology',
            'check_search_path': [TESTS_DIR],
        },
    ],
    'logging': [
        {
            'handlers$': [
                {'type': 'stream', 'name': 'stdout', 'level': 'info', 'format': '%(message)s'},
            ],
            'handlers': [
                {
                    # No name: ReFrame's debug log goes to a temporary rfm-*.log file.
                    'type': 'file',
                    'level': 'debug2',
                    'format': '[%(asctime)s] %(levelname)s: %(check_info)s: %(message)s',
                    'append': False,
                },
            ],
            'handlers_perflog': [filelog_handler('perflogs'), *httpjson_handlers_from_env()],
        },
    ],
}
