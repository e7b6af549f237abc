"""AlphaFold2 geometry: rigid frames, residue constants round trips, IPA invariance."""

import math

import pytest
import torch

from benchmarks.alphafold2 import all_atom, synthetic_proteins
from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.geometry import Rigid, quat_to_rot, rot_to_quat
from benchmarks.alphafold2.model.structure_module import InvariantPointAttention

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def random_rigid(shape, generator, dtype=torch.float64) -> Rigid:
    quat = torch.randn(*shape, 4, generator=generator, dtype=dtype)
    trans = 5.0 * torch.randn(*shape, 3, generator=generator, dtype=dtype)
    return Rigid(quat_to_rot(quat), trans)


@pytest.fixture
def generator():
    return torch.Generator().manual_seed(0)


def test_quaternions_give_proper_rotations_and_round_trip(generator):
    quat = torch.randn(50, 4, generator=generator, dtype=torch.float64)
    rot = quat_to_rot(quat)
    eye = torch.eye(3, dtype=torch.float64).expand(50, 3, 3)
    torch.testing.assert_close(rot @ rot.transpose(-1, -2), eye)
    torch.testing.assert_close(torch.linalg.det(rot), torch.ones(50, dtype=torch.float64))
    unit = quat / quat.norm(dim=-1, keepdim=True)
    unit = unit * torch.sign(unit[:, :1])
    torch.testing.assert_close(rot_to_quat(rot), unit)


def test_quaternion_convention_rotates_about_z():
    half = math.radians(90.0) / 2
    rot = quat_to_rot(torch.tensor([math.cos(half), 0.0, 0.0, math.sin(half)]))
    torch.testing.assert_close(rot @ torch.tensor([1.0, 0.0, 0.0]), torch.tensor([0.0, 1.0, 0.0]))


def test_rigid_compose_invert_apply(generator):
    a, b = random_rigid((7,), generator), random_rigid((7,), generator)
    points = torch.randn(7, 3, generator=generator, dtype=torch.float64)
    torch.testing.assert_close(a.compose(b).apply(points), a.apply(b.apply(points)))
    torch.testing.assert_close(a.invert().apply(a.apply(points)), points)
    torch.testing.assert_close(a.invert_apply(a.apply(points)), points)
    identity = a.compose(a.invert())
    torch.testing.assert_close(identity.to_tensor_4x4(),
                               torch.eye(4, dtype=torch.float64).expand(7, 4, 4))
    torch.testing.assert_close(a.compose(b).to_tensor_4x4(),
                               a.to_tensor_4x4() @ b.to_tensor_4x4())
    round_trip = Rigid.from_tensor_4x4(a.to_tensor_4x4())
    torch.testing.assert_close(round_trip.rots, a.rots)
    torch.testing.assert_close(round_trip.trans, a.trans)


def test_rigid_indexing_broadcasts_over_points(generator):
    frames = random_rigid((4,), generator)
    points = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    local = frames[:, None].invert_apply(points[None, :, :])  # every point in every frame
    assert local.shape == (4, 6, 3)
    torch.testing.assert_close(frames[2].invert_apply(points[5]), local[2, 5])


def test_frame_from_three_points():
    n, ca, c = torch.tensor([[-0.5, 1.4, 0.0]]), torch.tensor([[0.0, 0.0, 0.0]]), \
        torch.tensor([[1.5, 0.0, 0.0]])
    # x from p_neg_x_axis to origin, the third point in the xy-plane with y > 0.
    frame = Rigid.from_3_points(p_neg_x_axis=-c, origin=ca, p_xy_plane=n, eps=0.0)
    torch.testing.assert_close(frame.rots[0], torch.eye(3))
    shifted = Rigid.from_3_points(-c + 2.0, ca + 2.0, n + 2.0)
    torch.testing.assert_close(shifted.trans, ca + 2.0)
    local_n = shifted.invert_apply(n + 2.0)
    assert local_n[0, 1] > 0 and abs(local_n[0, 2]) < 1e-6


