"""Process-group set-up that works under torchrun, under srun, and as a single process.

Ranks come from torchrun's variables (RANK, WORLD_SIZE, LOCAL_RANK) when torchrun launched
us, else from Slurm's (SLURM_PROCID, SLURM_NTASKS, SLURM_LOCALID) inside a job step with more
than one task, else the run is a single process and no process group is created.

Under srun, the rendezvous address is the first host of SLURM_JOB_NODELIST and the port is
derived from the job id, so several jobs sharing a node do not collide.

The backend is chosen as ``auto`` says: ``mpi`` when torch has it and torchrun did not launch
us (srun with an MPI build of torch), else ``nccl`` on CUDA, else ``gloo``; the config's
``distributed.backend`` overrides the choice. Init and every collective are bounded by
``distributed.timeout_s`` so that a dead rank ends the job instead of hanging it.
"""

from __future__ import annotations

import datetime
import os
import re
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist

from benchmarks.core.errors import ConfigError

SLURM_PORT_BASE = 20000
SLURM_PORT_SPAN = 20000


@dataclass(frozen=True)
class DistEnv:
    """Where this process sits in the job."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0
    local_world_size: int = 1
    launcher: str = "single"
    backend: str = ""

    @property
    def is_distributed(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def detect_env(environ: dict[str, str] | None = None) -> DistEnv:
    """Read rank, world size and local rank from torchrun's or Slurm's variables."""
    env = os.environ if environ is None else environ
    if "TORCHELASTIC_RUN_ID" in env or ("LOCAL_RANK" in env and "WORLD_SIZE" in env):
        return DistEnv(
            rank=int(env["RANK"]),
            world_size=int(env["WORLD_SIZE"]),
            local_rank=int(env.get("LOCAL_RANK", 0)),
            local_world_size=int(env.get("LOCAL_WORLD_SIZE", 1)),
            launcher="torchrun",
        )
    ntasks = int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1)
    if "SLURM_STEP_ID" in env and "SLURM_PROCID" in env and ntasks > 1:
        nnodes = int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1")) or 1)
        tasks_on_node = env.get("SLURM_STEP_TASKS_PER_NODE", env.get("SLURM_TASKS_PER_NODE", ""))
        return DistEnv(
            rank=int(env["SLURM_PROCID"]),
            world_size=ntasks,
            local_rank=int(env.get("SLURM_LOCALID", 0)),
            local_world_size=_first_count(tasks_on_node) or max(1, ntasks // nnodes),
            launcher="srun",
        )
    return DistEnv()


def choose_backend(requested: str, device: torch.device, env: DistEnv) -> str:
    """The backend for this run: the config's choice, or mpi > nccl (CUDA) > gloo."""
    if requested == "mpi" and not dist.is_mpi_available():
        raise ConfigError("config key 'distributed.backend': mpi requested but this torch build "
                          "has no MPI support")
    if requested == "nccl" and device.type != "cuda":
        raise ConfigError("config key 'distributed.backend': nccl needs --device cuda")
    if requested != "auto":
        return requested
    if dist.is_mpi_available() and env.launcher != "torchrun":
        return "mpi"
    return "nccl" if device.type == "cuda" else "gloo"


def init_process_group(requested_backend: str, device: torch.device, timeout_s: int,
                       environ: dict[str, str] | None = None) -> DistEnv:
    """Start the process group when the job has several ranks; return where we sit."""
    env = detect_env(environ)
    if not env.is_distributed:
        return env
    backend = choose_backend(requested_backend, device, env)
    if env.launcher == "srun" and backend != "mpi":
        _export_slurm_rendezvous()
    timeout = datetime.timedelta(seconds=timeout_s)
    if backend == "mpi":
        dist.init_process_group("mpi", timeout=timeout)
    else:
        dist.init_process_group(
            backend, rank=env.rank, world_size=env.world_size, timeout=timeout,
            device_id=device if device.type == "cuda" else None,
        )
    return DistEnv(env.rank, env.world_size, env.local_rank, env.local_world_size,
                   env.launcher, backend)


def slurm_master_port(job_id: str) -> int:
    """A rendezvous port derived from the job id, so jobs sharing a node do not collide."""
    return SLURM_PORT_BASE + int(re.sub(r"\D", "", job_id) or 0) % SLURM_PORT_SPAN


def first_host(nodelist: str) -> str:
    """The first host name of a Slurm node list such as ``node[3-5,9],gpu1``."""
    try:
        out = subprocess.run(["scontrol", "show", "hostnames", nodelist], check=True,
                             capture_output=True, text=True, timeout=30).stdout
        if out.strip():
            return out.split()[0]
    except (OSError, subprocess.SubprocessError):
        pass
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist)
    if not match:
        return nodelist
    prefix, ranges = match.groups()
    if not ranges:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    return f"{prefix}{first}"


def shutdown() -> None:
    """Leave the process group if one was started."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def barrier() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.barrier()


def all_reduce_sum(tensor: torch.Tensor) -> torch.Tensor:
    """Sum ``tensor`` over ranks in place (no-op in a single process) and return it."""
    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(tensor, op=dist.ReduceOp.SUM)
    return tensor


def _export_slurm_rendezvous() -> None:
    """MASTER_ADDR / MASTER_PORT for env:// init under srun, unless the user set them."""
    os.environ.setdefault("MASTER_ADDR", first_host(os.environ.get("SLURM_JOB_NODELIST",
                                                                   "localhost")))
    os.environ.setdefault("MASTER_PORT", str(slurm_master_port(os.environ.get("SLURM_JOB_ID",
                                                                              "0"))))


def _first_count(tasks_per_node: str) -> int:
    """First task count of a Slurm tasks-per-node string such as ``2(x3),1``."""
    match = re.match(r"(\d+)", tasks_per_node)
    return int(match.group(1)) if match else 0
