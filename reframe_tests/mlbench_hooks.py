"""One function per concern of an mlbench test, called from the named hooks of ``mlbench_base``.

In the style of the EESSI test-suite's ``hooks.py``: each function takes the test, reads the
current partition and sets a few attributes or skips the test with the reason. Partition
conventions (``site_config/settings.py``): features ``cpu``/``gpu`` (and ``full_scale_cpu`` to
opt a CPU partition in to full scale), a ``processor`` block, GPUs in ``devices``,
``extras.datasets``, ``extras.max_nodes``, ``extras.cpu_bind`` and ``extras.gpu_bind``.
"""

from __future__ import annotations

import os
import shlex
import subprocess

import mlbench_results as results
import reframe.core.runtime as rt

from benchmarks.core import rcp

#: Schedulers whose jobs know their node list from ``SLURM_JOB_NODELIST`` (torchrun rendezvous).
SLURM_SCHEDULERS = ('slurm', 'squeue')
#: Partition feature that opts a CPU partition in to full-scale runs.
FULL_SCALE_CPU_FEATURE = 'full_scale_cpu'
TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def filter_valid_systems_by_device(test) -> None:
    """``+gpu`` or ``+cpu`` partitions only; full scale on CPUs needs ``+full_scale_cpu``."""
    features = f'+{test.device}'
    if test.device == 'cpu' and test.scale == 'full':
        features += f' +{FULL_SCALE_CPU_FEATURE}'
    test.valid_systems = [features]


def set_tags(test) -> None:
    test.tags |= {test.benchmark, test.scale, test.device}
    if test.num_nodes > 1:
        test.tags.add('multinode')
    test.descr = f'{test.benchmark} to its quality target ({test.scale} scale, {test.device})'


def set_references(test) -> None:
    """External references: ``reference_file`` under the reference prefix, else this folder."""
    prefix = rt.runtime().get_option('general/0/reference_prefix')
    path = test.reference_file if prefix else os.path.join(TESTS_DIR, test.reference_file)
    test.reference = {'$ref': path}


def ranks_per_node(test) -> tuple[int, int]:
    """(ranks per node, GPUs per node): one rank per GPU, or per node/socket/NUMA node."""
    partition = test.current_partition
    if test.device == 'gpu':
        gpus = partition.select_devices('gpu')
        test.skip_if(not gpus or not gpus[0].num_devices,
                     f'partition {partition.fullname} declares no gpu devices')
        return gpus[0].num_devices, gpus[0].num_devices
    processor = partition.processor
    ranks = {'node': 1, 'socket': processor.num_sockets,
             'numa': processor.num_numa_nodes}[test.cpu_rank_unit]
    test.skip_if(not ranks, f'cpu_rank_unit={test.cpu_rank_unit}: partition '
                            f'{partition.fullname} does not describe its sockets/NUMA nodes')
    return ranks, 0


def require_processor(test) -> int:
    """CPUs per node; a partition without a processor block is skipped, never under-provisioned."""
    partition = test.current_partition
    test.skip_if(not partition.processor.num_cpus,
                 f'partition {partition.fullname} has no processor description: add a '
                 f"'processor' block (or set general/remote_detect: ReFrame then detects it "
                 f'with a job) so each rank gets its CPUs')
    return partition.processor.num_cpus


def skip_unreachable_node_count(test) -> None:
    partition = test.current_partition
    scheduler = partition.scheduler.registered_name
    max_nodes = 1 if scheduler == 'local' else partition.extras.get('max_nodes')
    test.skip_if(max_nodes is not None and test.num_nodes > max_nodes,
                 f'num_nodes={test.num_nodes}: partition {partition.fullname} has '
                 f'{max_nodes} node(s)')
    test.skip_if(test.launcher == 'torchrun' and test.num_nodes > 1 and
                 scheduler not in SLURM_SCHEDULERS,
                 f'launcher=torchrun on several nodes needs a Slurm partition '
                 f'({partition.fullname} uses {scheduler})')


def partition_launcher(test) -> str:
    return test.current_partition.launcher_type.registered_name


