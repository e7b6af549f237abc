"""AlphaFold2 training losses (AF2 suppl. 1.9) and their weighted sum.

Ground-truth keys read from the batch (see :func:`all_atom.make_structure_features`):
``backbone_rigid_tensor`` [*, N, 4, 4], ``backbone_rigid_mask`` [*, N],
``rigidgroups_gt_frames``/``rigidgroups_alt_gt_frames`` [*, N, 8, 4, 4],
``rigidgroups_gt_exists`` [*, N, 8], ``atom14_gt_positions``/``atom14_alt_gt_positions``
[*, N, 14, 3], ``atom14_gt_exists``/``atom14_alt_gt_exists``/``atom14_atom_is_ambiguous``
[*, N, 14], ``chi_angles_sin_cos`` [*, N, 4, 2], ``chi_mask`` [*, N, 4], ``pseudo_beta`` [*, N, 3],
``pseudo_beta_mask`` [*, N], ``all_atom_positions`` [*, N, 37, 3], ``all_atom_mask`` [*, N, 37],
``atom37_atom_exists`` [*, N, 37], ``atom14_atom_exists`` [*, N, 14] and ``residue_index``
[*, N] (structural violations only), ``aatype``/``seq_mask`` [*, N], ``true_msa``/``bert_mask``
[*, S, N], ``resolution`` [*] and ``use_clamped_fape`` [*] (1 = clamp, AF2 clamps 90 % of
samples).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.geometry import Rigid
from benchmarks.alphafold2.metrics import lddt
from benchmarks.core.config import NonNegativeFloat, PositiveFloat


def softmax_cross_entropy(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    return -torch.sum(labels * F.log_softmax(logits, dim=-1), dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor, dims: tuple[int, ...],
                 eps: float) -> torch.Tensor:
    return torch.sum(values * mask, dim=dims) / (eps + torch.sum(mask, dim=dims))


def _resolution_filter(resolution: torch.Tensor, min_resolution: float,
                       max_resolution: float) -> torch.Tensor:
    return ((resolution >= min_resolution) & (resolution <= max_resolution)).to(resolution.dtype)


def compute_fape(pred_frames: Rigid, target_frames: Rigid, frames_mask: torch.Tensor,
                 pred_positions: torch.Tensor, target_positions: torch.Tensor,
                 positions_mask: torch.Tensor, length_scale: float,
                 clamp_distance: float | None = None, eps: float = 1e-4) -> torch.Tensor:
    """Frame aligned point error (AF2 suppl. Algorithm 28).

    Every point is expressed in every frame's local coordinates, for the prediction and the
    truth; the loss is the mean (optionally clamped) distance between the two, divided by
    ``length_scale``. Frames [*, F], positions [*, P, 3], masks [*, F] and [*, P] -> [*].
    """
    local_pred = pred_frames.unsqueeze(-1).invert_apply(pred_positions[..., None, :, :])
    local_target = target_frames.unsqueeze(-1).invert_apply(target_positions[..., None, :, :])
    error = torch.sqrt(torch.sum((local_pred - local_target) ** 2, dim=-1) + eps)  # [*, F, P]
    if clamp_distance is not None:
        error = torch.clamp(error, max=clamp_distance)
    error = error / length_scale * frames_mask[..., :, None] * positions_mask[..., None, :]
    # Normalise in two steps (frames, then points) to stay within fp16 range.
    error = torch.sum(error, dim=-1) / (eps + torch.sum(frames_mask, dim=-1))[..., None]
    return torch.sum(error, dim=-1) / (eps + torch.sum(positions_mask, dim=-1))


def backbone_fape(traj: torch.Tensor, backbone_rigid_tensor: torch.Tensor,
                  backbone_rigid_mask: torch.Tensor, use_clamped_fape: torch.Tensor | None,
                  clamp_distance: float, length_scale: float, eps: float) -> torch.Tensor:
    """Backbone FAPE averaged over the structure-module layers. traj [L, *, N, 4, 4] -> [*]."""
    pred = Rigid.from_tensor_4x4(traj)
    target = Rigid.from_tensor_4x4(backbone_rigid_tensor)
    mask = backbone_rigid_mask
    clamped = compute_fape(pred, target, mask, pred.trans, target.trans, mask, length_scale,
                           clamp_distance, eps)
    if use_clamped_fape is not None:
        unclamped = compute_fape(pred, target, mask, pred.trans, target.trans, mask,
                                 length_scale, None, eps)
        use = use_clamped_fape.to(clamped.dtype)
        clamped = clamped * use + unclamped * (1.0 - use)
    return torch.mean(clamped, dim=0)


def compute_renamed_ground_truth(batch, atom14_pred_positions: torch.Tensor,
                                 eps: float = 1e-10) -> dict[str, torch.Tensor]:
    """Pick, per residue, the naming of symmetric atoms that best matches the prediction
    (AF2 suppl. Algorithm 26), judged by distances to the non-ambiguous atoms."""
    pred = atom14_pred_positions
    gt = batch["atom14_gt_positions"]
    alt_gt = batch["atom14_alt_gt_positions"]
    exists = batch["atom14_gt_exists"]
    ambiguous = batch["atom14_atom_is_ambiguous"]

    def pair_dist(x: torch.Tensor) -> torch.Tensor:  # [*, N, 14, N, 14]
        return torch.sqrt(eps + torch.sum(
            (x[..., :, :, None, None, :] - x[..., None, None, :, :, :]) ** 2, dim=-1))

    pred_dist = pair_dist(pred)
    gt_error = torch.sqrt(eps + (pred_dist - pair_dist(gt)) ** 2)
    alt_error = torch.sqrt(eps + (pred_dist - pair_dist(alt_gt)) ** 2)
    mask = (exists * ambiguous)[..., :, :, None, None] \
        * (exists * (1.0 - ambiguous))[..., None, None, :, :]
    per_res_gt = torch.sum(mask * gt_error, dim=(-1, -2, -3))
    per_res_alt = torch.sum(mask * alt_error, dim=(-1, -2, -3))
    alt_is_better = (per_res_alt < per_res_gt).to(gt.dtype)
    choose = alt_is_better[..., None]
    return {
        "alt_naming_is_better": alt_is_better,
        "renamed_atom14_gt_positions": (1.0 - choose[..., None]) * gt + choose[..., None] * alt_gt,
        "renamed_atom14_gt_exists": (1.0 - choose) * exists
        + choose * batch["atom14_alt_gt_exists"],
    }


def sidechain_fape(sidechain_frames: torch.Tensor, atom14_positions: torch.Tensor, batch,
                   renamed: dict[str, torch.Tensor], clamp_distance: float,
                   length_scale: float, eps: float) -> torch.Tensor:
    """All-atom FAPE of the final layer: every rigid group against every atom. -> [*]."""
    alt = renamed["alt_naming_is_better"][..., None, None, None]
    gt_frames = (1.0 - alt) * batch["rigidgroups_gt_frames"] \
        + alt * batch["rigidgroups_alt_gt_frames"]
    pred_frames = Rigid.from_tensor_4x4(sidechain_frames.flatten(-4, -3))
    target_frames = Rigid.from_tensor_4x4(gt_frames.flatten(-4, -3))
    return compute_fape(
        pred_frames, target_frames, batch["rigidgroups_gt_exists"].flatten(-2),
        atom14_positions.flatten(-3, -2), renamed["renamed_atom14_gt_positions"].flatten(-3, -2),
        renamed["renamed_atom14_gt_exists"].flatten(-2), length_scale, clamp_distance, eps)


def supervised_chi_loss(angles: torch.Tensor, unnormalized_angles: torch.Tensor,
                        aatype: torch.Tensor, seq_mask: torch.Tensor, chi_mask: torch.Tensor,
                        chi_angles_sin_cos: torch.Tensor, chi_weight: float,
                        angle_norm_weight: float, eps: float = 1e-6) -> torch.Tensor:
    """Side-chain torsion loss over all layers, pi-periodic chis either way (Algorithm 27).

    angles/unnormalized_angles [L, *, N, 7, 2] -> [*].
    """
    pred_chi = angles[..., 3:, :]
    periodic = torch.as_tensor(rc.chi_pi_periodic, dtype=angles.dtype,
                               device=angles.device)[aatype]
    true_chi = chi_angles_sin_cos.to(angles.dtype)
    shifted = (1.0 - 2.0 * periodic)[..., None] * true_chi
    sq_error = torch.minimum(torch.sum((true_chi - pred_chi) ** 2, dim=-1),
                             torch.sum((shifted - pred_chi) ** 2, dim=-1))  # [L, *, N, 4]
    chi_loss = torch.mean(_masked_mean(sq_error, chi_mask, (-1, -2), eps), dim=0)
    norm = torch.sqrt(torch.sum(unnormalized_angles ** 2, dim=-1) + eps)
    norm_error = torch.abs(norm - 1.0)  # [L, *, N, 7]
    norm_mask = seq_mask[..., None].expand(norm_error.shape[1:])
    norm_loss = torch.mean(_masked_mean(norm_error, norm_mask, (-1, -2), eps), dim=0)
    return chi_weight * chi_loss + angle_norm_weight * norm_loss


def distogram_loss(logits: torch.Tensor, pseudo_beta: torch.Tensor,
                   pseudo_beta_mask: torch.Tensor, min_bin: float = 2.3125,
                   max_bin: float = 21.6875, no_bins: int = 64,
                   eps: float = 1e-6) -> torch.Tensor:
    """Cross-entropy of the distogram head against binned true Cβ distances. -> [*]."""
    boundaries = torch.linspace(min_bin, max_bin, no_bins - 1, device=logits.device,
                                dtype=pseudo_beta.dtype) ** 2
    sq_dist = torch.sum((pseudo_beta[..., :, None, :] - pseudo_beta[..., None, :, :]) ** 2,
                        dim=-1, keepdim=True)
    true_bins = torch.sum(sq_dist > boundaries, dim=-1)
    errors = softmax_cross_entropy(logits, F.one_hot(true_bins, no_bins).to(logits.dtype))
    square_mask = pseudo_beta_mask[..., :, None] * pseudo_beta_mask[..., None, :]
    return _masked_mean(errors, square_mask, (-1, -2), eps)


def masked_msa_loss(logits: torch.Tensor, true_msa: torch.Tensor, bert_mask: torch.Tensor,
                    eps: float = 1e-8) -> torch.Tensor:
    """BERT-style reconstruction of the masked MSA positions. -> [*]."""
    errors = softmax_cross_entropy(logits, F.one_hot(true_msa.long(), logits.shape[-1])
                                   .to(logits.dtype))
    return _masked_mean(errors, bert_mask.to(logits.dtype), (-1, -2), eps)


def plddt_loss(logits: torch.Tensor, final_atom_positions: torch.Tensor,
               all_atom_positions: torch.Tensor, all_atom_mask: torch.Tensor,
               resolution: torch.Tensor, cutoff: float = 15.0, no_bins: int = 50,
               min_resolution: float = 0.1, max_resolution: float = 3.0,
               eps: float = 1e-10) -> torch.Tensor:
    """Cross-entropy of the pLDDT head against the binned true per-residue lDDT-Cα. -> [*]."""
    ca = rc.atom_order["CA"]
    ca_mask = all_atom_mask[..., ca]
    score = lddt(final_atom_positions[..., ca, :].detach(), all_atom_positions[..., ca, :],
                 ca_mask, cutoff=cutoff, per_residue=True)
    bins = torch.clamp(torch.floor(score * no_bins).long(), max=no_bins - 1)
    errors = softmax_cross_entropy(logits, F.one_hot(bins, no_bins).to(logits.dtype))
    loss = _masked_mean(errors, ca_mask, (-1,), eps)
    return loss * _resolution_filter(resolution, min_resolution, max_resolution)


def experimentally_resolved_loss(logits: torch.Tensor, all_atom_mask: torch.Tensor,
                                 atom37_atom_exists: torch.Tensor, resolution: torch.Tensor,
                                 min_resolution: float = 0.1, max_resolution: float = 3.0,
                                 eps: float = 1e-8) -> torch.Tensor:
    """Per-atom sigmoid cross-entropy for "was this atom resolved in the crystal". -> [*]."""
    errors = F.binary_cross_entropy_with_logits(logits, all_atom_mask.to(logits.dtype),
                                                reduction="none")
    loss = _masked_mean(errors, atom37_atom_exists, (-1, -2), eps)
    return loss * _resolution_filter(resolution, min_resolution, max_resolution)


def tm_loss(logits: torch.Tensor, final_affine_tensor: torch.Tensor,
            backbone_rigid_tensor: torch.Tensor, backbone_rigid_mask: torch.Tensor,
            resolution: torch.Tensor, max_bin: float = 31.0, no_bins: int = 64,
            min_resolution: float = 0.1, max_resolution: float = 3.0,
            eps: float = 1e-8) -> torch.Tensor:
    """Cross-entropy of the predicted aligned error (TM) head. -> [*]."""
    def local_positions(affine: torch.Tensor) -> torch.Tensor:
        frames = Rigid.from_tensor_4x4(affine)
        return frames.unsqueeze(-1).invert_apply(frames.trans[..., None, :, :])

    sq_error = torch.sum((local_positions(final_affine_tensor)
                          - local_positions(backbone_rigid_tensor)) ** 2, dim=-1).detach()
    boundaries = torch.linspace(0, max_bin, no_bins - 1, device=logits.device,
                                dtype=sq_error.dtype) ** 2
    true_bins = torch.sum(sq_error[..., None] > boundaries, dim=-1)
    errors = softmax_cross_entropy(logits, F.one_hot(true_bins, no_bins).to(logits.dtype))
    square_mask = backbone_rigid_mask[..., :, None] * backbone_rigid_mask[..., None, :]
    loss = _masked_mean(errors, square_mask, (-1, -2), eps)
    return loss * _resolution_filter(resolution, min_resolution, max_resolution)


# Atom14 slots of the backbone atoms, the same in every residue type.
_N, _CA, _C = (rc.restype_name_to_atom14_names["ALA"].index(name) for name in ("N", "CA", "C"))


def between_residue_bond_loss(positions: torch.Tensor, atom_mask: torch.Tensor,
                              residue_index: torch.Tensor, aatype: torch.Tensor,
                              tolerance_factor: float) -> dict[str, torch.Tensor]:
    """Flat-bottom losses on the peptide bond C(i)-N(i+1) and the angles CA-C-N, C-N-CA.

    Only links between present, consecutive residues count. positions [*, N, 14, 3],
    atom_mask [*, N, 14]; returns the three mean losses [*] and ``link_violation`` [*, N - 1]
    (a link beyond the tolerance).
    """
    this, following = positions[..., :-1, :, :], positions[..., 1:, :, :]
    this_mask, following_mask = atom_mask[..., :-1, :], atom_mask[..., 1:, :]
    ca, c = this[..., _CA, :], this[..., _C, :]
    next_n, next_ca = following[..., _N, :], following[..., _CA, :]
    ca_mask, c_mask = this_mask[..., _CA], this_mask[..., _C]
    next_n_mask, next_ca_mask = following_mask[..., _N], following_mask[..., _CA]
    consecutive = (residue_index[..., 1:] - residue_index[..., :-1] == 1).to(positions.dtype)

    def length(vector: torch.Tensor) -> torch.Tensor:
        return torch.sqrt(torch.sum(vector ** 2, dim=-1) + 1e-6)

    c_n_length = length(next_n - c)
    next_is_proline = (aatype[..., 1:] == rc.resname_to_idx["PRO"]).to(positions.dtype)
    general, proline = rc.between_res_bond_length_c_n
    general_std, proline_std = rc.between_res_bond_length_stddev_c_n
    c_n_error = torch.abs(c_n_length - (general + (proline - general) * next_is_proline))
    c_n_stddev = general_std + (proline_std - general_std) * next_is_proline
    # AF2 and OpenFold scale both angle tolerances by the C-N bond-length stddev (0.014), not
    # by the angles' own stddevs; kept so loss values match the reference implementation.
    angle_stddev = general_std
    c_to_ca = (ca - c) / length(ca - c)[..., None]
    c_to_n = (next_n - c) / c_n_length[..., None]
    n_to_ca = (next_ca - next_n) / length(next_ca - next_n)[..., None]
    ca_c_n_error = torch.abs(torch.sum(c_to_ca * c_to_n, dim=-1)
                             - rc.between_res_cos_angles_ca_c_n[0])
    c_n_ca_error = torch.abs(torch.sum(-c_to_n * n_to_ca, dim=-1)
                             - rc.between_res_cos_angles_c_n_ca[0])

    c_n_mask = c_mask * next_n_mask * consecutive
    angle_masks = (ca_mask * c_n_mask, c_n_mask * next_ca_mask)
    errors = (c_n_error, ca_c_n_error, c_n_ca_error)
    stddevs = (c_n_stddev, angle_stddev, angle_stddev)
    masks = (c_n_mask,) + angle_masks
    losses = [_masked_mean(F.relu(error - tolerance_factor * stddev), mask, (-1,), 1e-6)
              for error, stddev, mask in zip(errors, stddevs, masks, strict=True)]
    violation = sum(mask * (error > tolerance_factor * stddev)
                    for error, stddev, mask in zip(errors, stddevs, masks, strict=True))
    return {"c_n_loss": losses[0], "ca_c_n_loss": losses[1], "c_n_ca_loss": losses[2],
            "link_violation": (violation > 0).to(positions.dtype)}


def _pair_distances(a: torch.Tensor, b: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    """Distances between broadcast points; eps keeps the gradient finite at zero distance."""
    return torch.sqrt(torch.sum((a - b) ** 2, dim=-1) + eps)


def between_residue_clash_loss(positions: torch.Tensor, atom_mask: torch.Tensor,
                               residue_index: torch.Tensor, aatype: torch.Tensor,
                               overlap_tolerance: float) -> dict[str, torch.Tensor]:
    """Steric clashes between heavy atoms of different residues.

    A pair clashes when closer than the sum of its van der Waals radii minus
    ``overlap_tolerance``; the peptide bond C(i)-N(i+1) and cysteine SG-SG pairs (possible
    disulfides) are exempt. Returns per-atom loss sums and clash flags [*, N, 14].
    """
    n_res = aatype.shape[-1]
    dtype = positions.dtype
    radius = torch.as_tensor(rc.restype_atom14_vdw_radius, dtype=dtype,
                             device=positions.device)[aatype]
    # Pair tensors are [*, N (i), N (j), 14 (atom of i), 14 (atom of j)]; each residue pair
    # is visited once (i before j in the chain).
    distances = _pair_distances(positions[..., :, None, :, None, :],
                                positions[..., None, :, None, :, :])
    before = torch.ones(n_res, n_res, dtype=torch.bool, device=positions.device).triu(1)
    mask = atom_mask[..., :, None, :, None] * atom_mask[..., None, :, None, :] \
        * before[:, :, None, None].to(dtype)
    peptide_bond = torch.zeros(14, 14, dtype=torch.bool, device=positions.device)
    peptide_bond[_C, _N] = True
    consecutive = residue_index[..., None, :] - residue_index[..., :, None] == 1
    sg = rc.restype_name_to_atom14_names["CYS"].index("SG")
    disulfide = torch.zeros(14, 14, dtype=torch.bool, device=positions.device)
    disulfide[sg, sg] = True
    is_cys = aatype == rc.resname_to_idx["CYS"]
    both_cys = is_cys[..., :, None] & is_cys[..., None, :]
    exempt = (consecutive[..., None, None] & peptide_bond) \
        | (both_cys[..., None, None] & disulfide)
    mask = mask * (~exempt).to(dtype)
    lower_bound = radius[..., :, None, :, None] + radius[..., None, :, None, :] \
        - overlap_tolerance
    error = mask * F.relu(lower_bound - distances)
    clash = mask * (distances < lower_bound).to(dtype)
    return {
        "per_atom_loss_sum": torch.sum(error, dim=(-3, -1)) + torch.sum(error, dim=(-4, -2)),
        "per_atom_clash": torch.maximum(torch.amax(clash, dim=(-3, -1)),
                                        torch.amax(clash, dim=(-4, -2))),
    }


def within_residue_violations(positions: torch.Tensor, atom_mask: torch.Tensor,
                              aatype: torch.Tensor, overlap_tolerance: float,
                              tolerance_factor: float) -> dict[str, torch.Tensor]:
    """Atom pairs of one residue outside their allowed distance range.

    Bonded pairs must stay within the literature length +- ``tolerance_factor`` stddevs,
    other pairs must not overlap (see :func:`residue_constants.atom14_distance_bounds`).
    Returns per-atom loss sums and violation flags [*, N, 14].
    """
    bounds = rc.atom14_distance_bounds(overlap_tolerance, tolerance_factor)
    lower, upper = (torch.as_tensor(bounds[key], dtype=positions.dtype,
                                    device=positions.device)[aatype]
                    for key in ("lower_bound", "upper_bound"))
    off_diagonal = 1.0 - torch.eye(14, dtype=positions.dtype, device=positions.device)
    mask = atom_mask[..., :, None] * atom_mask[..., None, :] * off_diagonal
    distances = _pair_distances(positions[..., :, None, :], positions[..., None, :, :])
    error = mask * (F.relu(lower - distances) + F.relu(distances - upper))
    violation = mask * ((distances < lower) | (distances > upper)).to(positions.dtype)
    # The pair matrix is symmetric, so every pair is counted twice per atom, as in AF2.
    return {
        "per_atom_loss_sum": torch.sum(error, dim=-2) + torch.sum(error, dim=-1),
        "per_atom_violation": torch.amax(violation, dim=-1),
    }


def find_structural_violations(batch: dict, atom14_positions: torch.Tensor,
                               tolerance_factor: float = 12.0,
                               overlap_tolerance: float = 1.5) -> dict[str, torch.Tensor]:
    """Every structural violation of a predicted atom14 structure (AF2 suppl. 1.9.11).

    Reads ``aatype``, ``residue_index``, ``seq_mask`` and ``atom14_atom_exists`` (the atoms
    the residue type has: the prediction places all of them, resolved in the crystal or not).
    """
    aatype = batch["aatype"]
    atom_mask = batch["atom14_atom_exists"].to(atom14_positions.dtype) \
        * batch["seq_mask"].to(atom14_positions.dtype)[..., None]
    bonds = between_residue_bond_loss(atom14_positions, atom_mask, batch["residue_index"],
                                      aatype, tolerance_factor)
    clashes = between_residue_clash_loss(atom14_positions, atom_mask, batch["residue_index"],
                                         aatype, overlap_tolerance)
    within = within_residue_violations(atom14_positions, atom_mask, aatype, overlap_tolerance,
                                       tolerance_factor)
    link = bonds.pop("link_violation")  # a residue violates if either of its links does
    residue_violation = torch.stack([
        F.pad(link, (1, 0)), F.pad(link, (0, 1)),
        torch.amax(clashes["per_atom_clash"], dim=-1),
        torch.amax(within["per_atom_violation"], dim=-1),
    ]).amax(dim=0)
    return {
        **bonds,
        "clash_per_atom_loss_sum": clashes["per_atom_loss_sum"],
        "within_residue_per_atom_loss_sum": within["per_atom_loss_sum"],
        "atom_mask": atom_mask,
        "residue_violation": residue_violation,  # [*, N]; masks above exclude padding
    }


def violation_loss(violations: dict[str, torch.Tensor], eps: float = 1e-6) -> torch.Tensor:
    """Structural violation loss [*]: the three peptide-link means plus the clash and
    within-residue errors summed over atoms and divided by the number of atoms."""
    per_atom = violations["clash_per_atom_loss_sum"] \
        + violations["within_residue_per_atom_loss_sum"]
    atom_errors = torch.sum(per_atom, dim=(-1, -2)) \
        / (eps + torch.sum(violations["atom_mask"], dim=(-1, -2)))
    return violations["c_n_loss"] + violations["ca_c_n_loss"] + violations["c_n_ca_loss"] \
        + atom_errors


@dataclass
class LossConfig:
    """Loss weights and parameters; defaults are AF2 "initial training" (suppl. Table 4)."""

    fape_weight: NonNegativeFloat = 1.0
    backbone_fape_weight: NonNegativeFloat = 0.5
    sidechain_fape_weight: NonNegativeFloat = 0.5
    fape_clamp_distance: PositiveFloat = 10.0
    fape_length_scale: PositiveFloat = 10.0
    fape_eps: PositiveFloat = 1e-4
    chi_weight: NonNegativeFloat = 1.0
    chi_angle_weight: NonNegativeFloat = 0.5
    chi_angle_norm_weight: NonNegativeFloat = 0.01
    distogram_weight: NonNegativeFloat = 0.3
    masked_msa_weight: NonNegativeFloat = 2.0
    plddt_weight: NonNegativeFloat = 0.01
    experimentally_resolved_weight: NonNegativeFloat = 0.0
    tm_weight: NonNegativeFloat = 0.0
    # Structural violations (suppl. 1.9.11): 0 in initial training, 1.0 when fine-tuning.
    violation_weight: NonNegativeFloat = 0.0
    violation_tolerance_factor: NonNegativeFloat = 12.0
    clash_overlap_tolerance: NonNegativeFloat = 1.5
    min_resolution: NonNegativeFloat = 0.1
    max_resolution: NonNegativeFloat = 3.0
    # OpenFold multiplies the total by sqrt(number of residues in the crop).
    scale_by_sqrt_length: bool = True


class AlphaFoldLoss(torch.nn.Module):
    """Weighted sum of the AF2 losses: ``loss(outputs, batch)`` is the scalar to minimise,
    ``loss.compute(outputs, batch)`` also returns every component (detached) for logging."""

    def __init__(self, config: LossConfig | None = None):
        super().__init__()
        self.config = config or LossConfig()

    def forward(self, outputs: dict, batch: dict) -> torch.Tensor:
        return self.compute(outputs, batch)[0]

    def compute(self, outputs: dict, batch: dict) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        cfg = self.config
        sm = outputs["sm"]
        resolution = batch["resolution"].to(sm["frames"].dtype)
        renamed = compute_renamed_ground_truth(batch, sm["positions"][-1])
        components = {
            "backbone_fape": backbone_fape(
                sm["frames"], batch["backbone_rigid_tensor"], batch["backbone_rigid_mask"],
                batch.get("use_clamped_fape"), cfg.fape_clamp_distance, cfg.fape_length_scale,
                cfg.fape_eps),
            "sidechain_fape": sidechain_fape(
                sm["sidechain_frames"][-1], sm["positions"][-1], batch, renamed,
                cfg.fape_clamp_distance, cfg.fape_length_scale, cfg.fape_eps),
            "supervised_chi": supervised_chi_loss(
                sm["angles"], sm["unnormalized_angles"], batch["aatype"], batch["seq_mask"],
                batch["chi_mask"], batch["chi_angles_sin_cos"], cfg.chi_angle_weight,
                cfg.chi_angle_norm_weight),
            "distogram": distogram_loss(
                outputs["distogram_logits"], batch["pseudo_beta"], batch["pseudo_beta_mask"],
                no_bins=outputs["distogram_logits"].shape[-1]),
            "masked_msa": masked_msa_loss(
                outputs["masked_msa_logits"], batch["true_msa"], batch["bert_mask"]),
            "plddt": plddt_loss(
                outputs["lddt_logits"], outputs["final_atom_positions"],
                batch["all_atom_positions"], batch["all_atom_mask"], resolution,
                no_bins=outputs["lddt_logits"].shape[-1], min_resolution=cfg.min_resolution,
                max_resolution=cfg.max_resolution),
            "experimentally_resolved": experimentally_resolved_loss(
                outputs["experimentally_resolved_logits"], batch["all_atom_mask"],
                batch["atom37_atom_exists"], resolution, cfg.min_resolution,
                cfg.max_resolution),
        }
        if "tm_logits" in outputs:
            components["tm"] = tm_loss(
                outputs["tm_logits"], outputs["final_affine_tensor"],
                batch["backbone_rigid_tensor"], batch["backbone_rigid_mask"], resolution,
                no_bins=outputs["tm_logits"].shape[-1], min_resolution=cfg.min_resolution,
                max_resolution=cfg.max_resolution)
        violation_fraction = None
        if cfg.violation_weight > 0:
            violations = find_structural_violations(
                batch, sm["positions"][-1], cfg.violation_tolerance_factor,
                cfg.clash_overlap_tolerance)
            components["violation"] = violation_loss(violations)
            violation_fraction = _masked_mean(violations["residue_violation"],
                                              batch["seq_mask"], (-1,), 1e-6)
        weights = {
            "backbone_fape": cfg.fape_weight * cfg.backbone_fape_weight,
            "sidechain_fape": cfg.fape_weight * cfg.sidechain_fape_weight,
            "supervised_chi": cfg.chi_weight,
            "distogram": cfg.distogram_weight,
            "masked_msa": cfg.masked_msa_weight,
            "plddt": cfg.plddt_weight,
            "experimentally_resolved": cfg.experimentally_resolved_weight,
            "tm": cfg.tm_weight,
            "violation": cfg.violation_weight,
        }
        total = sum(weights[name] * torch.mean(value) for name, value in components.items())
        if cfg.scale_by_sqrt_length:
            total = total * torch.sqrt(torch.mean(torch.sum(batch["seq_mask"], dim=-1)))
        logged = {name: torch.mean(value).detach() for name, value in components.items()}
        if violation_fraction is not None:  # residues with any violation: a metric, no loss
            logged["violation_fraction"] = torch.mean(violation_fraction).detach()
        logged["loss"] = total.detach()
        return total, logged
