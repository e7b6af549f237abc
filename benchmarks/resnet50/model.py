"""ResNet v1.5 (stride in the 3x3 convolution), built from torchvision's Bottleneck block.

With ``layers=[3, 4, 6, 3]``, ``base_width=64`` and the ImageNet stem this is exactly
``torchvision.models.resnet50()`` (25,557,032 parameters for 1000 classes); smaller widths,
depths and a 3x3 stride-1 stem give the smoke-scale network for tiny images.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import nn
from torchvision.models.resnet import Bottleneck

from benchmarks.core.config import Fraction, NonNegativeInt, PositiveInt


@dataclass
class ResNetModelConfig:
    """``num_classes`` 0 takes the class count from the training data."""

    layers: list[PositiveInt] = field(default_factory=lambda: [3, 4, 6, 3])
    base_width: PositiveInt = 64
    num_classes: NonNegativeInt = 0
    small_input_stem: bool = False
    zero_init_residual: bool = True
    label_smoothing: Fraction = 0.0


def build_resnet(cfg: ResNetModelConfig, num_classes: int) -> nn.Module:
    """A ResNet v1.5 for ``num_classes`` classes laid out as ``cfg`` says."""
    width = cfg.base_width
    if cfg.small_input_stem:
        stem = [nn.Conv2d(3, width, 3, stride=1, padding=1, bias=False)]
    else:
        stem = [nn.Conv2d(3, width, 7, stride=2, padding=3, bias=False)]
    stem += [nn.BatchNorm2d(width), nn.ReLU(inplace=True)]
    if not cfg.small_input_stem:
        stem.append(nn.MaxPool2d(kernel_size=3, stride=2, padding=1))

    stages = []
    in_channels = width
    for index, blocks in enumerate(cfg.layers):
        planes = width * 2**index
        stride = 1 if index == 0 else 2
        stage, in_channels = _stage(in_channels, planes, blocks, stride)
        stages.append(stage)
    model = nn.Sequential(
        *stem, *stages, nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(in_channels, num_classes)
    )
    _initialise(model, cfg.zero_init_residual)
    return model


def _stage(in_channels: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    out_channels = planes * Bottleneck.expansion
    downsample = None
    if stride != 1 or in_channels != out_channels:
        downsample = nn.Sequential(nn.Conv2d(in_channels, out_channels, 1, stride=stride,
                                             bias=False), nn.BatchNorm2d(out_channels))
    layers = [Bottleneck(in_channels, planes, stride, downsample)]
    layers += [Bottleneck(out_channels, planes) for _ in range(1, blocks)]
    return nn.Sequential(*layers), out_channels


def _initialise(model: nn.Module, zero_init_residual: bool) -> None:
    """He init for convolutions as torchvision does; optionally zero the last BN of each block."""
    for module in model.modules():
        if isinstance(module, nn.Conv2d):
            nn.init.kaiming_normal_(module.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(module, nn.BatchNorm2d):
            nn.init.ones_(module.weight)
            nn.init.zeros_(module.bias)
    if zero_init_residual:
        for module in model.modules():
            if isinstance(module, Bottleneck):
                nn.init.zeros_(module.bn3.weight)
