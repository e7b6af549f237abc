"""Building blocks: initialised linear layers, gated multi-head attention, shared dropout.

Initialisers follow AF2 suppl. 1.11.4: LeCun (truncated normal, fan-in) by default, He for
layers before a ReLU, zero weights for the last layer of each residual branch ("final"), zero
weights and unit bias for gates, Glorot for attention projections.
"""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

# Standard deviation of a unit normal truncated to [-2, 2].
_TRUNCATED_NORMAL_STD = 0.87962566103423978


class Linear(nn.Linear):
    """nn.Linear with AlphaFold initialisers: default, relu, glorot, gating, normal, final."""

    def __init__(self, in_dim: int, out_dim: int, bias: bool = True, init: str = "default"):
        self.init_scheme = init
        super().__init__(in_dim, out_dim, bias=bias)

    def reset_parameters(self) -> None:
        init = self.init_scheme
        fan_in = self.weight.shape[1]
        with torch.no_grad():
            if init in ("default", "relu"):
                scale = 2.0 if init == "relu" else 1.0
                std = math.sqrt(scale / max(1, fan_in)) / _TRUNCATED_NORMAL_STD
                nn.init.trunc_normal_(self.weight, std=std, a=-2.0 * std, b=2.0 * std)
            elif init == "glorot":
                nn.init.xavier_uniform_(self.weight)
            elif init == "normal":
                nn.init.kaiming_normal_(self.weight, nonlinearity="linear")
            elif init in ("gating", "final"):
                self.weight.zero_()
            else:
                raise ValueError(f"unknown initialiser {init!r}")
            if self.bias is not None:
                self.bias.fill_(1.0 if init == "gating" else 0.0)


class SharedDropout(nn.Module):
    """Dropout whose mask is shared along one dimension (AF2's row-/column-wise dropout).

    ``shared_dim=-3`` is "row-wise" for [*, rows, cols, C] activations (one mask for all rows),
    ``shared_dim=-2`` is "column-wise".
    """

    def __init__(self, rate: float, shared_dim: int):
        super().__init__()
        self.rate = rate
        self.shared_dim = shared_dim

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.rate == 0.0:
            return x
        shape = list(x.shape)
        shape[self.shared_dim] = 1
        mask = F.dropout(x.new_ones(shape), p=self.rate, training=True)
        return x * mask


def _attend(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, bias: torch.Tensor | None,
            use_sdpa: bool) -> torch.Tensor:
    """softmax(q k^T / sqrt(c) + bias) v for q [*, H, Q, C], k/v [*, H, K, C]."""
    if use_sdpa:
        if bias is not None:
            bias = bias.to(q.dtype).expand(q.shape[:-1] + (k.shape[-2],))
        return F.scaled_dot_product_attention(q, k, v, attn_mask=bias)
    logits = torch.matmul(q, k.transpose(-1, -2)) / math.sqrt(q.shape[-1])
    if bias is not None:
        logits = logits + bias
    return torch.matmul(torch.softmax(logits, dim=-1), v)


def _sum_biases(biases: list[torch.Tensor]) -> torch.Tensor | None:
    total = None
    for bias in biases:
        total = bias if total is None else total + bias
    return total


