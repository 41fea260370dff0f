"""Motion extractor (M): a ConvNeXt-V2 backbone with heads for keypoints, pose bins, expression, t and scale."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..config import MotionExtractorConfig


class ChannelsFirstLayerNorm(nn.Module):
    """LayerNorm over the channel axis of an NCHW tensor (biased variance)."""

    def __init__(self, channels: int, eps: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.ones(channels))
        self.bias = nn.Parameter(torch.zeros(channels))
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.layer_norm(x.permute(0, 2, 3, 1), x.shape[1:2], self.weight, self.bias, self.eps)
        return x.permute(0, 3, 1, 2)


class GRN(nn.Module):
    """Global response normalization on an NHWC tensor."""

    def __init__(self, channels: int):
        super().__init__()
        self.gamma = nn.Parameter(torch.zeros(1, 1, 1, channels))
        self.beta = nn.Parameter(torch.zeros(1, 1, 1, channels))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        g = torch.linalg.vector_norm(x, dim=(1, 2), keepdim=True)
        n = g / (g.mean(dim=-1, keepdim=True) + 1e-6)
        return self.gamma * (x * n) + self.beta + x


class ConvNeXtBlock(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.grn = GRN(4 * dim)
        self.pwconv2 = nn.Linear(4 * dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.dwconv(x).permute(0, 2, 3, 1)
        y = self.pwconv2(self.grn(F.gelu(self.pwconv1(self.norm(y)))))
        return x + y.permute(0, 3, 1, 2)


class ConvNeXtV2(nn.Module):
    def __init__(self, cfg: MotionExtractorConfig):
        super().__init__()
        dims = cfg.dims
        self.downsample_layers = nn.ModuleList()
        self.downsample_layers.append(
            nn.Sequential(nn.Conv2d(cfg.in_chans, dims[0], 4, stride=4), ChannelsFirstLayerNorm(dims[0]))
        )
        for i in range(1, len(dims)):
            self.downsample_layers.append(
                nn.Sequential(ChannelsFirstLayerNorm(dims[i - 1]), nn.Conv2d(dims[i - 1], dims[i], 2, stride=2))
            )
        self.stages = nn.ModuleList(
            nn.Sequential(*(ConvNeXtBlock(dims[i]) for _ in range(depth))) for i, depth in enumerate(cfg.depths)
        )
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        k, bins = cfg.num_kp, cfg.num_bins
        self.fc_kp = nn.Linear(dims[-1], 3 * k)
        self.fc_scale = nn.Linear(dims[-1], 1)
        self.fc_pitch = nn.Linear(dims[-1], bins)
        self.fc_yaw = nn.Linear(dims[-1], bins)
        self.fc_roll = nn.Linear(dims[-1], bins)
        self.fc_t = nn.Linear(dims[-1], 3)
        self.fc_exp = nn.Linear(dims[-1], 3 * k)

    def forward(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        for down, stage in zip(self.downsample_layers, self.stages):
            x = stage(down(x))
        x = self.norm(x.mean(dim=(-2, -1)))
        return {
            "pitch": self.fc_pitch(x),
            "yaw": self.fc_yaw(x),
            "roll": self.fc_roll(x),
            "t": self.fc_t(x),
            "exp": self.fc_exp(x),
            "scale": self.fc_scale(x),
            "kp": self.fc_kp(x),
        }


class MotionExtractor(nn.Module):
    """Raw head outputs for an image in [0, 1]: pose bin logits, t, exp, scale, kp (checkpoint prefix detector.)."""

    def __init__(self, cfg: MotionExtractorConfig):
        super().__init__()
        self.cfg = cfg
        self.detector = ConvNeXtV2(cfg)

    def forward(self, image: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.detector(image)
