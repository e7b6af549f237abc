"""DeepCAM: segmentation of extreme weather in climate simulations (MLPerf HPC): DeepLabV3+
to a validation mean IoU of 0.82 over background, atmospheric rivers and tropical cyclones.

Run ``mlbench train deepcam [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or
this file directly, as one process, under torchrun or under srun. The optimizer steps once
every ``data.gradient_accumulation`` micro-batches (the core loop does this).
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
from torch import nn

from benchmarks.core.config import Config, ConfigSchema, GlobalContext
from benchmarks.core.data import build_loader
from benchmarks.core.errors import ConfigError
from benchmarks.core.loop import Task, steps_per_epoch
from benchmarks.core.metrics import RatioMetric
from benchmarks.core.optim import scaled_base_lr, schedule_steps
from benchmarks.core.rcp import deepcam_reference_milestones
from benchmarks.core.runner import BenchmarkSpec, main
from benchmarks.core.staging import plan_staging
from benchmarks.deepcam.data import (
    NUM_CLASSES,
    DeepCAMDataConfig,
    build_datasets,
    build_transform,
    input_shape,
    synthesize,
)
from benchmarks.deepcam.model import DeepLabV3Plus, ModelConfig

# Inverse class frequencies of the MLPerf HPC training set, softened by the power -1/8, as in
# the reference (background, atmospheric river, tropical cyclone).
CLASS_FREQUENCIES = (0.986267818390377, 0.0004578708870701058, 0.01327431072255291)
CLASS_WEIGHT_POWER = -0.125


class WeightedCrossEntropy(nn.Module):
    """The reference loss: per-pixel class-weighted cross-entropy, averaged over pixels
    (a plain mean, not normalised by the weights as ``nn.CrossEntropyLoss`` would)."""

    def __init__(self) -> None:
        super().__init__()
        weights = torch.tensor(CLASS_FREQUENCIES) ** CLASS_WEIGHT_POWER
        self.register_buffer("weights", weights.float())

    def forward(self, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        weights = self.weights.to(logits.device)
        return nn.functional.cross_entropy(logits.float(), labels, weight=weights,
                                           reduction="none").mean()


class MeanIoU(RatioMetric):
    """Mean over samples of the per-sample mean IoU over the classes, as the reference scores
    it (a class absent from both prediction and label counts as IoU 1). Sums of the sample
    scores and the sample count are reduced over ranks, so every rank decides alike."""

    name = "mean_iou"
    mllog_key = "eval_accuracy"

    def __init__(self, num_classes: int = NUM_CLASSES) -> None:
        super().__init__()
        self.num_classes = num_classes

    def batch_state(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        predictions = outputs.argmax(dim=1).flatten(1)
        labels = targets.flatten(1)
        scores = torch.zeros(labels.shape[0], dtype=torch.float64, device=labels.device)
        for cls in range(self.num_classes):
            predicted, actual = predictions == cls, labels == cls
            intersection = (predicted & actual).sum(dim=1, dtype=torch.float64)
            union = (predicted | actual).sum(dim=1, dtype=torch.float64)
            scores += torch.where(union > 0, intersection / union.clamp(min=1), 1.0)
        scores /= self.num_classes
        return torch.stack([scores.sum(), torch.tensor(float(labels.shape[0]),
                                                       dtype=torch.float64,
                                                       device=labels.device)])


def build_model(config: Config) -> nn.Module:
    """DeepLabV3+ (with SyncBatchNorm layers when ``model.sync_batchnorm``)."""
    model = DeepLabV3Plus(config.model)
    if config.model.sync_batchnorm:
        model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return model


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
    data = config.data
    if config.model.sync_batchnorm and env.is_distributed and device.type != "cuda":
        raise ConfigError("config key 'model.sync_batchnorm': SyncBatchNorm needs GPUs; "
                          "set it to false for a multi-process CPU run")
    # Errors in the order a run meets them: configuration, stats.h5 (read once, here), samples.
    input_shape(data)
    transform = build_transform(data, config.training.channels_last)
    train_set, eval_set = build_datasets(data)
    train_samples, eval_samples = len(train_set), len(eval_set)
    staging = plan_staging(data, train_set, eval_set, env)
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": config.training.seed,
              "local_shard": staging is not None}
    train_loader = build_loader(train_set, data.local_batch_size, train=True,
                                shuffle=data.shuffle, drop_last=data.drop_last, **common)
    return Task(
        model=build_model(config),
        train_loader=train_loader,
        eval_loader=build_loader(eval_set, data.eval_batch_size, train=False, **common),
        loss_fn=WeightedCrossEntropy(),
        metric=MeanIoU(),
        train_samples=train_samples,
        eval_samples=eval_samples,
        hyperparameters=mlperf_hyperparameters(config, env.world_size,
                                               steps_per_epoch(train_loader, config)),
        device_transform=transform,
        staging=staging,
    )


MLPERF_OPTIMIZER_NAMES = {"adam": "Adam", "adamw": "AdamW", "lamb": "LAMB"}


def mlperf_hyperparameters(config: Config, world_size: int, steps_per_epoch: int) -> dict:
    """The DeepCAM-specific keys of the MLPerf HPC rules (``closed_deepcam*.yaml``), with the
    schedule's lengths in steps as the scheduler computes them."""
    opt, schedule = config.opt, config.lr_schedule
    lengths = schedule_steps(schedule, steps_per_epoch, steps_per_epoch * config.training.n_epochs)
    keys = {
        "opt_name": MLPERF_OPTIMIZER_NAMES.get(opt.name, opt.name),
        "gradient_accumulation_frequency": config.data.gradient_accumulation,
        "batchnorm_group_size": world_size if config.model.sync_batchnorm else 1,
        "opt_lr": scaled_base_lr(opt.lr, schedule, config.data.global_batch_size),
        "opt_betas": list(opt.betas),
        "opt_eps": opt.eps,
        "scheduler_type": "cosine_annealing" if schedule.name == "cosine" else schedule.name,
        "scheduler_lr_warmup_steps": int(lengths.warmup),
        "scheduler_lr_warmup_factor": (1.0 / schedule.warmup_start_factor
                                       if schedule.warmup_start_factor else 1.0),
        "scheduler_decay_rate": schedule.gamma,  # logged by the reference for either type
    }
    if opt.name == "lamb":
        # FusedLAMB's settings; this LAMB always corrects the bias and averages gradients.
        keys.update({"opt_bias_correction": True, "opt_grad_averaging": True,
                     "opt_max_grad_norm": opt.clip_grad_norm})
    if schedule.name == "multistep":
        keys["scheduler_milestones"] = deepcam_reference_milestones(lengths.milestones,
                                                                    lengths.warmup)
    elif schedule.name == "cosine":
        keys["scheduler_t_max"] = int(lengths.decay)
        keys["scheduler_eta_min"] = schedule.end_lr
    return keys


SPEC = BenchmarkSpec(
    name="deepcam",
    mllog_name="deepcam",
    problem="climate segmentation",
    model_name="DeepLabV3+ (modified Xception)",
    dataset="DeepCAM CAM5 climate HDF5",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=DeepCAMDataConfig, model=ModelConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=32,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
