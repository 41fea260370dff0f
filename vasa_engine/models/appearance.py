"""Appearance feature extractor (F): portrait -> 3-D feature volume, computed once per avatar."""

from __future__ import annotations

import torch
from torch import nn

from ..config import AppearanceConfig
from .blocks import DownBlock2d, ResBlock3d, SameBlock2d


class AppearanceFeatureExtractor(nn.Module):
    def __init__(self, cfg: AppearanceConfig):
        super().__init__()
        self.cfg = cfg
        be, mf = cfg.block_expansion, cfg.max_features
        self.first = SameBlock2d(cfg.image_channel, be)
        self.down_blocks = nn.ModuleList(
            DownBlock2d(min(mf, be * 2**i), min(mf, be * 2 ** (i + 1))) for i in range(cfg.num_down_blocks)
        )
        self.second = nn.Conv2d(min(mf, be * 2**cfg.num_down_blocks), mf, 1)
        self.resblocks_3d = nn.Sequential()
        for i in range(cfg.num_resblocks):
            self.resblocks_3d.add_module(f"3dr{i}", ResBlock3d(cfg.reshape_channel))

    def forward(self, source_image: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) in [0, 1] -> (B, reshape_channel, reshape_depth, H / 2^n, W / 2^n)."""
        out = self.first(source_image)
        for block in self.down_blocks:
            out = block(out)
        out = self.second(out)
        b, _, h, w = out.shape
        out = out.view(b, self.cfg.reshape_channel, self.cfg.reshape_depth, h, w)
        return self.resblocks_3d(out)
