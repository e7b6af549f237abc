"""Rank discovery from torchrun and Slurm variables, rendezvous address and port, backend."""

import pytest
import torch

from benchmarks.core.distributed import (
    choose_backend,
    detect_env,
    first_host,
    slurm_master_port,
)
from benchmarks.core.errors import ConfigError


def test_single_process_without_launcher():
    env = detect_env({})
    assert (env.rank, env.world_size, env.launcher) == (0, 1, "single")
    assert not env.is_distributed


def test_torchrun_variables():
    env = detect_env({"TORCHELASTIC_RUN_ID": "x", "RANK": "3", "WORLD_SIZE": "4",
                      "LOCAL_RANK": "1", "LOCAL_WORLD_SIZE": "2", "SLURM_PROCID": "0",
                      "SLURM_NTASKS": "2", "SLURM_STEP_ID": "0"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (3, 4, 1, 2)
    assert env.launcher == "torchrun"


def test_srun_variables():
    env = detect_env({"SLURM_STEP_ID": "0", "SLURM_PROCID": "5", "SLURM_NTASKS": "8",
                      "SLURM_LOCALID": "1", "SLURM_STEP_NUM_NODES": "4",
                      "SLURM_STEP_TASKS_PER_NODE": "2(x4)"})
    assert (env.rank, env.world_size, env.local_rank, env.local_world_size) == (5, 8, 1, 2)
    assert env.launcher == "srun"


def test_batch_script_outside_a_step_is_single():
    assert detect_env({"SLURM_PROCID": "0", "SLURM_NTASKS": "4"}).launcher == "single"


def test_master_port_is_stable_per_job_and_in_range():
    assert slurm_master_port("12345") == slurm_master_port("12345")
    assert slurm_master_port("12345") != slurm_master_port("12346")
    for job in ("0", "1", "99999999", "4242_7"):
        assert 20000 <= slurm_master_port(job) < 40000


@pytest.mark.parametrize("nodelist, first", [
    ("node1", "node1"), ("node[3-5,9]", "node3"), ("gpu[07-08],cpu1", "gpu07"),
])
def test_first_host_of_nodelist(nodelist, first):
    assert first_host(nodelist) == first


def test_backend_choice():
    cpu, single = torch.device("cpu"), detect_env({})
    expected = "mpi" if torch.distributed.is_mpi_available() else "gloo"
    assert choose_backend("auto", cpu, single) == expected
    assert choose_backend("gloo", cpu, single) == "gloo"
    with pytest.raises(ConfigError, match="distributed.backend"):
        choose_backend("nccl", cpu, single)
