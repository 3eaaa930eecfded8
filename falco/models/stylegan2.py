"""StyleGAN2 generator (config-f) in pure PyTorch.

Parameter layout = rosinality's stylegan2-pytorch checkpoints: ``g_ema`` of
``stylegan2-ffhq-config-f.pt`` and ``decoder.*`` of ``e4e_ffhq_encode.pt``.

Computes what the reference computes, organised for latent optimisation:
- modulated convolutions scale the activations rather than the weights, so one frozen
  weight serves the whole batch with ordinary convolutions and the backward pass never
  computes a weight gradient;
- style affines, demodulation and the RGB skip sum run in float32 even under autocast
  (they are cheap, and they are where low precision would show);
- upfirdn2d is a depthwise (transposed) convolution with the checkpoint's kernel buffer,
  used as loaded (random weight sets fill it with arbitrary values).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from contextlib import nullcontext

import torch
import torch.nn as nn
import torch.nn.functional as F

from falco.models import freeze

LEAKY_SLOPE = 0.2
LEAKY_GAIN = math.sqrt(2)   # keeps unit variance through the leaky ReLU


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    bias = bias.to(x.dtype).view(1, -1, *[1] * (x.ndim - 2))
    return F.leaky_relu(x + bias, LEAKY_SLOPE) * LEAKY_GAIN


def full_precision(x: torch.Tensor):
    """Context that switches autocast off on x's device (meta tensors, for shapes, have no autocast)."""
    return nullcontext() if x.is_meta else torch.autocast(x.device.type, enabled=False)


