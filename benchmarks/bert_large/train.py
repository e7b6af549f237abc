"""BERT-Large masked-LM pre-training on Wikipedia: masked-LM accuracy 0.720 (MLPerf Training).

Run ``mlbench train bert_large [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or
this file directly, as one process, under torchrun or under srun.

Training is a stream over the shard files; an "epoch" is the MLPerf evaluation interval,
``training.steps_per_epoch`` optimizer steps. Left at 0 it follows the MLPerf rule for the
global batch size (150k samples up to 2048, 175k for 3072-4096).
"""

from __future__ import annotations

import math
import sys
from pathlib import Path

import torch
from torch import nn

from benchmarks.bert_large.checkpoint import checkpoint_files, load_init_checkpoint
from benchmarks.bert_large.data import (
    BertDataConfig,
    BertEvalSet,
    BertTrainStream,
    list_shards,
    synthesize,
)
from benchmarks.bert_large.model import (
    BertMaskedLM,
    BertModelConfig,
    MaskedLMAccuracy,
    pretraining_loss,
)
from benchmarks.core.config import Config, ConfigSchema, GlobalContext
from benchmarks.core.data import build_loader, require_dir, take_subset
from benchmarks.core.distributed import all_reduce_sum
from benchmarks.core.errors import ConfigError
from benchmarks.core.loop import Task
from benchmarks.core.mllog import INIT_CHECKPOINT_SHA256, sha256sum
from benchmarks.core.optim import schedule_steps
from benchmarks.core.runner import BenchmarkSpec, main


def build_model(config: Config) -> nn.Module:
    """BERT of the configured size (BERT-Large with the next-sentence head, as MLPerf
    trains it: 336,226,108 parameters; masked LM only: 335,174,458)."""
    return BertMaskedLM(config.model)


def mlperf_eval_interval(global_batch_size: int) -> int:
    """Samples between evaluations in the MLPerf BERT rules (a multiple of 25,000)."""
    return math.floor(0.05 * (230.23 * global_batch_size + 3_000_000) / 25_000) * 25_000


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
    data, training = config.data, config.training
    root = require_dir(data.data_dir, "BERT dataset")
    train_dir = root / data.train_dir
    train_files = take_subset(list_shards(train_dir), data.train_subset, "data.train_subset",
                              train_dir)
    train_set = BertTrainStream(train_files, env.rank, env.world_size, training.seed)
    eval_set = BertEvalSet(list_shards(root / data.eval_dir), env.rank, env.world_size,
                           data.eval_subset)
    if train_set.seq_len > config.model.max_positions:
        raise ConfigError(f"config key 'model.max_positions': {config.model.max_positions} is "
                          f"shorter than the shards' sequences of {train_set.seq_len}")
    steps = training.steps_per_epoch or math.ceil(
        mlperf_eval_interval(data.global_batch_size) / data.global_batch_size)
    model = build_model(config)
    hyperparameters = mlperf_lamb_keys(config, train_set.seq_len, steps)
    if config.model.init_checkpoint:
        checkpoint = root / config.model.init_checkpoint  # an absolute path stays as it is
        load_init_checkpoint(model.mlm, checkpoint)
        if env.is_main:  # only rank 0 logs; the file may be gigabytes on a shared file system
            hyperparameters[INIT_CHECKPOINT_SHA256] = sha256sum(checkpoint_files(checkpoint))
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": training.seed}
    return Task(
        model=model,
        train_loader=build_loader(train_set, data.local_batch_size, train=True, **common),
        eval_loader=build_loader(eval_set, data.eval_batch_size, train=False, **common),
        loss_fn=pretraining_loss,
        metric=MaskedLMAccuracy(),
        train_samples=_global_train_samples(train_set, device),
        eval_samples=eval_set.total,
        hyperparameters=hyperparameters,
        steps_per_epoch=steps,
        fsdp_units=lambda wrapped: wrapped.transformer_blocks(),
        epoch_num_counts_samples=True,
    )


def _global_train_samples(train_set: BertTrainStream, device: torch.device) -> int:
    """Samples in all training shards: each rank counted its own files."""
    if not train_set.files_per_rank:
        return train_set.num_samples
    count = torch.tensor([train_set.num_samples], dtype=torch.float64, device=device)
    return int(all_reduce_sum(count).item())


def mlperf_lamb_keys(config: Config, seq_len: int, steps_per_epoch: int) -> dict[str, float]:
    """The optimizer keys the MLPerf BERT rules require (the runner logs the common ones);
    the step counts are the scheduler's own."""
    opt, schedule, training = config.opt, config.lr_schedule, config.training
    lengths = schedule_steps(schedule, steps_per_epoch, steps_per_epoch * training.n_epochs)
    return {
        "opt_lamb_epsilon": opt.eps,
        "opt_lamb_beta_1": opt.betas[0],
        "opt_lamb_beta_2": opt.betas[1],
        "opt_lamb_weight_decay_rate": opt.weight_decay,
        "opt_learning_rate_training_steps": int(lengths.decay_start + lengths.decay),
        "num_warmup_steps": int(lengths.warmup),
        "start_warmup_step": int(lengths.warmup_offset),
        "max_sequence_length": seq_len,
        "eval_frequency_samples": steps_per_epoch * config.data.global_batch_size,
    }


SPEC = BenchmarkSpec(
    name="bert_large",
    mllog_name="bert",
    problem="language modelling (masked LM)",
    model_name="BERT-Large (BertForMaskedLM)",
    dataset="Wikipedia 2020/01/01 (MLPerf HDF5 shards)",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=BertDataConfig, model=BertModelConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=4000,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
