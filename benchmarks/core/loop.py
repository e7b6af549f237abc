"""The one training loop every benchmark runs, readable top to bottom in ``Trainer.run``.

The loop runs epochs until the quality target is reached or ``training.n_epochs`` is spent.
An epoch is one pass over the training loader or a fixed block of optimizer steps over a
loader that cycles (for benchmarks that evaluate every N samples; see :func:`steps_per_epoch`).
Each optimizer step (:meth:`Trainer.train_step`) accumulates ``data.gradient_accumulation``
micro-batches, DDP all-reducing on the last only. Losses stay on the device and are read once
per ``training.nan_check_every`` steps, when the ranks also agree on stopping: a non-finite
loss aborts the run naming the epoch and step, and a SIGTERM/SIGUSR1 writes a checkpoint and
stops. Throughput is measured over the training steps alone; evaluation runs every
``training.eval_every`` epochs and after the last, with the metric reduced over ranks.
"""

from __future__ import annotations

import contextlib
import itertools
import resource
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from benchmarks.core import mllog
from benchmarks.core.checkpoint import Checkpointer, StopRequest, restore_rng
from benchmarks.core.config import Config
from benchmarks.core.data import batch_size_of, to_channels_last, to_device
from benchmarks.core.distributed import DistEnv, all_reduce_sum
from benchmarks.core.energy import EnergyMeter
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

    The loop's extension points, all optional:

    - ``steps_per_epoch``: the benchmark's own epoch length in optimizer steps (e.g. BERT's
      MLPerf evaluation interval); 0 leaves it to ``training.steps_per_epoch``.
    - ``after_step()``: called after every optimizer step (e.g. a moving average of the
      weights).
    - ``device_transform(batch)``: applied to every batch, training and evaluation, right
      after it is moved to the device (e.g. decoding or normalising on the GPU).
    - ``fsdp_units(model)``: the submodules to shard first under ``distributed.strategy:
      fsdp`` (transformer blocks); the root is sharded last.
    - ``epoch_num_counts_samples``: the evaluation events' ``epoch_num`` counts training
      samples (epoch x steps per epoch x ``data.global_batch_size``), as the BERT and OpenFold
      rules count them.
    - ``staging``: copies the dataset to ``data.stage_dir`` after ``run_start`` (MLPerf HPC
      counts staging in the time to train).
    """

    model: nn.Module
    train_loader: Iterable
    eval_loader: Iterable
    loss_fn: Callable[[Any, Any], torch.Tensor]
    metric: SumMetric
    train_samples: int
    eval_samples: int
    hyperparameters: dict[str, Any] = field(default_factory=dict)
    steps_per_epoch: int = 0
    after_step: Callable[[], None] | None = None
    device_transform: Callable[[Any], Any] | None = None
    fsdp_units: Callable[[nn.Module], list[nn.Module]] | None = None
    epoch_num_counts_samples: bool = False
    staging: StagingPlan | None = None


@dataclass
class LoopResult:
    """How the run ended."""

    reached_target: bool
    epochs_run: int
    last_metric: float | None
    throughputs: list[float]


def steps_per_epoch(loader: Iterable, cfg: Config, task_steps: int = 0) -> int:
    """Optimizer steps in one epoch: the task's own count (``Task.steps_per_epoch``), else
    ``training.steps_per_epoch``, else one pass over the loader."""
    try:
        micro_batches = len(loader)  # type: ignore[arg-type]
    except TypeError:
        micro_batches = None
    if micro_batches == 0:
        raise ConfigError("config key 'data.global_batch_size': larger than the training set "
                          "on this rank (no full batch)")
    if task_steps or cfg.training.steps_per_epoch:
        return task_steps or cfg.training.steps_per_epoch
    if micro_batches is None:
        raise ConfigError("config key 'training.steps_per_epoch': must be set for a streaming "
                          "dataset without a length")
    return -(-micro_batches // cfg.data.gradient_accumulation)


@dataclass
class LossWindow:
    """Micro-batch losses since the ranks last agreed to go on, kept on the device (reading
    one every step would make the host wait for the device), and the epoch's totals."""

    losses: list[torch.Tensor] = field(default_factory=list)
    samples: list[int] = field(default_factory=list)
    steps: list[int] = field(default_factory=list)
    epoch_samples: int = 0
    epoch_loss_sum: float = 0.0

    def add(self, loss: torch.Tensor, samples: int, step: int) -> None:
        self.losses.append(loss.detach())
        self.samples.append(samples)
        self.steps.append(step)
        self.epoch_samples += samples