def assign_tasks(test, ranks: int, gpus: int, cpus_per_node: int) -> None:
    """Tasks, CPUs and GPUs of the job for the launch mode (srun: a task per rank)."""
    test.num_ranks = test.num_nodes * ranks
    cpus_per_rank = max(1, cpus_per_node // ranks)
    if test.launcher == 'srun':
        test.skip_if(
            ranks > 1 and partition_launcher(test) == 'local',
            f'{ranks} ranks per node need a parallel launcher, partition '
            f'{test.current_partition.fullname} has launcher local: use -S launcher=torchrun')
        test.num_tasks_per_node = ranks
        test.num_cpus_per_task = cpus_per_rank
    else:
        test.num_tasks_per_node = 1
        test.num_cpus_per_task = cpus_per_rank * ranks
    test.num_tasks = test.num_nodes * test.num_tasks_per_node
    if gpus:
        test.num_gpus_per_node = gpus


def full_scale_dataset(test) -> str:
    """The partition's ``extras.datasets[benchmark]``; skipped visibly when not configured."""
    datasets = test.current_partition.extras.get('datasets', {})
    test.skip_if(test.benchmark not in datasets,
                 f'full scale needs the {test.benchmark} dataset: set extras.datasets.'
                 f'{test.benchmark} in partition {test.current_partition.fullname} '
                 f'or -S data_dir=PATH')
    return datasets[test.benchmark]


def train_arguments(test, data_dir: str) -> list[str]:
    """``mlbench train ...`` arguments from the test's variables."""
    config = test.config or ('smoke' if test.scale == 'smoke' else '')
    args = ['train', test.benchmark, '--data-dir', data_dir,
            '--device', 'cuda' if test.device == 'gpu' else 'cpu']
    if config:
        args += ['--config', config]
    overrides = list(test.overrides)
    if test.batch_size:
        overrides.append(f'data.global_batch_size={test.batch_size}')
    if test.epochs:
        overrides.append(f'training.n_epochs={test.epochs}')
    if test.target is not None:
        overrides.append(f'training.target={test.target}')
    for override in overrides:
        args += ['--set', override]
    return args


def torchrun_arguments(test, ranks: int) -> list[str]:
    """One torchrun per node; c10d rendezvous on the first node, port from the job id."""
    if test.num_nodes == 1 and test.current_partition.scheduler.registered_name == 'local':
        return ['--standalone', '--nnodes=1', f'--nproc_per_node={ranks}']
    # torchrun picks the agent that hosts the c10d store by comparing the endpoint with its
    # own host name and addresses: give it the first node's address, which matches even where
    # node names differ from host names (as on the slurm-ci cluster).
    test.prerun_cmds += [
        'rdzv_node=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
        'rdzv_addr=$(getent ahostsv4 "$rdzv_node" | head -n 1 | cut -d " " -f 1)',
        'export MLBENCH_RDZV_HOST=${rdzv_addr:-$rdzv_node}',
        'export MLBENCH_RDZV_PORT=$((29500 + SLURM_JOB_ID % 20000))',
    ]
    return [f'--nnodes={test.num_nodes}', f'--nproc_per_node={ranks}',
            '--rdzv_backend=c10d', '--rdzv_id=$SLURM_JOB_ID',
            '--rdzv_endpoint=$MLBENCH_RDZV_HOST:$MLBENCH_RDZV_PORT']


def set_command(test, data_dir: str, ranks: int) -> None:
    # ReFrame joins the command into the job script unquoted: quote what comes from users
    # (paths with spaces or quotes, -S overrides) so the shell passes it verbatim.
    train_command = ['mlbench', *map(shlex.quote, train_arguments(test, data_dir))]
    if test.launcher == 'srun':
        test.executable, *test.executable_opts = train_command
    else:
        test.executable = 'torchrun'
        test.executable_opts = [*torchrun_arguments(test, ranks), '--no-python', *train_command]


def set_job_options(test) -> None:
    """Slurm: a job that lost a node fails instead of being requeued and rerun unseen."""
    if test.current_partition.scheduler.registered_name in SLURM_SCHEDULERS:
        test.job.options += ['--no-requeue']


def set_launcher_options(test) -> None:
    """srun: end the step when a rank dies; binding from ``extras.cpu_bind``/``gpu_bind``."""
    if partition_launcher(test) != 'srun':
        return
    extras = test.current_partition.extras
    # A rank that dies ends the step at once instead of leaving the others waiting in a
    # collective until the time limit.
    options = ['--kill-on-bad-exit=1']
    if extras.get('cpu_bind'):
        options.append(f'--cpu-bind={extras["cpu_bind"]}')
    if extras.get('gpu_bind') and test.device == 'gpu' and test.launcher == 'srun':
        options.append(f'--gpu-bind={extras["gpu_bind"]}')
    test.job.launcher.options += options


def read_output(test, name: str) -> str:
    try:
        with open(os.path.join(test.stagedir, name), errors='replace') as stream:
            return stream.read()
    except FileNotFoundError:
        return ''


def slurm_energy(test) -> float | None:
    """sacct's ConsumedEnergy of the training step; None without Slurm or an energy plugin."""
    scheduler = test.current_partition.scheduler.registered_name
    if scheduler not in SLURM_SCHEDULERS or not test.job.jobid:
        return None
    try:
        sacct = subprocess.run(['sacct', '-j', str(test.job.jobid), '-P', '-n',
                                '-o', 'JobID,ConsumedEnergyRaw'],
                               capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.SubprocessError):
        return None
    return results.slurm_step_energy(sacct.stdout) if sacct.returncode == 0 else None


def add_rcp_reference(test) -> None:
    """Full scale: ``epochs_to_target`` must stay within two RCP standard deviations above the
    RCP mean at the run's global batch size (no lower bound: converging faster is no fault)."""
    batch_size = test.summary.global_batch_size
    convergence = rcp.rcp_reference(test.benchmark, batch_size) if batch_size else None
    if convergence is None or not convergence[0]:
        return
    mean, stdev = convergence
    try:
        references = dict(test.reference[test])
    except KeyError:
        references = {}
    references['epochs_to_target'] = (mean, None, 2 * stdev / mean, test.epochs_unit)
    test.reference = {test.current_partition.fullname: references}
