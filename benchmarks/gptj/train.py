"""GPT-J 6B causal-LM training on C4 to a validation log-perplexity target.

Run ``mlbench train gptj [--config smoke] [--data-dir DIR] [--set KEY=VALUE ...]`` or this
file directly, as one process, under torchrun or under srun. The full model needs
``distributed.strategy: fsdp`` (parameters, gradients and AdamW state fully sharded over all
ranks) and benefits from ``model.activation_checkpointing``; small configs use DDP.

Training is a stream of packed C4 sequences; an "epoch" is ``training.steps_per_epoch``
optimizer steps followed by evaluation on the fixed validation subset.
"""

from __future__ import annotations

import sys
from pathlib import Path

from torch import nn

from benchmarks.core.config import Config, ConfigSchema, GlobalContext
from benchmarks.core.data import build_loader, require_dir, take_subset
from benchmarks.core.errors import ConfigError
from benchmarks.core.loop import Task
from benchmarks.core.optim import schedule_steps
from benchmarks.core.runner import BenchmarkSpec, main
from benchmarks.gptj.data import (
    EOS_TOKEN,
    C4DataConfig,
    C4EvalSet,
    C4TrainStream,
    list_c4_files,
    load_tokenizer,
    synthesize,
)
from benchmarks.gptj.model import GPTJLM, GPTJModelConfig, LogPerplexity, causal_lm_loss


def build_model(config: Config) -> nn.Module:
    """GPT-J of the configured size with GPT-2's vocabulary (50400 rows at the 6B size)."""
    return GPTJLM(config.model)


def build_task(context: GlobalContext) -> Task:
    config, env, device = context.cfg, context.env, context.device
    data, training = config.data, config.training
    if data.seq_len > config.model.n_positions:
        raise ConfigError(f"config key 'data.seq_len': {data.seq_len} is longer than "
                          f"model.n_positions {config.model.n_positions}")
    if not training.steps_per_epoch:
        raise ConfigError("config key 'training.steps_per_epoch': must be set (C4 is streamed; "
                          "an epoch is that many steps between evaluations)")
    if data.train_shards and len(data.train_shards) != 2:
        raise ConfigError("config key 'data.train_shards': expected [first, last] or []")
    root = require_dir(data.data_dir, "C4 dataset")
    tokenizer = load_tokenizer(root / data.tokenizer)
    train_files = list_c4_files(root, data.train_pattern, data.train_shards or None)
    train_files = take_subset(train_files, data.train_subset, "data.train_subset", root)
    train_set = C4TrainStream(train_files, tokenizer, data.seq_len, env.rank, env.world_size,
                              training.seed)
    eval_set = C4EvalSet(list_c4_files(root, data.eval_pattern), tokenizer, data.seq_len,
                         data.eval_subset, env.rank, env.world_size)
    common = {"env": env, "device": device, "num_workers": data.num_workers,
              "prefetch_factor": data.prefetch_factor, "seed": training.seed}
    # A stream has no size: log the most sequences this run may draw from it.
    budget = training.steps_per_epoch * training.n_epochs * data.global_batch_size
    return Task(
        model=GPTJLM(config.model, tokenizer.get_vocab_size(), tokenizer.token_to_id(EOS_TOKEN)),
        train_loader=build_loader(train_set, data.local_batch_size, train=True, **common),
        eval_loader=build_loader(eval_set, data.eval_batch_size, train=False,
                                 **{**common, "num_workers": 0}),
        loss_fn=causal_lm_loss,
        metric=LogPerplexity(),
        train_samples=budget,
        eval_samples=eval_set.num_sequences,
        hyperparameters=mlperf_adam_keys(config, tokenizer.get_vocab_size()),
        fsdp_units=lambda wrapped: wrapped.transformer_blocks(),
        epoch_num_counts_samples=True,
    )


def mlperf_adam_keys(config: Config, tokenizer_size: int) -> dict[str, object]:
    """The optimizer and sequence keys MLPerf's GPT-3 rules ask for, plus the vocabulary."""
    opt, schedule, training = config.opt, config.lr_schedule, config.training
    lengths = schedule_steps(schedule, training.steps_per_epoch,
                             training.steps_per_epoch * training.n_epochs)
    return {
        "max_sequence_length": config.data.seq_len,
        "opt_adam_beta_1": opt.betas[0],
        "opt_adam_beta_2": opt.betas[1],
        "opt_adam_epsilon": opt.eps,
        "opt_end_learning_rate": schedule.end_lr,
        "opt_learning_rate_decay_steps": int(lengths.decay),
        "opt_learning_rate_decay_schedule": f"{schedule.name} with linear warmup",
        "mlbench_tokenizer_size": tokenizer_size,
    }


SPEC = BenchmarkSpec(
    name="gptj",
    mllog_name="gptj",
    problem="language modelling (causal LM)",
    model_name="GPT-J 6B (GPTJForCausalLM)",
    dataset="C4 en 3.0.1 (json.gz), GPT-2 BPE",
    folder=Path(__file__).parent,
    schema=ConfigSchema(data=C4DataConfig, model=GPTJModelConfig),
    build_model=build_model,
    build_task=build_task,
    synthesize=synthesize,
    default_samples=4000,
)

if __name__ == "__main__":
    sys.exit(main(SPEC))
