"""lDDT-Cα against values computed by hand."""

import torch

from benchmarks.alphafold2 import residue_constants as rc
from benchmarks.alphafold2.metrics import lddt, lddt_ca


def points(*xs: float) -> torch.Tensor:
    return torch.tensor([[x, 0.0, 0.0] for x in xs])


def test_lddt_of_three_points_by_hand():
    true = points(0.0, 1.0, 3.0)  # distances 1, 3, 2
    pred = points(0.0, 1.2, 3.6)  # distances 1.2, 3.6, 2.4: errors 0.2, 0.6, 0.4
    mask = torch.ones(3)
    # error 0.2 and 0.4 pass all four thresholds (score 1); 0.6 passes 1, 2, 4 (0.75).
    torch.testing.assert_close(lddt(pred, true, mask), torch.tensor((1 + 0.75 + 1) / 3))
    torch.testing.assert_close(lddt(pred, true, mask, per_residue=True),
                               torch.tensor([0.875, 1.0, 0.875]))


def test_lddt_thresholds_cutoff_and_mask():
    true = points(0.0, 10.0, 40.0)  # the third point is beyond the 15 Å cutoff of both
    pred = points(0.0, 11.5, 0.0)  # pair (0,1): error 1.5 -> passes 2 and 4 -> 0.5
    torch.testing.assert_close(lddt(pred, true, torch.ones(3)), torch.tensor(0.5))
    true = points(0.0, 3.0, 6.0)
    pred = points(0.0, 6.0, 9.0)  # errors: (0,1) 3 -> 0.25, (0,2) 3 -> 0.25, (1,2) 0 -> 1
    torch.testing.assert_close(lddt(pred, true, torch.ones(3)), torch.tensor(1.5 / 3))
    masked = torch.tensor([1.0, 0.0, 1.0])  # only pair (0,2) remains
    torch.testing.assert_close(lddt(pred, true, masked), torch.tensor(0.25))


def test_lddt_is_one_for_a_rigidly_moved_prediction():
    generator = torch.Generator().manual_seed(0)
    true = 5.0 * torch.randn(20, 3, generator=generator)
    rotation = torch.linalg.qr(torch.randn(3, 3, generator=generator))[0]
    pred = true @ rotation.T + torch.tensor([3.0, -2.0, 7.0])
    torch.testing.assert_close(lddt(pred, true, torch.ones(20)), torch.tensor(1.0))


def test_lddt_ca_reads_the_ca_atom_and_batches():
    true = torch.zeros(2, 3, 37, 3)
    pred = torch.zeros(2, 3, 37, 3)
    ca = rc.atom_order["CA"]
    true[:, :, ca] = points(0.0, 1.0, 3.0)
    pred[:, :, ca] = points(0.0, 1.2, 3.6)
    pred[:, :, rc.atom_order["CB"]] = 100.0  # other atoms are ignored
    mask = torch.zeros(2, 3, 37)
    mask[:, :, ca] = 1.0
    torch.testing.assert_close(lddt_ca(pred, true, mask), torch.full((2,), (1 + 0.75 + 1) / 3))
