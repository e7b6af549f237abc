"""GPT-J causal LM, built from a ``transformers`` config (never downloaded).

At the GPT-J 6B size (28 layers, d_model 4096, 16 heads, rotary_dim 64, 2048 positions,
vocabulary 50400, untied LM head with bias) PyTorch counts 6,050,882,784 parameters; the
EleutherAI model card says 6,053,381,344 (a mesh-transformer-jax figure). We log the real count.

The vocabulary follows the tokenizer the run is given, rounded up to ``vocab_multiple`` as
GPT-J pads GPT-2's 50257 tokens to 50400: a small model trained on the synthetic corpus runs
unchanged on real C4 with the real GPT-2 tokenizer. An explicit ``vocab_size`` wins (it must
cover the tokenizer).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import GPTJConfig, GPTJForCausalLM

from benchmarks.core.config import Fraction, NonNegativeFloat, NonNegativeInt, PositiveInt
from benchmarks.core.errors import ConfigError
from benchmarks.core.metrics import SumMetric
from benchmarks.core.transformers_models import enable_activation_checkpointing
from benchmarks.gptj.data import IGNORE_TARGET

GPT2_VOCAB_SIZE = 50257
GPT2_EOS_ID = 50256


@dataclass
class GPTJModelConfig:
    """The ``model`` config section; the defaults are GPT-J 6B.

    ``vocab_size`` 0 means: the tokenizer's size rounded up to ``vocab_multiple`` (GPT-2's
    50257 when no tokenizer is at hand, e.g. for the benchmark table).
    """

    vocab_size: NonNegativeInt = 0
    vocab_multiple: PositiveInt = 200
    n_positions: PositiveInt = 2048
    n_embd: PositiveInt = 4096
    n_layer: PositiveInt = 28
    n_head: PositiveInt = 16
    rotary_dim: PositiveInt = 64
    n_inner: NonNegativeInt = 0
    dropout: Fraction = 0.0
    init_std: NonNegativeFloat = 0.02
    activation_checkpointing: bool = False


def model_vocab_size(cfg: GPTJModelConfig, tokenizer_size: int = GPT2_VOCAB_SIZE) -> int:
    """The embedding rows for a tokenizer of ``tokenizer_size`` tokens (see the module doc)."""
    if cfg.vocab_size:
        if cfg.vocab_size < tokenizer_size:
            raise ConfigError(f"config key 'model.vocab_size': {cfg.vocab_size} is smaller than "
                              f"the tokenizer's {tokenizer_size} tokens")
        return cfg.vocab_size
    return math.ceil(tokenizer_size / cfg.vocab_multiple) * cfg.vocab_multiple


def hf_config(cfg: GPTJModelConfig, vocab_size: int, eos_id: int = GPT2_EOS_ID) -> GPTJConfig:
    """The ``transformers`` config for ``cfg`` with ``vocab_size`` rows and the tokenizer's EOS."""
    if cfg.n_embd % cfg.n_head or cfg.rotary_dim > cfg.n_embd // cfg.n_head:
        raise ConfigError(f"config key 'model.n_head': {cfg.n_head} heads must divide n_embd "
                          f"{cfg.n_embd} into heads of at least rotary_dim {cfg.rotary_dim}")
    return GPTJConfig(
        vocab_size=vocab_size,
        n_positions=cfg.n_positions,
        n_embd=cfg.n_embd,
        n_layer=cfg.n_layer,
        n_head=cfg.n_head,
        rotary_dim=cfg.rotary_dim,
        n_inner=cfg.n_inner or None,
        resid_pdrop=cfg.dropout,
        embd_pdrop=cfg.dropout,
        attn_pdrop=cfg.dropout,
        initializer_range=cfg.init_std,
        bos_token_id=eos_id,
        eos_token_id=eos_id,
        use_cache=False,
        tie_word_embeddings=False,
    )


class GPTJLM(nn.Module):
    """``GPTJForCausalLM`` that maps token ids [batch, seq] to next-token logits [batch, seq, V]."""

    def __init__(self, cfg: GPTJModelConfig, tokenizer_size: int = GPT2_VOCAB_SIZE,
                 eos_id: int = GPT2_EOS_ID) -> None:
        super().__init__()
        vocab_size = model_vocab_size(cfg, tokenizer_size)
        self.lm = GPTJForCausalLM(hf_config(cfg, vocab_size, eos_id))
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.lm)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        hidden = self.lm.transformer(input_ids=input_ids, use_cache=False).last_hidden_state
        return self.lm.lm_head(hidden)

    def transformer_blocks(self) -> list[nn.Module]:
        """The decoder blocks: the units an FSDP wrap policy shards one by one."""
        return list(self.lm.transformer.h)


def causal_lm_loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Mean next-token cross-entropy (nats) over the tokens that have a target."""
    return F.cross_entropy(logits.flatten(0, 1), targets.flatten(), ignore_index=IGNORE_TARGET)


class LogPerplexity(SumMetric):
    """Validation log-perplexity: summed token cross-entropy / token count (nats, lower is
    better), logged as ``eval_accuracy`` as MLPerf's GPT-3 and Llama benchmarks do."""

    size = 2
    name = "log_perplexity"
    higher_is_better = False
    mllog_key = "eval_accuracy"

    def batch_state(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        flat = targets.flatten()
        total = F.cross_entropy(outputs.flatten(0, 1).float(), flat, ignore_index=IGNORE_TARGET,
                                reduction="sum")
        return torch.stack([total.double(), (flat != IGNORE_TARGET).sum().double()])

    def value(self, state: torch.Tensor) -> float:
        return float(state[0] / state[1]) if state[1] > 0 else float("nan")
