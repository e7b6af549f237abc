"""lDDT (local Distance Difference Test, Mariani et al. 2013) on Cα atoms: the benchmark metric.

For every pair of residues (i != j) whose true Cα distance is below the cutoff (15 Å), the
absolute difference between the predicted and true distance is scored by how many of the
thresholds 0.5, 1, 2 and 4 Å it is under (0 to 4, divided by 4). lDDT-Cα is the mean score over
those pairs; it needs no superposition. The MLPerf HPC OpenFold target is a mean lDDT-Cα of
0.8 over the validation chains.
"""

from __future__ import annotations

import torch

from benchmarks.alphafold2 import residue_constants as rc

LDDT_THRESHOLDS = (0.5, 1.0, 2.0, 4.0)


def lddt(pred_points: torch.Tensor, true_points: torch.Tensor, mask: torch.Tensor,
         cutoff: float = 15.0, per_residue: bool = False, eps: float = 1e-10) -> torch.Tensor:
    """lDDT of points [*, N, 3] with mask [*, N]; returns [*] or, per residue, [*, N]."""
    mask = mask.to(true_points.dtype)
    true_dist = torch.cdist(true_points, true_points)
    pred_dist = torch.cdist(pred_points, pred_points)
    n = mask.shape[-1]
    not_self = 1.0 - torch.eye(n, dtype=mask.dtype, device=mask.device)
    scored = (true_dist < cutoff).to(mask.dtype) * mask[..., :, None] * mask[..., None, :] \
        * not_self
    error = torch.abs(true_dist - pred_dist)
    score = sum((error < t).to(mask.dtype) for t in LDDT_THRESHOLDS) / len(LDDT_THRESHOLDS)
    dims = (-1,) if per_residue else (-2, -1)
    return torch.sum(scored * score, dim=dims) / (eps + torch.sum(scored, dim=dims))


def lddt_ca(pred_atom37: torch.Tensor, true_atom37: torch.Tensor, atom37_mask: torch.Tensor,
            cutoff: float = 15.0, per_residue: bool = False) -> torch.Tensor:
    """lDDT-Cα from atom37 positions [*, N, 37, 3] and the true atom mask [*, N, 37]."""
    ca = rc.atom_order["CA"]
    return lddt(pred_atom37[..., ca, :], true_atom37[..., ca, :], atom37_mask[..., ca],
                cutoff=cutoff, per_residue=per_residue)
