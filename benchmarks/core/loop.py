"""The one training loop every benchmark runs, readable top to bottom in ``Trainer.run``.

The loop runs epochs until the quality target is reached or ``training.n_epochs`` is spent.
An epoch is one pass over the training loader, or, with ``training.steps_per_epoch``, a
fixed block of optimizer steps over a loader that cycles (for benchmarks that evaluate every
N samples). Each optimizer step accumulates ``data.gradient_accumulation`` micro-batches (DDP
skips the all-reduce on all but the last). Losses stay on the device and are read once per
``training.nan_check_every`` steps, when the ranks also agree on stopping: a non-finite loss
aborts the run naming the epoch and step, and a SIGTERM/SIGUSR1 writes a checkpoint and
stops. Throughput is measured over the training steps alone; evaluation runs every
``training.eval_every`` epochs and after the last, with the metric reduced over ranks.
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
from benchmarks.core.checkpoint import Checkpointer, StopRequest, restore_rng
from benchmarks.core.config import Config
from benchmarks.core.data import batch_size_of, to_device
from benchmarks.core.distributed import DistEnv, all_reduce_sum
from benchmarks.core.errors import ConfigError, NonFiniteLossError, PreemptedError
from benchmarks.core.metrics import SumMetric
from benchmarks.core.staging import StagingPlan


@dataclass
class Task:
    """What a benchmark hands to the loop.

    Batches are ``(inputs, targets)``; ``inputs`` is a tensor or a dict of tensors (passed to
    the model as keyword arguments). ``loss_fn(outputs, targets)`` returns a scalar tensor
    and ``metric.update(outputs, targets)`` accumulates the quality metric.
    ``train_samples`` / ``eval_samples`` are global dataset sizes for the MLPerf log;
    ``hyperparameters`` are extra MLPerf keys the benchmark logs at init.
    ``device_transform(batch)`` turns every batch, once on the device, into ``(inputs,
    targets)`` (per-sample arithmetic batched on the accelerator); ``staging`` copies the
    dataset to ``data.stage_dir`` after ``run_start``.
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
    device_transform: Callable[[Any], Any] | None = None
    staging: StagingPlan | None = None


@dataclass
class LoopResult:
    """How the run ended."""

    reached_target: bool
    epochs_run: int
    last_metric: float | None
    throughputs: list[float]


def steps_per_epoch(loader: Iterable, cfg: Config) -> int:
    """Optimizer steps in one epoch: configured, or one pass over the loader."""
    try:
        micro_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        micro_batches = None
    if micro_batches == 0:
        raise ConfigError("config key 'data.global_batch_size': larger than the training set "
                          "on this rank (no full batch)")
    if cfg.training.steps_per_epoch:
        return cfg.training.steps_per_epoch
    if micro_batches is None:
        raise ConfigError("config key 'training.steps_per_epoch': must be set for a streaming "
                          "dataset without a length")
    return math.ceil(micro_batches / cfg.data.gradient_accumulation)