class Attention(nn.Module):
    """Multi-head attention with optional sigmoid gating (AF2 suppl. Algorithms 7, 8, 13, 14).

    ``c_hidden`` is the per-head width. Two attributes, set model-wide by
    :meth:`AlphaFold.set_attention_options`, trade memory for speed without changing results:
    ``chunk_size`` processes the queries in slices so the [*, H, Q, K] logits never exist in
    full, and ``use_sdpa`` selects torch's fused scaled_dot_product_attention.
    """

    def __init__(self, c_q: int, c_kv: int, c_hidden: int, no_heads: int, gating: bool = True):
        super().__init__()
        self.c_hidden = c_hidden
        self.no_heads = no_heads
        self.linear_q = Linear(c_q, c_hidden * no_heads, bias=False, init="glorot")
        self.linear_k = Linear(c_kv, c_hidden * no_heads, bias=False, init="glorot")
        self.linear_v = Linear(c_kv, c_hidden * no_heads, bias=False, init="glorot")
        self.linear_o = Linear(c_hidden * no_heads, c_q, init="final")
        self.linear_g = Linear(c_q, c_hidden * no_heads, init="gating") if gating else None
        self.use_sdpa = True
        self.chunk_size: int | None = None

    def _heads(self, x: torch.Tensor) -> torch.Tensor:
        # [*, L, H * C] -> [*, H, L, C]
        return x.view(x.shape[:-1] + (self.no_heads, self.c_hidden)).transpose(-2, -3)

    def _query_block(self, q_x: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                     bias: torch.Tensor | None) -> torch.Tensor:
        q = self._heads(self.linear_q(q_x))
        o = _attend(q, k, v, bias, self.use_sdpa).transpose(-2, -3)  # [*, Q, H, C]
        if self.linear_g is not None:
            gate = torch.sigmoid(self.linear_g(q_x))
            o = o * gate.view(gate.shape[:-1] + (self.no_heads, self.c_hidden))
        return self.linear_o(o.flatten(-2))

    def forward(self, q_x: torch.Tensor, kv_x: torch.Tensor,
                biases: list[torch.Tensor] | None = None) -> torch.Tensor:
        """q_x [*, Q, C_q], kv_x [*, K, C_kv], biases broadcastable to [*, H, Q, K]."""
        k = self._heads(self.linear_k(kv_x))
        v = self._heads(self.linear_v(kv_x))
        bias = _sum_biases(biases or [])
        n_query, chunk_size = q_x.shape[-2], self.chunk_size
        if chunk_size is None or chunk_size >= n_query:
            return self._query_block(q_x, k, v, bias)
        outputs = []
        for start in range(0, n_query, chunk_size):
            stop = min(start + chunk_size, n_query)
            chunk_bias = None
            if bias is not None:
                chunk_bias = bias if bias.shape[-2] == 1 else bias[..., start:stop, :]
            outputs.append(self._query_block(q_x[..., start:stop, :], k, v, chunk_bias))
        return torch.cat(outputs, dim=-2)


class GlobalAttention(nn.Module):
    """Global column attention of the extra-MSA stack (AF2 suppl. Algorithm 19).

    One averaged query per column attends over all sequences with a single shared key/value
    head, which keeps the cost linear in the (large) number of extra sequences.
    """

    def __init__(self, c_in: int, c_hidden: int, no_heads: int, inf: float, eps: float):
        super().__init__()
        self.c_hidden = c_hidden
        self.no_heads = no_heads
        self.inf = inf
        self.eps = eps
        self.linear_q = Linear(c_in, c_hidden * no_heads, bias=False, init="glorot")
        self.linear_k = Linear(c_in, c_hidden, bias=False, init="glorot")
        self.linear_v = Linear(c_in, c_hidden, bias=False, init="glorot")
        self.linear_g = Linear(c_in, c_hidden * no_heads, init="gating")
        self.linear_o = Linear(c_hidden * no_heads, c_in, init="final")

    def forward(self, m: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """m [*, N_res, N_seq, C], mask [*, N_res, N_seq] (columns already moved first)."""
        q = torch.sum(m * mask[..., None], dim=-2) / (torch.sum(mask, dim=-1)[..., None] + self.eps)
        q = self.linear_q(q) * self.c_hidden ** -0.5
        q = q.view(q.shape[:-1] + (self.no_heads, self.c_hidden))  # [*, N_res, H, C]
        k = self.linear_k(m)  # [*, N_res, N_seq, C]
        v = self.linear_v(m)
        logits = torch.matmul(q, k.transpose(-1, -2))  # [*, N_res, H, N_seq]
        logits = logits + (self.inf * (mask - 1.0))[..., None, :]
        o = torch.matmul(torch.softmax(logits, dim=-1), v)  # [*, N_res, H, C]
        gate = torch.sigmoid(self.linear_g(m))  # [*, N_res, N_seq, H * C]
        gate = gate.view(gate.shape[:-1] + (self.no_heads, self.c_hidden))
        o = o.unsqueeze(-3) * gate  # [*, N_res, N_seq, H, C]
        return self.linear_o(o.flatten(-2))


class Transition(nn.Module):
    """Two-layer MLP with a residual-ready output (AF2 suppl. Algorithms 9 and 15)."""

    def __init__(self, c: int, n: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c)
        self.linear_1 = Linear(c, n * c, init="relu")
        self.linear_2 = Linear(n * c, c, init="final")

    def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x = self.linear_2(torch.relu(self.linear_1(self.layer_norm(x))))
        return x if mask is None else x * mask[..., None]
