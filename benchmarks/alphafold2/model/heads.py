"""Output heads: pLDDT, distogram, masked MSA, experimentally resolved, TM (AF2 suppl. 1.9)."""

from __future__ import annotations

import torch
import torch.nn as nn

from benchmarks.alphafold2.model.config import HeadsConfig
from benchmarks.alphafold2.model.primitives import Linear


class PerResidueLDDTCaPredictor(nn.Module):
    """Predicted lDDT-Cα per residue as logits over ``no_bins`` equal bins of [0, 1]."""

    def __init__(self, no_bins: int, c_in: int, c_hidden: int):
        super().__init__()
        self.layer_norm = nn.LayerNorm(c_in)
        self.linear_1 = Linear(c_in, c_hidden, init="relu")
        self.linear_2 = Linear(c_hidden, c_hidden, init="relu")
        self.linear_3 = Linear(c_hidden, no_bins, init="final")

    def forward(self, s: torch.Tensor) -> torch.Tensor:
        s = torch.relu(self.linear_1(self.layer_norm(s)))
        return self.linear_3(torch.relu(self.linear_2(s)))


class DistogramHead(nn.Module):
    """Symmetric logits over distance bins of residue pairs."""

    def __init__(self, c_z: int, no_bins: int):
        super().__init__()
        self.linear = Linear(c_z, no_bins, init="final")

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        logits = self.linear(z)
        return logits + logits.transpose(-2, -3)


def compute_plddt(logits: torch.Tensor) -> torch.Tensor:
    """Expected lDDT-Cα in [0, 100] from pLDDT logits [*, N, bins]."""
    no_bins = logits.shape[-1]
    centres = (torch.arange(no_bins, device=logits.device, dtype=logits.dtype) + 0.5) / no_bins
    return torch.sum(torch.softmax(logits, dim=-1) * centres, dim=-1) * 100.0


class AuxiliaryHeads(nn.Module):
    def __init__(self, config: HeadsConfig, c_s: int, c_z: int, c_m: int):
        super().__init__()
        self.plddt = PerResidueLDDTCaPredictor(config.plddt_bins, c_s, config.plddt_c_hidden)
        self.distogram = DistogramHead(c_z, config.distogram_bins)
        self.masked_msa = Linear(c_m, config.masked_msa_classes, init="final")
        self.experimentally_resolved = Linear(c_s, config.experimentally_resolved_atoms,
                                              init="final")
        self.tm = Linear(c_z, config.tm_bins, init="final") if config.tm_enabled else None

    def forward(self, outputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        lddt_logits = self.plddt(outputs["sm"]["single"])
        heads = {
            "lddt_logits": lddt_logits,
            "plddt": compute_plddt(lddt_logits.detach()),
            "distogram_logits": self.distogram(outputs["pair"]),
            "masked_msa_logits": self.masked_msa(outputs["msa"]),
            "experimentally_resolved_logits": self.experimentally_resolved(outputs["single"]),
        }
        if self.tm is not None:
            heads["tm_logits"] = self.tm(outputs["pair"])
        return heads
