"""Checkpoints hold only tensors, numbers and strings and are read without unpickling code."""

import os
import random
from pathlib import Path

import numpy as np
import pytest
import torch

from benchmarks.core.checkpoint import Checkpointer, capture_rng, restore_rng
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import InputError
from tests.conftest import run_mlbench


class Payload:
    """What an attacker would put in a checkpoint: unpickling it runs ``mkdir MARKER``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


def saved_checkpoint(folder: Path) -> Path:
    """A complete checkpoint in ``folder``; returns its state file."""
    checkpointer = Checkpointer(folder, {"benchmark": "test"}, DistEnv())
    return checkpointer.save(1, 2, {"model": {"weight": torch.ones(3)}, "epoch": 1}) / "state.pt"


def test_checkpoint_round_trip_restores_state_and_every_random_generator(tmp_path):
    random.seed(1)
    np.random.seed(2)
    torch.manual_seed(3)
    random.gauss(0, 1)  # leaves a cached Gaussian in Python's generator state
    state_file = saved_checkpoint(tmp_path)
    expected = (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1))
    random.seed(9)
    np.random.seed(9)
    torch.manual_seed(9)

    state = Checkpointer(tmp_path, {"benchmark": "test"}, DistEnv()).latest()
    assert torch.equal(state["model"]["weight"], torch.ones(3)) and state["epoch"] == 1
    restore_rng(state["rng"])
    assert (random.random(), random.gauss(0, 1), np.random.rand(), torch.rand(1)) == expected
    assert state_file.exists()


def test_random_generator_state_is_tensors_and_numbers_only():
    def kinds(value):
        if isinstance(value, dict):
            return set().union(*(kinds(item) for item in value.values()))
        if isinstance(value, list):
            return set().union(*(kinds(item) for item in value))
        return {type(value)}

    assert kinds(capture_rng()) <= {torch.Tensor, int, float, type(None)}


def test_a_checkpoint_holding_a_pickled_object_is_refused_without_running_it(tmp_path):
    state_file = saved_checkpoint(tmp_path / "checkpoints")
    marker = tmp_path / "code-ran"
    torch.save({"model": {}, "identity": {"benchmark": "test"}, "payload": Payload(marker)},
               state_file)
    with pytest.raises(InputError) as refused:
        Checkpointer(tmp_path / "checkpoints", {"benchmark": "test"}, DistEnv()).latest()
    message = str(refused.value)
    assert message.startswith(f"{state_file}: refused: holds a pickled object")
    assert "mkdir" in message and "\n" not in message
    assert not marker.exists()


def test_saving_anything_but_tensors_numbers_and_strings_is_refused(tmp_path):
    checkpointer = Checkpointer(tmp_path, {"benchmark": "test"}, DistEnv())
    with pytest.raises(TypeError, match=r"checkpoint entry state\.optimizer\.extra: a Payload"):
        checkpointer.save(1, 0, {"optimizer": {"extra": Payload(tmp_path / "x")}})
    assert not list(tmp_path.iterdir())  # nothing written


def test_training_refuses_to_resume_from_a_pickled_object(resnet_data, tmp_path):
    checkpoints = tmp_path / "checkpoints"
    state_file = saved_checkpoint(checkpoints)
    marker = tmp_path / "code-ran"
    torch.save({"payload": Payload(marker)}, state_file)
    done = run_mlbench("train", "resnet50", "--config", "smoke", "--data-dir", str(resnet_data),
                       "--set", f"training.checkpoint_dir={checkpoints}")
    assert done.returncode == 2, done.stderr
    errors = [line for line in done.stderr.splitlines() if "error:" in line]
    assert errors == [f"mlbench resnet50: error: {state_file}: refused: holds a pickled object "
                      f"({os.mkdir.__module__}.mkdir); a checkpoint may hold only tensors, "
                      "numbers and strings"]
    assert "Traceback" not in done.stderr and not marker.exists()
