"""From command line to exit code: what every benchmark's ``train.py`` runs.

``main(SPEC)`` parses the command line (``mlbench train NAME`` has the same options) and
calls :func:`train`, which loads and validates the config (exit 2 on a bad key, before any
process group starts), places the process (threads, process group, device) and turns every
ending into an exit code. In the MLPerf init phase the benchmark builds its
:class:`~benchmarks.core.loop.Task` and :func:`build_trainer` sets up model, optimizer and LR
schedule from the config; between ``run_start`` and ``run_stop`` the loop trains.

Exit codes: 0 target reached (or no target), 3 all epochs run without reaching it,
2 bad configuration or input, 1 anything else (a crash, a non-finite loss, a stop signal).
"""

from __future__ import annotations

import argparse
import ctypes
import os
import socket
import sys
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from benchmarks.core import distributed, mllog, placement, rcp
from benchmarks.core.checkpoint import Checkpointer, StopRequest
from benchmarks.core.config import (
    Config,
    ConfigSchema,
    GlobalContext,
    TrainingConfig,
    check_output_paths,
)
from benchmarks.core.data import seed_everything
from benchmarks.core.energy import EnergyMeter
from benchmarks.core.errors import (
    EXIT_FAILURE,
    EXIT_OK,
    EXIT_TARGET_MISSED,
    BenchmarkError,
    ConfigError,
    one_line,
)
from benchmarks.core.loop import Task, Trainer, steps_per_epoch
from benchmarks.core.optim import build_optimizer, build_scheduler, scaled_base_lr


@dataclass(frozen=True)
class BenchmarkSpec:
    """Everything the CLI, the runner and ``mlbench table`` need to know about a benchmark.

    ``build_model(config)`` must work on the meta device (``mlbench table`` counts
    parameters without allocating them); ``build_task(context)`` builds data, model, loss and
    metric for a run; ``synthesize(outdir, samples, seed)`` writes a dataset in the real
    format. ``mllog_name`` is the MLPerf ``submission_benchmark`` value; ``problem`` says
    what the benchmark solves (e.g. "image classification").
    """

    name: str
    mllog_name: str
    problem: str
    model_name: str
    dataset: str
    folder: Path
    schema: ConfigSchema
    build_model: Callable[[Config], nn.Module]
    build_task: Callable[[GlobalContext], Task]
    synthesize: Callable[[Path, int, int], None]
    default_samples: int = 64

    def config_path(self, choice: str | None) -> Path:
        """``None`` → config.yaml, a bare name such as ``smoke`` → NAME.yaml here, else a path."""
        if not choice:
            return self.folder / "config.yaml"
        candidate = self.folder / f"{choice}.yaml"
        if "/" not in choice and not choice.endswith((".yaml", ".yml")) and candidate.exists():
            return candidate
        return Path(choice)


def train_argument_parser(prog: str) -> argparse.ArgumentParser:
    """Options of ``mlbench train NAME`` and ``python benchmarks/NAME/train.py``."""
    parser = argparse.ArgumentParser(prog=prog, description="Train until the quality target.")
    add_train_arguments(parser)
    return parser


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--config", help="config file, or 'smoke' for smoke.yaml "
                                         "(default: the benchmark's config.yaml)")
    parser.add_argument("--data-dir", help="dataset folder (overrides data.data_dir)")
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--set", dest="overrides", action="append", default=[],
                        metavar="KEY=VALUE", help="override a config key, e.g. training.n_epochs=2")


def main(spec: BenchmarkSpec, argv: list[str] | None = None) -> int:
    """``python benchmarks/NAME/train.py ARGS``: parse ``argv``, train, return the exit code."""
    args = train_argument_parser(f"mlbench train {spec.name}").parse_args(argv)
    return train(spec, args)


def train(spec: BenchmarkSpec, args: argparse.Namespace) -> int:
    """Train ``spec`` as the parsed command line says; every ending becomes an exit code."""
    context = GlobalContext()
    context.reset()
    log = mllog.MLLogger(enabled=False)
    try:
        overrides = list(args.overrides)
        if args.data_dir:
            overrides.append(f"data.data_dir={args.data_dir}")
        config = context.load(spec.config_path(args.config), spec.schema, overrides)
        device = resolve_device(args.device)
        env = distributed.detect_env()
        check_output_paths(config.training, writes_log=env.is_main)
        resolve_batch_sizes(config, env.world_size)
        warning = rcp.apply_recipe(spec.name, config, rcp.override_keys(overrides))
        if warning and env.is_main:
            print(f"mlbench {spec.name}: warning: {warning}", file=sys.stderr, flush=True)
        threads = placement.apply_threads(env.launcher)
        keep_freed_memory()
        make_deterministic(config.training)
        env = distributed.init_process_group(config.distributed.backend, device,
                                             config.distributed.timeout_s)
        device = placement.select_device(device, env.local_rank)
        context.env, context.device = env, device
        # One write, so the lines of ranks sharing a stderr do not interleave mid-line.
        sys.stderr.write(placement.rank_line(env, device, threads) + "\n")
        sys.stderr.flush()
        log = mllog.MLLogger(enabled=env.is_main, log_file=config.training.log_file)
        return _initialize_and_run(spec, context, config, env, device, log)
    except BenchmarkError as err:
        reason = one_line(err)
        print(f"mlbench {spec.name}: error: {reason}", file=sys.stderr, flush=True)
        log.end(mllog.constants.RUN_STOP, metadata={"status": "aborted", "reason": reason})
        return err.exit_code
    except Exception as err:
        traceback.print_exc()
        reason = f"{type(err).__name__}: {err}".splitlines()[0]
        print(f"mlbench {spec.name}: error: {reason}", file=sys.stderr, flush=True)
        log.end(mllog.constants.RUN_STOP, metadata={"status": "aborted", "reason": reason})
        return EXIT_FAILURE
    finally:
        log.close()
        distributed.shutdown()


