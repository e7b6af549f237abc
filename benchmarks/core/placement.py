"""Where each rank runs: its GPU, its intra-op threads, and the line and event that say so.

Launch layouts this module handles:

- every task sees all of the node's GPUs (torchrun, or srun without GPU binding): rank
  ``local_rank`` takes GPU ``local_rank``;
- every task sees only its own GPU (``srun --gpus-per-task=1``, ``--gpu-bind=single:1``, a
  site wrapper that sets ``CUDA_VISIBLE_DEVICES``): each rank takes visible GPU 0.

Both are ``local_rank % visible GPUs``, so no launcher-specific rule is needed.

Cores: Slurm binds srun tasks (``--cpu-bind``); torchrun does not bind its workers, so each
worker pins itself to its own contiguous slice of the task's CPUs (``LOCAL_RANK`` of
``LOCAL_WORLD_SIZE``) when there are at least as many CPUs as workers.

Threads: the CPUs Slurm gave the task (``SLURM_CPUS_PER_TASK``, narrowed by the affinity
mask) divided by the ranks that task starts (1 under srun, ``LOCAL_WORLD_SIZE`` under
torchrun). torchrun sets ``OMP_NUM_THREADS=1`` for its workers when it starts more than one
and the variable is unset; that ``1`` is replaced. Any other ``OMP_NUM_THREADS`` is the
user's and is kept. ``MLBENCH_NUM_THREADS`` always wins (also to ask for 1 thread per rank
under torchrun).
"""

from __future__ import annotations

import importlib.metadata
import os
import socket
import subprocess
from collections.abc import Iterable, Mapping
from pathlib import Path

import torch

from benchmarks.core import constants

#: Intra-op threads per rank, whatever the launcher or ``OMP_NUM_THREADS`` say.
THREADS_ENV = "MLBENCH_NUM_THREADS"
PACKAGE = "mlbench-reframe"


def cuda_device_index(local_rank: int, visible_devices: int) -> int:
    """The visible CUDA device of this rank: ``local_rank`` modulo the GPUs the task sees."""
    if visible_devices < 1:
        raise ValueError("no CUDA device is visible to this process")
    return local_rank % visible_devices


def ranks_in_task(launcher: str, environ: Mapping[str, str]) -> int:
    """Processes sharing this task's CPUs: torchrun's workers on the node, else 1."""
    if launcher == "torchrun":
        return max(1, int(environ.get("LOCAL_WORLD_SIZE", "1") or 1))
    return 1


def task_cpus(environ: Mapping[str, str], affinity: set[int]) -> int:
    """CPUs of this task: Slurm's ``--cpus-per-task``, never more than the affinity mask."""
    slurm_cpus = environ.get("SLURM_CPUS_PER_TASK", "")
    if slurm_cpus.isdigit() and int(slurm_cpus) > 0:
        return min(int(slurm_cpus), len(affinity)) if affinity else int(slurm_cpus)
    return max(1, len(affinity))


def own_cpus(mask: set[int], local_rank: int, ranks: int) -> set[int]:
    """Slice ``local_rank`` of ``ranks`` contiguous, equal slices of ``mask`` (the mask itself
    when it has fewer CPUs than ranks)."""
    ordered = sorted(mask)
    if ranks <= 1 or len(ordered) < ranks:
        return set(ordered)
    size = len(ordered) // ranks
    return set(ordered[local_rank * size:(local_rank + 1) * size])


def bind_torchrun_worker(launcher: str, mask: set[int]) -> None:
    """Pin this torchrun worker to its own slice of ``mask``, the task's CPUs (see the
    module doc)."""
    ranks = ranks_in_task(launcher, os.environ)
    if launcher != "torchrun" or ranks <= 1 or not mask:
        return
    cpus = own_cpus(mask, int(os.environ.get("LOCAL_RANK", "0")), ranks)
    if cpus != mask:
        os.sched_setaffinity(0, cpus)


