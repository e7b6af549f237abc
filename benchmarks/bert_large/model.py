"""BERT-Large pre-training (masked LM + next-sentence prediction), built from a
``transformers`` config (never downloaded).

With ``model.next_sentence`` (the MLPerf recipe) the model is ``BertForPreTraining``:
336,226,108 parameters at the BERT-Large size, and the loss is the reference's
``masked_lm_loss + next_sentence_loss`` (``run_pretraining.py``); without it,
``BertForMaskedLM``: no pooler and next-sentence head, 335,174,458 parameters (the decoder is
tied to the word embeddings and counted once). :class:`BertMaskedLM` runs the encoder on the
whole sequence but the prediction head only on the real masked positions (at most 76), as
NVIDIA's MLPerf implementation does (``dense_seq_output``): the head's 30522-way projection
over all 512 positions would otherwise dominate the cost. Quality is masked-LM accuracy only.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn
from transformers import BertConfig, BertForMaskedLM, BertForPreTraining

from benchmarks.bert_large.data import IGNORE_LABEL
from benchmarks.core.config import Fraction, NonNegativeFloat, PositiveInt
from benchmarks.core.metrics import RatioMetric
from benchmarks.core.transformers_models import enable_activation_checkpointing


@dataclass
class BertModelConfig:
    """The ``model`` config section; the defaults are BERT-Large (``bert_config.json``).

    ``init_checkpoint`` is the checkpoint to start from (MLPerf: the phase-1 checkpoint
    ``model.ckpt-28252``, as a TensorFlow checkpoint prefix or NVIDIA's converted ``.pt``);
    a relative path is under ``data.data_dir``; empty: random weights. See ``checkpoint.py``;
    without ``next_sentence`` its pooler and next-sentence weights are not used.
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
    next_sentence: bool = False
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
    """BERT returning masked-LM logits [real masked positions, vocab] of a batch, and with
    ``next_sentence`` also the next-sentence logits [batch, 2] (a tuple of both).

    Inputs are the tensors of one batch of the shard reader (see ``data.py``). Prediction slots
    at position 0 are padding ([CLS] is never masked) and get no logits: the output rows are
    the slots with ``masked_lm_positions > 0`` in row-major order, the same slots whose label is
    not ``IGNORE_LABEL``. With ``trim_padding`` the batch is cut after its longest real
    sequence first; padding sits at the end and is masked, so the logits do not change.
    """

    def __init__(self, cfg: BertModelConfig) -> None:
        super().__init__()
        self.next_sentence = cfg.next_sentence
        model_class = BertForPreTraining if cfg.next_sentence else BertForMaskedLM
        self.mlm = model_class(hf_config(cfg))
        self.trim_padding = cfg.trim_padding
        if cfg.activation_checkpointing:
            enable_activation_checkpointing(self.mlm)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                token_type_ids: torch.Tensor, masked_lm_positions: torch.Tensor
                ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.trim_padding:
            length = int(attention_mask.sum(dim=1).max())
            input_ids, attention_mask, token_type_ids = (
                t[:, :length] for t in (input_ids, attention_mask, token_type_ids))
        encoded = self.mlm.bert(input_ids=input_ids, attention_mask=attention_mask,
                                token_type_ids=token_type_ids)
        hidden = encoded.last_hidden_state
        index = masked_lm_positions.unsqueeze(-1).expand(-1, -1, hidden.shape[-1])
        gathered = hidden.gather(1, index)[masked_lm_positions > 0]
        mlm_logits = self.mlm.cls.predictions(gathered)
        if not self.next_sentence:
            return mlm_logits
        return mlm_logits, self.mlm.cls.seq_relationship(encoded.pooler_output)

    def transformer_blocks(self) -> list[nn.Module]:
        """The encoder layers: the units an FSDP wrap policy shards one by one."""
        return list(self.mlm.bert.encoder.layer)


def masked_lm_loss(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Mean cross-entropy over the real masked positions (logits come only for those)."""
    return _VocabCrossEntropy.apply(logits, labels[labels != IGNORE_LABEL])


def pretraining_loss(outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                     targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    """The reference's ``masked_lm_loss + next_sentence_loss`` (the mean next-sentence
    cross-entropy over the batch's real samples); the masked-LM loss alone without the
    next-sentence head."""
    mlm_labels, next_sentence_labels = targets
    if not isinstance(outputs, tuple):
        return masked_lm_loss(outputs, mlm_labels)
    mlm_logits, next_sentence_logits = outputs
    return masked_lm_loss(mlm_logits, mlm_labels) + F.cross_entropy(
        next_sentence_logits.float(), next_sentence_labels, ignore_index=IGNORE_LABEL)


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

    def batch_state(self, outputs: torch.Tensor | tuple[torch.Tensor, torch.Tensor],
                    targets: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        logits = outputs[0] if isinstance(outputs, tuple) else outputs
        labels = targets[0][targets[0] != IGNORE_LABEL]
        correct = (logits.argmax(dim=-1) == labels).sum()
        return torch.stack([correct, torch.tensor(labels.numel(), device=labels.device)])