def _initialize_and_run(spec: BenchmarkSpec, context: GlobalContext, config: Config,
                        env: distributed.DistEnv, device: torch.device,
                        log: mllog.MLLogger) -> int:
    """The MLPerf init phase (task, model, optimizer), then the timed run; the exit code."""
    constants = mllog.constants
    log.event(constants.CACHE_CLEAR, True)
    log.start(constants.INIT_START)
    nodes = int(os.environ.get("SLURM_JOB_NUM_NODES", os.environ.get("SLURM_NNODES", "1")))
    log.submission(spec.mllog_name, platform=socket.gethostname(), num_nodes=nodes,
                   accelerators_per_node=env.local_world_size if device.type == "cuda" else 0)
    placement.log_environment(log, env.world_size, device)
    seed_everything(config.training.seed, env.rank)
    log.event(constants.SEED, config.training.seed)
    task = spec.build_task(context)
    checkpointer, stop = _checkpointing(spec, config, env)
    energy = EnergyMeter(env, device, log)
    trainer = build_trainer(task, config, env, device, log, checkpointer, stop, energy)
    _log_hyperparameters(log, spec, config, task, trainer)
    log.end(constants.INIT_STOP)

    distributed.barrier()
    log.start(constants.RUN_START)
    energy.start()
    try:
        if task.staging is not None:
            task.staging.run(log)
        result = trainer.run()
        distributed.barrier()
        energy.stop()
        succeeded = result.reached_target or config.training.target is None
        log.end(constants.RUN_STOP, metadata={"status": "success" if succeeded else "aborted",
                                              "epoch_num": result.epochs_run})
    finally:
        if task.staging is not None:
            task.staging.remove()
    if not succeeded and env.is_main:
        print(f"mlbench {spec.name}: target {config.training.target} not reached in "
              f"{config.training.n_epochs} epochs (last {task.metric.name} "
              f"{result.last_metric})", file=sys.stderr, flush=True)
    return EXIT_OK if succeeded else EXIT_TARGET_MISSED


def build_trainer(task: Task, config: Config, env: distributed.DistEnv, device: torch.device,
                  log: mllog.MLLogger, checkpointer: Checkpointer | None = None,
                  stop: StopRequest | None = None, energy: EnergyMeter | None = None
                  ) -> Trainer:
    """The task's model on the device (memory format, DDP/FSDP, compile) with the optimizer
    and LR schedule of the config, in a :class:`Trainer` ready to run or to step."""
    model = task.model.to(device)
    if config.training.channels_last:
        model = model.to(memory_format=torch.channels_last)
    wrapped = wrap_model(model, task, config, env, device)
    if config.training.compile:
        wrapped = torch.compile(wrapped)
    steps = steps_per_epoch(task.train_loader, config, task.steps_per_epoch)
    base_lr = scaled_base_lr(config.opt.lr, config.lr_schedule, config.data.global_batch_size)
    optimizer = build_optimizer(model, config.opt, base_lr)
    scheduler = build_scheduler(optimizer, config.lr_schedule, base_lr, steps,
                                steps * config.training.n_epochs)
    return Trainer(task, wrapped, optimizer, scheduler, config, env, device, log, checkpointer,
                   stop, energy)


def _checkpointing(spec: BenchmarkSpec, config: Config, env: distributed.DistEnv
                   ) -> tuple[Checkpointer | None, StopRequest]:
    """With ``training.checkpoint_dir``: its checkpointer, and stop signals caught."""
    stop = StopRequest()
    if not config.training.checkpoint_dir:
        return None, stop
    if config.distributed.strategy == "fsdp" and env.is_distributed:
        raise ConfigError("config key 'training.checkpoint_dir': checkpoints of FSDP-sharded "
                          "models are not supported yet")
    identity = {"benchmark": spec.name, "model": config.as_dict()["model"],
                "global_batch_size": config.data.global_batch_size,
                "world_size": env.world_size}
    checkpointer = Checkpointer(config.training.checkpoint_dir, identity, env)
    stop.install()
    return checkpointer, stop


