"""The shared loop: optimizer steps with accumulation, block epochs, targets, NaN aborts,
the task's extension points, checkpoints at a stop signal and exact resumption."""

from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import TensorDataset

from benchmarks.core import mllog
from benchmarks.core.checkpoint import Checkpointer, StopRequest
from benchmarks.core.config import ConfigSchema, build_config
from benchmarks.core.data import WeightedDistributedSampler, build_loader, take_subset
from benchmarks.core.distributed import DistEnv
from benchmarks.core.errors import ConfigError, InputError, NonFiniteLossError, PreemptedError
from benchmarks.core.loop import Task, Trainer, steps_per_epoch
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
    result = Trainer(task, task.model, optimizer, scheduler, config, DistEnv(), CPU,
                     mllog.MLLogger(enabled=False)).run()
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
    result = Trainer(task, task.model, optimizer, scheduler, config, DistEnv(), CPU,
                     mllog.MLLogger(enabled=False)).run()
    assert result.last_metric > 0.8


def test_after_step_runs_once_per_optimizer_step():
    task = make_task()
    calls = []
    task.after_step = lambda: calls.append(task.model.weight.detach().clone())
    _, optimizer = run(task, accumulation=3)
    assert len(calls) == optimizer.steps == 8
    assert not torch.equal(calls[0], calls[1])  # called after the step changed the weights


def test_the_tasks_own_steps_per_epoch_make_block_epochs():
    task = make_task()
    task.steps_per_epoch = 13  # more than a pass (10 steps): the loader cycles
    _, optimizer = run(task)
    assert optimizer.steps == 2 * 13


def test_device_transform_sees_every_training_and_evaluation_batch_on_the_device():
    task = make_task()
    seen = []

    def transform(batch):
        inputs, targets = batch
        seen.append(inputs.device)
        return inputs * 2, targets

    task.device_transform = transform
    run(task, n_epochs=1)
    assert len(seen) == 10 + 10 and set(seen) == {CPU}


def test_accumulation_all_reduces_on_the_last_micro_batch_of_each_step_only(tmp_path):
    torch.distributed.init_process_group("gloo", init_method=f"file://{tmp_path}/store",
                                         rank=0, world_size=1)
    try:
        task = make_task(samples=24)
        model = nn.parallel.DistributedDataParallel(task.model)
        syncs = []
        model.register_forward_pre_hook(
            lambda module, args: syncs.append(module.require_backward_grad_sync))
        config = build_config({"data": {"gradient_accumulation": 4},
                               "training": {"n_epochs": 1}}, ConfigSchema())
        optimizer = CountingSGD(model.parameters(), lr=0.5)
        scheduler = build_scheduler(optimizer, config.lr_schedule, 0.5, 2, 2)
        Trainer(task, model, optimizer, scheduler, config, DistEnv(), CPU,
                mllog.MLLogger(enabled=False)).run()
    finally:
        torch.distributed.destroy_process_group()
    training = syncs[:6]  # 6 micro-batches (steps of 4 and 2), then evaluation
    assert training == [False, False, False, True, False, True]
    assert optimizer.steps == 2


def test_weighted_sampler_draws_by_weight_and_splits_one_draw_over_the_ranks():
    weights = [0.0, 1.0, 3.0] * 200
    single = list(WeightedDistributedSampler(weights, 0, 1, seed=5))
    assert [draw for _, draw in single] == list(range(600))
    ranks = [WeightedDistributedSampler(weights, rank, 2, seed=5) for rank in range(2)]
    draws = [list(sampler) for sampler in ranks]
    assert [len(draw) for draw in draws] == [300, 300]
    assert draws == [single[0::2], single[1::2]]  # one draw, dealt out to the ranks
    counts = [sum(index % 3 == kind for index, _ in single) for kind in range(3)]
    assert counts[0] == 0 and 2.4 < counts[2] / counts[1] < 3.8
    ranks[0].set_epoch(1)
    assert list(ranks[0]) != draws[0]
    with pytest.raises(InputError, match="weights"):
        WeightedDistributedSampler([0.0, 0.0], 0, 1)
    with pytest.raises(InputError, match="fewer than the 4 ranks"):
        WeightedDistributedSampler([1.0, 1.0], 0, 4)


def test_subset_is_the_head_of_the_sorted_list():
    files = [Path(f"f{i:02d}") for i in range(10)]
    assert take_subset(files, 8, "data.train_subset", "here") == files[:8]
    assert take_subset(files, 0, "data.train_subset", "here") == files
    with pytest.raises(InputError, match="here: data.train_subset asks for 11 files, found 10"):
        take_subset(files, 11, "data.train_subset", "here")


