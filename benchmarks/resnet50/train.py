"""ResNet50 v1.5 on ImageNet: image classification to 75.9% top-1 (MLPerf Training).

Run ``mlbench train resnet50 [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or
this file directly, as one process, under torchrun or under srun.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from benchmarks.core.config import Config, ConfigSchema, GlobalContext
from benchmarks.core.data import build_loader
from benchmarks.core.errors import ConfigError
from benchmarks.core.loop import Task, steps_per_epoch
from benchmarks.core.metrics import TopKAccuracy
from benchmarks.core.optim import scaled_base_lr, schedule_steps
from benchmarks.core.runner import BenchmarkSpec, main
from benchmarks.resnet50.data import (
    ImageNetDataConfig,
    build_datasets,
    build_transform,
    collate_fns,
    synthesize,
)
from benchmarks.resnet50.model import ResNetModelConfig, build_resnet

IMAGENET_CLASSES = 1000


def build_model(config: Config, num_classes: int = 0) -> nn.Module:
    """ResNet v1.5 for ``num_classes`` (else the configured count, else ImageNet's 1000)."""
    classes = num_classes or config.model.num_classes or IMAGENET_CLASSES
    return build_resnet(config.model, classes)


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
    data = config.data
    train_set, eval_set = build_datasets(data)
    num_classes = len(train_set.classes)
    if config.model.num_classes and config.model.num_classes != num_classes:
        raise ConfigError(f"config key 'model.num_classes': {config.model.num_classes} but "
                          f"{data.data_dir} has {num_classes} classes")
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": config.training.seed}
    train_collate, eval_collate = collate_fns(data)
    train_loader = build_loader(train_set, data.local_batch_size, train=True,
                                shuffle=data.shuffle, drop_last=data.drop_last,
                                collate_fn=train_collate, **common)
    return Task(
        model=build_model(config, num_classes),
        train_loader=train_loader,
        eval_loader=build_loader(eval_set, data.eval_batch_size, train=False,
                                 collate_fn=eval_collate, **common),
        loss_fn=nn.CrossEntropyLoss(label_smoothing=config.model.label_smoothing),
        metric=TopKAccuracy(k=1),
        train_samples=len(train_set),
        eval_samples=len(eval_set),
        hyperparameters={"model_bn_span": data.local_batch_size,
                         "label_smoothing": config.model.label_smoothing,
                         **mlperf_optimizer_keys(config, steps_per_epoch(train_loader, config))},
        device_transform=build_transform(data),
    )


def mlperf_optimizer_keys(config: Config, steps: int) -> dict[str, float]:
    """The ``sgd_*`` / ``lars_*`` keys the MLPerf ResNet rules require for the closed division
    (``steps``: optimizer steps per epoch; the decay steps are the scheduler's own)."""
    opt, schedule = config.opt, config.lr_schedule
    lengths = schedule_steps(schedule, steps, steps * config.training.n_epochs)
    keys = {
        "opt_base_learning_rate": scaled_base_lr(opt.lr, schedule, config.data.global_batch_size),
        "opt_end_learning_rate": schedule.end_lr,
        "opt_learning_rate_decay_poly_power": schedule.power,
        "opt_learning_rate_decay_steps": int(lengths.decay),
        "opt_weight_decay": opt.weight_decay,
        "opt_momentum": opt.momentum,
    }
    if opt.name == "lars":
        keys["opt_learning_rate_warmup_epochs"] = lengths.warmup / steps
        keys["epsilon"] = opt.eps
    return {f"{opt.name}_{key}": value for key, value in keys.items()}


SPEC = BenchmarkSpec(
    name="resnet50",
    mllog_name="resnet",
    problem="image classification",
    model_name="ResNet50 v1.5",
    dataset="ImageNet-1k (ImageFolder JPEG)",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=ImageNetDataConfig, model=ResNetModelConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=400,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
