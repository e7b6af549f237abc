"""MSA attention modules, Evoformer blocks and stacks (AF2 suppl. Algorithms 6-10, 18, 19)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from benchmarks.alphafold2.model.config import MSAStackConfig
from benchmarks.alphafold2.model.pair import OuterProductMean, PairStackBlock
from benchmarks.alphafold2.model.primitives import (
    Attention,
    GlobalAttention,
    Linear,
    SharedDropout,
    Transition,
)


class MSARowAttentionWithPairBias(nn.Module):
    """Row-wise gated self-attention biased by the pair representation (Algorithm 7)."""

    def __init__(self, c_m: int, c_z: int, c_hidden: int, no_heads: int, inf: float):
        super().__init__()
        self.inf = inf
        self.layer_norm_m = nn.LayerNorm(c_m)
        self.layer_norm_z = nn.LayerNorm(c_z)
        self.linear_z = Linear(c_z, no_heads, bias=False, init="normal")
        self.mha = Attention(c_m, c_m, c_hidden, no_heads)

    def forward(self, m: torch.Tensor, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m = self.layer_norm_m(m)
        mask_bias = (self.inf * (mask - 1.0))[..., :, None, None, :]  # [*, S, 1, 1, N]
        pair_bias = self.linear_z(self.layer_norm_z(z)).movedim(-1, -3).unsqueeze(-4)
        return self.mha(m, m, [mask_bias, pair_bias])


class MSAColumnAttention(nn.Module):
    """Column-wise gated self-attention over the sequences of each residue (Algorithm 8)."""

    def __init__(self, c_m: int, c_hidden: int, no_heads: int, inf: float):
        super().__init__()
        self.inf = inf
        self.layer_norm_m = nn.LayerNorm(c_m)
        self.mha = Attention(c_m, c_m, c_hidden, no_heads)

    def forward(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m, mask = m.transpose(-2, -3), mask.transpose(-1, -2)
        m = self.layer_norm_m(m)
        mask_bias = (self.inf * (mask - 1.0))[..., :, None, None, :]
        return self.mha(m, m, [mask_bias]).transpose(-2, -3)


class MSAColumnGlobalAttention(nn.Module):
    """Column-wise global attention used by the extra-MSA stack (Algorithm 19)."""

    def __init__(self, c_m: int, c_hidden: int, no_heads: int, inf: float, eps: float):
        super().__init__()
        self.layer_norm_m = nn.LayerNorm(c_m)
        self.global_attention = GlobalAttention(c_m, c_hidden, no_heads, inf, eps)

    def forward(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        m, mask = m.transpose(-2, -3), mask.transpose(-1, -2)
        m = self.layer_norm_m(m)
        return self.global_attention(m, mask).transpose(-2, -3)


class EvoformerBlock(nn.Module):
    """One Evoformer block; with ``global_column_attention`` it is an extra-MSA block."""

    def __init__(self, c_m: int, c_z: int, config: MSAStackConfig, global_column_attention: bool):
        super().__init__()
        self.msa_att_row = MSARowAttentionWithPairBias(
            c_m, c_z, config.c_hidden_msa_att, config.no_heads_msa, config.inf)
        if global_column_attention:
            self.msa_att_col = MSAColumnGlobalAttention(
                c_m, config.c_hidden_msa_att, config.no_heads_msa, config.inf, config.eps)
        else:
            self.msa_att_col = MSAColumnAttention(
                c_m, config.c_hidden_msa_att, config.no_heads_msa, config.inf)
        self.msa_dropout_row = SharedDropout(config.msa_dropout, shared_dim=-3)
        self.msa_transition = Transition(c_m, config.transition_n)
        self.outer_product_mean = OuterProductMean(c_m, c_z, config.c_hidden_opm)
        self.pair_stack = PairStackBlock(
            c_z, config.c_hidden_mul, config.c_hidden_pair_att, config.no_heads_pair,
            config.transition_n, config.pair_dropout, config.inf)

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor,
                pair_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        m = m + self.msa_dropout_row(self.msa_att_row(m, z, msa_mask))
        m = m + self.msa_att_col(m, msa_mask)
        m = m + self.msa_transition(m)
        z = z + self.outer_product_mean(m, msa_mask)
        z = self.pair_stack(z, pair_mask)
        return m, z


class EvoformerStack(nn.Module):
    """A stack of Evoformer blocks (Algorithm 6) or extra-MSA blocks (Algorithm 18).

    The main stack also projects the first MSA row to the single representation.
    """

    def __init__(self, c_m: int, c_z: int, config: MSAStackConfig, c_s: int | None = None,
                 global_column_attention: bool = False):
        super().__init__()
        self.blocks = nn.ModuleList(
            EvoformerBlock(c_m, c_z, config, global_column_attention)
            for _ in range(config.no_blocks))
        self.linear = Linear(c_m, c_s) if c_s is not None else None
        self.checkpoint_blocks = False

    def forward(self, m: torch.Tensor, z: torch.Tensor, msa_mask: torch.Tensor,
                pair_mask: torch.Tensor):
        """Returns (m, z, s) with s = None for a stack without the single projection."""
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                m, z = checkpoint(block, m, z, msa_mask, pair_mask, use_reentrant=False)
            else:
                m, z = block(m, z, msa_mask, pair_mask)
        s = self.linear(m[..., 0, :, :]) if self.linear is not None else None
        return m, z, s