class Trainer:
    """Holds what the epochs share: model, optimizer, schedule, loader position, logger."""

    def __init__(self, task: Task, model: nn.Module, optimizer: torch.optim.Optimizer,
                 scheduler: torch.optim.lr_scheduler.LRScheduler, cfg: Config, env: DistEnv,
                 device: torch.device, log: mllog.MLLogger,
                 checkpointer: Checkpointer | None = None,
                 stop: StopRequest | None = None,
                 energy: EnergyMeter | None = None) -> None:
        self.task, self.model, self.optimizer, self.scheduler = task, model, optimizer, scheduler
        self.cfg, self.training, self.env, self.device, self.log = (
            cfg, cfg.training, env, device, log)
        self.checkpointer = checkpointer
        self.stop = stop or StopRequest()
        self.energy = energy
        self.ddp = _ddp_of(model)
        self.steps = steps_per_epoch(task.train_loader, cfg, task.steps_per_epoch)
        self.batches = MicroBatches(task.train_loader, cfg.data.gradient_accumulation, self.steps,
                                    cycling=bool(task.steps_per_epoch or
                                                 cfg.training.steps_per_epoch))
        self.window = LossWindow()
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
            if self.energy:
                self.energy.epoch_start(epoch)
            self._train_epoch()
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            elapsed = time.perf_counter() - started
            if self.energy:
                self.energy.epoch_stop(epoch, self.window.epoch_samples)
            self.log.end(constants.EPOCH_STOP, metadata={"epoch_num": epoch})
            throughputs.append(self._log_throughput(elapsed))

            if epoch % training.eval_every == 0 or epoch == training.n_epochs:
                self.log.end(constants.BLOCK_STOP,
                             metadata={"first_epoch_num": self.block_first_epoch})
                self.block_first_epoch = epoch + 1
                epoch_num = epoch * (self.steps * self.cfg.data.global_batch_size
                                     if self.task.epoch_num_counts_samples else 1)
                self.log.start(constants.EVAL_START, metadata={"epoch_num": epoch_num})
                self.last_metric = self.evaluate()
                self.log.event(self.task.metric.mllog_key, self.last_metric,
                               metadata={"epoch_num": epoch_num})
                self.log.end(constants.EVAL_STOP, metadata={"epoch_num": epoch_num})
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

    def _train_epoch(self) -> None:
        """The epoch's optimizer steps, checking the losses every ``nan_check_every``."""
        self.model.train()
        self.window = LossWindow()
        for micro_batches in self.batches.epoch(self.step):
            self.train_step(micro_batches)
            if self.step % self.training.nan_check_every == 0:
                self._check_losses()
        self._check_losses()

    def train_step(self, micro_batches: StepBatches | Sequence[Any]) -> None:
        """One optimizer step over ``micro_batches`` (gradient accumulation when several)."""
        count = len(micro_batches)
        for index, batch in enumerate(micro_batches):
            inputs, targets = self._to_device(batch)
            if self.ddp is not None:  # all-reduce the gradients on the last micro-batch only
                self.ddp.require_backward_grad_sync = index == count - 1
            with self._autocast():
                loss = self.task.loss_fn(_call(self.model, inputs), targets)
            if index == 0:
                # Freed here rather than after the step: the allocator then hands the old
                # gradients' memory straight to the new ones (measured: 6 % on a CPU).
                self.optimizer.zero_grad(set_to_none=True)
            # No division kernel without accumulation.
            (loss / count if count > 1 else loss).backward()
            self.window.add(loss, batch_size_of(inputs), self.step + 1)
        if self.cfg.opt.clip_grad_norm:
            nn.utils.clip_grad_norm_(self.model.parameters(), self.cfg.opt.clip_grad_norm)
        self.optimizer.step()
        self.scheduler.step()
        self.step += 1
        if self.task.after_step is not None:
            self.task.after_step()

    def _check_losses(self) -> None:
        """The window's one wait for the device: add its losses to the epoch's, then let the
        ranks agree. A non-finite loss on any rank aborts every rank; a stop signal on any
        rank makes every rank checkpoint (when a checkpoint folder is configured) and stop."""
        window = self.window
        if not window.losses:
            return
        losses = torch.stack(window.losses).float().cpu()
        finite = torch.isfinite(losses)
        flags = all_reduce_sum(torch.tensor(
            [float(not finite.all()), float(self.stop.requested)], device=self.device))
        nonfinite_anywhere, stop_anywhere = flags.tolist()
        if nonfinite_anywhere:
            if not finite.all():
                bad = int((~finite).nonzero()[0, 0])
                raise NonFiniteLossError(f"loss is {losses[bad].item()} at epoch {self.epoch} "
                                         f"step {window.steps[bad]}")
            raise NonFiniteLossError(f"loss is not finite on another rank at epoch {self.epoch} "
                                     f"between steps {window.steps[0]} and {self.step}")
        if stop_anywhere:
            self._stop_for_signal()
        window.epoch_loss_sum += float(losses @ torch.tensor(window.samples, dtype=losses.dtype))
        window.losses, window.samples, window.steps = [], [], []

    def _stop_for_signal(self) -> None:
        reason = self.stop.signal_name or "another rank was signalled"
        where = f"at epoch {self.epoch} step {self.step}"
        if not self.checkpointer:
            raise PreemptedError(f"stopped by {reason} {where} (no training.checkpoint_dir, "
                                 "nothing saved)")
        saved = self._save(self.epoch, self.step)
        raise PreemptedError(f"stopped by {reason} {where}: checkpoint {saved}; rerun with the "
                             "same training.checkpoint_dir to resume")

    def _log_throughput(self, elapsed: float) -> float:
        """Log the epoch's samples/s over all ranks and print its mean loss; return the rate."""
        totals = all_reduce_sum(torch.tensor(
            [self.window.epoch_samples, self.window.epoch_loss_sum], dtype=torch.float64,
            device=self.device)).tolist()
        throughput = totals[0] / elapsed
        self.log.event(mllog.THROUGHPUT, throughput,
                       metadata={"epoch_num": self.epoch, "epoch_time_s": elapsed})
        self._progress(f"epoch {self.epoch}/{self.training.n_epochs}: loss "
                       f"{totals[1] / max(totals[0], 1):.4f}, {throughput:.1f} samples/s, "
                       f"{elapsed:.1f} s")
        return throughput

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
            inputs, targets = self._to_device(batch)
            with self._autocast():
                outputs = _call(self.model, inputs)
            metric.update(outputs, targets)
            batches += 1
        if self.env.is_distributed and hasattr(self.task.eval_loader, "__len__"):
            most = torch.tensor([len(self.task.eval_loader)], device=self.device)
            torch.distributed.all_reduce(most, op=torch.distributed.ReduceOp.MAX)
            for _ in range(int(most.item()) - batches):
                with self._autocast():
                    _call(self.model, inputs)
        return metric.compute(self.device)

    def _to_device(self, batch: Any) -> Any:
        """The batch on the device, through the task's device transform, in the configured
        memory format."""
        batch = to_device(batch, self.device)
        if self.task.device_transform is not None:
            batch = self.task.device_transform(batch)
        return to_channels_last(batch) if self.training.channels_last else batch

    def _autocast(self) -> contextlib.AbstractContextManager:
        """bf16 autocast when ``training.amp`` is on."""
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