def intra_op_threads(launcher: str, environ: Mapping[str, str], affinity: set[int]) -> int:
    """Threads for this rank's intra-op pool (see the module docstring for the precedence)."""
    explicit = environ.get(THREADS_ENV, "")
    if explicit:
        if not explicit.isdigit() or int(explicit) < 1:
            raise ValueError(f"{THREADS_ENV}={explicit!r}: expected a positive integer")
        return int(explicit)
    ranks = ranks_in_task(launcher, environ)
    omp = environ.get("OMP_NUM_THREADS", "")
    set_by_torchrun = launcher == "torchrun" and ranks > 1 and omp == "1"
    if omp.isdigit() and int(omp) > 0 and not set_by_torchrun:
        return int(omp)
    return max(1, task_cpus(environ, affinity) // ranks)


def affinity() -> set[int]:
    """CPUs this process may run on (empty where the OS cannot say)."""
    try:
        return set(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return set()


def compact_ranges(cpus: Iterable[int]) -> str:
    """``{0, 1, 2, 5, 7, 8}`` -> ``0-2,5,7-8`` (the form of ``taskset -c`` and Slurm)."""
    ordered = sorted(set(cpus))
    if not ordered:
        return "unknown"
    ranges, start, previous = [], ordered[0], ordered[0]
    for cpu in [*ordered[1:], None]:
        if cpu is not None and cpu == previous + 1:
            previous = cpu
            continue
        ranges.append(str(start) if start == previous else f"{start}-{previous}")
        if cpu is not None:
            start = previous = cpu
    return ",".join(ranges)


def select_device(device: torch.device, local_rank: int) -> torch.device:
    """This rank's device: for CUDA, ``local_rank`` modulo the visible GPUs, made current."""
    if device.type != "cuda":
        return device
    chosen = torch.device("cuda", cuda_device_index(local_rank, torch.cuda.device_count()))
    torch.cuda.set_device(chosen)
    return chosen


def apply_threads(launcher: str) -> int:
    """Pin a torchrun worker to its cores, size torch's intra-op pool, return the threads."""
    mask = affinity()  # the task's CPUs, read once: binding narrows them afterwards
    threads = intra_op_threads(launcher, os.environ, mask)
    bind_torchrun_worker(launcher, mask)
    torch.set_num_threads(threads)
    return threads


def rank_line(env, device: torch.device, threads: int) -> str:
    """The ``[mlbench] rank=...`` placement line of this rank (see ``constants``)."""
    fields: dict[str, object] = {
        "rank": f"{env.rank}/{env.world_size}",
        "local_rank": env.local_rank,
        "node": os.environ.get("SLURMD_NODENAME") or socket.gethostname(),
        "device": device,
        "launcher": env.launcher,
        "backend": env.backend or "none",
        "threads": threads,
        "cpus": compact_ranges(affinity()),
    }
    if device.type == "cuda":
        fields["gpu"] = torch.cuda.get_device_name(device)
        fields["gpu_pci"] = cuda_pci_bus_id(device)
    return constants.format_rank_line(fields)


def cuda_pci_bus_id(device: torch.device) -> str:
    """NVML's spelling of the PCI bus id of a CUDA device, e.g. ``00000000:19:00.0``: the rank
    line shows it, and the energy meter finds the rank's GPU in NVML by it."""
    props = torch.cuda.get_device_properties(device)
    return f"{props.pci_domain_id:08x}:{props.pci_bus_id:02x}:{props.pci_device_id:02x}.0"


def package_version() -> str:
    """``mlbench-reframe`` version, with ``+g<commit>`` where the code is a git checkout."""
    try:
        version = importlib.metadata.version(PACKAGE)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    source = Path(__file__).resolve().parents[2]
    if (source / ".git").exists():
        try:
            commit = subprocess.run(["git", "-C", str(source), "rev-parse", "--short=12", "HEAD"],
                                    capture_output=True, text=True, timeout=10, check=True)
            version += f"+g{commit.stdout.strip()}"
        except (OSError, subprocess.SubprocessError):
            pass
    return version


def _nvml_driver() -> str | None:
    try:
        import pynvml
    except ImportError:
        return None
    try:
        pynvml.nvmlInit()
        try:
            driver = pynvml.nvmlSystemGetDriverVersion()
        finally:
            pynvml.nvmlShutdown()
    except pynvml.NVMLError:
        return None
    return driver.decode() if isinstance(driver, bytes) else str(driver)


def environment(world_size: int, device: torch.device) -> dict[str, object]:
    """Metadata of the ``mlbench_environment`` event: every key of ``ENVIRONMENT_FIELDS``."""
    on_gpu = device.type == "cuda"
    nccl = None
    if on_gpu and torch.distributed.is_nccl_available():
        version = torch.cuda.nccl.version()
        nccl = ".".join(map(str, version)) if isinstance(version, tuple) else str(version)
    cudnn = torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None
    values = {
        "mlbench_version": package_version(),
        "torch_version": torch.__version__,
        "cuda_version": torch.version.cuda,
        "cudnn_version": None if cudnn is None else str(cudnn),
        "nccl_version": nccl,
        "gpu_model": torch.cuda.get_device_name(device) if on_gpu else None,
        "gpu_driver": _nvml_driver() if on_gpu else None,
        "world_size": world_size,
    }
    return {field: values[field] for field in constants.ENVIRONMENT_FIELDS}


def log_environment(log, world_size: int, device: torch.device) -> None:
    """Log ``mlbench_environment`` from rank 0 (the only rank whose logger writes)."""
    if log.enabled:
        log.event(constants.ENVIRONMENT, None, metadata=environment(world_size, device))
