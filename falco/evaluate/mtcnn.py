"""MTCNN face detection as facenet-pytorch runs it: its three networks (key-for-key the layout of its
``pnet.pt``, ``rnet.pt``, ``onet.pt``) and its cascade, with the same defaults.

The cascade follows facenet-pytorch's ``detect_face`` step for step (its pyramid, area resampling, box
regression, rounding and crops), so the boxes and probabilities are the ones its ``MTCNN.detect`` gives;
only its batching differs: images are detected one by one, so they may differ in size.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.ops import batched_nms

from falco.models import freeze

MIN_FACE_SIZE = 20                  # facenet-pytorch's MTCNN defaults
THRESHOLDS = (0.6, 0.7, 0.7)        # face probability each stage keeps a window above
PYRAMID_FACTOR = 0.709
CELL, STRIDE = 12, 2                # PNet's window and its step in the scaled image
CHUNK = 512                         # crops per RNet / ONet call (bounded memory on many candidates)


class PNet(nn.Module):
    """Proposal network: fully convolutional, a face probability and box offsets per 12x12 window."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 10, 3), nn.PReLU(10)
        self.conv2, self.prelu2 = nn.Conv2d(10, 16, 3), nn.PReLU(16)
        self.conv3, self.prelu3 = nn.Conv2d(16, 32, 3), nn.PReLU(32)
        self.conv4_1 = nn.Conv2d(32, 2, 1)   # face / not face
        self.conv4_2 = nn.Conv2d(32, 4, 1)   # box offsets

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 2, 2, ceil_mode=True)
        x = self.prelu3(self.conv3(self.prelu2(self.conv2(x))))
        return self.conv4_2(x), F.softmax(self.conv4_1(x), dim=1)


def channels_last_flat(x: torch.Tensor) -> torch.Tensor:
    # The dense layers were converted from TensorFlow: they read the feature map as (width, height, channel).
    return x.permute(0, 3, 2, 1).reshape(x.shape[0], -1)


