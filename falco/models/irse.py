"""IR-SE ResNet building blocks shared by ArcFace and the e4e encoder.

Module names and their order follow the InsightFace PyTorch port (TreB1eN), which both
official checkpoints use: `input_layer`, `body.{i}.shortcut_layer`, `body.{i}.res_layer`.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

# IR-SE50: four stages; the first unit of each halves the resolution.
IRSE50_WIDTHS = (64, 128, 256, 512)
IRSE50_UNITS = (3, 4, 14, 3)
SE_REDUCTION = 16
NUM_STAGES = 4
DOWNSAMPLING = 2 ** NUM_STAGES


class SqueezeExcite(nn.Module):
    def __init__(self, channels: int, reduction: int = SE_REDUCTION):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = self.fc2(F.relu(self.fc1(x.mean((2, 3), keepdim=True))))
        return x * torch.sigmoid(gate)


class BottleneckIRSE(nn.Module):
    """Pre-activation residual unit: BN, conv, PReLU, strided conv, BN, squeeze-excite."""

    def __init__(self, in_channels: int, depth: int, stride: int):
        super().__init__()
        self.stride = stride
        # Equal widths: the checkpoint's shortcut is MaxPool2d(1, stride), i.e. plain subsampling
        # with no parameters, so it has no entry in the state dict.
        self.shortcut_layer = None if in_channels == depth else nn.Sequential(
            nn.Conv2d(in_channels, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channels),
            nn.Conv2d(in_channels, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SqueezeExcite(depth),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.shortcut_layer is None:
            shortcut = x[:, :, ::self.stride, ::self.stride]
        else:
            shortcut = self.shortcut_layer(x)
        return self.res_layer(x) + shortcut


def check_spec(widths: Sequence[int], units: Sequence[int]) -> None:
    if len(widths) != NUM_STAGES or len(units) != NUM_STAGES:
        raise ValueError(f"IR-SE needs {NUM_STAGES} stages, got widths={widths} units={units}")
    if min(widths) < SE_REDUCTION or min(units) < 1:
        raise ValueError(f"stage widths must be >= {SE_REDUCTION} and units >= 1")


def make_input_layer(width: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(3, width, 3, 1, 1, bias=False), nn.BatchNorm2d(width), nn.PReLU(width))


def make_body(widths: Sequence[int], units: Sequence[int]) -> nn.Sequential:
    """All units of all stages in one flat Sequential, as the checkpoints number them."""
    check_spec(widths, units)
    layers, in_channels = [], widths[0]
    for width, count in zip(widths, units):
        for i in range(count):
            layers.append(BottleneckIRSE(in_channels, width, 2 if i == 0 else 1))
            in_channels = width
    return nn.Sequential(*layers)


def stage_ends(units: Sequence[int]) -> list[int]:
    """Index in `body` of the last unit of each stage."""
    ends, total = [], 0
    for count in units:
        total += count
        ends.append(total - 1)
    return ends
