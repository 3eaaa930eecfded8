"""FaceNet's InceptionResnetV1, key-for-key compatible with facenet-pytorch's released state dicts.

David Sandberg's facenet models (20180408-102900 on CASIA-WebFace, 20180402-114759 on VGGFace2), as
timesler/facenet-pytorch converted them: ``conv2d_1a.conv.weight`` ... ``last_bn.*`` and the classifier
``logits.*`` the files carry (10575 / 8631 classes), which embeddings never use.  The paper's
re-identification judges; ``embed`` takes images in [0, 1] and does the port's input recipe itself.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from falco.models import freeze

INPUT_SIZE = 160              # facenet-pytorch's MTCNN crops faces to 160x160
BN_EPS = 1e-3                 # TensorFlow's batch-norm epsilon, kept by the conversion
REPEATS = (5, 10, 5)          # Block35, Block17, Block8 units
CASIA_CLASSES = 10575         # rows of each released file's logits layer
VGGFACE2_CLASSES = 8631

# A branch is a list of convolutions (out_channels, kernel, stride, padding), run in order.
Branch = list[tuple[int, int | tuple[int, int], int, int | tuple[int, int]]]


class ConvBN(nn.Module):
    """Convolution without bias, batch norm, ReLU: the port's BasicConv2d."""

    def __init__(self, in_channels: int, out_channels: int, kernel: int | tuple[int, int], stride: int = 1,
                 padding: int | tuple[int, int] = 0):
        super().__init__()
        self.conv = nn.Conv2d(in_channels, out_channels, kernel, stride, padding, bias=False)
        self.bn = nn.BatchNorm2d(out_channels, eps=BN_EPS)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.bn(self.conv(x)))


def make_branch(in_channels: int, layers: Branch) -> nn.Module:
    # A one-convolution branch is the ConvBN itself in the files (branch0.conv.weight), longer ones are numbered.
    convs = []
    for out_channels, kernel, stride, padding in layers:
        convs.append(ConvBN(in_channels, out_channels, kernel, stride, padding))
        in_channels = out_channels
    return convs[0] if len(convs) == 1 else nn.Sequential(*convs)


