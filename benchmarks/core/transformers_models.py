"""Helpers for the benchmarks whose models come from Hugging Face ``transformers`` classes
(BERT-Large, GPT-J), built from configs and never downloaded."""

from __future__ import annotations

from torch import nn


def enable_activation_checkpointing(model: nn.Module) -> None:
    """Recompute each layer's activations in the backward pass (non-reentrant).

    transformers 5 renamed ``gradient_checkpointing_enable`` to
    ``activation_checkpointing_enable``; either works.
    """
    enable = getattr(model, "activation_checkpointing_enable",
                     getattr(model, "gradient_checkpointing_enable", None))
    if enable is None:
        raise TypeError(f"{type(model).__name__} has no activation checkpointing switch")
    enable({"use_reentrant": False})
