"""Stitching and eye/lip retargeting MLPs, and how their outputs move the driving keypoints."""

from __future__ import annotations

import torch
from torch import nn

from ..config import MLPConfig


class RetargetMLP(nn.Module):
    """Linear -> ReLU -> ... -> Linear; the Linear layers sit at even indices of `mlp` (checkpoint layout)."""

    def __init__(self, cfg: MLPConfig):
        super().__init__()
        self.cfg = cfg
        sizes = [cfg.input_size, *cfg.hidden_sizes, cfg.output_size]
        layers: list[nn.Module] = []
        for i in range(len(sizes) - 1):
            if i:
                layers.append(nn.ReLU())
            layers.append(nn.Linear(sizes[i], sizes[i + 1]))
        self.mlp = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.mlp(x)


def apply_stitching(mlp: RetargetMLP, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> torch.Tensor:
    """x_d + delta[:3K] per keypoint, and delta[3K:3K+2] added to x and y of every keypoint."""
    b, k, _ = kp_source.shape
    delta = mlp(torch.cat([kp_source.reshape(b, -1), kp_driving.reshape(b, -1)], dim=1))
    out = kp_driving + delta[:, : 3 * k].reshape(b, k, 3)
    shift = torch.zeros_like(out[:, :1, :])
    shift[..., :2] = delta[:, 3 * k : 3 * k + 2].unsqueeze(1)
    return out + shift


def retarget_delta(mlp: RetargetMLP, kp_source: torch.Tensor, ratios: torch.Tensor) -> torch.Tensor:
    """Keypoint offset (B, K, 3) from the eye or lip MLP, given the source keypoints and the ratio vector."""
    b, k, _ = kp_source.shape
    return mlp(torch.cat([kp_source.reshape(b, -1), ratios], dim=1)).reshape(b, k, 3)
