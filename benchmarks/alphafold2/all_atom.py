"""All-atom geometry shared by the model, the losses and the data pipeline (torch).

* Model side: torsion angles -> rigid-group frames -> atom14 positions (AF2 suppl.
  Algorithms 24 and 25), atom14 -> atom37.
* Ground-truth side: from atom37 positions/masks of a chain compute everything the losses need
  (:func:`make_structure_features`): atom14 layout and its symmetric alternative, rigid-group
  frames and their alternatives, backbone frames, torsion/chi angles, pseudo-beta atoms.
* Template side: the 57-channel angle feature and the 88-channel pair feature.

All functions accept any number of leading batch dimensions.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.geometry import Rigid


def _table(array, like: torch.Tensor, dtype: torch.dtype | None = None) -> torch.Tensor:
    return torch.as_tensor(array, device=like.device, dtype=dtype)


def batched_gather(data: torch.Tensor, indices: torch.Tensor, dim: int) -> torch.Tensor:
    """``data`` indexed along ``dim`` by ``indices`` whose leading dims equal data's leading dims.

    data [*, A, ...rest], indices [*, I...] -> [*, I..., ...rest] for dim = len(*).
    """
    dim = dim if dim >= 0 else data.dim() + dim
    batch_shape = data.shape[:dim]
    flat_data = data.reshape(-1, *data.shape[dim:])
    flat_indices = indices.reshape(flat_data.shape[0], -1)
    batch_index = torch.arange(flat_data.shape[0], device=data.device)[:, None]
    gathered = flat_data[batch_index, flat_indices]
    return gathered.reshape(*batch_shape, *indices.shape[dim:], *data.shape[dim + 1:])


# --- model side ----------------------------------------------------------------------------


def torsion_angles_to_frames(backbone: Rigid, angles: torch.Tensor,
                             aatype: torch.Tensor) -> Rigid:
    """Frames of the 8 rigid groups in global coordinates (AF2 suppl. Algorithm 24).

    backbone: [*, N] backbone frames (Å); angles: [*, N, 7, 2] (sin, cos) of
    pre-omega, phi, psi, chi1..chi4; aatype: [*, N]. Returns a [*, N, 8] Rigid.
    """
    default = Rigid.from_tensor_4x4(
        _table(rc.restype_rigid_group_default_frame, angles, angles.dtype)[aatype])
    # The backbone group gets the identity rotation (sin 0, cos 1).
    identity_angle = angles.new_tensor([0.0, 1.0]).expand(angles.shape[:-2] + (1, 2))
    sin_cos = torch.cat([identity_angle, angles], dim=-2)  # [*, N, 8, 2]
    sin, cos = sin_cos[..., 0], sin_cos[..., 1]
    zeros, ones = torch.zeros_like(sin), torch.ones_like(sin)
    # Rotation about the x axis by the torsion angle.
    rot_x = torch.stack([ones, zeros, zeros,
                         zeros, cos, -sin,
                         zeros, sin, cos], dim=-1).reshape(sin.shape + (3, 3))
    frames = default.compose_rotation(rot_x)  # each group relative to its parent
    # chi2..chi4 frames are defined relative to the previous chi frame: chain them.
    chi_to_backbone = [frames[..., 4]]
    for group in (5, 6, 7):
        chi_to_backbone.append(chi_to_backbone[-1].compose(frames[..., group]))
    to_backbone = Rigid.cat(
        [frames[..., :5]] + [f.unsqueeze(-1) for f in chi_to_backbone[1:]], dim=-1)
    return backbone.unsqueeze(-1).compose(to_backbone)


def frames_to_atom14_positions(group_frames: Rigid, aatype: torch.Tensor) -> torch.Tensor:
    """Atom14 positions [*, N, 14, 3] from the rigid-group frames [*, N, 8] (Algorithm 24 l.11)."""
    like = group_frames.trans
    group_index = _table(rc.restype_atom14_to_rigid_group, like)[aatype]  # [*, N, 14]
    one_hot = F.one_hot(group_index, num_classes=8).to(like.dtype)  # [*, N, 14, 8]
    rots = torch.einsum("...ag,...gij->...aij", one_hot, group_frames.rots)
    trans = torch.einsum("...ag,...gi->...ai", one_hot, group_frames.trans)
    literature = _table(rc.restype_atom14_rigid_group_positions, like, like.dtype)[aatype]
    atom_mask = _table(rc.restype_atom14_mask, like, like.dtype)[aatype]
    positions = Rigid(rots, trans).apply(literature)
    return positions * atom_mask[..., None]


def atom14_to_atom37(atom14: torch.Tensor, aatype: torch.Tensor) -> torch.Tensor:
    """Scatter atom14 data [*, N, 14, ...] into the atom37 layout [*, N, 37, ...] (zero-filled)."""
    index = _table(rc.restype_atom37_to_atom14, atom14)[aatype]  # [*, N, 37]
    mask = _table(rc.restype_atom37_mask, atom14, atom14.dtype)[aatype]
    atom37 = batched_gather(atom14, index, dim=aatype.dim())
    return atom37 * mask.reshape(mask.shape + (1,) * (atom37.dim() - mask.dim()))


def atom37_to_atom14(atom37: torch.Tensor, aatype: torch.Tensor) -> torch.Tensor:
    """Gather atom37 data [*, N, 37, ...] into the atom14 layout [*, N, 14, ...]."""
    index = _table(rc.restype_atom14_to_atom37, atom37)[aatype]
    mask = _table(rc.restype_atom14_mask, atom37, atom37.dtype)[aatype]
    atom14 = batched_gather(atom37, index, dim=aatype.dim())
    return atom14 * mask.reshape(mask.shape + (1,) * (atom14.dim() - mask.dim()))


def pseudo_beta(aatype: torch.Tensor, atom37_positions: torch.Tensor,
                atom37_mask: torch.Tensor | None = None):
    """C-beta positions [*, N, 3] (C-alpha for glycine) and, given a mask, their mask [*, N]."""
    is_gly = (aatype == rc.restype_order["G"])[..., None]
    ca, cb = rc.atom_order["CA"], rc.atom_order["CB"]
    positions = torch.where(is_gly, atom37_positions[..., ca, :], atom37_positions[..., cb, :])
    if atom37_mask is None:
        return positions
    mask = torch.where(is_gly[..., 0], atom37_mask[..., ca], atom37_mask[..., cb])
    return positions, mask


# --- ground-truth side ---------------------------------------------------------------------


def atom14_masks(aatype: torch.Tensor) -> dict[str, torch.Tensor]:
    """Which atom14 / atom37 slots exist for each residue type."""
    return {
        "atom14_atom_exists": _table(rc.restype_atom14_mask, aatype, torch.float32)[aatype],
        "atom37_atom_exists": _table(rc.restype_atom37_mask, aatype, torch.float32)[aatype],
    }


def atom14_ground_truth(aatype: torch.Tensor, all_atom_positions: torch.Tensor,
                        all_atom_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Ground-truth atom14 positions plus the version with symmetric atoms renamed."""
    exists = _table(rc.restype_atom14_mask, all_atom_mask, all_atom_mask.dtype)[aatype]
    gt_exists = atom37_to_atom14(all_atom_mask, aatype) * exists
    gt_positions = atom37_to_atom14(all_atom_positions, aatype) * gt_exists[..., None]
    swap = _table(rc.restype_atom14_ambiguous_atoms_swap_idx, aatype)[aatype]  # [*, N, 14]
    alt_positions = batched_gather(gt_positions, swap, dim=aatype.dim())
    alt_exists = batched_gather(gt_exists, swap, dim=aatype.dim())
    is_ambiguous = _table(rc.restype_atom14_ambiguous_atoms, aatype, all_atom_mask.dtype)[aatype]
    return {
        "atom14_gt_positions": gt_positions,
        "atom14_gt_exists": gt_exists,
        "atom14_alt_gt_positions": alt_positions,
        "atom14_alt_gt_exists": alt_exists,
        "atom14_atom_is_ambiguous": is_ambiguous,
    }


