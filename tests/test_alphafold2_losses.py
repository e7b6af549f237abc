"""AlphaFold2 losses: FAPE properties, symmetric renaming, perfect predictions give ~0."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom, losses, synthetic_proteins
from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.data.synthetic_dataset import sequence_structure
from benchmarks.alphafold2.geometry import Rigid, quat_to_rot
from benchmarks.alphafold2.losses import (
    AlphaFoldLoss,
    backbone_fape,
    compute_fape,
    compute_renamed_ground_truth,
    distogram_loss,
    find_structural_violations,
    masked_msa_loss,
    plddt_loss,
    sidechain_fape,
    supervised_chi_loss,
    violation_loss,
)
from benchmarks.alphafold2.model import AlphaFold, AlphaFoldConfig

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def random_rigid(shape, generator) -> Rigid:
    quat = torch.randn(*shape, 4, generator=generator, dtype=torch.float64)
    return Rigid(quat_to_rot(quat), 5.0 * torch.randn(*shape, 3, generator=generator,
                                                     dtype=torch.float64))


def fape(pred_frames, pred_points, true_frames, true_points, clamp=10.0, eps=1e-12):
    frames_mask = torch.ones(pred_frames.shape, dtype=torch.float64)
    points_mask = torch.ones(pred_points.shape[:-1], dtype=torch.float64)
    return compute_fape(pred_frames, true_frames, frames_mask, pred_points, true_points,
                        points_mask, length_scale=10.0, clamp_distance=clamp, eps=eps)


def test_fape_is_zero_for_identical_structures(generator):
    frames = random_rigid((12,), generator)
    points = 10.0 * torch.randn(30, 3, generator=generator, dtype=torch.float64)
    assert fape(frames, points, frames, points) < 1e-5
    # With the training epsilon the floor is sqrt(eps) / length_scale.
    floor = fape(frames, points, frames, points, eps=1e-4)
    torch.testing.assert_close(floor, torch.tensor(math.sqrt(1e-4) / 10.0, dtype=torch.float64),
                               rtol=1e-3, atol=0)


def test_fape_is_positive_and_invariant_to_global_transforms(generator):
    true_frames = random_rigid((12,), generator)
    true_points = 10.0 * torch.randn(30, 3, generator=generator, dtype=torch.float64)
    pred_frames = random_rigid((12,), generator)
    pred_points = true_points + torch.randn(30, 3, generator=generator, dtype=torch.float64)
    loss = fape(pred_frames, pred_points, true_frames, true_points)
    assert loss > 0.05
    # Moving the whole prediction rigidly (frames and points together) changes nothing.
    move = random_rigid((), generator)
    moved = fape(move.unsqueeze(0).compose(pred_frames), move.unsqueeze(0).apply(pred_points),
                 true_frames, true_points)
    torch.testing.assert_close(moved, loss)
    # A global transform of the structure itself (points only) is seen by FAPE.
    assert fape(pred_frames, move.unsqueeze(0).apply(pred_points), true_frames,
                true_points) != loss


def test_fape_clamps_large_errors(generator):
    frames = random_rigid((5,), generator)
    points = torch.randn(8, 3, generator=generator, dtype=torch.float64)
    far = points + torch.tensor([100.0, 0.0, 0.0], dtype=torch.float64)
    torch.testing.assert_close(fape(frames, far, frames, points),
                               torch.tensor(1.0, dtype=torch.float64))  # clamp 10 / scale 10
    assert fape(frames, far, frames, points, clamp=None) > 9.0


def perfect_prediction(aatype, generator):
    """Ground truth plus the structure-module outputs that reproduce it exactly."""
    backbone = synthetic_proteins.helical_backbone(aatype.shape[0], torch.float64)
    torsions = synthetic_proteins.random_torsions(aatype.shape[0], generator).double()
    positions, mask = synthetic_proteins.build_structure(aatype, backbone, torsions)
    batch = all_atom.make_structure_features(aatype, positions, mask)
    batch.update(aatype=aatype, seq_mask=torch.ones(aatype.shape[0], dtype=torch.float64),
                 all_atom_positions=positions, all_atom_mask=mask)
    groups = all_atom.torsion_angles_to_frames(backbone, torsions, aatype)
    sm = {
        "frames": backbone.to_tensor_4x4()[None],
        "sidechain_frames": groups.to_tensor_4x4()[None],
        "positions": all_atom.frames_to_atom14_positions(groups, aatype)[None],
        "angles": torsions[None],
        "unnormalized_angles": torsions[None],
    }
    return batch, sm, backbone, torsions


def test_perfect_structure_has_near_zero_fape_and_chi_loss(generator):
    aatype = torch.arange(20)
    batch, sm, _, _ = perfect_prediction(aatype, generator)
    bb = backbone_fape(sm["frames"], batch["backbone_rigid_tensor"], batch["backbone_rigid_mask"],
                       torch.tensor(1.0), 10.0, 10.0, 1e-12)
    renamed = compute_renamed_ground_truth(batch, sm["positions"][-1])
    sc = sidechain_fape(sm["sidechain_frames"][-1], sm["positions"][-1], batch, renamed,
                        10.0, 10.0, 1e-12)
    chi = supervised_chi_loss(sm["angles"], sm["unnormalized_angles"], aatype,
                              batch["seq_mask"], batch["chi_mask"], batch["chi_angles_sin_cos"],
                              chi_weight=0.5, angle_norm_weight=0.01)
    assert bb < 1e-5 and sc < 1e-5 and chi < 1e-4
    assert renamed["alt_naming_is_better"].sum() == 0


def test_renaming_picks_the_swapped_naming_of_symmetric_atoms(generator):
    aatype = torch.tensor([rc.restype_order[a] for a in "ADEFYGLD"])
    batch, sm, _, _ = perfect_prediction(aatype, generator)
    swapped = batch["atom14_alt_gt_positions"]  # prediction uses the other naming
    renamed = compute_renamed_ground_truth(batch, swapped)
    symmetric = torch.tensor([rc.restype_1to3[a] in rc.residue_atom_renaming_swaps
                              for a in "ADEFYGLD"])
    assert torch.equal(renamed["alt_naming_is_better"].bool(), symmetric)
    torch.testing.assert_close(renamed["renamed_atom14_gt_positions"], swapped)


def test_chi_loss_accepts_pi_shift_for_periodic_chis(generator):
    aatype = torch.tensor([rc.restype_order["D"]] * 4)
    batch, sm, _, torsions = perfect_prediction(aatype, generator)
    flipped = torsions.clone()
    flipped[:, 4] = -flipped[:, 4]  # chi2 + pi: (sin, cos) -> (-sin, -cos)
    loss = supervised_chi_loss(flipped[None], flipped[None], aatype, batch["seq_mask"],
                               batch["chi_mask"], batch["chi_angles_sin_cos"], 0.5, 0.01)
    assert loss < 1e-4
    flipped[:, 3] = -flipped[:, 3]  # chi1 is not periodic
    assert supervised_chi_loss(flipped[None], flipped[None], aatype, batch["seq_mask"],
                               batch["chi_mask"], batch["chi_angles_sin_cos"], 0.5, 0.01) > 0.5


def test_distogram_and_masked_msa_losses_are_small_for_confident_correct_logits(generator):
    aatype = torch.arange(12)
    batch, _, _, _ = perfect_prediction(aatype, generator)
    boundaries = torch.linspace(2.3125, 21.6875, 63, dtype=torch.float64)
    dist = torch.cdist(batch["pseudo_beta"], batch["pseudo_beta"])
    true_bins = torch.bucketize(dist, boundaries)
    logits = 50.0 * F.one_hot(true_bins, 64).double()
    assert distogram_loss(logits, batch["pseudo_beta"], batch["pseudo_beta_mask"]) < 1e-6
    wrong = 50.0 * F.one_hot((true_bins + 7) % 64, 64).double()
    assert distogram_loss(wrong, batch["pseudo_beta"], batch["pseudo_beta_mask"]) > 10.0

    true_msa = torch.randint(0, 22, (3, 12), generator=generator)
    bert_mask = torch.zeros(3, 12)
    bert_mask[0, :4] = 1.0
    msa_logits = 50.0 * F.one_hot(true_msa, 23).float()
    assert masked_msa_loss(msa_logits, true_msa, bert_mask) < 1e-6
    msa_logits[1:] = 0.0  # only masked positions count
    assert masked_msa_loss(msa_logits, true_msa, bert_mask) < 1e-6


def test_plddt_loss_targets_the_true_lddt_bin(generator):
    aatype = torch.arange(12)
    batch, _, _, _ = perfect_prediction(aatype, generator)
    perfect_bin_logits = 50.0 * F.one_hot(torch.full((12,), 49), 50).double()
    resolution = torch.tensor(2.0, dtype=torch.float64)
    loss = plddt_loss(perfect_bin_logits, batch["all_atom_positions"],
                      batch["all_atom_positions"], batch["all_atom_mask"], resolution)
    assert loss < 1e-6
    outside = plddt_loss(perfect_bin_logits * 0.0, batch["all_atom_positions"],
                         batch["all_atom_positions"], batch["all_atom_mask"],
                         torch.tensor(4.5, dtype=torch.float64))
    assert outside == 0.0  # resolution filter: only 0.1-3 Å structures train pLDDT


def test_total_loss_scales_with_sqrt_of_length():
    torch.manual_seed(0)
    batch = synthetic_proteins.random_batch(n_res=9, seed=3)
    outputs = AlphaFold(AlphaFoldConfig.tiny())(batch)
    loss, parts = AlphaFoldLoss().compute(outputs, batch)
    weights = {"backbone_fape": 0.5, "sidechain_fape": 0.5, "supervised_chi": 1.0,
               "distogram": 0.3, "masked_msa": 2.0, "plddt": 0.01}
    expected = sum(weights[k] * parts[k] for k in weights) * 3.0  # sqrt(9)
    torch.testing.assert_close(loss.detach(), expected)


# --- structural violations -------------------------------------------------------------------

# Every residue type, in an order whose fixed side-chain rotamers do not clash (the synthetic
# writer's rotamers are fixed per residue type, so some neighbours do clash).
CLEAN_SEQUENCE = "NHLEGDCKYQVAFSMIRTWP"


def ideal_chain(sequence: str = CLEAN_SEQUENCE):
    """Atom14 positions of the synthetic ideal structure and the batch keys violations read."""
    positions, _ = sequence_structure(sequence)
    aatype = torch.from_numpy(rc.sequence_to_aatype(sequence))
    atom14 = all_atom.atom37_to_atom14(torch.from_numpy(positions).double(), aatype)
    batch = {"aatype": aatype, "residue_index": torch.arange(len(sequence)),
             "seq_mask": torch.ones(len(sequence), dtype=torch.float64),
             "atom14_atom_exists": all_atom.atom14_masks(aatype)["atom14_atom_exists"].double()}
    return atom14, batch


def link_losses(violations) -> list[float]:
    return [float(violations[key].detach()) for key in ("c_n_loss", "ca_c_n_loss", "c_n_ca_loss")]


def rotate_about(points: torch.Tensor, centre: torch.Tensor, axis: torch.Tensor,
                 degrees: float) -> torch.Tensor:
    """Rotate points about the line through ``centre`` along ``axis`` (Rodrigues)."""
    k = axis / axis.norm()
    angle = math.radians(degrees)
    skew = torch.tensor([[0.0, -k[2], k[1]], [k[2], 0.0, -k[0]], [-k[1], k[0], 0.0]],
                        dtype=points.dtype)
    rot = torch.eye(3, dtype=points.dtype) + math.sin(angle) * skew \
        + (1.0 - math.cos(angle)) * skew @ skew
    return (points - centre) @ rot.T + centre


def test_bond_table_matches_structures_built_with_any_torsions(generator):
    aatype = torch.arange(20)
    positions, _ = synthetic_proteins.random_structure(aatype, generator)
    atom14 = all_atom.atom37_to_atom14(positions.double(), aatype)
    distances = torch.cdist(atom14, atom14)  # [20, 14, 14]
    table = torch.as_tensor(rc.restype_atom14_bond_length[:20], dtype=torch.float64)
    bonded = table > 0
    proline_ring = torch.zeros_like(bonded)
    pro, names = rc.restype_order["P"], rc.restype_name_to_atom14_names["PRO"]
    proline_ring[pro, names.index("N"), names.index("CD")] = True
    proline_ring[pro, names.index("CD"), names.index("N")] = True
    checked = bonded & ~proline_ring  # the ring closes only at the right chi1/chi2
    torch.testing.assert_close(distances[checked], table[checked], atol=2e-3, rtol=0)
    # Every heavy atom has a bond, and lengths are in the covalent range.
    exists = torch.as_tensor(rc.restype_atom14_mask[:20]) > 0
    assert torch.equal(bonded.any(dim=-1), exists)
    assert 1.2 < table[bonded].min() and table.max() < 1.85
    bounds = rc.atom14_distance_bounds(overlap_tolerance=1.5, bond_length_tolerance_factor=12.0)
    assert (bounds["lower_bound"] < bounds["upper_bound"]).all()


def test_ideal_structure_has_no_violations():
    atom14, batch = ideal_chain()
    violations = find_structural_violations(batch, atom14)
    assert violation_loss(violations) < 1e-6
    assert violations["residue_violation"].sum() == 0
    # Consecutive C and N atoms are closer than their van der Waals bound: that pair is exempt.
    assert rc.between_res_bond_length_c_n[0] < 1.7 + 1.55 - 1.5


def test_stretched_peptide_bond_violates_only_the_bond_term():
    atom14, batch = ideal_chain()
    c, n = atom14[4, 2], atom14[5, 0]
    stretched = atom14.clone()
    stretched[5:] += (n - c) / torch.linalg.vector_norm(n - c)  # 1 Å longer, same direction
    violations = find_structural_violations(batch, stretched)
    c_n, ca_c_n, c_n_ca = link_losses(violations)
    links = len(CLEAN_SEQUENCE) - 1
    expected = (1.0 - 12.0 * rc.between_res_bond_length_stddev_c_n[0]) / links  # one link
    assert c_n == pytest.approx(expected, rel=1e-3)
    assert ca_c_n == 0.0 and c_n_ca == 0.0
    assert torch.equal(violations["residue_violation"].nonzero().flatten(), torch.tensor([4, 5]))
    # The same break is no violation when the residue numbering has a gap there.
    batch["residue_index"] = torch.cat([torch.arange(5), torch.arange(5, links + 1) + 10])
    assert violation_loss(find_structural_violations(batch, stretched)) < 1e-6


def test_bent_peptide_violates_only_the_ca_c_n_angle():
    atom14, batch = ideal_chain()
    ca, c, n = atom14[4, 1], atom14[4, 2], atom14[5, 0]
    bent = atom14.clone()
    # Rotating everything after C(4) about C(4), normal to the CA-C-N plane, opens CA-C-N by
    # 40 degrees and keeps the C-N length and the C-N-CA angle.
    bent[5:] = rotate_about(atom14[5:], c, torch.linalg.cross(ca - c, n - c), 40.0)
    cos_angle = F.cosine_similarity(bent[4, 1] - c, bent[5, 0] - c, dim=0)
    assert math.degrees(math.acos(cos_angle)) == pytest.approx(116.6 + 40.0, abs=0.5)
    c_n, ca_c_n, c_n_ca = link_losses(find_structural_violations(batch, bent))
    assert ca_c_n > 0.01
    assert c_n < 1e-6 and c_n_ca < 1e-6


def test_atoms_of_different_residues_on_top_of_each_other_clash():
    atom14, batch = ideal_chain()
    batch["residue_index"] = torch.cat([torch.arange(8), torch.arange(8, len(CLEAN_SEQUENCE))
                                        + 20])  # two chains
    moved = atom14.clone().requires_grad_(True)
    shift = torch.zeros_like(atom14)
    shift[8:] = atom14[2, 1] - atom14[15, 1]  # second chain's CA 15 onto CA 2
    violations = find_structural_violations(batch, moved + shift)
    assert link_losses(violations) == [0.0, 0.0, 0.0]
    assert violations["within_residue_per_atom_loss_sum"].sum() < 1e-6
    clash = violations["clash_per_atom_loss_sum"]
    assert clash[2, 1] > 1.5 and clash[15, 1] > 1.5  # overlap of 2 x 1.7 - 1.5 Å at least
    loss = violation_loss(violations)
    assert loss > 0.05
    loss.backward()
    assert torch.isfinite(moved.grad).all() and moved.grad.abs().sum() > 0


def test_cysteine_sg_pairs_are_not_clashes():
    atom14, batch = ideal_chain("CC")
    sg = rc.restype_name_to_atom14_names["CYS"].index("SG")
    cb_to_sg = atom14[0, sg] - atom14[0, 4]
    # A copy of residue 0 turned 180 degrees so that its SG sits 1.7 Å beyond the first SG,
    # closer than the van der Waals bound 1.8 + 1.8 - 1.5 Å.
    direction = cb_to_sg / torch.linalg.vector_norm(cb_to_sg)
    normal = torch.linalg.cross(direction, atom14[0, 1] - atom14[0, 4])
    atom14[1] = rotate_about(atom14[0], atom14[0, sg] + 0.85 * direction, normal, 180.0)
    batch["residue_index"] = torch.tensor([0, 5])
    assert violation_loss(find_structural_violations(batch, atom14)) < 1e-6
    # The same slot of serine (OG, bound 1.52 + 1.8 - 1.5 Å) is an ordinary clash.
    batch["aatype"] = torch.tensor([rc.restype_order["C"], rc.restype_order["S"]])
    clash = find_structural_violations(batch, atom14)["clash_per_atom_loss_sum"]
    torch.testing.assert_close(clash[:, sg], torch.full((2,), 0.12, dtype=torch.float64))


def test_violation_loss_is_per_sample_and_ignores_padding():
    atom14, batch = ideal_chain()
    c, n = atom14[4, 2], atom14[5, 0]
    stretched = atom14.clone()
    stretched[5:] += (n - c) / torch.linalg.vector_norm(n - c)
    single = violation_loss(find_structural_violations(batch, stretched))
    # Sample 1: the stretched chain cut to 12 residues and padded to 19 with atoms at the
    # origin (padding would clash everywhere if it were not masked).
    padded = stretched.clone()
    padded[12:] = 0.0
    pair = {key: torch.stack([value, value]) for key, value in batch.items()}
    pair["seq_mask"][1, 12:] = 0.0
    both = violation_loss(find_structural_violations(pair, torch.stack([atom14, padded])))
    cut = {key: value[:12] for key, value in batch.items()}
    expected = violation_loss(find_structural_violations(cut, stretched[:12]))
    assert both.shape == (2,)
    assert both[0] < 1e-6
    torch.testing.assert_close(both[1], expected)
    assert expected > single  # fewer links to average over


def test_alphafold_loss_adds_violations_only_when_weighted(monkeypatch):
    torch.manual_seed(0)
    batch = synthetic_proteins.random_batch(n_res=9, seed=3)
    outputs = AlphaFold(AlphaFoldConfig.tiny())(batch)
    with_violations = AlphaFoldLoss(losses.LossConfig(violation_weight=1.0))
    total, parts = with_violations.compute(outputs, batch)
    assert parts["violation"] > 0  # an untrained model's atoms pile up
    assert 0.0 <= parts["violation_fraction"] <= 1.0

    def fail(*args, **kwargs):
        raise AssertionError("violations computed at weight 0")

    monkeypatch.setattr(losses, "find_structural_violations", fail)
    base, base_parts = AlphaFoldLoss().compute(outputs, batch)
    assert "violation" not in base_parts
    torch.testing.assert_close(total, base + parts["violation"] * 3.0)  # sqrt(9)