class ResidualInception(nn.Module):
    """Block35 / Block17 / Block8: parallel branches, concatenated, projected back by a 1x1 convolution,
    scaled and added to the input."""

    def __init__(self, channels: int, branches: Sequence[Branch], scale: float, relu: bool = True):
        super().__init__()
        self.scale, self.relu = scale, relu
        self.branches = len(branches)
        for i, layers in enumerate(branches):
            self.add_module(f"branch{i}", make_branch(channels, layers))
        self.conv2d = nn.Conv2d(sum(layers[-1][0] for layers in branches), channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mixed = torch.cat([getattr(self, f"branch{i}")(x) for i in range(self.branches)], 1)
        x = x + self.scale * self.conv2d(mixed)
        return F.relu(x) if self.relu else x


class ReductionInception(nn.Module):
    """Mixed_6a / Mixed_7a: strided branches beside a 3x3 max pool (no weights), concatenated."""

    def __init__(self, channels: int, branches: Sequence[Branch]):
        super().__init__()
        self.branches = len(branches)
        for i, layers in enumerate(branches):
            self.add_module(f"branch{i}", make_branch(channels, layers))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = [getattr(self, f"branch{i}")(x) for i in range(self.branches)]
        return torch.cat([*parts, F.max_pool2d(x, 3, 2)], 1)


class InceptionResnetV1(nn.Module):
    """``width_divisor`` and ``repeats`` shrink the network for tests (same module names, fewer and narrower
    units); the released files are the defaults, with ``num_classes`` rows of logits."""

    RELEASED = dict(num_classes=None, width_divisor=1, repeats=list(REPEATS), embedding_dim=512)

    def __init__(self, num_classes: int | None = None, width_divisor: int = 1, repeats: Sequence[int] = REPEATS,
                 embedding_dim: int = 512):
        super().__init__()
        if 16 % width_divisor or len(repeats) != 3 or min(repeats) < 1:
            raise ValueError(f"width_divisor must divide 16 and repeats be 3 counts >= 1, got {width_divisor}, "
                             f"{repeats}")
        self.config = dict(num_classes=num_classes, width_divisor=width_divisor, repeats=list(repeats),
                           embedding_dim=embedding_dim)

        def c(n: int) -> int:
            return n // width_divisor

        self.conv2d_1a = ConvBN(3, c(32), 3, 2)
        self.conv2d_2a = ConvBN(c(32), c(32), 3)
        self.conv2d_2b = ConvBN(c(32), c(64), 3, padding=1)
        self.conv2d_3b = ConvBN(c(64), c(80), 1)
        self.conv2d_4a = ConvBN(c(80), c(192), 3)
        self.conv2d_4b = ConvBN(c(192), c(256), 3, 2)
        block35 = [[(c(32), 1, 1, 0)], [(c(32), 1, 1, 0), (c(32), 3, 1, 1)],
                   [(c(32), 1, 1, 0), (c(32), 3, 1, 1), (c(32), 3, 1, 1)]]
        self.repeat_1 = nn.Sequential(*(ResidualInception(c(256), block35, 0.17) for _ in range(repeats[0])))
        self.mixed_6a = ReductionInception(c(256), [[(c(384), 3, 2, 0)],
                                                    [(c(192), 1, 1, 0), (c(192), 3, 1, 1), (c(256), 3, 2, 0)]])
        block17 = [[(c(128), 1, 1, 0)], [(c(128), 1, 1, 0), (c(128), (1, 7), 1, (0, 3)), (c(128), (7, 1), 1, (3, 0))]]
        self.repeat_2 = nn.Sequential(*(ResidualInception(c(896), block17, 0.10) for _ in range(repeats[1])))
        self.mixed_7a = ReductionInception(c(896), [[(c(256), 1, 1, 0), (c(384), 3, 2, 0)],
                                                    [(c(256), 1, 1, 0), (c(256), 3, 2, 0)],
                                                    [(c(256), 1, 1, 0), (c(256), 3, 1, 1), (c(256), 3, 2, 0)]])
        block8 = [[(c(192), 1, 1, 0)], [(c(192), 1, 1, 0), (c(192), (1, 3), 1, (0, 1)), (c(192), (3, 1), 1, (1, 0))]]
        self.repeat_3 = nn.Sequential(*(ResidualInception(c(1792), block8, 0.20) for _ in range(repeats[2])))
        self.block8 = ResidualInception(c(1792), block8, 1.0, relu=False)
        self.last_linear = nn.Linear(c(1792), embedding_dim, bias=False)
        self.last_bn = nn.BatchNorm1d(embedding_dim, eps=BN_EPS)
        # The released files keep their training classifier; embeddings never use it.
        self.logits = nn.Linear(embedding_dim, num_classes) if num_classes else None
        freeze(self).eval()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """x [N,3,H,W] standardised as (pixel - 127.5) / 128 -> unit-norm embeddings [N, embedding_dim]."""
        x = self.conv2d_2b(self.conv2d_2a(self.conv2d_1a(x)))
        x = self.conv2d_4b(self.conv2d_4a(self.conv2d_3b(F.max_pool2d(x, 3, 2))))
        x = self.repeat_3(self.mixed_7a(self.repeat_2(self.mixed_6a(self.repeat_1(x)))))
        x = self.last_bn(self.last_linear(self.block8(x).mean((2, 3))))
        return F.normalize(x.float(), dim=1)

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Face crops [N,3,H,W] in [0,1] (RGB, any size) -> L2-normalised embeddings [N, embedding_dim].

        Resized to 160 (antialiased bilinear, like the PIL resize of facenet-pytorch's crops) and standardised
        as facenet-pytorch's fixed_image_standardization: (x * 255 - 127.5) / 128."""
        if images.ndim != 4 or images.shape[1] != 3:
            raise ValueError(f"FaceNet expects images [N,3,H,W], got {tuple(images.shape)}")
        x = images.to(self.last_linear.weight.device, torch.float32)
        if x.shape[-2:] != (INPUT_SIZE, INPUT_SIZE):
            x = F.interpolate(x, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False,
                              antialias=True)
        return self((x * 255 - 127.5) / 128)