class Trainer:
    """Holds what the epochs share: model, optimizer, schedule, loader position, logger."""

    def __init__(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Config, env: DistEnv,
                 device: torch.device, log: mllog.MLLogger,
                 checkpointer: Checkpointer | None = None,
                 stop: StopRequest | None = None) -> None:
        self.task, self.model, self.optimizer, self.scheduler = task, model, optimizer, scheduler
        self.cfg, self.training, self.env, self.device, self.log = (
            cfg, cfg.training, env, device, log)
        self.checkpointer = checkpointer
        self.stop = stop or StopRequest()
        self.accumulation = cfg.data.gradient_accumulation
        self.steps = steps_per_epoch(task.train_loader, cfg)
        self.batches = MicroBatches(task.train_loader, self.accumulation, self.steps,
                                    cycling=bool(cfg.training.steps_per_epoch))
        self.epoch, self.step, self.block_first_epoch = 1, 0, 1
        self.last_metric: float | None = None

    def run(self) -> LoopResult:
        """Train and evaluate until the target or ``n_epochs``."""
        self._resume()
        training, constants = self.training, mllog.constants
        throughputs: list[float] = []
        reached = False
        for epoch in range(self.epoch, training.n_epochs + 1):
            self.epoch = epoch
            if epoch == self.block_first_epoch and self.step == 0:
                self.log.start(constants.BLOCK_START, metadata={
                    "first_epoch_num": epoch,
                    "epoch_count": min(training.eval_every, training.n_epochs - epoch + 1)})
            self.log.start(constants.EPOCH_START, metadata={"epoch_num": epoch})
            started = time.perf_counter()
            samples, loss_sum = self._train_epoch()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
            totals = all_reduce_sum(torch.tensor([samples, loss_sum], dtype=torch.float64,
                                                 device=self.device)).cpu()
            throughput = float(totals[0]) / elapsed
            throughputs.append(throughput)
            self.log.end(constants.EPOCH_STOP, metadata={"epoch_num": epoch})
            self.log.event(mllog.THROUGHPUT, throughput,
                           metadata={"epoch_num": epoch, "epoch_time_s": elapsed})
            self._progress(f"epoch {epoch}/{training.n_epochs}: loss "
                           f"{float(totals[1]) / max(float(totals[0]), 1):.4f}, "
                           f"{throughput:.1f} samples/s, {elapsed:.1f} s")

            if epoch % training.eval_every == 0 or epoch == training.n_epochs:
                self.log.end(constants.BLOCK_STOP,
                             metadata={"first_epoch_num": self.block_first_epoch})
                self.block_first_epoch = epoch + 1
                self.log.start(constants.EVAL_START, metadata={"epoch_num": epoch})
                self.last_metric = self.evaluate()
                self.log.event(self.task.metric.mllog_key, self.last_metric,
                               metadata={"epoch_num": epoch})
                self.log.end(constants.EVAL_STOP, metadata={"epoch_num": epoch})
                reached = self.task.metric.reached(self.last_metric, training.target)
                self._progress(f"epoch {epoch}: {self.task.metric.name} "
                               f"{self.last_metric:.4f} (target {training.target})")
            self.step = 0
            if reached:
                break
            if self.checkpointer and training.checkpoint_every and \
                    epoch % training.checkpoint_every == 0:
                self._save(epoch + 1, 0)
        self.log.event(mllog.PEAK_MEMORY, peak_memory_bytes(self.device),
                       metadata={"device": str(self.device)})
        return LoopResult(reached, self.epoch, self.last_metric, throughputs)

    def _train_epoch(self) -> tuple[int, float]:
        """The epoch's optimizer steps; returns (samples on this rank, summed sample loss)."""
        self.model.train()
        samples, loss_sum = 0, 0.0
        window: list[torch.Tensor] = []  # this window's micro-batch losses, on the device
        counts: list[int] = []  # and their sample counts
        for batch, position, group_size in self.batches.epoch(self.step * self.accumulation):
            inputs, targets = self._on_device(batch)
            is_boundary = position == group_size - 1
            no_sync = getattr(self.model, "no_sync", None)
            with contextlib.nullcontext() if is_boundary or no_sync is None else no_sync():
                with self._autocast():
                    loss = self.task.loss_fn(self._forward(inputs), targets)
                if position == 0:
                    # Freed here rather than after the step: the allocator then hands the old
                    # gradients' memory straight to the new ones (measured: 6 % on a CPU).
                    self.optimizer.zero_grad(set_to_none=True)
                # No extra kernel for the common case of no accumulation.
                (loss if group_size == 1 else loss / group_size).backward()
            count = batch_size_of(inputs)
            samples += count
            window.append(loss.detach())
            counts.append(count)
            if not is_boundary:
                continue
            if self.cfg.opt.clip_grad_norm:
                nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.opt.clip_grad_norm)
            self.optimizer.step()
            self.scheduler.step()
            self.step += 1
            if self.step % self.training.nan_check_every == 0:
                loss_sum += self._check_window(window, counts)
                window, counts = [], []
        if window:
            loss_sum += self._check_window(window, counts)
        return samples, loss_sum

    def _check_window(self, window: list[torch.Tensor], counts: list[int]) -> float:
        """One host sync per window: its sample-weighted loss sum; the ranks agree to go on.

        A non-finite loss on any rank aborts every rank; a stop signal on any rank makes every
        rank checkpoint (when a checkpoint folder is configured) and stop.
        """
        losses = torch.stack(window).float()
        finite = torch.isfinite(losses)
        flags = torch.tensor([float(not bool(finite.all())), float(self.stop.requested)],
                             device=self.device)
        all_reduce_sum(flags)
        if flags[0] > 0:
            first_step = self.step - math.ceil(len(window) / self.accumulation) + 1
            if not bool(finite.all()):
                bad = int((~finite).nonzero()[0, 0])
                raise NonFiniteLossError(
                    f"loss is {losses[bad].item()} at epoch {self.epoch} step "
                    f"{first_step + bad // self.accumulation}")
            raise NonFiniteLossError(f"loss is not finite on another rank at epoch {self.epoch} "
                                     f"between steps {first_step} and {self.step}")
        if flags[1] > 0:
            reason = self.stop.signal_name or "another rank was signalled"
            if self.checkpointer:
                where = self._save(self.epoch, self.step)
                raise PreemptedError(f"stopped by {reason} at epoch {self.epoch} step "
                                     f"{self.step}: checkpoint {where}; rerun with the same "
                                     "training.checkpoint_dir to resume")
            raise PreemptedError(f"stopped by {reason} at epoch {self.epoch} step {self.step} "
                                 "(no training.checkpoint_dir, nothing saved)")
        return float(losses @ torch.tensor(counts, dtype=losses.dtype, device=losses.device))

    @torch.no_grad()
    def evaluate(self) -> float:
        """The metric over the whole evaluation loader, reduced over ranks.

        Each sample is evaluated on one rank only, so ranks may hold different batch counts;
        a rank that runs out repeats its last forward pass (outside the metric) until every
        rank is done, because DDP and FSDP forward passes are collective.
        """
        self.model.eval()
        metric = self.task.metric
        metric.reset()
        batches, inputs = 0, None
        for batch in self.task.eval_loader:
            inputs, targets = self._on_device(batch)
            metric.update(self._forward(inputs), targets)
            batches += 1
        if self.env.is_distributed and hasattr(self.task.eval_loader, "__len__"):
            most = torch.tensor([len(self.task.eval_loader)], device=self.device)
            torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
            for _ in range(int(most.item()) - batches):
                self._forward(inputs)
        return metric.compute(self.device)

    def _on_device(self, batch: Any) -> Any:
        """The batch on the device, through the task's device transform when it has one."""
        if self.task.device_transform is None:
            return to_device(batch, self.device, self.training.channels_last)
        batch = self.task.device_transform(to_device(batch, self.device))
        return to_device(batch, self.device, self.training.channels_last)

    def _forward(self, inputs: Any) -> Any:
        with self._autocast():
            return self.model(**inputs) if isinstance(inputs, dict) else self.model(inputs)

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``training.amp`` is on (a fresh context each time: they nest)."""
        if not self.training.amp:
            return contextlib.nullcontext()
        return torch.autocast(device_type=self.device.type, dtype=torch.bfloat16)

    def _save(self, epoch: int, step: int) -> str:
        state = {
            "epoch": epoch, "step": step, "block_first_epoch": self.block_first_epoch,
            "last_metric": self.last_metric, "batches": self.batches.state(),
            "model": _unwrap(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(), "scheduler": self.scheduler.state_dict(),
        }
        return str(self.checkpointer.save(epoch, step, state))

    def _resume(self) -> None:
        state = self.checkpointer.latest() if self.checkpointer else None
        if state is None:
            return
        _unwrap(self.model).load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.batches.restore(state["batches"])
        restore_rng(state["rng"])
        self.epoch, self.step = state["epoch"], state["step"]
        self.block_first_epoch, self.last_metric = state["block_first_epoch"], state["last_metric"]
        self.log.event(mllog.RESUMED, True, metadata={"epoch_num": self.epoch, "step": self.step})
        self._progress(f"resumed from {self.checkpointer.directory} at epoch {self.epoch} "
                       f"step {self.step}")

    def _progress(self, message: str) -> None:
        if self.env.is_main:
            print(f"[mlbench] {message}", file=sys.stderr, flush=True)


def peak_memory_bytes(device: torch.device) -> int:
    """Peak memory of this rank: CUDA allocator peak, or the process's peak RSS on CPU."""
    if device.type == "cuda":
        return int(torch.cuda.max_memory_allocated(device))
    return int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss) * 1024


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", getattr(model, "_orig_mod", model))


