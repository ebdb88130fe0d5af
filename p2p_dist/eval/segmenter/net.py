"""The FCN-score segmenter's network: a compact U-Net over photos, logits over the 19 Cityscapes train ids."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from p2p_dist.data.labels import NUM_TRAIN_CLASSES


def _conv_bn_relu(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


def _double_conv(in_channels: int, out_channels: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(_conv_bn_relu(in_channels, out_channels, stride), _conv_bn_relu(out_channels, out_channels))


class SegmenterNet(nn.Module):
    """Compact U-Net: photos (B,3,H,W) in [-1, 1] -> (B, num_classes, H, W) logits.

    The stem has stride 2 and the logits are upsampled bilinearly at the end: full-resolution feature maps
    cost most of a U-Net's compute and add little for per-pixel classes that come in large regions.
    Four more stride-2 stages (widths w, 2w, 4w, 8w, 8w) give a receptive field covering a 256 crop.
    Width 16: 1.2M parameters, 1.6 GFLOP per 256x256 image forward. H and W must be multiples of 32.
    """

    def __init__(self, num_classes: int = NUM_TRAIN_CLASSES, width: int = 16) -> None:
        super().__init__()
        widths = [width, 2 * width, 4 * width, 8 * width, 8 * width]
        self.stem = _double_conv(3, widths[0], stride=2)
        self.down = nn.ModuleList(_double_conv(widths[i], widths[i + 1], stride=2) for i in range(len(widths) - 1))
        self.up = nn.ModuleList(
            _double_conv(widths[i + 1] + widths[i], widths[i]) for i in reversed(range(len(widths) - 1))
        )
        self.head = nn.Conv2d(widths[0], num_classes, 1)
        self.num_classes = num_classes
        self.width = width

    def forward(self, photos: Tensor) -> Tensor:
        height, width = photos.shape[-2:]
        if height % 32 or width % 32:
            raise ValueError(f"SegmenterNet needs H and W divisible by 32, got {height}x{width}")
        x = self.stem(photos)
        skips = []
        for stage in self.down:
            skips.append(x)
            x = stage(x)
        for stage, skip in zip(self.up, reversed(skips)):
            x = F.interpolate(x, size=skip.shape[-2:], mode="bilinear", align_corners=False)
            x = stage(torch.cat([x, skip], dim=1))
        return F.interpolate(self.head(x), size=(height, width), mode="bilinear", align_corners=False)