def default_channels(channel_multiplier: int, size: int) -> dict[int, int]:
    """Widths of config-f: 512 up to 32x32, then halving with each resolution."""
    return {2 ** i: min(512, 16384 * channel_multiplier // 2 ** i)
            for i in range(2, int(math.log2(size)) + 1)}


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.square().mean(1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate: weights stored as N(0,1)/lr_mul, scaled at run time."""

    def __init__(self, in_dim: int, out_dim: int, bias_init: float = 0.0, lr_mul: float = 1.0,
                 activate: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(out_dim, in_dim) / lr_mul)
        self.bias = nn.Parameter(torch.full((out_dim,), float(bias_init)))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activate = activate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activate:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class FIRFilter(nn.Module):
    """upfirdn2d without down-sampling, for even-length kernels: zero-insertion by ``up``,
    then a true 2-D convolution with ``kernel``, padded as the reference pads it:
    ``up`` 2 doubles the size; ``up`` 1 trims one pixel, the surplus of the stride-2
    transposed conv it follows.

    ``gain`` 4 restores the signal level after 2x zero-insertion (done here or by a
    preceding stride-2 transposed conv)."""

    def __init__(self, taps: Sequence[float], up: int = 1, gain: float = 1.0):
        super().__init__()
        k = torch.tensor(taps, dtype=torch.float32)
        k = torch.outer(k, k)
        self.register_buffer("kernel", k / k.sum() * gain)
        self.up = up
        self.padding = len(taps) // 2 - 1

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        channels, size = x.shape[1], self.kernel.shape[0]
        kernel = self.kernel.to(x.dtype)
        if self.up == 1:   # conv2d correlates: flip to convolve
            weight = kernel.flip(0, 1).expand(channels, 1, size, size)
            return F.conv2d(x, weight, padding=self.padding, groups=channels)
        # A strided transposed convolution inserts the zeros and convolves in one step.
        weight = kernel.expand(channels, 1, size, size)
        return F.conv_transpose2d(x, weight, stride=self.up, padding=self.padding, groups=channels)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(1, out_channel, in_channel, kernel_size, kernel_size))
        if upsample:
            # 2x upsampling conv = stride-2 transposed conv, then the blur that removes its aliasing
            self.blur = FIRFilter(blur_kernel, gain=4)
        self.modulation = EqualLinear(style_dim, in_channel, bias_init=1.0)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2
        self.demodulate = demodulate
        self.upsample = upsample

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        weight = self.weight[0]
        with full_precision(x):
            # The equalised-lr scale rides on the style, so the un-demodulated conv output is
            # about |x| * rms(style): far from the fp16 limit.
            style = self.modulation(w.to(weight.dtype)) * self.scale            # [B, in]
            if self.demodulate:
                out_gain = torch.rsqrt(style.square() @ weight.square().sum((2, 3)).T + 1e-8)  # [B, out]
        x = x * style.to(x.dtype)[:, :, None, None]
        if self.upsample:
            x = self.blur(F.conv_transpose2d(x, weight.transpose(0, 1), stride=2))
        else:
            x = F.conv2d(x, weight, padding=self.padding)
        if self.demodulate:
            x = x * out_gain.to(x.dtype)[:, :, None, None]
        return x


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.zeros(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + (self.weight * noise).to(x.dtype)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, style_dim: int, upsample: bool = False,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, 3, style_dim, upsample=upsample,
                                    blur_kernel=blur_kernel)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return self.activate(self.noise(self.conv(x, w), noise))


class ToRGB(nn.Module):
    """1x1 modulated conv to RGB, added to the upsampled RGB of the previous resolution."""

    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(1, 3, 1, 1))
        if upsample:
            self.upsample = FIRFilter(blur_kernel, up=2, gain=4)
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)

    def forward(self, x: torch.Tensor, w: torch.Tensor, skip: torch.Tensor | None = None) -> torch.Tensor:
        rgb = self.conv(x, w).float() + self.bias
        if skip is not None:
            with full_precision(skip):
                rgb = rgb + self.upsample(skip)
        return rgb


class ConstantInput(nn.Module):
    def __init__(self, channels: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.randn(1, channels, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class Generator(nn.Module):
    """Mapping network (``mapping``) and synthesis network (``forward``) of StyleGAN2.

    ``channels`` overrides the per-resolution widths (tiny test configs); ``config``
    holds the JSON-serialisable constructor arguments. Every parameter is frozen.
    """

    def __init__(self, size: int = 1024, style_dim: int = 512, n_mlp: int = 8, channel_multiplier: int = 2,
                 channels: Mapping[int | str, int] | None = None, lr_mlp: float = 0.01,
                 blur_kernel: Sequence[float] = (1, 3, 3, 1)):
        super().__init__()
        log_size = int(math.log2(size))
        if size < 4 or 2 ** log_size != size:
            raise ValueError(f"size must be a power of two >= 4, got {size}")
        if len(blur_kernel) % 2:
            raise ValueError(f"blur_kernel must have an even number of taps, got {list(blur_kernel)}")
        channels = {int(r): int(c) for r, c in (channels or {}).items()}   # JSON turns keys into strings
        self.config = dict(size=size, style_dim=style_dim, n_mlp=n_mlp, channel_multiplier=channel_multiplier,
                           channels=channels or None, lr_mlp=lr_mlp, blur_kernel=list(blur_kernel))
        self.channels = {r: channels.get(r, c) for r, c in default_channels(channel_multiplier, size).items()}
        self.size = size
        self.style_dim = style_dim
        self.num_ws = 2 * log_size - 2

        self.style = nn.Sequential(PixelNorm(), *[
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activate=True) for _ in range(n_mlp)])
        self.input = ConstantInput(self.channels[4])
        self.conv1 = StyledConv(self.channels[4], self.channels[4], style_dim, blur_kernel=blur_kernel)
        self.to_rgb1 = ToRGB(self.channels[4], style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        in_channel = self.channels[4]
        for res in (2 ** i for i in range(3, log_size + 1)):
            out_channel = self.channels[res]
            self.convs.append(StyledConv(in_channel, out_channel, style_dim, upsample=True, blur_kernel=blur_kernel))
            self.convs.append(StyledConv(out_channel, out_channel, style_dim, blur_kernel=blur_kernel))
            self.to_rgbs.append(ToRGB(out_channel, style_dim, blur_kernel=blur_kernel))
            in_channel = out_channel
        self.noises = nn.Module()   # the checkpoint's fixed noise, one map per StyledConv
        for i in range(2 * log_size - 3):
            res = 2 ** ((i + 5) // 2)
            self.noises.register_buffer(f"noise_{i}", torch.randn(1, 1, res, res))
        freeze(self)
        self.eval()

    def mapping(self, z: torch.Tensor) -> torch.Tensor:
        """z [B, style_dim] -> w [B, style_dim]."""
        return self.style(z)

    @staticmethod
    def truncate(w: torch.Tensor, psi: float, w_mean: torch.Tensor) -> torch.Tensor:
        return w_mean + psi * (w - w_mean)

    def forward(self, wplus: torch.Tensor, resolution: int | None = None,
                channels_last: bool = False) -> torch.Tensor:
        """W+ [B, num_ws, style_dim] -> image [B, 3, R, R], about [-1, 1], float32.

        ``resolution`` (a power of two, 4..size) stops synthesis there and returns the RGB
        skip output of that resolution, the image the full network would upsample next.
        W+ rows past that resolution are not used.  ``channels_last`` runs every activation
        in NHWC layout (convolutions follow their input's layout), which tensor-core
        convolutions prefer; the values are the same up to summation order.
        """
        if wplus.ndim != 3 or wplus.shape[1:] != (self.num_ws, self.style_dim):
            raise ValueError(f"expected W+ [B, {self.num_ws}, {self.style_dim}], got {list(wplus.shape)}")
        resolution = self.size if resolution is None else resolution
        if resolution not in self.channels:
            raise ValueError(f"resolution must be a power of two in 4..{self.size}, got {resolution}")
        noise = [getattr(self.noises, f"noise_{i}") for i in range(2 * len(self.to_rgbs) + 1)]

        x = self.input(wplus.shape[0])
        if channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        x = self.conv1(x, wplus[:, 0], noise[0])
        image = self.to_rgb1(x, wplus[:, 1])
        for block, (up_conv, conv, to_rgb) in enumerate(zip(self.convs[::2], self.convs[1::2], self.to_rgbs)):
            if image.shape[-1] == resolution:
                break
            row = 2 * block + 1
            x = up_conv(x, wplus[:, row], noise[row])
            x = conv(x, wplus[:, row + 1], noise[row + 1])
            image = to_rgb(x, wplus[:, row + 2], image)
        return image