class MicroBatches:
    """Yields ``(batch, position_in_group, group_size)`` for each epoch's optimizer steps.

    In pass mode an epoch is one pass over the loader and its last group may be short. In
    block mode an epoch takes ``steps * accumulation`` micro-batches from a loader that
    restarts (with the next sampler epoch) whenever it runs out. The position in the current
    pass can be saved and restored: a resumed run re-creates the pass from the loader's saved
    generator state and skips what was consumed, so it sees exactly the batches it would have.
    """

    def __init__(self, loader: Iterable, accumulation: int, steps: int, cycling: bool) -> None:
        self.loader = loader
        self.accumulation = accumulation
        self.steps = steps
        self.cycling = cycling
        self.passes = 0
        self.consumed = 0
        self._pass_rng: torch.Tensor | None = None
        self._iterator: Iterator | None = None

    def _new_pass(self) -> Iterator:
        for owner in (getattr(self.loader, "sampler", None), getattr(self.loader, "dataset", None)):
            if hasattr(owner, "set_epoch"):
                owner.set_epoch(self.passes)
        generator = getattr(self.loader, "generator", None)
        self._pass_rng = generator.get_state().clone() if generator is not None else None
        self.passes += 1
        self.consumed = 0
        return iter(self.loader)

    def _remaining_of_pass(self) -> Iterator:
        if self._iterator is None:
            self._iterator = self._new_pass()
        for batch in self._iterator:
            self.consumed += 1
            yield batch
        self._iterator = None

    def _cycle(self) -> Iterator:
        while True:
            before = self.passes, self.consumed
            yield from self._remaining_of_pass()
            if self.consumed == 0 and self.passes == before[0] + 1:
                raise ConfigError("config key 'data.global_batch_size': larger than the "
                                  "training set on this rank (a pass gives no full batch)")

    def epoch(self, start: int = 0) -> Iterator[tuple[Any, int, int]]:
        """This epoch's micro-batches, from micro-batch ``start`` on (non-zero on resume)."""
        if self.cycling:
            total = self.steps * self.accumulation
            source = itertools.islice(self._cycle(), total - start)
        else:
            total = len(self.loader)  # type: ignore[arg-type]
            source = self._remaining_of_pass()
        for index, batch in enumerate(source, start):
            group_start = index - index % self.accumulation
            yield batch, index - group_start, min(self.accumulation, total - group_start)

    def state(self) -> dict[str, Any]:
        generator = getattr(self.loader, "generator", None)
        return {"passes": self.passes, "consumed": self.consumed, "pass_rng": self._pass_rng,
                "rng": generator.get_state() if generator is not None else None,
                "in_pass": self._iterator is not None}

    def restore(self, state: dict[str, Any]) -> None:
        """Re-create the saved pass and skip the micro-batches it had already given out."""
        generator = getattr(self.loader, "generator", None)
        self.passes = state["passes"]
        if not state["in_pass"]:
            if generator is not None and state["rng"] is not None:
                generator.set_state(state["rng"])
            return
        self.passes -= 1
        if generator is not None and state["pass_rng"] is not None:
            generator.set_state(state["pass_rng"])
        self._iterator = self._new_pass()
        for _ in range(state["consumed"]):
            next(self._iterator)
        self.consumed = state["consumed"]
