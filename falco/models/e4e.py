"""e4e encoder (Encoder4Editing), layout of the `encoder.*` part of `e4e_ffhq_encode.pt`.

An IR-SE50 body feeds a three-level feature pyramid; style block 0 predicts one w from the
coarsest level and every other block predicts a delta from its level, so code i = w0 + delta_i.
The released model runs with every delta enabled (e4e's ProgressiveStage.Inference).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from falco.models import freeze
from falco.models.irse import DOWNSAMPLING, IRSE50_UNITS, IRSE50_WIDTHS, make_body, make_input_layer, stage_ends

# Styles [0, COARSE_END) read the coarsest pyramid level, [COARSE_END, MIDDLE_END) the middle, the rest the finest.
COARSE_END = 3
MIDDLE_END = 7


class EqualLinear(nn.Module):
    """StyleGAN2's equalised-learning-rate linear at lr_mul=1: the weight is scaled by 1/sqrt(fan_in) at run time."""

    def __init__(self, in_dim: int, out_dim: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim))
        self.bias = nn.Parameter(torch.zeros(out_dim))
        self.scale = 1 / math.sqrt(in_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


class GradualStyleBlock(nn.Module):
    """Stride-2 convs (LeakyReLU 0.01) down to 1x1, then an EqualLinear."""

    def __init__(self, in_channels: int, out_channels: int, spatial: int):
        super().__init__()
        num_downs = int(math.log2(spatial))
        if num_downs < 1 or 2 ** num_downs != spatial:
            raise ValueError(f"style block input side must be a power of two >= 2, got {spatial}")
        layers = []
        for i in range(num_downs):
            layers += [nn.Conv2d(in_channels if i == 0 else out_channels, out_channels, 3, 2, 1), nn.LeakyReLU()]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_channels, out_channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def upsample_add(top: torch.Tensor, lateral: torch.Tensor) -> torch.Tensor:
    return F.interpolate(top, size=lateral.shape[-2:], mode="bilinear", align_corners=True) + lateral


class Encoder4Editing(nn.Module):
    def __init__(self, n_styles: int = 18, style_dim: int = 512, widths: Sequence[int] = IRSE50_WIDTHS,
                 units: Sequence[int] = IRSE50_UNITS, input_size: int = 256):
        super().__init__()
        if input_size % DOWNSAMPLING:
            raise ValueError(f"input_size must be a multiple of {DOWNSAMPLING}, got {input_size}")
        self.config = dict(n_styles=n_styles, style_dim=style_dim, widths=list(widths), units=list(units),
                           input_size=input_size)
        self.input_size = input_size
        self.input_layer = make_input_layer(widths[0])
        self.body = make_body(widths, units)
        # Pyramid taps: ends of stages 2, 3, 4 (strides 4, 8, 16).
        self.taps = stage_ends(units)[1:]
        pyramid_width = widths[-1]
        sides = (input_size // 16, input_size // 8, input_size // 4)
        self.styles = nn.ModuleList(
            GradualStyleBlock(pyramid_width, style_dim, sides[self.level(i)]) for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(widths[2], pyramid_width, 1)
        self.latlayer2 = nn.Conv2d(widths[1], pyramid_width, 1)
        freeze(self).eval()

    @staticmethod
    def level(style_index: int) -> int:
        return 0 if style_index < COARSE_END else 1 if style_index < MIDDLE_END else 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [B,3,256,256] in [-1,1] -> codes [B,n_styles,style_dim]; W+ = codes + latent_avg."""
        if x.shape[-2:] != (self.input_size, self.input_size):
            raise ValueError(f"e4e expects {self.input_size}x{self.input_size} input, got {tuple(x.shape)}")
        x = self.input_layer(x)
        taps = []
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i in self.taps:
                taps.append(x)
        c1, c2, c3 = taps
        p2 = upsample_add(c3, self.latlayer1(c2))
        pyramid = (c3, p2, upsample_add(p2, self.latlayer2(c1)))
        w0 = self.styles[0](c3)
        codes = [w0] + [w0 + style(pyramid[self.level(i)]) for i, style in enumerate(self.styles) if i > 0]
        return torch.stack(codes, dim=1)