def _call(model: nn.Module, inputs: Any) -> Any:
    return model(**inputs) if isinstance(inputs, dict) else model(inputs)


def _unwrap(model: nn.Module) -> nn.Module:
    return getattr(model, "module", getattr(model, "_orig_mod", model))


def _ddp_of(model: nn.Module) -> nn.parallel.DistributedDataParallel | None:
    """The DDP wrapper (also under ``torch.compile``), whose gradient sync accumulation skips;
    FSDP reduce-scatters every micro-batch, which keeps its gradients sharded."""
    model = getattr(model, "_orig_mod", model)
    return model if isinstance(model, nn.parallel.DistributedDataParallel) else None


class MicroBatches:
    """Each epoch's optimizer steps, each the micro-batches it accumulates.

    In pass mode an epoch is one pass over the loader and its last step may be short. In
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

    def epoch(self, start_step: int = 0) -> Iterator[StepBatches]:
        """This epoch's steps from ``start_step`` on (non-zero on resume)."""
        if self.cycling:
            micro_batches, total = self._cycle(), self.steps * self.accumulation
        else:
            micro_batches, total = self._remaining_of_pass(), len(self.loader)  # type: ignore
        for first in range(start_step * self.accumulation, total, self.accumulation):
            yield StepBatches(micro_batches, min(self.accumulation, total - first))
        if not self.cycling:
            self._iterator = None  # the pass is over; the next epoch starts a new one

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


class StepBatches:
    """The micro-batches of one optimizer step: ``len`` of them, drawn from ``source`` as
    they are iterated (not held in memory together)."""

    def __init__(self, source: Iterator, size: int) -> None:
        self.source, self.size = source, size

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator:
        return itertools.islice(self.source, self.size)
