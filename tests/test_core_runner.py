"""The runner's contract on a tiny in-process benchmark: exit codes, and settings it applies."""

import os
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.core.config import ConfigSchema, GlobalContext
from benchmarks.core.data import build_loader
from benchmarks.core.errors import EXIT_BAD_INPUT, EXIT_OK, EXIT_TARGET_MISSED
from benchmarks.core.loop import Task
from benchmarks.core.metrics import TopKAccuracy
from benchmarks.core.runner import BenchmarkSpec, main


def build_task(context: GlobalContext) -> Task:
    torch.manual_seed(0)
    inputs = torch.randn(32, 2)
    dataset = TensorDataset(inputs, (inputs[:, 0] > 0).long())
    common = {"env": context.env, "device": context.device, "num_workers": 0}
    return Task(model=nn.Linear(2, 2),
                train_loader=build_loader(dataset, context.cfg.data.local_batch_size,
                                          train=True, **common),
                eval_loader=build_loader(dataset, 8, train=False, **common),
                loss_fn=nn.functional.cross_entropy, metric=TopKAccuracy(1),
                train_samples=32, eval_samples=32)


@pytest.fixture
def tiny(tmp_path: Path) -> BenchmarkSpec:
    (tmp_path / "config.yaml").write_text(
        "data: {global_batch_size: 8, num_workers: 0}\n"
        "opt: {name: adam, lr: 0.05}\n"
        "training: {n_epochs: 2, target: 0.55}\n")
    return BenchmarkSpec(name="tiny", mllog_name="tiny", problem="classification",
                         model_name="linear", dataset="random points", folder=tmp_path,
                         schema=ConfigSchema(), build_model=lambda config: nn.Linear(2, 2),
                         build_task=build_task, synthesize=lambda outdir, samples, seed: None)


@pytest.mark.parametrize("overrides, exit_code", [
    ([], EXIT_OK),
    (["training.target=1.01"], EXIT_TARGET_MISSED),
    (["training.no_such_key=1"], EXIT_BAD_INPUT),
])
def test_exit_codes(tiny, capsys, overrides, exit_code):
    argv = ["--device", "cpu"] + [arg for key in overrides for arg in ("--set", key)]
    assert main(tiny, argv) == exit_code
    if exit_code == EXIT_BAD_INPUT:
        assert "training.no_such_key" in capsys.readouterr().err


@pytest.fixture
def restore_determinism():
    flags = (torch.are_deterministic_algorithms_enabled(), torch.backends.cudnn.deterministic,
             torch.backends.cudnn.benchmark, os.environ.get("CUBLAS_WORKSPACE_CONFIG"))
    yield
    torch.use_deterministic_algorithms(flags[0])
    torch.backends.cudnn.deterministic, torch.backends.cudnn.benchmark = flags[1:3]
    if flags[3] is None:
        os.environ.pop("CUBLAS_WORKSPACE_CONFIG", None)
    else:
        os.environ["CUBLAS_WORKSPACE_CONFIG"] = flags[3]


def test_deterministic_training_switches_torch_to_deterministic_algorithms(
        tiny, restore_determinism, monkeypatch):
    monkeypatch.delenv("CUBLAS_WORKSPACE_CONFIG", raising=False)
    torch.use_deterministic_algorithms(False)
    torch.backends.cudnn.benchmark = True
    assert main(tiny, ["--device", "cpu"]) == EXIT_OK
    assert not torch.are_deterministic_algorithms_enabled()

    assert main(tiny, ["--device", "cpu", "--set", "training.deterministic=true"]) == EXIT_OK
    assert torch.are_deterministic_algorithms_enabled()
    assert torch.backends.cudnn.deterministic and not torch.backends.cudnn.benchmark
    assert os.environ["CUBLAS_WORKSPACE_CONFIG"] == ":4096:8"
    assert torch.empty(8).isnan().all()  # uninitialised memory is filled, even on a CPU
