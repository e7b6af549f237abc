"""The shared loop: optimizer steps with accumulation, block epochs, targets, NaN aborts."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.core import mllog
from benchmarks.core.config import ConfigSchema, build_config
from benchmarks.core.data import build_loader, subset_and_shard
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import NonFiniteLossError
from benchmarks.core.loop import Task, steps_per_epoch, train
from benchmarks.core.metrics import TopKAccuracy
from benchmarks.core.optim import build_optimizer, build_scheduler

CPU = torch.device("cpu")


class CountingSGD(torch.optim.SGD):
    """SGD that counts its steps."""

    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self.steps = 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def make_task(samples: int = 40, batch: int = 4, loss_scale: float = 1.0) -> Task:
    torch.manual_seed(0)
    inputs = torch.randn(samples, 2)
    labels = (inputs[:, 0] > 0).long()
    dataset = TensorDataset(inputs, labels)
    loader = build_loader(dataset, batch, train=True, env=DistEnv(), device=CPU, num_workers=0)
    eval_loader = build_loader(dataset, batch, train=False, env=DistEnv(), device=CPU,
                               num_workers=0)
    return Task(model=nn.Linear(2, 2), train_loader=loader, eval_loader=eval_loader,
                loss_fn=lambda out, y: nn.functional.cross_entropy(out, y) * loss_scale,
                metric=TopKAccuracy(1), train_samples=samples, eval_samples=samples)


def run(task: Task, **training) -> tuple[object, CountingSGD]:
    raw = {"data": {"gradient_accumulation": training.pop("accumulation", 1)},
           "training": {"n_epochs": 2, **training}, "opt": {"lr": 0.5}}
    config = build_config(raw, ConfigSchema())
    optimizer = CountingSGD(task.model.parameters(), lr=0.5)
    steps = steps_per_epoch(task.train_loader, config)
    scheduler = build_scheduler(optimizer, config.lr_schedule, 0.5, steps, steps * 2)
    result = train(task, task.model, optimizer, scheduler, config, DistEnv(), CPU,
                   mllog.MLLogger(enabled=False))
    return result, optimizer


def test_optimizer_steps_every_accumulation_group_including_a_short_last_one():
    result, optimizer = run(make_task(), accumulation=3)
    assert optimizer.steps == 2 * 4
    assert result.epochs_run == 2 and len(result.throughputs) == 2


def test_block_epochs_take_a_fixed_number_of_steps_from_a_cycling_loader():
    result, optimizer = run(make_task(), accumulation=2, steps_per_epoch=7)
    assert optimizer.steps == 14


def test_stops_when_the_target_is_reached():
    result, _ = run(make_task(), n_epochs=20, target=0.85)
    assert result.reached_target and result.last_metric >= 0.85
    assert result.epochs_run < 20


def test_non_finite_loss_aborts_naming_epoch_and_step():
    with pytest.raises(NonFiniteLossError, match=r"loss is (nan|inf) at epoch 1"):
        run(make_task(loss_scale=float("inf")), nan_check_every=3)


def test_real_optimizer_on_the_loop_learns():
    task = make_task()
    config = build_config({"training": {"n_epochs": 3}, "opt": {"name": "adam", "lr": 0.05}},
                          ConfigSchema())
    optimizer = build_optimizer(task.model, config.opt, 0.05)
    scheduler = build_scheduler(optimizer, config.lr_schedule, 0.05, 10, 30)
    result = train(task, task.model, optimizer, scheduler, config, DistEnv(), CPU,
                   mllog.MLLogger(enabled=False))
    assert result.last_metric > 0.8


def test_ranks_get_disjoint_shards():
    files = [Path(f"f{i:02d}") for i in range(10)]
    shards = [subset_and_shard(files, 8, rank, 3) for rank in range(3)]
    assert sorted(sum(shards, [])) == files[:8]
    dataset = TensorDataset(torch.arange(12))
    seen = []
    for rank in range(2):
        loader = build_loader(dataset, 3, train=True, env=DistEnv(rank=rank, world_size=2),
                              device=CPU, num_workers=0)
        seen.append({int(x) for (batch,) in loader for x in batch})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12
