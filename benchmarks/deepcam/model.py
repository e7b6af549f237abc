"""DeepLabV3+ with the modified aligned Xception backbone of the MLPerf HPC DeepCAM reference.

Same structure and parameter count (56,454,720 at the reference size) as
`mlcommons/hpc` ``deepcam/src/deepCam/architecture/deeplab_xception.py``, output stride 16:

- encoder: a strided 3x3 stem, entry blocks 128 -> 256 -> 728 channels, ``middle_blocks``
  residual blocks of three separable convolutions, an exit block to 1024 channels and three
  separable convolutions to 1536, 1536 and 2048 channels;
- ASPP: 1x1 and 3x3 branches at dilation 6, 12 and 18 plus image pooling, projected to 256;
- decoder: two transposed convolutions back to stride 4, concatenation with the 48-channel
  reduction of the stride-4 features, two 3x3 convolutions, then two more transposed
  convolutions to the input resolution.

``width_divisor`` divides every internal channel count and ``middle_blocks`` sets the depth, so
the smoke configuration runs the same architecture at a fraction of the cost. Input height and
width must be multiples of 16.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from benchmarks.core.config import NonNegativeInt, PositiveInt
from benchmarks.core.errors import ConfigError

OUTPUT_STRIDE = 16
ASPP_RATES = (6, 12, 18)


@dataclass
class ModelConfig:
    """Size knobs; the defaults are the MLPerf HPC reference model (16 inputs, 3 classes)."""

    in_channels: PositiveInt = 16
    num_classes: PositiveInt = 3
    width_divisor: PositiveInt = 1
    middle_blocks: NonNegativeInt = 16
    sync_batchnorm: bool = False


class SeparableConv(nn.Sequential):
    """Depthwise 3x3 (dilated, 'same' padding) then pointwise 1x1, both without bias."""

    def __init__(self, in_channels: int, out_channels: int, stride: int = 1,
                 dilation: int = 1) -> None:
        super().__init__(
            nn.Conv2d(in_channels, in_channels, 3, stride, padding=dilation, dilation=dilation,
                      groups=in_channels, bias=False),
            nn.Conv2d(in_channels, out_channels, 1, bias=False),
        )


class XceptionBlock(nn.Module):
    """``reps`` separable conv + BN layers with a residual connection.

    The channel change happens in the first layer (``grow_first``) or the last one. A strided
    block, or the last block of a flow, ends with one extra separable convolution that has no
    BN, as in the reference.
    """

    def __init__(self, in_channels: int, out_channels: int, reps: int, stride: int = 1,
                 dilation: int = 1, grow_first: bool = True, end_with_relu: bool = True,
                 is_last: bool = False) -> None:
        super().__init__()
        if out_channels != in_channels or stride != 1:
            self.skip: nn.Module = nn.Sequential(
                nn.Conv2d(in_channels, out_channels, 1, stride=stride, bias=False),
                nn.BatchNorm2d(out_channels))
        else:
            self.skip = nn.Identity()
        widths = ([in_channels] + [out_channels] * reps if grow_first
                  else [in_channels] * reps + [out_channels])
        layers: list[nn.Module] = []
        for index, (cin, cout) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
            if index:
                layers.append(nn.ReLU())
            layers += [SeparableConv(cin, cout, dilation=dilation), nn.BatchNorm2d(cout)]
        if stride != 1:
            layers.append(SeparableConv(out_channels, out_channels, stride=stride))
        elif is_last:
            layers.append(SeparableConv(out_channels, out_channels))
        self.layers = nn.Sequential(*layers)
        self.end_with_relu = end_with_relu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.layers(x) + self.skip(x)
        return torch.relu(out) if self.end_with_relu else out


def conv_bn_relu(in_channels: int, out_channels: int, kernel_size: int, stride: int = 1,
                 dilation: int = 1) -> nn.Sequential:
    padding = dilation * (kernel_size // 2)
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size, stride, padding, dilation, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU())


class XceptionEncoder(nn.Module):
    """Returns (stride-16 features, stride-4 low-level features)."""

    def __init__(self, in_channels: int, width, middle_blocks: int) -> None:
        super().__init__()
        self.stem = nn.Sequential(conv_bn_relu(in_channels, width(32), 3, stride=2),
                                  conv_bn_relu(width(32), width(64), 3))
        self.entry1 = XceptionBlock(width(64), width(128), reps=2, stride=2, end_with_relu=False)
        self.entry2 = nn.Sequential(
            XceptionBlock(width(128), width(256), reps=2, stride=2),
            XceptionBlock(width(256), width(728), reps=2, stride=2, is_last=True))
        self.middle = nn.Sequential(*(XceptionBlock(width(728), width(728), reps=3)
                                      for _ in range(middle_blocks)))
        self.exit = nn.Sequential(
            XceptionBlock(width(728), width(1024), reps=2, grow_first=False, end_with_relu=False,
                          is_last=True),
            SeparableConv(width(1024), width(1536), dilation=2), nn.BatchNorm2d(width(1536)),
            nn.ReLU(),
            SeparableConv(width(1536), width(1536), dilation=2), nn.BatchNorm2d(width(1536)),
            nn.ReLU(),
            SeparableConv(width(1536), width(2048), dilation=2), nn.BatchNorm2d(width(2048)),
            nn.ReLU())
        self.out_channels = width(2048)
        self.low_level_channels = width(128)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        low_level = torch.relu(self.entry1(self.stem(x)))
        features = self.exit(self.middle(self.entry2(low_level)))
        return features, low_level


class ImagePooling(nn.Module):
    """ASPP's image-level branch: global average, 1x1 conv, per-channel affine (no BN), ReLU."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, 1, bias=False)
        self.scale = nn.Parameter(torch.ones(out_channels, 1, 1))
        self.shift = nn.Parameter(torch.zeros(out_channels, 1, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.conv(x.mean(dim=(2, 3), keepdim=True))
        pooled = torch.relu(pooled * self.scale + self.shift)
        return pooled.expand(-1, -1, x.shape[2], x.shape[3])


class ASPP(nn.Module):
    """Atrous spatial pyramid pooling: a 1x1 branch, three dilated 3x3 branches, image pooling."""

    def __init__(self, in_channels: int, out_channels: int) -> None:
        super().__init__()
        self.branches = nn.ModuleList(
            [conv_bn_relu(in_channels, out_channels, 1)]
            + [conv_bn_relu(in_channels, out_channels, 3, dilation=rate) for rate in ASPP_RATES])
        self.pooling = ImagePooling(in_channels, out_channels)
        self.project = conv_bn_relu(out_channels * (len(ASPP_RATES) + 2), out_channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [branch(x) for branch in self.branches] + [self.pooling(x)]
        return self.project(torch.cat(parts, dim=1))


def upsample2x(in_channels: int, out_channels: int, norm: bool = True) -> nn.Sequential:
    """Transposed 3x3 convolution that doubles height and width exactly."""
    layers: list[nn.Module] = [nn.ConvTranspose2d(in_channels, out_channels, 3, stride=2,
                                                  padding=1, output_padding=1, bias=False)]
    if norm:
        layers += [nn.BatchNorm2d(out_channels), nn.ReLU()]
    return nn.Sequential(*layers)


class Decoder(nn.Module):
    """From stride 16 to stride 4, fuse the low-level features, then to full resolution."""

    def __init__(self, channels: int, low_level_channels: int, num_classes: int) -> None:
        super().__init__()
        self.to_stride4 = nn.Sequential(upsample2x(channels, channels),
                                        upsample2x(channels, channels))
        self.fuse = nn.Sequential(
            conv_bn_relu(channels + low_level_channels, channels, 3),
            conv_bn_relu(channels, channels, 3),
            nn.Conv2d(channels, channels, 1))
        self.to_full = nn.Sequential(upsample2x(channels, channels),
                                     upsample2x(channels, num_classes, norm=False))

    def forward(self, x: torch.Tensor, low_level: torch.Tensor) -> torch.Tensor:
        x = self.fuse(torch.cat([self.to_stride4(x), low_level], dim=1))
        return self.to_full(x)


class DeepLabV3Plus(nn.Module):
    """Per-pixel class logits [N, num_classes, H, W] for an [N, in_channels, H, W] input."""

    def __init__(self, config: ModelConfig) -> None:
        super().__init__()
        for key in ("in_channels", "num_classes", "width_divisor", "middle_blocks"):
            if getattr(config, key) < (0 if key == "middle_blocks" else 1):
                raise ConfigError(f"config key 'model.{key}': out of range, "
                                  f"got {getattr(config, key)}")

        def width(channels: int) -> int:
            return max(1, channels // config.width_divisor)

        self.encoder = XceptionEncoder(config.in_channels, width, config.middle_blocks)
        self.aspp = ASPP(self.encoder.out_channels, width(256))
        self.reduce_low_level = conv_bn_relu(self.encoder.low_level_channels, width(48), 1)
        self.decoder = Decoder(width(256), width(48), config.num_classes)
        self._init_weights()

    def _init_weights(self) -> None:
        # The reference initialises the encoder's and the ASPP branches' convolutions with
        # Kaiming normal; everything else keeps PyTorch's defaults.
        for part in (self.encoder, self.aspp.branches):
            for module in part.modules():
                if isinstance(module, nn.Conv2d):
                    nn.init.kaiming_normal_(module.weight)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        height, width = x.shape[-2:]
        if height % OUTPUT_STRIDE or width % OUTPUT_STRIDE:
            raise ValueError(f"DeepLabV3+ needs height and width divisible by {OUTPUT_STRIDE}, "
                             f"got {height}x{width}")
        features, low_level = self.encoder(x)
        return self.decoder(self.aspp(features), self.reduce_low_level(low_level))