def test_torsions_to_atoms_to_torsions_round_trip(generator):
    """Building atoms from torsions and measuring them back recovers psi, chi1-4 and frames."""
    aatype = torch.arange(20)  # every residue type once
    backbone = synthetic_proteins.helical_backbone(20, torch.float64)
    torsions = synthetic_proteins.random_torsions(20, generator).double()
    positions, mask = synthetic_proteins.build_structure(aatype, backbone, torsions)
    measured = all_atom.atom37_to_torsion_angles(aatype, positions, mask)
    angle_mask = measured["torsion_angles_mask"]
    assert angle_mask[:, 3:].sum() == rc.chi_angles_mask.sum() == 39
    error = (measured["torsion_angles_sin_cos"] - torsions).norm(dim=-1) * angle_mask
    assert error[:, 2:].max() < 1e-6  # psi and chi1-4 depend on this residue only

    features = all_atom.make_structure_features(aatype, positions, mask)
    expected = all_atom.torsion_angles_to_frames(backbone, torsions, aatype)
    gt = Rigid.from_tensor_4x4(features["rigidgroups_gt_frames"])
    exists = features["rigidgroups_gt_exists"][..., None, None]
    torch.testing.assert_close(gt.rots * exists, expected.rots * exists, atol=1e-6, rtol=0)
    torch.testing.assert_close(features["backbone_rigid_tensor"], backbone.to_tensor_4x4(),
                               atol=1e-6, rtol=0)


def test_ideal_geometry_bond_lengths(generator):
    aatype = torch.arange(20)
    positions, mask = synthetic_proteins.random_structure(aatype, generator)
    def bond(a: str, b: str) -> torch.Tensor:
        i, j = rc.atom_order[a], rc.atom_order[b]
        present = (mask[:, i] * mask[:, j]) > 0
        return (positions[present, i] - positions[present, j]).norm(dim=-1)
    for a, b, length in [("N", "CA", 1.46), ("CA", "C", 1.52), ("C", "O", 1.23),
                         ("CA", "CB", 1.53)]:
        assert torch.allclose(bond(a, b), torch.tensor(length), atol=0.03), (a, b)


def test_atom14_atom37_round_trip(generator):
    aatype = torch.randint(0, 21, (30,), generator=generator)
    atom14 = torch.randn(30, 14, 3, generator=generator)
    atom14 = atom14 * all_atom.atom14_masks(aatype)["atom14_atom_exists"][..., None]
    atom37 = all_atom.atom14_to_atom37(atom14, aatype)
    torch.testing.assert_close(all_atom.atom37_to_atom14(atom37, aatype), atom14)
    assert atom37[aatype == 20].abs().sum() == 0  # unknown residues have no atoms


def test_invariant_point_attention_is_invariant_to_global_transforms(generator):
    torch.manual_seed(0)
    ipa = InvariantPointAttention(c_s=16, c_z=8, c_hidden=4, no_heads=3, no_qk_points=4,
                                  no_v_points=5, inf=1e5, eps=1e-8).double()
    with torch.no_grad():  # replace the zero "final" init so the output is not trivially 0
        for parameter in ipa.parameters():
            parameter.copy_(0.3 * torch.randn(parameter.shape, generator=generator,
                                              dtype=torch.float64))
    n = 11
    s = torch.randn(n, 16, generator=generator, dtype=torch.float64)
    z = torch.randn(n, n, 8, generator=generator, dtype=torch.float64)
    frames = random_rigid((n,), generator)
    mask = torch.ones(n, dtype=torch.float64)
    mask[-2:] = 0.0
    reference = ipa(s, z, frames, mask)
    assert reference.abs().max() > 1e-3

    global_transform = random_rigid((), generator)
    moved = global_transform.unsqueeze(0).compose(frames)
    torch.testing.assert_close(ipa(s, z, moved, mask), reference)
    # A different, non-rigid change of the frames must change the output.
    other = random_rigid((n,), generator)
    assert not torch.allclose(ipa(s, z, other, mask), reference)
