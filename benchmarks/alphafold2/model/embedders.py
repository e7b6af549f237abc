"""Input, recycling and extra-MSA embedders (AF2 suppl. Algorithms 3, 4 and 32)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.alphafold2.model.config import InputEmbedderConfig, RecyclingConfig
from benchmarks.alphafold2.model.primitives import Linear


class InputEmbedder(nn.Module):
    """Initial MSA and pair representations from target_feat, msa_feat and residue_index."""

    def __init__(self, config: InputEmbedderConfig, c_m: int, c_z: int):
        super().__init__()
        self.relpos_k = config.relpos_k
        self.linear_tf_z_i = Linear(config.tf_dim, c_z)
        self.linear_tf_z_j = Linear(config.tf_dim, c_z)
        self.linear_tf_m = Linear(config.tf_dim, c_m)
        self.linear_msa_m = Linear(config.msa_dim, c_m)
        self.linear_relpos = Linear(2 * config.relpos_k + 1, c_z)

    def relpos(self, residue_index: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
        """Relative position encoding, offsets clipped to [-k, k] (Algorithm 4)."""
        offset = residue_index[..., :, None] - residue_index[..., None, :]
        offset = torch.clamp(offset.long(), -self.relpos_k, self.relpos_k) + self.relpos_k
        return self.linear_relpos(F.one_hot(offset, 2 * self.relpos_k + 1).to(dtype))

    def forward(self, target_feat: torch.Tensor, residue_index: torch.Tensor,
                msa_feat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Returns m [*, S, N, C_m] and z [*, N, N, C_z]."""
        z = self.linear_tf_z_i(target_feat)[..., :, None, :] \
            + self.linear_tf_z_j(target_feat)[..., None, :, :]
        z = z + self.relpos(residue_index, z.dtype)
        m = self.linear_msa_m(msa_feat) + self.linear_tf_m(target_feat).unsqueeze(-3)
        return m, z


class RecyclingEmbedder(nn.Module):
    """Embeds the previous iteration's first MSA row, pair and pseudo-beta positions."""

    def __init__(self, config: RecyclingConfig, c_m: int, c_z: int):
        super().__init__()
        self.config = config
        self.linear = Linear(config.no_bins, c_z)
        self.layer_norm_m = nn.LayerNorm(c_m)
        self.layer_norm_z = nn.LayerNorm(c_z)

    def forward(self, m_1: torch.Tensor, z: torch.Tensor,
                positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """m_1 [*, N, C_m], z [*, N, N, C_z], positions [*, N, 3] -> (m_1 update, z update)."""
        cfg = self.config
        lower = torch.linspace(cfg.min_bin, cfg.max_bin, cfg.no_bins, dtype=positions.dtype,
                               device=positions.device) ** 2
        upper = torch.cat([lower[1:], lower.new_tensor([cfg.inf])])
        sq_dist = torch.sum((positions[..., :, None, :] - positions[..., None, :, :]) ** 2,
                            dim=-1, keepdim=True)
        distogram = ((sq_dist > lower) & (sq_dist < upper)).to(positions.dtype)
        return self.layer_norm_m(m_1), self.linear(distogram) + self.layer_norm_z(z)