class RNet(nn.Module):
    """Refinement network on 24x24 crops: face probability and box offsets."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 28, 3), nn.PReLU(28)
        self.conv2, self.prelu2 = nn.Conv2d(28, 48, 3), nn.PReLU(48)
        self.conv3, self.prelu3 = nn.Conv2d(48, 64, 2), nn.PReLU(64)
        self.dense4, self.prelu4 = nn.Linear(576, 128), nn.PReLU(128)
        self.dense5_1 = nn.Linear(128, 2)
        self.dense5_2 = nn.Linear(128, 4)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = self.prelu4(self.dense4(channels_last_flat(self.prelu3(self.conv3(x)))))
        return self.dense5_2(x), F.softmax(self.dense5_1(x), dim=1)


class ONet(nn.Module):
    """Output network on 48x48 crops: face probability, box offsets (and five landmarks, unused here)."""

    def __init__(self):
        super().__init__()
        self.conv1, self.prelu1 = nn.Conv2d(3, 32, 3), nn.PReLU(32)
        self.conv2, self.prelu2 = nn.Conv2d(32, 64, 3), nn.PReLU(64)
        self.conv3, self.prelu3 = nn.Conv2d(64, 64, 3), nn.PReLU(64)
        self.conv4, self.prelu4 = nn.Conv2d(64, 128, 2), nn.PReLU(128)
        self.dense5, self.prelu5 = nn.Linear(1152, 256), nn.PReLU(256)
        self.dense6_1 = nn.Linear(256, 2)
        self.dense6_2 = nn.Linear(256, 4)
        self.dense6_3 = nn.Linear(256, 10)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        x = F.max_pool2d(self.prelu1(self.conv1(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu2(self.conv2(x)), 3, 2, ceil_mode=True)
        x = F.max_pool2d(self.prelu3(self.conv3(x)), 2, 2, ceil_mode=True)
        x = self.prelu5(self.dense5(channels_last_flat(self.prelu4(self.conv4(x)))))
        return self.dense6_2(x), self.dense6_3(x), F.softmax(self.dense6_1(x), dim=1)


NETS = {"pnet": PNet, "rnet": RNet, "onet": ONet}


class MTCNN(nn.Module):
    def __init__(self, pnet: PNet | None = None, rnet: RNet | None = None, onet: ONet | None = None,
                 min_face_size: int = MIN_FACE_SIZE, thresholds: Sequence[float] = THRESHOLDS,
                 factor: float = PYRAMID_FACTOR):
        super().__init__()
        self.pnet, self.rnet, self.onet = pnet or PNet(), rnet or RNet(), onet or ONet()
        self.min_face_size, self.thresholds, self.factor = min_face_size, tuple(thresholds), factor
        freeze(self).eval()

    @torch.no_grad()
    def detect(self, images: Sequence[Image.Image]) -> list[np.ndarray]:
        """Per image, the faces found: float32 [k, 5] rows (x1, y1, x2, y2, probability) in pixels, largest box
        first (facenet-pytorch's order); k = 0 when none."""
        return [self._detect_one(image) for image in images]

    def _detect_one(self, image: Image.Image) -> np.ndarray:
        device = self.pnet.conv1.weight.device
        pixels = torch.as_tensor(np.array(image.convert("RGB")), device=device).permute(2, 0, 1)[None].float()
        h, w = pixels.shape[2:]
        boxes = self._propose(pixels)
        if len(boxes):
            boxes = self._refine(pixels, boxes, w, h)
        if len(boxes):
            boxes = self._output(pixels, boxes, w, h)
        boxes = boxes.cpu().numpy().astype(np.float32)
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        return boxes[np.argsort(area)[::-1]]

    def _propose(self, pixels: torch.Tensor) -> torch.Tensor:
        """Stage 1: PNet over an image pyramid; windows above the threshold, merged, regressed, squared."""
        h, w = pixels.shape[2:]
        scale = 12.0 / self.min_face_size
        side = min(h, w) * scale
        candidates = []
        while side >= CELL:
            scaled = F.interpolate(pixels, size=(int(h * scale + 1), int(w * scale + 1)), mode="area")
            offsets, probs = self.pnet(standardise(scaled))
            found = windows(offsets[0], probs[0, 1], scale, self.thresholds[0])
            candidates.append(found[nms(found, 0.5)])
            scale, side = scale * self.factor, side * self.factor
        if not candidates:
            return pixels.new_zeros(0, 5)
        found = torch.cat(candidates)
        found = found[nms(found, 0.7)]
        width, height = found[:, 2] - found[:, 0], found[:, 3] - found[:, 1]
        boxes = torch.stack([found[:, 0] + found[:, 5] * width, found[:, 1] + found[:, 6] * height,
                             found[:, 2] + found[:, 7] * width, found[:, 3] + found[:, 8] * height, found[:, 4]], 1)
        return square(boxes)

    def _refine(self, pixels: torch.Tensor, boxes: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """Stage 2: RNet on 24x24 crops; kept above the threshold, merged, regressed, squared."""
        boxes, crops = crop_candidates(pixels, boxes, w, h, 24)
        if not len(boxes):
            return boxes
        offsets, probs = run_in_chunks(self.rnet, crops)
        keep = probs[:, 1] > self.thresholds[1]
        boxes = torch.cat([boxes[keep, :4], probs[keep, 1:2]], 1)
        pick = nms(boxes, 0.7)
        return square(regress(boxes[pick], offsets[keep][pick]))

    def _output(self, pixels: torch.Tensor, boxes: torch.Tensor, w: int, h: int) -> torch.Tensor:
        """Stage 3: ONet on 48x48 crops; kept above the threshold, regressed, merged by overlap of the smaller
        box."""
        boxes, crops = crop_candidates(pixels, boxes, w, h, 48)
        if not len(boxes):
            return boxes
        offsets, _, probs = run_in_chunks(self.onet, crops)
        keep = probs[:, 1] > self.thresholds[2]
        boxes = regress(torch.cat([boxes[keep, :4], probs[keep, 1:2]], 1), offsets[keep])
        return boxes[suppress_contained(boxes[:, :4].cpu().numpy(), boxes[:, 4].cpu().numpy(), 0.7)]


def standardise(pixels: torch.Tensor) -> torch.Tensor:
    return (pixels - 127.5) * 0.0078125


def windows(offsets: torch.Tensor, probs: torch.Tensor, scale: float, threshold: float) -> torch.Tensor:
    """PNet windows with probability >= threshold, in image pixels: [k, 9] rows (x1, y1, x2, y2, probability,
    4 offsets)."""
    mask = probs >= threshold
    cells = mask.nonzero().to(offsets.dtype).flip(1)   # (x, y) of each window
    top_left = ((STRIDE * cells + 1) / scale).floor()
    bottom_right = ((STRIDE * cells + CELL) / scale).floor()
    return torch.cat([top_left, bottom_right, probs[mask][:, None], offsets[:, mask].T], 1)


def nms(boxes: torch.Tensor, iou: float) -> torch.Tensor:
    # batched_nms with one image: facenet-pytorch's call, hence its ordering of equal probabilities too.
    return batched_nms(boxes[:, :4], boxes[:, 4], torch.zeros(len(boxes), dtype=torch.long, device=boxes.device), iou)


def square(boxes: torch.Tensor) -> torch.Tensor:
    """Each box grown to a square of its longer side, about its centre (in place)."""
    height, width = boxes[:, 3] - boxes[:, 1], boxes[:, 2] - boxes[:, 0]
    side = torch.max(width, height)
    boxes[:, 0] = boxes[:, 0] + width * 0.5 - side * 0.5
    boxes[:, 1] = boxes[:, 1] + height * 0.5 - side * 0.5
    boxes[:, 2:4] = boxes[:, :2] + side[:, None]
    return boxes


def regress(boxes: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    """Box corners moved by the network's offsets, in units of the box's inclusive pixel size (in place)."""
    width, height = boxes[:, 2] - boxes[:, 0] + 1, boxes[:, 3] - boxes[:, 1] + 1
    boxes[:, :4] = torch.stack([boxes[:, 0] + offsets[:, 0] * width, boxes[:, 1] + offsets[:, 1] * height,
                                boxes[:, 2] + offsets[:, 2] * width, boxes[:, 3] + offsets[:, 3] * height], 1)
    return boxes


def crop_candidates(pixels: torch.Tensor, boxes: torch.Tensor, w: int, h: int,
                    size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(boxes kept, their standardised crops [k, 3, size, size]): each box's part inside the image (corners
    truncated to whole pixels, 1-based as MTCNN's MATLAB origin), area-resampled; boxes wholly outside are
    dropped."""
    corners = boxes.trunc().int().cpu().numpy()
    x, y = np.maximum(corners[:, 0], 1), np.maximum(corners[:, 1], 1)
    ex, ey = np.minimum(corners[:, 2], w), np.minimum(corners[:, 3], h)
    inside = np.flatnonzero((ey > y - 1) & (ex > x - 1))
    crops = [F.interpolate(pixels[:, :, y[k] - 1:ey[k], x[k] - 1:ex[k]], size=(size, size), mode="area")
             for k in inside]
    if not crops:
        return boxes[:0], pixels.new_zeros(0, 3, size, size)
    return boxes[torch.as_tensor(inside, device=boxes.device)], standardise(torch.cat(crops))


def run_in_chunks(net: nn.Module, crops: torch.Tensor) -> tuple[torch.Tensor, ...]:
    outputs = [net(crops[i:i + CHUNK]) for i in range(0, len(crops), CHUNK)]
    return tuple(torch.cat(parts) for parts in zip(*outputs))


def suppress_contained(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> np.ndarray:
    """Greedy suppression where overlap is the intersection over the smaller box's area (pixels counted
    inclusively): MTCNN's last stage, which torchvision's IoU-only nms cannot express.  Indices kept, best
    first; equal scores in numpy's argsort order, as facenet-pytorch."""
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    order, kept = np.argsort(scores), []
    while order.size:
        best, rest = order[-1], order[:-1]
        kept.append(best)
        inter = (np.maximum(0.0, np.minimum(boxes[best, 2], boxes[rest, 2])
                            - np.maximum(boxes[best, 0], boxes[rest, 0]) + 1)
                 * np.maximum(0.0, np.minimum(boxes[best, 3], boxes[rest, 3])
                              - np.maximum(boxes[best, 1], boxes[rest, 1]) + 1))
        order = rest[inter / np.minimum(area[best], area[rest]) <= threshold]
    return np.asarray(kept, dtype=np.int64)