def atom37_to_frames(aatype: torch.Tensor, all_atom_positions: torch.Tensor,
                     all_atom_mask: torch.Tensor, eps: float = 1e-8) -> dict[str, torch.Tensor]:
    """Ground-truth frames of the 8 rigid groups (AF2 suppl. 1.8.2), as 4x4 tensors."""
    dtype = all_atom_positions.dtype
    base_atoms = _table(rc.restype_rigidgroup_base_atom37_idx, aatype)[aatype]  # [*, N, 8, 3]
    base_positions = batched_gather(all_atom_positions, base_atoms, dim=aatype.dim())
    frames = Rigid.from_3_points(base_positions[..., 0, :], base_positions[..., 1, :],
                                 base_positions[..., 2, :], eps=eps)
    # The backbone group is built from (C, CA, N): flip x and z so x points CA -> C.
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=dtype, device=aatype.device))
    is_backbone = torch.zeros(8, 1, 1, dtype=torch.bool, device=aatype.device)
    is_backbone[0] = True
    eye = torch.eye(3, dtype=dtype, device=aatype.device)
    frames = frames.compose_rotation(torch.where(is_backbone, flip, eye))

    group_exists = _table(rc.restype_rigidgroup_mask, aatype, dtype)[aatype]
    atoms_exist = batched_gather(all_atom_mask, base_atoms, dim=aatype.dim())
    gt_exists = torch.amin(atoms_exist, dim=-1) * group_exists
    is_ambiguous = _table(rc.restype_rigidgroup_is_ambiguous, aatype, dtype)[aatype]
    ambiguity_rot = _table(rc.restype_rigidgroup_ambiguity_rot, aatype, dtype)[aatype]
    alt_frames = frames.compose_rotation(ambiguity_rot)
    return {
        "rigidgroups_gt_frames": frames.to_tensor_4x4(),
        "rigidgroups_gt_exists": gt_exists,
        "rigidgroups_group_exists": group_exists,
        "rigidgroups_group_is_ambiguous": is_ambiguous,
        "rigidgroups_alt_gt_frames": alt_frames.to_tensor_4x4(),
    }


