"""Warping module (W): dense 3-D motion from implicit keypoints, warp of the feature volume, occlusion.

Per frame this is the renderer's first half: 22 trilinear warps of a compressed volume with their keypoint
heatmaps (one fused op), an hourglass of 3-D convolutions, a 7x7x7 mask conv, a softmax-weighted sum of the
motions, and one trilinear warp of the full volume.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import DenseMotionConfig, WarpingConfig
from .blocks import DownBlock3d, SameBlock2d, UpBlock3d

KP_VARIANCE = 0.01


def coordinate_grid(d: int, h: int, w: int, device=None, dtype=torch.float32) -> torch.Tensor:
    """(d, h, w, 3) grid of (x, y, z) in [-1, 1], the first and last voxel centres at -1 and 1."""

    def axis(n: int) -> torch.Tensor:
        return 2 * torch.arange(n, device=device, dtype=dtype) / (n - 1) - 1

    z, y, x = torch.meshgrid(axis(d), axis(h), axis(w), indexing="ij")
    return torch.stack((x, y, z), dim=-1)


class Hourglass(nn.Module):
    """3-D U-Net: DownBlock3d encoder keeping every output as a skip, UpBlock3d decoder concatenating them."""

    def __init__(self, block_expansion: int, in_features: int, num_blocks: int, max_features: int):
        super().__init__()
        self.encoder = nn.Module()
        self.encoder.down_blocks = nn.ModuleList(
            DownBlock3d(in_features if i == 0 else min(max_features, block_expansion * 2**i),
                        min(max_features, block_expansion * 2 ** (i + 1)))
            for i in range(num_blocks)
        )
        self.decoder = nn.Module()
        self.decoder.up_blocks = nn.ModuleList(
            UpBlock3d((1 if i == num_blocks - 1 else 2) * min(max_features, block_expansion * 2 ** (i + 1)),
                      min(max_features, block_expansion * 2**i))
            for i in reversed(range(num_blocks))
        )
        self.out_filters = block_expansion + in_features
        self.decoder.conv = nn.Conv3d(self.out_filters, self.out_filters, 3, padding=1)
        self.decoder.norm = nn.BatchNorm3d(self.out_filters)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = [x]
        for block in self.encoder.down_blocks:
            skips.append(block(skips[-1]))
        out = skips.pop()
        for block in self.decoder.up_blocks:
            out = torch.cat([block(out), skips.pop()], dim=1)
        return F.relu(self.decoder.norm(self.decoder.conv(out)))


class DenseMotionNetwork(nn.Module):
    def __init__(self, cfg: DenseMotionConfig, num_kp: int, feature_channel: int, estimate_occlusion_map: bool):
        super().__init__()
        self.num_kp = num_kp
        c = cfg.compress
        self.compress = nn.Conv3d(feature_channel, c, 1)
        self.norm = nn.BatchNorm3d(c)
        self.hourglass = Hourglass(cfg.block_expansion, (num_kp + 1) * (c + 1), cfg.num_blocks, cfg.max_features)
        hg = self.hourglass.out_filters
        self.mask = nn.Conv3d(hg, num_kp + 1, 7, padding=3)
        self.occlusion = nn.Conv2d(hg * cfg.reshape_depth, 1, 7, padding=3) if estimate_occlusion_map else None

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        b, _, d, h, w = feature.shape
        feature = F.relu(self.norm(self.compress(feature)))
        grid = coordinate_grid(d, h, w, device=feature.device, dtype=torch.float32)
        kp_driving, kp_source = kp_driving.float(), kp_source.float()
        # Per motion (the identity, then grid - x_d[k] + x_s[k] per keypoint): Gaussian(x_d[k]) - Gaussian(x_s[k])
        # and the compressed volume warped by it, (B, (K+1) * (c+1), d, h, w), in one pass (ops.dense_motion_input).
        x = ops.dense_motion_input(feature, grid, kp_driving, kp_source, variance=KP_VARIANCE)
        prediction = self.hourglass(x)
        mask = torch.softmax(self.mask(prediction).float(), dim=1)
        # sum_k mask_k * motion_k with motion_0 = grid and motion_k = grid + shift_k, and sum_k mask_k = 1: the
        # grid plus the mask-weighted shifts, without the (B, K+1, d, h, w, 3) motions in memory.
        shift = kp_source - kp_driving
        deformation = grid + torch.einsum("bkdhw,bkc->bdhwc", mask[:, 1:], shift)
        out = {"mask": mask, "deformation": deformation}
        if self.occlusion is not None:
            out["occlusion_map"] = torch.sigmoid(self.occlusion(prediction.reshape(b, -1, h, w)))
        return out


class WarpingNetwork(nn.Module):
    def __init__(self, cfg: WarpingConfig):
        super().__init__()
        self.cfg = cfg
        self.dense_motion_network = DenseMotionNetwork(cfg.dense_motion_params, cfg.num_kp, cfg.reshape_channel,
                                                       cfg.estimate_occlusion_map)
        out_features = cfg.block_expansion * 2**cfg.num_down_blocks
        self.third = SameBlock2d(cfg.max_features, out_features, lrelu=True)
        self.fourth = nn.Conv2d(out_features, out_features, 1)

    def forward(self, feature_3d: torch.Tensor, kp_source: torch.Tensor, kp_driving: torch.Tensor) -> dict:
        """Returns occlusion_map (B,1,h,w), deformation (B,d,h,w,3) and out (B, C_out, h, w)."""
        dense = self.dense_motion_network(feature_3d, kp_driving=kp_driving, kp_source=kp_source)
        warped = ops.grid_sample_3d(feature_3d, dense["deformation"])
        b, c, d, h, w = warped.shape
        out = self.fourth(self.third(warped.reshape(b, c * d, h, w)))
        occlusion = dense.get("occlusion_map")
        if occlusion is not None:
            out = out * occlusion.to(out.dtype)
        return {"occlusion_map": occlusion, "deformation": dense["deformation"], "out": out}