def test_ranks_get_disjoint_shards():
    dataset = TensorDataset(torch.arange(12))
    seen = []
    for rank in range(2):
        loader = build_loader(dataset, 3, train=True, env=DistEnv(rank=rank, world_size=2),
                              device=CPU, num_workers=0)
        seen.append({int(x) for (batch,) in loader for x in batch})
    assert not seen[0] & seen[1] and len(seen[0] | seen[1]) == 12


class SignalAfter:
    """A loss function that raises a stop request after ``steps`` calls, like a SIGUSR1."""

    def __init__(self, stop: StopRequest, calls: int) -> None:
        self.stop, self.calls = stop, calls

    def __call__(self, outputs, targets):
        self.calls -= 1
        if self.calls == 0:
            self.stop.signal_name = "SIGUSR1"
        return nn.functional.cross_entropy(outputs, targets)


def checkpointed_run(tmp_path: Path, stop: StopRequest | None = None, loss_fn=None,
                     steps_per_epoch: int = 0, n_epochs: int = 4) -> Trainer:
    task = make_task()
    task.train_loader = build_loader(task.train_loader.dataset, 4, train=True, env=DistEnv(),
                                     device=CPU, num_workers=1, seed=3)
    if loss_fn is not None:
        task.loss_fn = loss_fn
    config = build_config({"training": {"n_epochs": n_epochs, "nan_check_every": 1,
                                        "steps_per_epoch": steps_per_epoch,
                                        "checkpoint_dir": str(tmp_path),
                                        "checkpoint_every": 1},
                           "opt": {"name": "adam", "lr": 0.05}}, ConfigSchema())
    optimizer = build_optimizer(task.model, config.opt, 0.05)
    steps = 10 if not steps_per_epoch else steps_per_epoch
    scheduler = build_scheduler(optimizer, config.lr_schedule, 0.05, steps, steps * 4)
    checkpointer = Checkpointer(tmp_path, {"test": 1}, DistEnv())
    trainer = Trainer(task, task.model, optimizer, scheduler, config, DistEnv(), CPU,
                      mllog.MLLogger(enabled=False), checkpointer, stop or StopRequest())
    trainer.run()
    return trainer


@pytest.mark.parametrize("steps_per_epoch", [0, 7])
def test_stop_signal_checkpoints_mid_epoch_and_resume_matches_uninterrupted(tmp_path,
                                                                           steps_per_epoch):
    torch.manual_seed(0)
    reference = checkpointed_run(tmp_path / "reference", steps_per_epoch=steps_per_epoch)
    stop = StopRequest()
    torch.manual_seed(0)
    with pytest.raises(PreemptedError, match="stopped by SIGUSR1 at epoch 2 step 3"):
        checkpointed_run(tmp_path / "preempted", stop, SignalAfter(stop, 3 + (steps_per_epoch
                                                                             or 10)),
                         steps_per_epoch=steps_per_epoch)
    assert (tmp_path / "preempted" / "latest").read_text().strip() == "epoch0002-step0000003"
    torch.manual_seed(123)
    resumed = checkpointed_run(tmp_path / "preempted", steps_per_epoch=steps_per_epoch)
    for expected, actual in zip(reference.model.parameters(), resumed.model.parameters(),
                                strict=True):
        assert torch.equal(expected, actual)
    assert resumed.last_metric == reference.last_metric


def test_resume_from_an_epoch_end_checkpoint_matches_uninterrupted(tmp_path):
    torch.manual_seed(0)
    reference = checkpointed_run(tmp_path / "reference")
    torch.manual_seed(0)
    checkpointed_run(tmp_path / "killed", n_epochs=2)
    assert (tmp_path / "killed" / "latest").read_text().strip() == "epoch0003-step0000000"
    torch.manual_seed(7)
    resumed = checkpointed_run(tmp_path / "killed")
    for expected, actual in zip(reference.model.parameters(), resumed.model.parameters(),
                                strict=True):
        assert torch.equal(expected, actual)


def test_checkpoint_of_another_configuration_is_refused(tmp_path):
    Checkpointer(tmp_path, {"model": "a"}, DistEnv()).save(1, 0, {"x": 1})
    with pytest.raises(ConfigError, match="another configuration"):
        Checkpointer(tmp_path, {"model": "b"}, DistEnv()).latest()
    assert not list(tmp_path.glob(".*.tmp"))
