"""The CosmoFlow 3D CNN (MLPerf HPC reference, `mlcommons/hpc` ``cosmoflow/models/cosmoflow.py``).

Five blocks of Conv3d (kernel 3, same padding) -> LeakyReLU(0.3) -> MaxPool3d(2), channels
4 -> 32 -> 64 -> 128 -> 256 -> 512, then three dense layers 128 -> 64 -> 4 with LeakyReLU and
dropout, and a ``tanh * 1.2`` output. At the reference size (128^3 x 4 input) it has exactly
8,907,556 parameters. The smoke configuration shrinks ``conv_channels`` and the input edge.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from benchmarks.core.config import Fraction, PositiveInt
from benchmarks.core.errors import ConfigError

OUTPUT_SCALE = 1.2
LEAKY_SLOPE = 0.3


@dataclass
class ModelConfig:
    """Size knobs; the defaults are the MLPerf HPC reference model.

    One pooling halves the edge per conv block, so ``input_size`` (the edge the loader delivers)
    must be divisible by ``2 ** len(conv_channels)``.
    """

    in_channels: PositiveInt = 4
    conv_channels: list[PositiveInt] = field(default_factory=lambda: [32, 64, 128, 256, 512])
    hidden_sizes: list[PositiveInt] = field(default_factory=lambda: [128, 64])
    target_size: PositiveInt = 4
    dropout: Fraction = 0.5


class CosmoFlow(nn.Module):
    """Maps a channels-first volume [N, C, D, H, W] to ``target_size`` values in (-1.2, 1.2)."""

    def __init__(self, config: ModelConfig, input_size: int = 128) -> None:
        super().__init__()
        reduction = 2 ** len(config.conv_channels)
        if input_size % reduction:
            raise ConfigError(
                f"config key 'model.conv_channels': {len(config.conv_channels)} pooling blocks "
                f"need an input edge divisible by {reduction}, got {input_size}")
        layers: list[nn.Module] = []
        channels = config.in_channels
        for out_channels in config.conv_channels:
            layers += [
                nn.Conv3d(channels, out_channels, kernel_size=3, padding=1),
                nn.LeakyReLU(LEAKY_SLOPE),
                nn.MaxPool3d(2),
            ]
            channels = out_channels
        self.features = nn.Sequential(*layers)
        width = channels * (input_size // reduction) ** 3
        head: list[nn.Module] = [nn.Flatten()]
        for hidden in config.hidden_sizes:
            head += [nn.Linear(width, hidden), nn.LeakyReLU(LEAKY_SLOPE),
                     nn.Dropout(config.dropout)]
            width = hidden
        head.append(nn.Linear(width, config.target_size))
        self.head = nn.Sequential(*head)
        self._init_weights()

    def _init_weights(self) -> None:
        # Keras' default (Glorot uniform weights, zero biases), which the reference trains with.
        for module in self.modules():
            if isinstance(module, (nn.Conv3d, nn.Linear)):
                nn.init.xavier_uniform_(module.weight)
                nn.init.zeros_(module.bias)

    def forward(self, volume: torch.Tensor) -> torch.Tensor:
        return torch.tanh(self.head(self.features(volume))) * OUTPUT_SCALE
