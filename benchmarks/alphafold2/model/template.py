"""Template embedding: pair stack over each template, pointwise attention (Algorithms 16, 17)."""

from __future__ import annotations

import torch
import torch.nn as nn
from torch.utils.checkpoint import checkpoint

from benchmarks.alphafold2 import all_atom
from benchmarks.alphafold2.model.config import TemplateConfig
from benchmarks.alphafold2.model.pair import PairStackBlock
from benchmarks.alphafold2.model.primitives import Attention, Linear


class TemplatePairStack(nn.Module):
    """Triangle updates over one template's pair embedding, then a layer norm (Algorithm 16)."""

    def __init__(self, c_t: int, config: TemplateConfig):
        super().__init__()
        stack = config.pair_stack
        self.blocks = nn.ModuleList(
            PairStackBlock(c_t, stack.c_hidden_tri_mul, stack.c_hidden_tri_att, stack.no_heads,
                           stack.transition_n, stack.dropout, stack.inf, template_order=True)
            for _ in range(config.no_blocks))
        self.layer_norm = nn.LayerNorm(c_t)
        self.checkpoint_blocks = False

    def forward(self, t: torch.Tensor, pair_mask: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            if self.checkpoint_blocks and torch.is_grad_enabled():
                t = checkpoint(block, t, pair_mask, use_reentrant=False)
            else:
                t = block(t, pair_mask)
        return self.layer_norm(t)


class TemplatePointwiseAttention(nn.Module):
    """Each pair position attends over the templates' embeddings at that position (Alg. 17)."""

    def __init__(self, c_t: int, c_z: int, c_hidden: int, no_heads: int, inf: float):
        super().__init__()
        self.inf = inf
        self.mha = Attention(c_z, c_t, c_hidden, no_heads, gating=False)

    def forward(self, t: torch.Tensor, z: torch.Tensor,
                template_mask: torch.Tensor) -> torch.Tensor:
        """t [*, T, N, N, C_t], z [*, N, N, C_z], template_mask [*, T] -> [*, N, N, C_z]."""
        bias = (self.inf * (template_mask - 1.0))[..., None, None, None, None, :]
        t = t.movedim(-4, -2)  # [*, N, N, T, C_t]
        return self.mha(z.unsqueeze(-2), t, [bias]).squeeze(-2)


class TemplateEmbedder(nn.Module):
    """Template pair update of z and template rows for the MSA (AF2 suppl. 1.7.1).

    Reads ``template_aatype`` [*, T, N], ``template_all_atom_positions`` [*, T, N, 37, 3],
    ``template_all_atom_mask`` [*, T, N, 37] and ``template_mask`` [*, T]; torsion angles and
    pseudo-beta atoms are derived here from the coordinates.
    """

    def __init__(self, config: TemplateConfig, c_t: int, c_z: int, c_m: int):
        super().__init__()
        self.config = config
        self.angle_embedder = nn.Sequential(
            Linear(config.angle_dim, c_m, init="relu"), nn.ReLU(),
            Linear(c_m, c_m, init="relu")) if config.embed_angles else None
        self.pair_embedder = Linear(config.pair_dim, c_t, init="relu")
        self.pair_stack = TemplatePairStack(c_t, config)
        self.pointwise_attention = TemplatePointwiseAttention(
            c_t, c_z, config.pointwise_c_hidden, config.pointwise_no_heads, config.inf)

    def forward(self, batch: dict[str, torch.Tensor], z: torch.Tensor, pair_mask: torch.Tensor):
        """Returns (pair update [*, N, N, C_z], template MSA rows or None, their mask or None)."""
        cfg = self.config
        aatype = batch["template_aatype"]
        positions = batch["template_all_atom_positions"].to(z.dtype)
        atom_mask = batch["template_all_atom_mask"].to(z.dtype)
        template_mask = batch["template_mask"].to(z.dtype)
        pb_positions, pb_mask = all_atom.pseudo_beta(aatype, positions, atom_mask)
        template_dim = aatype.dim() - 2
        embeddings = []
        # One template at a time bounds the memory of the pair stack.
        for index in range(aatype.shape[-2]):
            def pick(x: torch.Tensor, index=index) -> torch.Tensor:
                return x.select(template_dim, index)

            features = all_atom.template_pair_features(
                pick(aatype), pick(positions), pick(atom_mask), pick(pb_positions),
                pick(pb_mask), cfg.distogram_min_bin, cfg.distogram_max_bin,
                cfg.distogram_no_bins, cfg.use_unit_vector, eps=cfg.eps, inf=cfg.inf)
            embeddings.append(self.pair_stack(self.pair_embedder(features), pair_mask))
        t = torch.stack(embeddings, dim=template_dim)
        update = self.pointwise_attention(t, z, template_mask)
        has_templates = (template_mask.sum(dim=-1) > 0).to(z.dtype)
        update = update * has_templates[..., None, None, None]

        if self.angle_embedder is None:
            return update, None, None
        torsions = all_atom.atom37_to_torsion_angles(aatype, positions, atom_mask)
        angle_features = all_atom.template_angle_features(
            aatype, torsions["torsion_angles_sin_cos"], torsions["alt_torsion_angles_sin_cos"],
            torsions["torsion_angles_mask"])
        rows = self.angle_embedder(angle_features)
        # Template rows take part in MSA attention where the template has psi (backbone) atoms.
        row_mask = torsions["torsion_angles_mask"][..., 2] * template_mask[..., None]
        return update, rows, row_mask
