"""The AlphaFold2 network with recycling (AF2 suppl. Algorithm 2).

Input features, for one recycling iteration (``*`` = optional batch dims, N residues,
S clustered MSA rows, E extra MSA rows, T templates; masks are float 0/1):

================================  ===============  ==========================================
key                               shape            meaning
================================  ===============  ==========================================
aatype                            [*, N] int64     residue type 0-19, 20 = unknown
residue_index                     [*, N] int64     position in the chain (gaps allowed)
seq_mask                          [*, N]           1 for real (not padded) residues
target_feat                       [*, N, 22]       domain-break flag + aatype one-hot (21)
msa_feat                          [*, S, N, 49]    cluster-centre one-hot (23, BERT-masked),
                                                   has deletion, deletion value, cluster
                                                   profile (23), cluster deletion mean
msa_mask                          [*, S, N]
extra_msa                         [*, E, N] int64  extra-MSA residues, 22-letter alphabet + mask
extra_has_deletion                [*, E, N]
extra_deletion_value              [*, E, N]        atan(deletions / 3) * 2 / pi
extra_msa_mask                    [*, E, N]
template_aatype                   [*, T, N] int64  only when templates are enabled and T > 0
template_all_atom_positions       [*, T, N, 37, 3]
template_all_atom_mask            [*, T, N, 37]
template_mask                     [*, T]           1 for real templates
================================  ===============  ==========================================

The losses additionally read the ground truth described in
:mod:`benchmarks.alphafold2.losses` (from :func:`all_atom.make_structure_features`), plus
``true_msa``/``bert_mask`` [*, S, N], ``resolution`` [*] and ``use_clamped_fape`` [*].
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom
from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.model.config import AlphaFoldConfig
from benchmarks.alphafold2.model.embedders import InputEmbedder, RecyclingEmbedder
from benchmarks.alphafold2.model.evoformer import EvoformerStack
from benchmarks.alphafold2.model.heads import AuxiliaryHeads
from benchmarks.alphafold2.model.primitives import Attention, Linear
from benchmarks.alphafold2.model.structure_module import StructureModule
from benchmarks.alphafold2.model.template import TemplateEmbedder

Features = Mapping[str, torch.Tensor]


class AlphaFold(nn.Module):
    def __init__(self, config: AlphaFoldConfig | None = None):
        super().__init__()
        config = config or AlphaFoldConfig()
        self.config = config
        self.input_embedder = InputEmbedder(config.input_embedder, config.c_m, config.c_z)
        self.recycling_embedder = RecyclingEmbedder(config.recycling, config.c_m, config.c_z)
        self.template_embedder = (
            TemplateEmbedder(config.template, config.c_t, config.c_z, config.c_m)
            if config.template.enabled else None)
        if config.extra_msa.enabled:
            self.extra_msa_embedder = Linear(config.extra_msa.feat_dim, config.c_e)
            self.extra_msa_stack = EvoformerStack(config.c_e, config.c_z, config.extra_msa.stack,
                                                  global_column_attention=True)
        else:
            self.extra_msa_embedder = self.extra_msa_stack = None
        self.evoformer = EvoformerStack(config.c_m, config.c_z, config.evoformer, c_s=config.c_s)
        self.structure_module = StructureModule(config.structure_module, config.c_s, config.c_z)
        self.aux_heads = AuxiliaryHeads(config.heads, config.c_s, config.c_z, config.c_m)
        self.set_memory_options(config.chunk_size, config.use_sdpa, config.checkpoint_blocks)

    def set_memory_options(self, chunk_size: int | None, use_sdpa: bool,
                           checkpoint_blocks: bool) -> None:
        """Attention chunking, fused attention and activation checkpointing, model-wide."""
        for module in self.modules():
            if isinstance(module, Attention):
                module.chunk_size = chunk_size
                module.use_sdpa = use_sdpa
            if hasattr(module, "checkpoint_blocks"):
                module.checkpoint_blocks = checkpoint_blocks

    def iteration(self, feats: Features, prev: dict[str, torch.Tensor] | None):
        """One pass through embedders, trunk and structure module."""
        dtype = feats["msa_feat"].dtype
        seq_mask = feats["seq_mask"].to(dtype)
        msa_mask = feats["msa_mask"].to(dtype)
        pair_mask = seq_mask[..., :, None] * seq_mask[..., None, :]
        n_seq = feats["msa_feat"].shape[-3]

        m, z = self.input_embedder(feats["target_feat"].to(dtype), feats["residue_index"],
                                   feats["msa_feat"])
        if prev is None:  # first iteration: recycle zeros (AF2 suppl. 1.10)
            n_res = z.shape[-2]
            prev = {
                "m_1": m.new_zeros(m.shape[:-3] + (n_res, self.config.c_m)),
                "z": z.new_zeros(z.shape),
                "positions": z.new_zeros(z.shape[:-2] + (rc.atom_type_num, 3)),
            }
        prev_pb = all_atom.pseudo_beta(feats["aatype"], prev["positions"])
        m_1_update, z_update = self.recycling_embedder(prev["m_1"], prev["z"], prev_pb)
        m = torch.cat([(m[..., 0, :, :] + m_1_update).unsqueeze(-3), m[..., 1:, :, :]], dim=-3)
        z = z + z_update

        if self.template_embedder is not None and feats.get("template_aatype") is not None \
                and feats["template_aatype"].shape[-2] > 0:
            z_templates, rows, row_mask = self.template_embedder(feats, z, pair_mask)
            z = z + z_templates
            if rows is not None:
                m = torch.cat([m, rows], dim=-3)
                msa_mask = torch.cat([msa_mask, row_mask], dim=-2)

        if self.extra_msa_stack is not None:
            extra = torch.cat([
                F.one_hot(feats["extra_msa"].long(), 23).to(dtype),
                feats["extra_has_deletion"].to(dtype)[..., None],
                feats["extra_deletion_value"].to(dtype)[..., None],
            ], dim=-1)
            _, z, _ = self.extra_msa_stack(self.extra_msa_embedder(extra), z,
                                           feats["extra_msa_mask"].to(dtype), pair_mask)

        m, z, s = self.evoformer(m, z, msa_mask, pair_mask)
        outputs = {"msa": m[..., :n_seq, :, :], "pair": z, "single": s}
        outputs["sm"] = self.structure_module(s, z, feats["aatype"], seq_mask)
        outputs["final_atom_positions"] = all_atom.atom14_to_atom37(
            outputs["sm"]["positions"][-1], feats["aatype"])
        outputs["final_atom_mask"] = all_atom.atom14_masks(feats["aatype"])["atom37_atom_exists"]
        outputs["final_affine_tensor"] = outputs["sm"]["frames"][-1]
        prev = {"m_1": m[..., 0, :, :], "z": z, "positions": outputs["final_atom_positions"]}
        return outputs, prev

    def forward(self, batch: Features | Sequence[Features],
                num_recycles: int = 0) -> dict[str, torch.Tensor]:
        """Run ``num_recycles`` + 1 iterations; gradients flow through the last one only.

        ``batch`` is one feature dict used for every iteration, or a list with one dict per
        iteration (AF2 training resamples the MSA each recycle); a list sets the number of
        iterations and ``num_recycles`` is then ignored.
        """
        batches = list(batch) if isinstance(batch, Sequence) else [batch] * (num_recycles + 1)
        prev = None
        for index, feats in enumerate(batches):
            is_last = index == len(batches) - 1
            with torch.set_grad_enabled(torch.is_grad_enabled() and is_last):
                outputs, prev = self.iteration(feats, prev)
            if not is_last:
                prev = {key: value.detach() for key, value in prev.items()}
        outputs.update(self.aux_heads(outputs))
        return outputs
