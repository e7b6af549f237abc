"""CosmoFlow: regression of four cosmological parameters from 3D dark-matter universes
(MLPerf HPC): validation mean absolute error down to 0.124, logged as ``eval_error``.

Run ``mlbench train cosmoflow [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or
this file directly, as one process, under torchrun or under srun.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from benchmarks.core.config import Config, ConfigSchema, GlobalContext, LRScheduleConfig
from benchmarks.core.data import build_loader
from benchmarks.core.loop import Task
from benchmarks.core.metrics import RatioMetric
from benchmarks.core.runner import BenchmarkSpec, main
from benchmarks.core.staging import plan_staging
from benchmarks.cosmoflow.data import (
    CosmoFlowDataConfig,
    build_datasets,
    build_transform,
    input_edge,
    synthesize,
)
from benchmarks.cosmoflow.model import CosmoFlow, ModelConfig


class MeanAbsoluteError(RatioMetric):
    """Mean |prediction - target| over every parameter of every validation sample."""

    name = "mae"
    higher_is_better = False
    mllog_key = "eval_error"

    def batch_state(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        errors = (outputs.float() - targets.float()).abs()
        return torch.stack([errors.sum(dtype=torch.float64),
                            torch.tensor(errors.numel(), dtype=torch.float64,
                                         device=errors.device)])


def warmup_factor(schedule: LRScheduleConfig) -> float:
    """Peak LR / LR at step 0: the reference's ``opt_learning_rate_warmup_factor``."""
    if schedule.warmup and schedule.warmup_start_factor:
        return 1.0 / schedule.warmup_start_factor
    return 1.0


def build_model(config: Config) -> nn.Module:
    """The CosmoFlow CNN sized for the volumes the configured loader delivers."""
    return CosmoFlow(config.model, input_edge(config.data))


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
    data = config.data
    train_set, eval_set = build_datasets(data)
    train_samples, eval_samples = len(train_set), len(eval_set)
    staging = plan_staging(data, train_set, eval_set, env)
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": config.training.seed,
              "local_shard": staging is not None}
    schedule = config.lr_schedule
    return Task(
        model=build_model(config),
        train_loader=build_loader(train_set, data.local_batch_size, train=True,
                                  shuffle=data.shuffle, drop_last=data.drop_last, **common),
        eval_loader=build_loader(eval_set, data.eval_batch_size, train=False, **common),
        loss_fn=nn.MSELoss(),
        metric=MeanAbsoluteError(),
        train_samples=train_samples,
        eval_samples=eval_samples,
        hyperparameters={
            "opt_learning_rate_warmup_factor": warmup_factor(schedule),
            "opt_learning_rate_decay_boundary_epochs": schedule.milestones,
            "opt_learning_rate_decay_factor": schedule.decay_factors or schedule.gamma,
            "dropout": config.model.dropout,
        },
        device_transform=build_transform(data),
        staging=staging,
    )


SPEC = BenchmarkSpec(
    name="cosmoflow",
    mllog_name="cosmoflow",
    problem="cosmological parameter regression",
    model_name="CosmoFlow 3D CNN",
    dataset="cosmoUniverse_2019_05_4parE (TFRecord or HDF5)",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=CosmoFlowDataConfig, model=ModelConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=64,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
