"""What the generic training loop needs around the AlphaFold network.

* :class:`AlphaFoldForTraining` takes the loader's inputs (MSA features with a recycle
  dimension), runs a random number of recycling iterations in training (the same number on
  every rank: the draw comes from a generator seeded identically everywhere) and all of them
  in evaluation, and evaluates with an exponential moving average (EMA) of the weights.
* :class:`LDDTCaMetric`: mean lDDT-Cα over the validation chains, logged as eval_accuracy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn
from torch.func import functional_call

from benchmarks.alphafold2.data.transforms import iteration_features
from benchmarks.alphafold2.losses import LossConfig
from benchmarks.alphafold2.metrics import lddt_ca
from benchmarks.alphafold2.model import AlphaFold, AlphaFoldConfig
from benchmarks.core.config import Fraction
from benchmarks.core.metrics import RatioMetric


@dataclass
class AlphaFoldTrainingConfig(AlphaFoldConfig):
    """The ``model`` config section: the network plus its loss and weight averaging."""

    loss: LossConfig = field(default_factory=LossConfig)
    ema_decay: Fraction = 0.999  # AF2; the MLPerf reference uses 0.9. 0 evaluates raw weights.
    # The weights to start from: the MLPerf reference's resumable checkpoint, or OpenFold
    # weights (v1 names; a parameter file or a training checkpoint). A relative path is under
    # data.data_dir; empty: random weights.
    init_checkpoint: str = ""


class AlphaFoldForTraining(nn.Module):
    """AlphaFold with recycling sampled per step and EMA weights for evaluation.

    :meth:`update_ema` is the task's ``after_step``: the loop calls it after every optimizer
    step, so gradient accumulation and evaluation in the middle of an epoch see exactly one
    update per step. The average starts at the weights after the first step. The averaged
    weights are plain tensors, not buffers, so DDP does not broadcast them; they are saved in
    the state dict under ``ema.``.
    """

    def __init__(self, config: AlphaFoldTrainingConfig, seed: int = 0):
        super().__init__()
        self.model = AlphaFold(config)
        self.ema_decay = config.ema_decay
        self.ema: dict[str, torch.Tensor] = {}
        self.recycle_generator = torch.Generator().manual_seed(seed)

    @torch.no_grad()
    def update_ema(self) -> None:
        """Move the average of the weights towards the weights an optimizer step just made."""
        if self.ema_decay <= 0:
            return
        if not self.ema:
            self.ema = {name: p.detach().clone() for name, p in self.model.named_parameters()}
        else:
            for name, p in self.model.named_parameters():
                self.ema[name].lerp_(p.detach(), 1.0 - self.ema_decay)

    def forward(self, **inputs: torch.Tensor) -> dict[str, torch.Tensor]:
        samples = inputs["msa_feat"].shape[-4]  # independent MSA samples = max recycles + 1
        if self.training:
            iterations = int(torch.randint(1, samples + 1, (1,),
                                           generator=self.recycle_generator))
        else:
            iterations = samples
        batches = [iteration_features(inputs, index)
                   for index in range(samples - iterations, samples)]
        if not self.training and self.ema:
            return functional_call(self.model, self.ema, (batches,))
        return self.model(batches)

    def _save_to_state_dict(self, destination, prefix, keep_vars):
        super()._save_to_state_dict(destination, prefix, keep_vars)
        for name, tensor in self.ema.items():
            destination[f"{prefix}ema.{name}"] = tensor

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing_keys,
                              unexpected_keys, error_msgs):
        ema_prefix = f"{prefix}ema."
        ema = {key[len(ema_prefix):]: state_dict.pop(key)
               for key in list(state_dict) if key.startswith(ema_prefix)}
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing_keys,
                                      unexpected_keys, error_msgs)
        if ema:
            device = next(self.model.parameters()).device
            self.ema = {name: tensor.to(device) for name, tensor in ema.items()}


class LDDTCaMetric(RatioMetric):
    """Mean lDDT-Cα over validation chains (MLPerf HPC OpenFold target: 0.8)."""

    name = "lddt_ca"
    higher_is_better = True
    mllog_key = "eval_accuracy"

    def batch_state(self, outputs, targets) -> torch.Tensor:
        scores = lddt_ca(outputs["final_atom_positions"].float(),
                         targets["all_atom_positions"].float(),
                         targets["all_atom_mask"].float())
        return torch.stack([scores.sum().double(),
                            torch.tensor(scores.numel(), dtype=torch.float64,
                                         device=scores.device)])