def wrap_model(model: nn.Module, task: Task, config: Config, env: distributed.DistEnv,
               device: torch.device) -> nn.Module:
    """DDP (or FSDP2 full sharding) across ranks; the bare model in a single process."""
    if not env.is_distributed:
        return model
    if config.distributed.strategy == "fsdp":
        from torch.distributed.fsdp import fully_shard

        for unit in task.fsdp_units(model) if task.fsdp_units else []:
            fully_shard(unit)
        return fully_shard(model)
    return nn.parallel.DistributedDataParallel(
        model, device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=config.distributed.find_unused_parameters)


def resolve_device(choice: str) -> torch.device:
    """``auto`` is CUDA when a GPU is visible, else the CPU."""
    if choice == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda: no CUDA device is visible to this process")
    if choice == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(choice)


def resolve_batch_sizes(config: Config, world_size: int) -> None:
    """Fill ``data.local_batch_size`` from the global batch, or the global from the local."""
    data = config.data
    if data.local_batch_size:
        data.global_batch_size = data.local_batch_size * world_size * data.gradient_accumulation
    else:
        per_step = world_size * data.gradient_accumulation
        if data.global_batch_size % per_step:
            raise ConfigError(
                f"config key 'data.global_batch_size': {data.global_batch_size} is not "
                f"divisible by world size x gradient_accumulation = {world_size} x "
                f"{data.gradient_accumulation}")
        data.local_batch_size = data.global_batch_size // per_step
    if not data.eval_batch_size:
        data.eval_batch_size = data.local_batch_size


# glibc mallopt parameters and the values set: tensors up to 256 MiB come from the heap, and
# up to 1 GiB of freed heap stays in the process.
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3
_KEPT_HEAP_BYTES, _HEAP_ALLOCATION_LIMIT = 1 << 30, 256 << 20


def keep_freed_memory() -> None:
    """Stop glibc from returning freed tensor memory to the system between training steps.

    By default glibc serves large blocks with mmap and trims the heap as soon as its free top
    grows past a threshold, so the activations and gradients of every step are page-faulted
    in again: measured 10-15 % of a small CPU training step (and up to a third of BERT's
    smoke step). Nothing changes where glibc is not the C library, or where the user set
    ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_MMAP_THRESHOLD_`` (e.g. to the glibc defaults,
    131072, to measure without this).
    """
    if sys.platform != "linux" or {"MALLOC_TRIM_THRESHOLD_", "MALLOC_MMAP_THRESHOLD_"} & set(
            os.environ):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return
    mallopt(_M_MMAP_THRESHOLD, _HEAP_ALLOCATION_LIMIT)
    mallopt(_M_TRIM_THRESHOLD, _KEPT_HEAP_BYTES)


def make_deterministic(training: TrainingConfig) -> None:
    """``training.deterministic``: deterministic algorithms only (an operation without one
    raises), cuDNN without autotuning, and the cuBLAS workspace that makes its results
    reproducible (set before the first cuBLAS call, unless the user set it)."""
    if not training.deterministic:
        return
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True)
    torch.backends.cudnn.deterministic = True
    torch.backends.cudnn.benchmark = False


def _log_hyperparameters(log: mllog.MLLogger, spec: BenchmarkSpec, config: Config, task: Task,
                         trainer: Trainer) -> None:
    """The MLPerf hyperparameter keys, once each; the task's own values and spellings win
    (e.g. DeepCAM's rules want ``opt_name`` "AdamW" where ResNet's want "sgd")."""
    constants = mllog.constants
    base_lr = scaled_base_lr(config.opt.lr, config.lr_schedule, config.data.global_batch_size)
    warmup_key = (constants.OPT_LR_WARMUP_EPOCHS if config.lr_schedule.unit == "epochs"
                  else constants.OPT_LR_WARMUP_STEPS)
    keys = {
        constants.GLOBAL_BATCH_SIZE: config.data.global_batch_size,
        constants.GRADIENT_ACCUMULATION_STEPS: config.data.gradient_accumulation,
        constants.TRAIN_SAMPLES: task.train_samples,
        constants.EVAL_SAMPLES: task.eval_samples,
        constants.OPT_NAME: config.opt.name,
        constants.OPT_BASE_LR: base_lr,
        constants.OPT_WEIGHT_DECAY: config.opt.weight_decay,
        warmup_key: config.lr_schedule.warmup,
    }
    if config.opt.clip_grad_norm:
        keys[constants.OPT_GRADIENT_CLIP_NORM] = config.opt.clip_grad_norm
    keys.update(task.hyperparameters)
    for key, value in keys.items():
        log.event(key, value)
    closed, recipe_reason = rcp.closed_recipe(spec.name, config)
    log.division(*mllog.submission_division(
        spec.mllog_name, config.training.target, getattr(config.model, "init_checkpoint", ""), keys,
        recipe_reasons=() if closed else (recipe_reason,)))
    log.event(mllog.NUM_PARAMETERS, sum(p.numel() for p in task.model.parameters()))
    log.event(mllog.TARGET, config.training.target, metadata={
        "lower_is_better": not task.metric.higher_is_better, "metric": task.metric.name,
        "steps_per_epoch": trainer.steps})
