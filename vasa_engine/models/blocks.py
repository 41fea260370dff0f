"""Convolution blocks shared by the appearance extractor and the warping module (eval-mode BatchNorm)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class SameBlock2d(nn.Module):
    """Conv 3x3 -> BN -> ReLU (LeakyReLU(0.01) when lrelu)."""

    def __init__(self, in_features: int, out_features: int, lrelu: bool = False):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)
        self.lrelu = lrelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.norm(self.conv(x))
        return F.leaky_relu(x, 0.01) if self.lrelu else F.relu(x)


class DownBlock2d(nn.Module):
    """Conv 3x3 -> BN -> ReLU -> AvgPool 2x2."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv2d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm2d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(F.relu(self.norm(self.conv(x))), 2)


class DownBlock3d(nn.Module):
    """Conv3d 3x3x3 -> BN -> ReLU -> AvgPool (1,2,2): depth is never pooled."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool3d(F.relu(self.norm(self.conv(x))), (1, 2, 2))


class UpBlock3d(nn.Module):
    """Nearest upsample (1,2,2) -> Conv3d 3x3x3 -> BN -> ReLU."""

    def __init__(self, in_features: int, out_features: int):
        super().__init__()
        self.conv = nn.Conv3d(in_features, out_features, 3, padding=1)
        self.norm = nn.BatchNorm3d(out_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.interpolate(x, scale_factor=(1, 2, 2), mode="nearest")
        return F.relu(self.norm(self.conv(x)))


class ResBlock3d(nn.Module):
    """Pre-activation residual block: x + conv2(relu(bn2(conv1(relu(bn1(x))))))."""

    def __init__(self, features: int):
        super().__init__()
        self.conv1 = nn.Conv3d(features, features, 3, padding=1)
        self.conv2 = nn.Conv3d(features, features, 3, padding=1)
        self.norm1 = nn.BatchNorm3d(features)
        self.norm2 = nn.BatchNorm3d(features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(F.relu(self.norm1(x)))
        out = self.conv2(F.relu(self.norm2(out)))
        return x + out
