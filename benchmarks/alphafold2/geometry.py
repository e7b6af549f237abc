"""Rigid transformations (rotation + translation) for AlphaFold2's frames.

A :class:`Rigid` holds rotation matrices ``rots`` [*, 3, 3] and translations ``trans`` [*, 3]
with the same batch shape ``*``; it maps local coordinates x to global ``rots @ x + trans``.
Rotation matrices are used throughout (quaternions only where the backbone update produces
them), which keeps composition exact and avoids matrix -> quaternion conversions in the loss.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch


def quat_to_rot(quat: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [*, 3, 3] from (not necessarily unit) quaternions [*, 4] = (w, x, y, z)."""
    quat = quat / torch.linalg.vector_norm(quat, dim=-1, keepdim=True)
    w, x, y, z = torch.unbind(quat, dim=-1)
    rows = [
        1 - 2 * (y * y + z * z), 2 * (x * y - w * z), 2 * (x * z + w * y),
        2 * (x * y + w * z), 1 - 2 * (x * x + z * z), 2 * (y * z - w * x),
        2 * (x * z - w * y), 2 * (y * z + w * x), 1 - 2 * (x * x + y * y),
    ]
    return torch.stack(rows, dim=-1).reshape(quat.shape[:-1] + (3, 3))


def rot_to_quat(rot: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [*, 4] (w >= 0) from rotation matrices [*, 3, 3].

    Uses the eigenvector of the symmetric 4x4 matrix whose largest eigenvalue belongs to the
    quaternion (Bar-Itzhack 2000), which is stable for every rotation angle.
    """
    r = rot
    xx, xy, xz = r[..., 0, 0], r[..., 0, 1], r[..., 0, 2]
    yx, yy, yz = r[..., 1, 0], r[..., 1, 1], r[..., 1, 2]
    zx, zy, zz = r[..., 2, 0], r[..., 2, 1], r[..., 2, 2]
    k = torch.stack([
        torch.stack([xx + yy + zz, zy - yz, xz - zx, yx - xy], dim=-1),
        torch.stack([zy - yz, xx - yy - zz, xy + yx, xz + zx], dim=-1),
        torch.stack([xz - zx, xy + yx, yy - xx - zz, yz + zy], dim=-1),
        torch.stack([yx - xy, xz + zx, yz + zy, zz - xx - yy], dim=-1),
    ], dim=-2) / 3.0
    _, vectors = torch.linalg.eigh(k)
    quat = vectors[..., -1]
    return quat * torch.where(quat[..., :1] < 0, -1.0, 1.0)


class Rigid:
    """A batch of rigid transformations x -> rots @ x + trans."""

    def __init__(self, rots: torch.Tensor, trans: torch.Tensor):
        if rots.shape[:-2] != trans.shape[:-1]:
            raise ValueError(f"rotation batch {tuple(rots.shape[:-2])} does not match "
                             f"translation batch {tuple(trans.shape[:-1])}")
        self.rots = rots
        self.trans = trans

    # --- construction ------------------------------------------------------------------
    @staticmethod
    def identity(shape: Sequence[int], dtype: torch.dtype = torch.float32,
                 device: torch.device | str | None = None) -> Rigid:
        rots = torch.eye(3, dtype=dtype, device=device).expand(*shape, 3, 3).clone()
        return Rigid(rots, torch.zeros(*shape, 3, dtype=dtype, device=device))

    @staticmethod
    def from_tensor_4x4(tensor: torch.Tensor) -> Rigid:
        return Rigid(tensor[..., :3, :3], tensor[..., :3, 3])

    @staticmethod
    def from_quat_and_trans(quat: torch.Tensor, trans: torch.Tensor) -> Rigid:
        return Rigid(quat_to_rot(quat), trans)

    @staticmethod
    def from_3_points(p_neg_x_axis: torch.Tensor, origin: torch.Tensor,
                      p_xy_plane: torch.Tensor, eps: float = 1e-8) -> Rigid:
        """Gram-Schmidt frame (AF2 suppl. Algorithm 21).

        The x axis points from ``p_neg_x_axis`` to ``origin``; ``p_xy_plane`` lies in the
        xy-plane with a positive y coordinate; the origin is ``origin``.
        """
        e0 = origin - p_neg_x_axis
        e1 = p_xy_plane - origin
        e0 = e0 / torch.sqrt(torch.sum(e0 * e0, dim=-1, keepdim=True) + eps)
        e1 = e1 - e0 * torch.sum(e0 * e1, dim=-1, keepdim=True)
        e1 = e1 / torch.sqrt(torch.sum(e1 * e1, dim=-1, keepdim=True) + eps)
        e2 = torch.linalg.cross(e0, e1, dim=-1)
        return Rigid(torch.stack([e0, e1, e2], dim=-1), origin)

    # --- algebra -----------------------------------------------------------------------
    def compose(self, other: Rigid) -> Rigid:
        """self ∘ other: apply ``other`` first, then ``self``."""
        rots = self.rots @ other.rots
        trans = (self.rots @ other.trans.unsqueeze(-1)).squeeze(-1) + self.trans
        return Rigid(rots, trans)

    def compose_rotation(self, rots: torch.Tensor) -> Rigid:
        """self ∘ (pure rotation ``rots``)."""
        return Rigid(self.rots @ rots, self.trans)

    def invert(self) -> Rigid:
        inv_rots = self.rots.transpose(-1, -2)
        inv_trans = -(inv_rots @ self.trans.unsqueeze(-1)).squeeze(-1)
        return Rigid(inv_rots, inv_trans)

    def apply(self, points: torch.Tensor) -> torch.Tensor:
        """Map points [*, 3] from local to global coordinates."""
        return torch.einsum("...ij,...j->...i", self.rots, points) + self.trans

    def invert_apply(self, points: torch.Tensor) -> torch.Tensor:
        """Map points [*, 3] from global to local coordinates."""
        return torch.einsum("...ji,...j->...i", self.rots, points - self.trans)

    # --- shape helpers -----------------------------------------------------------------
    @property
    def shape(self) -> torch.Size:
        return self.trans.shape[:-1]

    def __getitem__(self, index) -> Rigid:
        if not isinstance(index, tuple):
            index = (index,)
        return Rigid(self.rots[index + (slice(None), slice(None))],
                     self.trans[index + (slice(None),)])

    def unsqueeze(self, dim: int) -> Rigid:
        dim = dim if dim >= 0 else len(self.shape) + dim + 1
        return Rigid(self.rots.unsqueeze(dim), self.trans.unsqueeze(dim))

    def map(self, fn: Callable[[torch.Tensor], torch.Tensor]) -> Rigid:
        """Apply ``fn`` to both tensors; ``fn`` must act on leading (batch) dims only."""
        return Rigid(fn(self.rots), fn(self.trans))

    @staticmethod
    def cat(rigids: Sequence[Rigid], dim: int) -> Rigid:
        dim = dim if dim >= 0 else len(rigids[0].shape) + dim
        return Rigid(torch.cat([r.rots for r in rigids], dim=dim),
                     torch.cat([r.trans for r in rigids], dim=dim))

    def scale_translation(self, factor: float) -> Rigid:
        return Rigid(self.rots, self.trans * factor)

    def stop_rot_gradient(self) -> Rigid:
        """Detach the rotations (AF2 suppl. 1.8.3: gradients flow through translations only)."""
        return Rigid(self.rots.detach(), self.trans)

    def to_tensor_4x4(self) -> torch.Tensor:
        tensor = self.rots.new_zeros(self.shape + (4, 4))
        tensor[..., :3, :3] = self.rots
        tensor[..., :3, 3] = self.trans
        tensor[..., 3, 3] = 1.0
        return tensor
