"""Pair-representation updates: triangle multiplication, triangle attention, outer product mean."""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmarks.alphafold2.model.primitives import Attention, Linear, SharedDropout, Transition


class TriangleMultiplication(nn.Module):
    """Triangle multiplicative update using outgoing or incoming edges (Algorithms 11, 12)."""

    def __init__(self, c_z: int, c_hidden: int, outgoing: bool):
        super().__init__()
        self.outgoing = outgoing
        self.layer_norm_in = nn.LayerNorm(c_z)
        self.linear_a_p = Linear(c_z, c_hidden)
        self.linear_a_g = Linear(c_z, c_hidden, init="gating")
        self.linear_b_p = Linear(c_z, c_hidden)
        self.linear_b_g = Linear(c_z, c_hidden, init="gating")
        self.linear_g = Linear(c_z, c_z, init="gating")
        self.linear_z = Linear(c_hidden, c_z, init="final")
        self.layer_norm_out = nn.LayerNorm(c_hidden)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """z [*, N, N, C_z], mask [*, N, N] -> update [*, N, N, C_z]."""
        z = self.layer_norm_in(z)
        mask = mask[..., None]
        a = mask * self.linear_a_p(z) * torch.sigmoid(self.linear_a_g(z))
        b = mask * self.linear_b_p(z) * torch.sigmoid(self.linear_b_g(z))
        a, b = a.movedim(-1, -3), b.movedim(-1, -3)  # [*, C, N, N]
        if self.outgoing:  # x_ij = sum_k a_ik b_jk
            x = torch.matmul(a, b.transpose(-1, -2))
        else:  # x_ij = sum_k a_ki b_kj
            x = torch.matmul(a.transpose(-1, -2), b)
        x = self.layer_norm_out(x.movedim(-3, -1))
        return self.linear_z(x) * torch.sigmoid(self.linear_g(z))


class TriangleAttention(nn.Module):
    """Triangle self-attention around the starting or ending node (Algorithms 13, 14)."""

    def __init__(self, c_z: int, c_hidden: int, no_heads: int, starting: bool, inf: float):
        super().__init__()
        self.starting = starting
        self.inf = inf
        self.layer_norm = nn.LayerNorm(c_z)
        self.linear = Linear(c_z, no_heads, bias=False, init="normal")
        self.mha = Attention(c_z, c_z, c_hidden, no_heads)

    def forward(self, z: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        if not self.starting:
            z, mask = z.transpose(-2, -3), mask.transpose(-1, -2)
        z = self.layer_norm(z)
        mask_bias = (self.inf * (mask - 1.0))[..., :, None, None, :]  # [*, I, 1, 1, J]
        triangle_bias = self.linear(z).movedim(-1, -3).unsqueeze(-4)  # [*, 1, H, I, J]
        z = self.mha(z, z, [mask_bias, triangle_bias])
        return z.transpose(-2, -3) if not self.starting else z


class OuterProductMean(nn.Module):
    """MSA -> pair update: mean over sequences of outer products (Algorithm 10)."""

    def __init__(self, c_m: int, c_z: int, c_hidden: int, eps: float = 1e-3):
        super().__init__()
        self.eps = eps
        self.layer_norm = nn.LayerNorm(c_m)
        self.linear_1 = Linear(c_m, c_hidden)
        self.linear_2 = Linear(c_m, c_hidden)
        self.linear_out = Linear(c_hidden * c_hidden, c_z, init="final")

    def forward(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """m [*, S, N, C_m], mask [*, S, N] -> [*, N, N, C_z]."""
        m = self.layer_norm(m)
        mask = mask[..., None]
        a = self.linear_1(m) * mask
        b = self.linear_2(m) * mask
        outer = torch.einsum("...sic,...sjd->...ijcd", a, b)
        outer = self.linear_out(outer.flatten(-2))
        norm = torch.einsum("...sic,...sjc->...ijc", mask, mask)
        return outer / (self.eps + norm)


class PairStackBlock(nn.Module):
    """The pair half of an Evoformer block, also the template pair stack block.

    ``template_order`` selects the template stack's order (attention before multiplication,
    Algorithm 16) over the trunk's (multiplication first, Algorithm 6).
    """

    def __init__(self, c_z: int, c_hidden_mul: int, c_hidden_att: int, no_heads: int,
                 transition_n: int, dropout: float, inf: float, template_order: bool = False):
        super().__init__()
        self.template_order = template_order
        self.tri_mul_out = TriangleMultiplication(c_z, c_hidden_mul, outgoing=True)
        self.tri_mul_in = TriangleMultiplication(c_z, c_hidden_mul, outgoing=False)
        self.tri_att_start = TriangleAttention(c_z, c_hidden_att, no_heads, True, inf)
        self.tri_att_end = TriangleAttention(c_z, c_hidden_att, no_heads, False, inf)
        self.pair_transition = Transition(c_z, transition_n)
        self.dropout_row = SharedDropout(dropout, shared_dim=-3)
        self.dropout_col = SharedDropout(dropout, shared_dim=-2)

    def forward(self, z: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        def multiplication(z: torch.Tensor) -> torch.Tensor:
            z = z + self.dropout_row(self.tri_mul_out(z, pair_mask))
            return z + self.dropout_row(self.tri_mul_in(z, pair_mask))

        def attention(z: torch.Tensor) -> torch.Tensor:
            z = z + self.dropout_row(self.tri_att_start(z, pair_mask))
            return z + self.dropout_col(self.tri_att_end(z, pair_mask))

        if self.template_order:
            z = multiplication(attention(z))
        else:
            z = attention(multiplication(z))
        return z + self.pair_transition(z)
