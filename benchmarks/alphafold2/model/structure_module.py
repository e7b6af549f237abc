"""Structure module: invariant point attention, backbone updates, side chains (Algorithms 20-24)."""

from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from benchmarks.alphafold2 import all_atom
from benchmarks.alphafold2.geometry import Rigid
from benchmarks.alphafold2.model.config import StructureModuleConfig
from benchmarks.alphafold2.model.primitives import Linear

_SOFTPLUS_INVERSE_OF_1 = 0.541324854612918  # softplus(x) = 1 at initialisation


class InvariantPointAttention(nn.Module):
    """Attention over residues using scalar features, the pair bias and 3-D points expressed
    in each residue's frame, hence invariant to global rotations and translations (Alg. 22)."""

    def __init__(self, c_s: int, c_z: int, c_hidden: int, no_heads: int, no_qk_points: int,
                 no_v_points: int, inf: float, eps: float):
        super().__init__()
        self.c_hidden = c_hidden
        self.no_heads = no_heads
        self.no_qk_points = no_qk_points
        self.no_v_points = no_v_points
        self.inf = inf
        self.eps = eps
        hc = c_hidden * no_heads
        # With bias and LeCun init, as in the released AF2 code (the supplement says Glorot).
        self.linear_q = Linear(c_s, hc)
        self.linear_kv = Linear(c_s, 2 * hc)
        self.linear_q_points = Linear(c_s, no_heads * no_qk_points * 3)
        self.linear_kv_points = Linear(c_s, no_heads * (no_qk_points + no_v_points) * 3)
        self.linear_b = Linear(c_z, no_heads)
        self.head_weights = nn.Parameter(torch.full((no_heads,), _SOFTPLUS_INVERSE_OF_1))
        concat_dim = no_heads * (c_z + c_hidden + no_v_points * 4)
        self.linear_out = Linear(concat_dim, c_s, init="final")

    def _points(self, linear: Linear, s: torch.Tensor, frames: Rigid) -> torch.Tensor:
        """Project s to points in the local frames; return them globally as [*, N, H, P, 3]."""
        raw = linear(s)
        local = torch.stack(torch.split(raw, raw.shape[-1] // 3, dim=-1), dim=-1)
        global_points = frames.unsqueeze(-1).apply(local)
        return global_points.view(global_points.shape[:-2] + (self.no_heads, -1, 3))

    def forward(self, s: torch.Tensor, z: torch.Tensor, frames: Rigid,
                mask: torch.Tensor) -> torch.Tensor:
        """s [*, N, C_s], z [*, N, N, C_z], frames [*, N], mask [*, N] -> update [*, N, C_s]."""
        heads = s.shape[:-1] + (self.no_heads, -1)
        q = self.linear_q(s).view(heads)
        k, v = torch.split(self.linear_kv(s).view(heads), self.c_hidden, dim=-1)
        q_pts = self._points(self.linear_q_points, s, frames)
        kv_pts = self._points(self.linear_kv_points, s, frames)
        k_pts, v_pts = torch.split(kv_pts, [self.no_qk_points, self.no_v_points], dim=-2)

        # Scalar term and pair bias, weighted so the three logit terms have equal variance.
        logits = torch.einsum("...ihc,...jhc->...hij", q, k) * math.sqrt(1.0 / (3 * self.c_hidden))
        logits = logits + math.sqrt(1.0 / 3) * self.linear_b(z).movedim(-1, -3)
        # Point term: squared distances between query and key points.
        sq_dist = torch.sum((q_pts[..., :, None, :, :, :] - k_pts[..., None, :, :, :, :]) ** 2,
                            dim=-1)  # [*, N, N, H, P]
        point_weights = F.softplus(self.head_weights) * math.sqrt(
            1.0 / (3 * (self.no_qk_points * 9.0 / 2)))
        point_logits = -0.5 * torch.sum(sq_dist * point_weights[:, None], dim=-1)
        logits = logits + point_logits.movedim(-1, -3)
        square_mask = mask[..., :, None] * mask[..., None, :]
        logits = logits + (self.inf * (square_mask - 1.0))[..., None, :, :]
        attn = torch.softmax(logits, dim=-1)  # [*, H, N, N]

        o = torch.einsum("...hij,...jhc->...ihc", attn, v).flatten(-2)
        o_pts = torch.einsum("...hij,...jhpx->...ihpx", attn, v_pts)
        o_pts = frames[..., None, None].invert_apply(o_pts)  # back to the local frame
        o_pts_norm = torch.sqrt(torch.sum(o_pts ** 2, dim=-1) + self.eps).flatten(-2)
        o_pts = o_pts.flatten(-3, -2)  # [*, N, H * P_v, 3]
        o_pair = torch.einsum("...hij,...ijc->...ihc", attn, z).flatten(-2)
        return self.linear_out(torch.cat(
            [o, *torch.unbind(o_pts, dim=-1), o_pts_norm, o_pair], dim=-1))


class BackboneUpdate(nn.Module):
    """Per-residue frame update from the single representation (Algorithm 23)."""

    def __init__(self, c_s: int):
        super().__init__()
        self.linear = Linear(c_s, 6, init="final")

    def forward(self, s: torch.Tensor) -> Rigid:
        params = self.linear(s)
        quat = torch.cat([torch.ones_like(params[..., :1]), params[..., :3]], dim=-1)
        return Rigid.from_quat_and_trans(quat, params[..., 3:])


class StructureTransition(nn.Module):
    def __init__(self, c: int, num_layers: int, dropout: float):
        super().__init__()
        self.layers = nn.ModuleList(
            nn.ModuleList([Linear(c, c, init="relu"), Linear(c, c, init="relu"),
                           Linear(c, c, init="final")]) for _ in range(num_layers))
        self.dropout = nn.Dropout(dropout)
        self.layer_norm = nn.LayerNorm(c)

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        for linear_1, linear_2, linear_3 in self.layers:
            s = s + linear_3(torch.relu(linear_2(torch.relu(linear_1(s)))))
        return self.layer_norm(self.dropout(s))


class AngleResnet(nn.Module):
    """Predicts the 7 torsion angles as unnormalised (sin, cos) pairs (Algorithm 20 l.11-14)."""

    def __init__(self, c_s: int, c_hidden: int, no_blocks: int, no_angles: int, eps: float):
        super().__init__()
        self.eps = eps
        self.linear_in = Linear(c_s, c_hidden)
        self.linear_initial = Linear(c_s, c_hidden)
        self.blocks = nn.ModuleList(
            nn.ModuleList([Linear(c_hidden, c_hidden, init="relu"),
                           Linear(c_hidden, c_hidden, init="final")]) for _ in range(no_blocks))
        self.linear_out = Linear(c_hidden, no_angles * 2)

    def forward(self, s: torch.Tensor,
                s_initial: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # The ReLUs on the inputs are in the released AF2 code, not in the supplement.
        a = self.linear_in(torch.relu(s)) + self.linear_initial(torch.relu(s_initial))
        for linear_1, linear_2 in self.blocks:
            a = a + linear_2(torch.relu(linear_1(torch.relu(a))))
        unnormalised = self.linear_out(torch.relu(a)).unflatten(-1, (-1, 2))
        norm = torch.sqrt(torch.clamp(torch.sum(unnormalised ** 2, dim=-1, keepdim=True),
                                      min=self.eps))
        return unnormalised, unnormalised / norm


class StructureModule(nn.Module):
    """Eight shared-weight layers of IPA + backbone update, then all-atom coordinates."""

    def __init__(self, config: StructureModuleConfig, c_s: int, c_z: int):
        super().__init__()
        cfg = config
        self.config = config
        self.layer_norm_s = nn.LayerNorm(c_s)
        self.layer_norm_z = nn.LayerNorm(c_z)
        self.linear_in = Linear(c_s, c_s)
        self.ipa = InvariantPointAttention(c_s, c_z, cfg.c_ipa, cfg.no_heads_ipa,
                                           cfg.no_qk_points, cfg.no_v_points, cfg.inf, cfg.epsilon)
        self.ipa_dropout = nn.Dropout(cfg.dropout)
        self.layer_norm_ipa = nn.LayerNorm(c_s)
        self.transition = StructureTransition(c_s, cfg.no_transition_layers, cfg.dropout)
        self.bb_update = BackboneUpdate(c_s)
        self.angle_resnet = AngleResnet(c_s, cfg.c_resnet, cfg.no_resnet_blocks, cfg.no_angles,
                                        cfg.epsilon)

    def forward(self, s: torch.Tensor, z: torch.Tensor, aatype: torch.Tensor,
                mask: torch.Tensor) -> dict[str, torch.Tensor]:
        """Returns per-layer outputs stacked on a leading dim of size no_blocks:

        frames [L, *, N, 4, 4] (Å), sidechain_frames [L, *, N, 8, 4, 4], angles and
        unnormalized_angles [L, *, N, 7, 2], positions [L, *, N, 14, 3]; and single [*, N, C_s].
        """
        s_initial = self.layer_norm_s(s)
        z = self.layer_norm_z(z)
        s = self.linear_in(s_initial)
        frames = Rigid.identity(s.shape[:-1], dtype=s.dtype, device=s.device)
        scale = self.config.trans_scale_factor
        per_layer: dict[str, list[torch.Tensor]] = {
            "frames": [], "sidechain_frames": [], "unnormalized_angles": [], "angles": [],
            "positions": []}
        for layer in range(self.config.no_blocks):
            s = s + self.ipa(s, z, frames, mask)
            s = self.layer_norm_ipa(self.ipa_dropout(s))
            s = self.transition(s)
            frames = frames.compose(self.bb_update(s))
            unnormalised, angles = self.angle_resnet(s, s_initial)
            backbone = frames.scale_translation(scale)  # network units (nm) -> Å
            groups = all_atom.torsion_angles_to_frames(backbone, angles, aatype)
            per_layer["frames"].append(backbone.to_tensor_4x4())
            per_layer["sidechain_frames"].append(groups.to_tensor_4x4())
            per_layer["unnormalized_angles"].append(unnormalised)
            per_layer["angles"].append(angles)
            per_layer["positions"].append(all_atom.frames_to_atom14_positions(groups, aatype))
            if layer < self.config.no_blocks - 1:
                frames = frames.stop_rot_gradient()
        outputs = {key: torch.stack(values) for key, values in per_layer.items()}
        outputs["single"] = s
        return outputs
