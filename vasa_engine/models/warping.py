"""Warping module (W): dense 3-D motion from implicit keypoints, warp of the feature volume, occlusion.

Per frame this is the renderer's first half: 22 trilinear warps of a compressed volume, an hourglass of 3-D
convolutions, a 7x7x7 mask conv, a softmax-weighted sum of the motions, and one trilinear warp of the full volume.
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

    def sparse_motions(self, grid: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        """(B, K+1, d, h, w, 3): the identity, then for each keypoint k: grid - x_d[k] + x_s[k]."""
        b = kp_driving.shape[0]
        shift = (kp_source - kp_driving).view(b, self.num_kp, 1, 1, 1, 3)
        ident = grid.unsqueeze(0).unsqueeze(0)
        return torch.cat([ident.expand(b, 1, *grid.shape), ident + shift], dim=1)

    def heatmaps(self, grid: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> torch.Tensor:
        """(B, K+1, 1, d, h, w): Gaussian(x_d) - Gaussian(x_s) per keypoint, zero for the background."""

        def gauss(kp: torch.Tensor) -> torch.Tensor:
            diff = grid.unsqueeze(0).unsqueeze(0) - kp.view(kp.shape[0], self.num_kp, 1, 1, 1, 3)
            return torch.exp(-0.5 * (diff**2).sum(-1) / KP_VARIANCE)

        heat = gauss(kp_driving) - gauss(kp_source)
        zeros = heat.new_zeros(heat.shape[0], 1, *heat.shape[2:])
        return torch.cat([zeros, heat], dim=1).unsqueeze(2)

    def forward(self, feature: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor) -> dict:
        b, _, d, h, w = feature.shape
        k1 = self.num_kp + 1
        feature = F.relu(self.norm(self.compress(feature)))
        c = feature.shape[1]
        grid = coordinate_grid(d, h, w, device=feature.device, dtype=torch.float32)
        kp_driving, kp_source = kp_driving.float(), kp_source.float()
        motions = self.sparse_motions(grid, kp_driving, kp_source)  # fp32 coordinates, whatever the features
        repeated = feature.unsqueeze(1).expand(b, k1, c, d, h, w).reshape(b * k1, c, d, h, w)
        deformed = ops.grid_sample_3d(repeated, motions.reshape(b * k1, d, h, w, 3)).view(b, k1, c, d, h, w)
        heat = self.heatmaps(grid, kp_driving, kp_source).to(deformed.dtype)
        prediction = self.hourglass(torch.cat([heat, deformed], dim=2).view(b, k1 * (c + 1), d, h, w))
        mask = torch.softmax(self.mask(prediction).float(), dim=1)
        deformation = torch.einsum("bkdhw,bkdhwc->bdhwc", mask, motions)
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
