"""Rank placement: the GPU each rank takes and the threads it runs, for each launch layout."""

from __future__ import annotations

import pytest
import torch

from benchmarks.core import constants, placement
from benchmarks.core.distributed import DistEnv

NODE_CPUS = set(range(16))


@pytest.mark.parametrize(("local_rank", "visible", "expected"), [
    (0, 4, 0), (3, 4, 3),   # torchrun / srun without binding: every GPU of the node visible
    (3, 1, 0), (1, 1, 0),   # --gpus-per-task=1, --gpu-bind=single:1, CUDA_VISIBLE_DEVICES wrapper
])
def test_cuda_device_for_each_visibility_layout(local_rank: int, visible: int,
                                                 expected: int) -> None:
    assert placement.cuda_device_index(local_rank, visible) == expected


def test_no_visible_gpu_is_an_error() -> None:
    with pytest.raises(ValueError, match="no CUDA device"):
        placement.cuda_device_index(0, 0)


def test_select_device_uses_the_visible_count(monkeypatch: pytest.MonkeyPatch) -> None:
    chosen = []
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    device = placement.select_device(torch.device("cuda"), local_rank=3)
    assert device == torch.device("cuda", 0) and chosen == [device]
    assert placement.select_device(torch.device("cpu"), 3) == torch.device("cpu")


def test_srun_rank_gets_its_tasks_cpus() -> None:
    env = {"SLURM_CPUS_PER_TASK": "8"}
    assert placement.intra_op_threads("srun", env, set(range(8))) == 8
    # Without binding the mask is the whole node: Slurm's count still rules.
    assert placement.intra_op_threads("srun", env, NODE_CPUS) == 8


def test_torchrun_ranks_share_the_task_and_replace_torchruns_one_thread() -> None:
    env = {"SLURM_CPUS_PER_TASK": "16", "LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}
    assert placement.intra_op_threads("torchrun", env, NODE_CPUS) == 4


def test_torchrun_without_slurm_splits_the_affinity_mask() -> None:
    env = {"LOCAL_WORLD_SIZE": "2", "OMP_NUM_THREADS": "1"}
    assert placement.intra_op_threads("torchrun", env, {0, 1, 2, 3, 4, 5}) == 3
    assert placement.intra_op_threads("torchrun", {"LOCAL_WORLD_SIZE": "8"}, {0, 1}) == 1


def test_users_thread_settings_are_kept() -> None:
    assert placement.intra_op_threads("srun", {"OMP_NUM_THREADS": "2",
                                               "SLURM_CPUS_PER_TASK": "8"}, NODE_CPUS) == 2
    # A single torchrun worker gets no OMP_NUM_THREADS from torchrun: a 1 there is the user's.
    assert placement.intra_op_threads("torchrun", {"OMP_NUM_THREADS": "1",
                                                   "LOCAL_WORLD_SIZE": "1"}, NODE_CPUS) == 1
    explicit = {placement.THREADS_ENV: "1", "LOCAL_WORLD_SIZE": "4", "OMP_NUM_THREADS": "1"}
    assert placement.intra_op_threads("torchrun", explicit, NODE_CPUS) == 1


def test_torchrun_workers_get_disjoint_slices_of_the_task() -> None:
    slices = [placement.own_cpus(set(range(8)), rank, 4) for rank in range(4)]
    assert slices == [{0, 1}, {2, 3}, {4, 5}, {6, 7}]
    assert placement.own_cpus({0, 1}, 1, 4) == {0, 1}  # fewer CPUs than ranks: shared
    assert placement.own_cpus({4, 5, 6}, 0, 1) == {4, 5, 6}


def test_bad_explicit_thread_count_names_the_variable() -> None:
    with pytest.raises(ValueError, match=placement.THREADS_ENV):
        placement.intra_op_threads("srun", {placement.THREADS_ENV: "many"}, NODE_CPUS)


@pytest.mark.parametrize(("cpus", "text"), [
    ({0, 1, 2, 5, 7, 8}, "0-2,5,7-8"), ({3}, "3"), (set(), "unknown"), ({4, 5, 6, 7}, "4-7")])
def test_compact_ranges(cpus: set[int], text: str) -> None:
    assert placement.compact_ranges(cpus) == text


def test_rank_line_round_trips_through_the_parser(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SLURMD_NODENAME", "nid001")
    monkeypatch.setattr(placement, "affinity", lambda: {4, 5, 6, 7})
    env = DistEnv(rank=1, world_size=4, local_rank=1, local_world_size=2, launcher="srun",
                  backend="gloo")
    line = placement.rank_line(env, torch.device("cpu"), 4)
    fields, = constants.parse_rank_lines(line)
    assert fields == {"rank": "1/4", "local_rank": "1", "node": "nid001", "device": "cpu",
                      "launcher": "srun", "backend": "gloo", "threads": "4", "cpus": "4-7"}


def test_environment_event_has_every_field_on_cpu() -> None:
    events = []

    class Logger:
        enabled = True

        def event(self, key, value=None, metadata=None):
            events.append((key, value, metadata))

    placement.log_environment(Logger(), 4, torch.device("cpu"))
    (key, value, metadata), = events
    assert key == constants.ENVIRONMENT and value is None
    assert tuple(metadata) == constants.ENVIRONMENT_FIELDS
    assert metadata["torch_version"] == torch.__version__ and metadata["world_size"] == 4
    assert metadata["gpu_model"] is None and metadata["gpu_driver"] is None
    assert metadata["mlbench_version"]