def atom37_to_torsion_angles(aatype: torch.Tensor, all_atom_positions: torch.Tensor,
                             all_atom_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """The 7 torsion angles as (sin, cos) [*, N, 7, 2] with masks (AF2 suppl. 1.9.1).

    Order: pre-omega, phi, psi, chi1..chi4. ``alt_torsion_angles_sin_cos`` has pi-periodic
    chi angles shifted by pi.
    """
    aatype = aatype.clamp(max=rc.unk_restype_index)
    n_res_dim = aatype.dim() - 1
    # Atoms of the previous residue (zeros, masked, for the first residue).
    prev_positions = torch.cat([torch.zeros_like(all_atom_positions.narrow(n_res_dim, 0, 1)),
                                all_atom_positions.narrow(n_res_dim, 0,
                                                          aatype.shape[-1] - 1)], dim=n_res_dim)
    prev_mask = torch.cat([torch.zeros_like(all_atom_mask.narrow(n_res_dim, 0, 1)),
                           all_atom_mask.narrow(n_res_dim, 0, aatype.shape[-1] - 1)],
                          dim=n_res_dim)
    pos, mask = all_atom_positions, all_atom_mask
    # atom37 order starts N, CA, C, CB, O.
    pre_omega_pos = torch.cat([prev_positions[..., 1:3, :], pos[..., 0:2, :]], dim=-2)
    phi_pos = torch.cat([prev_positions[..., 2:3, :], pos[..., 0:3, :]], dim=-2)
    psi_pos = torch.cat([pos[..., 0:3, :], pos[..., 4:5, :]], dim=-2)
    pre_omega_mask = prev_mask[..., 1] * prev_mask[..., 2] * mask[..., 0] * mask[..., 1]
    phi_mask = prev_mask[..., 2] * mask[..., 0] * mask[..., 1] * mask[..., 2]
    psi_mask = mask[..., 0] * mask[..., 1] * mask[..., 2] * mask[..., 4]

    chi_atoms = _table(rc.chi_angles_atom_indices, aatype)[aatype]  # [*, N, 4, 4]
    chi_pos = batched_gather(pos, chi_atoms, dim=aatype.dim())  # [*, N, 4, 4, 3]
    chi_mask = _table(rc.chi_angles_mask, aatype, mask.dtype)[aatype]
    chi_mask = chi_mask * torch.prod(batched_gather(mask, chi_atoms, dim=aatype.dim()), dim=-1)

    torsion_pos = torch.cat([pre_omega_pos[..., None, :, :], phi_pos[..., None, :, :],
                             psi_pos[..., None, :, :], chi_pos], dim=-3)  # [*, N, 7, 4, 3]
    torsion_mask = torch.cat([pre_omega_mask[..., None], phi_mask[..., None],
                              psi_mask[..., None], chi_mask], dim=-1)
    # Frame with the x axis along the bond (atom 2 -> atom 3) and atom 1 in the xy-plane; the
    # fourth atom's (z, y) coordinates give (sin, cos) of the dihedral.
    frames = Rigid.from_3_points(torsion_pos[..., 1, :], torsion_pos[..., 2, :],
                                 torsion_pos[..., 0, :], eps=1e-8)
    fourth = frames.invert_apply(torsion_pos[..., 3, :])
    sin_cos = torch.stack([fourth[..., 2], fourth[..., 1]], dim=-1)
    sin_cos = sin_cos / torch.sqrt(torch.sum(sin_cos ** 2, dim=-1, keepdim=True) + 1e-8)
    # psi is defined via O here; the rigid-group convention uses the opposite sign.
    sign = sin_cos.new_tensor([1.0, 1.0, -1.0, 1.0, 1.0, 1.0, 1.0])
    sin_cos = sin_cos * sign[:, None]
    periodic = _table(rc.chi_pi_periodic, aatype, sin_cos.dtype)[aatype]
    mirror = torch.cat([torch.ones_like(periodic[..., :3]), 1.0 - 2.0 * periodic], dim=-1)
    return {
        "torsion_angles_sin_cos": sin_cos,
        "alt_torsion_angles_sin_cos": sin_cos * mirror[..., None],
        "torsion_angles_mask": torsion_mask,
    }


def make_structure_features(aatype: torch.Tensor, all_atom_positions: torch.Tensor,
                            all_atom_mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Every structural ground-truth feature the losses read, from atom37 coordinates.

    Returns atom14_* (positions, masks, symmetric alternatives), rigidgroups_* (frames),
    backbone_rigid_tensor/_mask, chi_angles_sin_cos/chi_mask, pseudo_beta/_mask and
    atom14_atom_exists/atom37_atom_exists.
    """
    all_atom_mask = all_atom_mask * _table(rc.restype_atom37_mask, aatype,
                                           all_atom_mask.dtype)[aatype]
    feats = dict(atom14_masks(aatype))
    feats.update(atom14_ground_truth(aatype, all_atom_positions, all_atom_mask))
    feats.update(atom37_to_frames(aatype, all_atom_positions, all_atom_mask))
    feats["backbone_rigid_tensor"] = feats["rigidgroups_gt_frames"][..., 0, :, :]
    feats["backbone_rigid_mask"] = feats["rigidgroups_gt_exists"][..., 0]
    torsions = atom37_to_torsion_angles(aatype, all_atom_positions, all_atom_mask)
    feats["chi_angles_sin_cos"] = torsions["torsion_angles_sin_cos"][..., 3:, :]
    feats["chi_mask"] = torsions["torsion_angles_mask"][..., 3:]
    feats["pseudo_beta"], feats["pseudo_beta_mask"] = pseudo_beta(
        aatype, all_atom_positions, all_atom_mask)
    return feats


# --- template features ---------------------------------------------------------------------


def template_angle_features(template_aatype: torch.Tensor, torsion_sin_cos: torch.Tensor,
                            alt_torsion_sin_cos: torch.Tensor,
                            torsion_mask: torch.Tensor) -> torch.Tensor:
    """[*, T, N, 57]: aatype one-hot (22), torsions (14), alternative torsions (14), mask (7)."""
    one_hot = F.one_hot(template_aatype, 22).to(torsion_sin_cos.dtype)
    return torch.cat([
        one_hot,
        torsion_sin_cos.flatten(-2),
        alt_torsion_sin_cos.flatten(-2),
        torsion_mask,
    ], dim=-1)


def template_pair_features(template_aatype: torch.Tensor, all_atom_positions: torch.Tensor,
                           all_atom_mask: torch.Tensor, pseudo_beta_positions: torch.Tensor,
                           pseudo_beta_mask: torch.Tensor, min_bin: float, max_bin: float,
                           no_bins: int, use_unit_vector: bool, eps: float = 1e-6,
                           inf: float = 1e5) -> torch.Tensor:
    """[*, T, N, N, no_bins + 49] template pair features (AF2 suppl. Table 1).

    Distogram of pseudo-beta distances, pseudo-beta pair mask, aatype one-hot of residue j then
    of residue i, unit vector between backbone frames (zeroed unless ``use_unit_vector``),
    backbone pair mask; pairs without a complete backbone are zeroed.
    """
    dtype = all_atom_positions.dtype
    n_res = template_aatype.shape[-1]
    pb_mask_2d = pseudo_beta_mask[..., :, None] * pseudo_beta_mask[..., None, :]
    sq_dist = torch.sum((pseudo_beta_positions[..., :, None, :]
                         - pseudo_beta_positions[..., None, :, :]) ** 2, dim=-1, keepdim=True)
    lower = torch.linspace(min_bin, max_bin, no_bins, dtype=dtype,
                           device=sq_dist.device) ** 2
    upper = torch.cat([lower[1:], lower.new_tensor([inf])])
    distogram = ((sq_dist > lower) & (sq_dist < upper)).to(dtype)

    one_hot = F.one_hot(template_aatype, 22).to(dtype)
    one_hot_j = one_hot[..., None, :, :].expand(*one_hot.shape[:-2], n_res, n_res, 22)
    one_hot_i = one_hot[..., :, None, :].expand(*one_hot.shape[:-2], n_res, n_res, 22)

    n, ca, c = (rc.atom_order[a] for a in ("N", "CA", "C"))
    frames = Rigid.from_3_points(all_atom_positions[..., c, :], all_atom_positions[..., ca, :],
                                 all_atom_positions[..., n, :], eps=eps)
    flip = torch.diag(torch.tensor([-1.0, 1.0, -1.0], dtype=dtype, device=sq_dist.device))
    frames = frames.compose_rotation(flip)
    local = frames.unsqueeze(-1).invert_apply(frames.trans[..., None, :, :])  # [*, T, N, N, 3]
    backbone_mask = all_atom_mask[..., n] * all_atom_mask[..., ca] * all_atom_mask[..., c]
    backbone_mask_2d = backbone_mask[..., :, None] * backbone_mask[..., None, :]
    inv_distance = torch.rsqrt(eps + torch.sum(local ** 2, dim=-1)) * backbone_mask_2d
    unit_vector = local * inv_distance[..., None]
    if not use_unit_vector:
        unit_vector = unit_vector * 0.0

    features = torch.cat([
        distogram, pb_mask_2d[..., None], one_hot_j, one_hot_i, unit_vector,
        backbone_mask_2d[..., None],
    ], dim=-1)
    return features * backbone_mask_2d[..., None]
