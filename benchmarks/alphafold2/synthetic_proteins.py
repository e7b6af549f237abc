"""Synthetic proteins: idealised all-atom structures and complete feature batches.

Used by the unit tests (a random batch the model and every loss can consume) and as the
geometric core of the smoke dataset writer. Structures are built with the model's own
torsion -> frames -> atoms machinery from a helical backbone, so every derived ground-truth
feature is exactly consistent.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom
from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.geometry import Rigid

HELIX_RISE = 1.5  # Å per residue along the axis
HELIX_TWIST = math.radians(100.0)  # rotation per residue
HELIX_RADIUS = 2.3  # Å, Cα distance from the axis


def helical_backbone(n_res: int, dtype: torch.dtype = torch.float32) -> Rigid:
    """Backbone frames [n_res] of an ideal α-helix-like spiral."""
    angle = torch.arange(n_res, dtype=dtype) * HELIX_TWIST
    cos, sin = torch.cos(angle), torch.sin(angle)
    zeros, ones = torch.zeros_like(cos), torch.ones_like(cos)
    rot_z = torch.stack([cos, -sin, zeros, sin, cos, zeros, zeros, zeros, ones],
                        dim=-1).reshape(n_res, 3, 3)
    # Local x (CA -> C) tilted along the helix axis, y roughly radial.
    base = torch.tensor([[0.0, -1.0, 0.0], [0.6, 0.0, -0.8], [0.8, 0.0, 0.6]], dtype=dtype)
    base = torch.linalg.qr(base)[0] * torch.sign(torch.linalg.det(base))
    trans = torch.stack([HELIX_RADIUS * cos, HELIX_RADIUS * sin,
                         HELIX_RISE * torch.arange(n_res, dtype=dtype)], dim=-1)
    return Rigid(rot_z @ base, trans)


def build_structure(aatype: torch.Tensor, backbone: Rigid,
                    torsions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Atom37 positions [N, 37, 3] and mask [N, 37] from frames and torsions [N, 7, (sin, cos)]."""
    groups = all_atom.torsion_angles_to_frames(backbone, torsions, aatype)
    atom14 = all_atom.frames_to_atom14_positions(groups, aatype)
    positions = all_atom.atom14_to_atom37(atom14, aatype)
    mask = all_atom.atom14_masks(aatype)["atom37_atom_exists"]
    return positions, mask


def random_torsions(n_res: int, generator: torch.Generator) -> torch.Tensor:
    angle = (torch.rand(n_res, 7, generator=generator) * 2.0 - 1.0) * math.pi
    return torch.stack([torch.sin(angle), torch.cos(angle)], dim=-1)


def random_structure(aatype: torch.Tensor, generator: torch.Generator):
    """A helical chain with random side-chain torsions: (atom37 positions, atom37 mask)."""
    backbone = helical_backbone(aatype.shape[-1])
    return build_structure(aatype, backbone, random_torsions(aatype.shape[-1], generator))


def msa_features(msa: torch.Tensor, deletions: torch.Tensor, bert_mask: torch.Tensor,
                 mask_token: int = rc.MSA_MASK_TOKEN_INDEX) -> torch.Tensor:
    """msa_feat [S, N, 49] for an MSA whose rows are their own cluster centres."""
    masked = torch.where(bert_mask.bool(), torch.full_like(msa, mask_token), msa)
    one_hot = F.one_hot(masked, 23).float()
    deletion_value = torch.atan(deletions / 3.0) * (2.0 / math.pi)
    profile = F.one_hot(msa, 23).float()
    return torch.cat([one_hot, (deletions > 0).float()[..., None], deletion_value[..., None],
                      profile, deletion_value[..., None]], dim=-1)


def random_batch(n_res: int = 16, n_seq: int = 4, n_extra: int = 8, n_templates: int = 1,
                 seed: int = 0) -> dict[str, torch.Tensor]:
    """A complete, self-consistent feature dict (model inputs and ground truth), no batch dim."""
    generator = torch.Generator().manual_seed(seed)
    aatype = torch.randint(0, rc.restype_num, (n_res,), generator=generator)
    positions, atom_mask = random_structure(aatype, generator)

    def mutate(count: int) -> torch.Tensor:
        rows = aatype.expand(count, n_res).clone()
        mutations = torch.rand(count, n_res, generator=generator) < 0.3
        random_residues = torch.randint(0, 22, (count, n_res), generator=generator)
        rows[mutations] = random_residues[mutations]
        rows[0] = aatype if count else rows[0]
        return rows

    msa = mutate(n_seq)
    deletions = torch.randint(0, 3, (n_seq, n_res), generator=generator).float()
    bert_mask = (torch.rand(n_seq, n_res, generator=generator) < 0.15).float()
    extra_msa = mutate(n_extra)
    extra_deletions = torch.randint(0, 3, (n_extra, n_res), generator=generator).float()

    batch = {
        "aatype": aatype,
        "residue_index": torch.arange(n_res),
        "seq_mask": torch.ones(n_res),
        "target_feat": torch.cat([torch.zeros(n_res, 1), F.one_hot(aatype, 21).float()], dim=-1),
        "msa_feat": msa_features(msa, deletions, bert_mask),
        "msa_mask": torch.ones(n_seq, n_res),
        "true_msa": msa,
        "bert_mask": bert_mask,
        "extra_msa": extra_msa,
        "extra_has_deletion": (extra_deletions > 0).float(),
        "extra_deletion_value": torch.atan(extra_deletions / 3.0) * (2.0 / math.pi),
        "extra_msa_mask": torch.ones(n_extra, n_res),
        "template_aatype": aatype.expand(n_templates, n_res).clone(),
        "template_all_atom_positions": (
            positions + 0.5 * torch.randn(n_templates, n_res, 37, 3, generator=generator)
        ) * atom_mask[..., None],
        "template_all_atom_mask": atom_mask.expand(n_templates, n_res, 37).clone(),
        "template_mask": torch.ones(n_templates),
        "all_atom_positions": positions,
        "all_atom_mask": atom_mask,
        "resolution": torch.tensor(2.0),
        "use_clamped_fape": torch.tensor(1.0),
    }
    batch.update(all_atom.make_structure_features(aatype, positions, atom_mask))
    return batch
