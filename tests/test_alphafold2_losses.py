"""AlphaFold2 losses: FAPE properties, symmetric renaming, perfect predictions give ~0."""

import math

import pytest
import torch
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom, synthetic
from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.geometry import Rigid, quat_to_rot
from benchmarks.alphafold2.losses import (
    AlphaFoldLoss,
    backbone_fape,
    compute_fape,
    compute_renamed_ground_truth,
    distogram_loss,
    masked_msa_loss,
    plddt_loss,
    sidechain_fape,
    supervised_chi_loss,
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
    backbone = synthetic.helical_backbone(aatype.shape[0], torch.float64)
    torsions = synthetic.random_torsions(aatype.shape[0], generator).double()
    positions, mask = synthetic.build_structure(aatype, backbone, torsions)
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
    batch = synthetic.random_batch(n_res=9, seed=3)
    outputs = AlphaFold(AlphaFoldConfig.tiny())(batch)
    loss, parts = AlphaFoldLoss().compute(outputs, batch)
    weights = {"backbone_fape": 0.5, "sidechain_fape": 0.5, "supervised_chi": 1.0,
               "distogram": 0.3, "masked_msa": 2.0, "plddt": 0.01}
    expected = sum(weights[k] * parts[k] for k in weights) * 3.0  # sqrt(9)
    torch.testing.assert_close(loss.detach(), expected)
