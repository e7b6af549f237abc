"""The one training loop every benchmark runs, readable top to bottom.

``train`` runs epochs until the quality target is reached or ``training.n_epochs`` is
spent. An epoch is one pass over the training loader, or, with ``training.steps_per_epoch``,
a fixed block of optimizer steps over a loader that cycles (for benchmarks that evaluate
every N samples). Each optimizer step accumulates ``data.gradient_accumulation``
micro-batches (DDP skips the all-reduce on all but the last). Losses stay on the device and
are read once per ``training.nan_check_every`` steps; a non-finite loss aborts the run naming
the epoch and step. Throughput is measured over the training steps alone; evaluation runs
every ``training.eval_every`` epochs and after the last, with the metric reduced over ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.core import mllog
from benchmarks.core.config import Config
from benchmarks.core.data import batch_size_of, to_device
from benchmarks.core.distributed import DistEnv, all_reduce_sum
from benchmarks.core.errors import ConfigError, NonFiniteLossError
from benchmarks.core.metrics import SumMetric


@dataclass
class Task:
    """What a benchmark hands to the loop.

    Batches are ``(inputs, targets)``; ``inputs`` is a tensor or a dict of tensors (passed to
    the model as keyword arguments). ``loss_fn(outputs, targets)`` returns a scalar tensor
    and ``metric.update(outputs, targets)`` accumulates the quality metric.
    ``train_samples`` / ``eval_samples`` are global dataset sizes for the MLPerf log;
    ``hyperparameters`` are extra MLPerf keys the benchmark logs at init.
    """

    model: nn.Module
    train_loader: Iterable
    eval_loader: Iterable
    loss_fn: Callable[[Any, Any], torch.Tensor]
    metric: SumMetric
    train_samples: int
    eval_samples: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None


@dataclass
class LoopResult:
    """How the run ended."""

    reached_target: bool
    epochs_run: int
    last_metric: float | None
    throughputs: list[float]


def steps_per_epoch(loader: Iterable, cfg: Config) -> int:
    """Optimizer steps in one epoch: configured, or one pass over the loader."""
    if cfg.training.steps_per_epoch:
        return cfg.training.steps_per_epoch
    try:
        micro_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        raise ConfigError("config key 'training.steps_per_epoch': must be set for a streaming "
                          "dataset without a length") from None
    if micro_batches == 0:
        raise ConfigError("config key 'data.global_batch_size': larger than the training set "
                          "on this rank (no full batch)")
    return math.ceil(micro_batches / cfg.data.gradient_accumulation)


def train(task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
          scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Config, env: DistEnv,
          device: torch.device, log: mllog.MLLogger) -> LoopResult:
    """Train and evaluate until the target or ``n_epochs``; ``model`` may be DDP/FSDP-wrapped."""
    training = cfg.training
    accumulation = cfg.data.gradient_accumulation
    steps = steps_per_epoch(task.train_loader, cfg)
    batches = _MicroBatches(task.train_loader, accumulation, steps, bool(training.steps_per_epoch))
    autocast = _autocast(device, training.amp)
    throughputs: list[float] = []
    metric_value = None
    reached = False
    epoch = 0
    block_first_epoch = 1
    for epoch in range(1, training.n_epochs + 1):
        if epoch == block_first_epoch:
            log.start(mllog.constants.BLOCK_START, metadata={
                "first_epoch_num": epoch,
                "epoch_count": min(training.eval_every, training.n_epochs - epoch + 1)})
        log.start(mllog.constants.EPOCH_START, metadata={"epoch_num": epoch})
        model.train()
        started = time.perf_counter()
        samples, loss_sum = _train_epoch(model, task, optimizer, scheduler, batches.epoch(),
                                         accumulation, training.nan_check_every,
                                         cfg.opt.clip_grad_norm, autocast, device,
                                         training.channels_last, epoch)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        elapsed = time.perf_counter() - started
        totals = all_reduce_sum(torch.tensor([samples, loss_sum], dtype=torch.float64,
                                             device=device)).cpu()
        throughput = float(totals[0]) / elapsed
        throughputs.append(throughput)
        log.end(mllog.constants.EPOCH_STOP, metadata={"epoch_num": epoch})
        log.event(mllog.THROUGHPUT, throughput, metadata={"epoch_num": epoch,
                                                           "epoch_time_s": elapsed})
        _progress(env, f"epoch {epoch}/{training.n_epochs}: loss "
                       f"{float(totals[1]) / max(float(totals[0]), 1):.4f}, "
                       f"{throughput:.1f} samples/s, {elapsed:.1f} s")

        if epoch % training.eval_every == 0 or epoch == training.n_epochs:
            log.end(mllog.constants.BLOCK_STOP, metadata={"first_epoch_num": block_first_epoch})
            block_first_epoch = epoch + 1
            log.start(mllog.constants.EVAL_START, metadata={"epoch_num": epoch})
            metric_value = evaluate(model, task, device, autocast, training.channels_last)
            log.event(task.metric.mllog_key, metric_value, metadata={"epoch_num": epoch})
            log.end(mllog.constants.EVAL_STOP, metadata={"epoch_num": epoch})
            reached = task.metric.reached(metric_value, training.target)
            _progress(env, f"epoch {epoch}: {task.metric.name} {metric_value:.4f} "
                           f"(target {training.target})")
            if reached:
                break
    log.event(mllog.PEAK_MEMORY, peak_memory_bytes(device), metadata={"device": str(device)})
    return LoopResult(reached, epoch, metric_value, throughputs)


def _train_epoch(model: nn.Module, task: Task, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler,
                 micro_batches: Iterator[tuple[Any, int, int]], accumulation: int,
                 nan_check_every: int, clip_grad_norm: float, autocast: Any,
                 device: torch.device, channels_last: bool, epoch: int) -> tuple[int, float]:
    """One epoch of optimizer steps; returns (samples seen on this rank, summed sample loss)."""
    samples = 0
    losses: list[torch.Tensor] = []
    window_start = 1
    loss_sum = 0.0
    step = 0
    optimizer.zero_grad(set_to_none=True)
    for batch, position, group_size in micro_batches:
        inputs, targets = to_device(batch, device, channels_last)
        is_boundary = position == group_size - 1
        sync = contextlib.nullcontext() if is_boundary or not hasattr(model, "no_sync") \
            else model.no_sync()
        with sync:
            with autocast:
                outputs = model(**inputs) if isinstance(inputs, dict) else model(inputs)
                loss = task.loss_fn(outputs, targets)
            (loss / group_size).backward()
        count = batch_size_of(inputs)
        samples += count
        losses.append(loss.detach() * count)
        if not is_boundary:
            continue
        if clip_grad_norm:
            nn.utils.clip_grad_norm_(model.parameters(), clip_grad_norm)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        if step % nan_check_every == 0:
            loss_sum += _checked_sum(losses, epoch, window_start)
            losses, window_start = [], step + 1
    if losses:
        loss_sum += _checked_sum(losses, epoch, window_start)
    return samples, loss_sum


def _checked_sum(losses: list[torch.Tensor], epoch: int, first_step: int) -> float:
    """Sum of a window of per-step losses (one host sync), or abort at the first bad step."""
    stacked = torch.stack(losses).float()
    finite = torch.isfinite(stacked)
    if not bool(finite.all()):
        bad = int((~finite).nonzero()[0, 0])
        raise NonFiniteLossError(f"loss is {stacked[bad].item()} at epoch {epoch} "
                                 f"micro-batch {bad + 1} of the window starting at step "
                                 f"{first_step}")
    return float(stacked.sum())


@torch.no_grad()
def evaluate(model: nn.Module, task: Task, device: torch.device, autocast: Any,
             channels_last: bool) -> float:
    """The metric over the whole evaluation loader, reduced over ranks."""
    model.eval()
    task.metric.reset()
    for batch in task.eval_loader:
        inputs, targets = to_device(batch, device, channels_last)
        with autocast:
            outputs = model(**inputs) if isinstance(inputs, dict) else model(inputs)
        task.metric.update(outputs, targets)
    return task.metric.compute(device)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _autocast(device: torch.device, amp: bool) -> Any:
    if not amp:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _progress(env: DistEnv, message: str) -> None:
    if env.is_main:
        print(f"[mlbench] {message}", file=sys.stderr, flush=True)


class _MicroBatches:
    """Yields ``(batch, position_in_group, group_size)`` for each epoch's optimizer steps.

    In pass mode an epoch is one pass over the loader and the last group may be short. In
    block mode an epoch takes ``steps * accumulation`` micro-batches from a loader that
    restarts (with the next sampler epoch) whenever it runs out.
    """

    def __init__(self, loader: Iterable, accumulation: int, steps: int, cycling: bool) -> None:
        self.loader = loader
        self.accumulation = accumulation
        self.steps = steps
        self.cycling = cycling
        self.passes = 0
        self._iterator: Iterator | None = None

    def _new_pass(self) -> Iterator:
        for owner in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self.passes)
        self.passes += 1
        return iter(self.loader)

    def _cycle(self) -> Iterator:
        while True:
            if self._iterator is None:
                self._iterator = self._new_pass()
            yield from self._iterator
            self._iterator = None

    def epoch(self) -> Iterator[tuple[Any, int, int]]:
        if self.cycling:
            total = self.steps * self.accumulation
            source = itertools.islice(self._cycle(), total)
        else:
            total = len(self.loader)  # type: ignore[arg-type]
            source = self._new_pass()
        for index, batch in enumerate(source):
            group_start = index - index % self.accumulation
            yield batch, index - group_start, min(self.accumulation, total - group_start)
