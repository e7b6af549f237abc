"""BERT-Large masked LM, built from a ``transformers`` config (never downloaded).

The model is ``BertForMaskedLM``: BERT without pooler and next-sentence head, 335,174,458
parameters at the BERT-Large size (the figure of the original benchmark table; the decoder is
tied to the word embeddings and counted once). :class:`BertMaskedLM` runs the encoder on the
whole sequence but the prediction head only on the real masked positions (at most 76), as
NVIDIA's MLPerf implementation does (``dense_seq_output``): the head's 30522-way projection
over all 512 positions would otherwise dominate the cost.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM

from benchmarks.bert_large.data import IGNORE_LABEL
from benchmarks.core.config import Fraction, NonNegativeFloat, PositiveInt
from benchmarks.core.errors import InputError
from benchmarks.core.metrics import RatioMetric
from benchmarks.core.transformers_models import enable_activation_checkpointing

NOT_IN_MASKED_LM = ("bert.pooler.", "cls.seq_relationship.")
TIED_TO_OTHER_WEIGHTS = ("cls.predictions.decoder.weight", "cls.predictions.decoder.bias")


@dataclass
class BertModelConfig:
    """The ``model`` config section; the defaults are BERT-Large (``bert_config.json``).

    ``init_checkpoint`` is an optional PyTorch state dict to start from (MLPerf starts from
    the converted ``model.ckpt-28252``); pooler and next-sentence weights in it are ignored.
    """

    vocab_size: PositiveInt = 30522
    hidden_size: PositiveInt = 1024
    num_layers: PositiveInt = 24
    num_heads: PositiveInt = 16
    intermediate_size: PositiveInt = 4096
    max_positions: PositiveInt = 512
    type_vocab_size: PositiveInt = 2
    dropout: Fraction = 0.1
    attention_dropout: Fraction = 0.1
    init_std: NonNegativeFloat = 0.02
    activation_checkpointing: bool = False
    trim_padding: bool = True
    init_checkpoint: str = ""


def hf_config(cfg: BertModelConfig) -> BertConfig:
    """The ``transformers`` config for ``cfg``."""
    return BertConfig(
        vocab_size=cfg.vocab_size,
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers,
        num_attention_heads=cfg.num_heads,
        intermediate_size=cfg.intermediate_size,
        max_position_embeddings=cfg.max_positions,
        type_vocab_size=cfg.type_vocab_size,
        hidden_dropout_prob=cfg.dropout,
        attention_probs_dropout_prob=cfg.attention_dropout,
        initializer_range=cfg.init_std,
        hidden_act="gelu",
    )


class BertMaskedLM(nn.Module):
    """``BertForMaskedLM`` returning logits [real masked positions, vocab] of a batch.

    Inputs are the tensors of one batch of the shard reader (see ``data.py``). Prediction slots
    at position 0 are padding ([CLS] is never masked) and get no logits: the output rows are
    the slots with ``masked_lm_positions > 0`` in row-major order, the same slots whose label is
    not ``IGNORE_LABEL``. With ``trim_padding`` the batch is cut after its longest real
    sequence first; padding sits at the end and is masked, so the logits do not change.
    """

    def __init__(self, cfg: BertModelConfig) -> None:
        super().__init__()
        self.mlm = BertForMaskedLM(hf_config(cfg))
        self.trim_padding = cfg.trim_padding
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.mlm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor, masked_lm_positions: torch.Tensor) -> torch.Tensor:
        if self.trim_padding:
            length = int(attention_mask.sum(dim=1).max())
            input_ids, attention_mask, token_type_ids = (
                t[:, :length] for t in (input_ids, attention_mask, token_type_ids))
        hidden = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask,
                               token_type_ids=token_type_ids).last_hidden_state
        index = masked_lm_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        gathered = hidden.gather(1, index)[masked_lm_positions > 0]
        return self.mlm.cls(gathered)

    def transformer_blocks(self) -> list[nn.Module]:
        """The encoder layers: the units an FSDP wrap policy shards one by one."""
        return list(self.mlm.bert.encoder.layer)


def load_init_checkpoint(model: BertMaskedLM, path: str | Path) -> None:
    """Load a ``BertForMaskedLM``/``BertForPreTraining`` state dict (optionally under a
    ``model`` key, as NVIDIA saves it) into ``model``; an InputError names the file."""
    path = Path(path)
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise InputError(f"{path}: initial checkpoint not found") from None
    except Exception as err:  # torch.load raises many types on a corrupt file
        raise InputError(f"{path}: not a PyTorch checkpoint ({type(err).__name__})") from None
    state = state.get("model", state) if isinstance(state, dict) else state
    if not isinstance(state, dict):
        raise InputError(f"{path}: checkpoint is not a state dict")
    state = {key: value for key, value in state.items() if not key.startswith(NOT_IN_MASKED_LM)}
    try:
        result = model.mlm.load_state_dict(state, strict=False)
    except RuntimeError as err:
        raise InputError(f"{path}: does not fit the configured model "
                         f"({str(err).splitlines()[-1].strip()})") from None
    missing = [key for key in result.missing_keys if key not in TIED_TO_OTHER_WEIGHTS]
    if missing or result.unexpected_keys:
        wrong = (missing or result.unexpected_keys)[0]
        raise InputError(f"{path}: not a BERT masked-LM state dict ({len(missing)} missing, "
                         f"{len(result.unexpected_keys)} unexpected keys, e.g. '{wrong}')")


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real masked positions (logits come only for those)."""
    return _VocabCrossEntropy.apply(logits, labels[labels != IGNORE_LABEL])


class _VocabCrossEntropy(torch.autograd.Function):
    """``F.cross_entropy`` (mean) whose backward turns the saved log-probabilities into the
    gradient in place: ``softmax - one_hot``. The stock backward allocates and zero-fills a
    [rows, vocab] gradient for the NLL step, then allocates a second one for the log-softmax
    step; at 30522 classes those extra passes cost 7-17% of a smoke training step on a CPU.
    The saved buffer is consumed, so the graph supports one backward pass (no
    ``retain_graph``)."""

    @staticmethod
    def forward(ctx, logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        log_probs = F.log_softmax(logits, dim=-1, dtype=torch.float32)
        ctx.save_for_backward(log_probs, labels)
        ctx.logits_dtype = logits.dtype
        return -log_probs.gather(1, labels[:, None]).mean()

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, None]:
        log_probs, labels = ctx.saved_tensors
        scale = grad / labels.numel()
        grad_logits = log_probs.exp_().mul_(scale)
        grad_logits[torch.arange(labels.numel(), device=labels.device), labels] -= scale
        return grad_logits.to(ctx.logits_dtype), None


class MaskedLMAccuracy(RatioMetric):
    """Share of real masked positions whose most likely token is the original one."""

    name = "mlm_accuracy"
    higher_is_better = True
    mllog_key = "eval_accuracy"

    def batch_state(self, outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        labels = targets[targets != IGNORE_LABEL]
        correct = (outputs.argmax(dim=-1) == labels).sum()
        return torch.stack([correct, torch.tensor(labels.numel(), device=labels.device)])
