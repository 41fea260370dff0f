"""SPADE decoder (G): warped feature map -> RGB image in [0, 1], with spectral-normalized residual blocks."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .. import ops
from ..config import SpadeConfig

SPADE_HIDDEN = 128


class SpectralNormConv2d(nn.Module):
    """Conv2d whose weight is weight_orig / sigma, sigma = u . (W v) with the stored u and v (eval mode).

    Keeps the checkpoint's key names (weight_orig, weight_u, weight_v); u and v are never updated here.
    """

    def __init__(self, in_channels: int, out_channels: int, kernel_size: int, padding: int = 0, bias: bool = True):
        super().__init__()
        self.padding = padding
        self.weight_orig = nn.Parameter(torch.empty(out_channels, in_channels, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(out_channels)) if bias else None
        self.register_buffer("weight_u", F.normalize(torch.randn(out_channels), dim=0, eps=1e-12))
        self.register_buffer("weight_v", F.normalize(torch.randn(in_channels * kernel_size**2), dim=0, eps=1e-12))
        nn.init.kaiming_uniform_(self.weight_orig, a=5**0.5)

    def weight(self) -> torch.Tensor:
        """The effective weight, computed in fp32 whatever the parameters' dtype, returned in that dtype."""
        w = self.weight_orig.float()
        sigma = torch.dot(self.weight_u.float(), torch.mv(w.reshape(w.shape[0], -1), self.weight_v.float()))
        return (w / sigma).to(self.weight_orig.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=self.padding)


class SPADE(nn.Module):
    """InstanceNorm(x) * (1 + gamma(seg)) + beta(seg), seg resized (nearest) to x's size."""

    def __init__(self, norm_nc: int, label_nc: int):
        super().__init__()
        self.mlp_shared = nn.Sequential(nn.Conv2d(label_nc, SPADE_HIDDEN, 3, padding=1), nn.ReLU())
        self.mlp_gamma = nn.Conv2d(SPADE_HIDDEN, norm_nc, 3, padding=1)
        self.mlp_beta = nn.Conv2d(SPADE_HIDDEN, norm_nc, 3, padding=1)

    def forward(self, x: torch.Tensor, seg: torch.Tensor, negative_slope: float | None = None) -> torch.Tensor:
        """negative_slope: a LeakyReLU applied to the result in the same pass (None: no activation)."""
        seg = F.interpolate(seg, size=x.shape[2:], mode="nearest")
        actv = self.mlp_shared(seg)
        return ops.spade_modulate(x, self.mlp_gamma(actv), self.mlp_beta(actv), negative_slope)


class SPADEResnetBlock(nn.Module):
    def __init__(self, fin: int, fout: int, label_nc: int):
        super().__init__()
        fmid = min(fin, fout)
        self.learned_shortcut = fin != fout
        self.conv_0 = SpectralNormConv2d(fin, fmid, 3, padding=1)
        self.conv_1 = SpectralNormConv2d(fmid, fout, 3, padding=1)
        self.norm_0 = SPADE(fin, label_nc)
        self.norm_1 = SPADE(fmid, label_nc)
        if self.learned_shortcut:
            self.conv_s = SpectralNormConv2d(fin, fout, 1, bias=False)
            self.norm_s = SPADE(fin, label_nc)

    def forward(self, x: torch.Tensor, seg: torch.Tensor) -> torch.Tensor:
        shortcut = self.conv_s(self.norm_s(x, seg)) if self.learned_shortcut else x
        dx = self.conv_0(self.norm_0(x, seg, 0.2))
        dx = self.conv_1(self.norm_1(dx, seg, 0.2))
        return shortcut + dx


class SPADEDecoder(nn.Module):
    def __init__(self, cfg: SpadeConfig):
        super().__init__()
        self.cfg = cfg
        ch = min(cfg.max_features, cfg.block_expansion * 2**cfg.num_down_blocks)
        self.fc = nn.Conv2d(ch, 2 * ch, 3, padding=1)
        for i in range(6):
            self.add_module(f"G_middle_{i}", SPADEResnetBlock(2 * ch, 2 * ch, ch))
        self.up_0 = SPADEResnetBlock(2 * ch, ch, ch)
        self.up_1 = SPADEResnetBlock(ch, cfg.out_channels, ch)
        if cfg.upscale is None or cfg.upscale <= 1:
            self.conv_img = nn.Conv2d(cfg.out_channels, 3, 3, padding=1)
        else:
            self.conv_img = nn.Sequential(nn.Conv2d(cfg.out_channels, 3 * 4, 3, padding=1), nn.PixelShuffle(2))

    def forward(self, feature: torch.Tensor) -> torch.Tensor:
        seg = feature
        x = self.fc(feature)
        for i in range(6):
            x = getattr(self, f"G_middle_{i}")(x, seg)
        x = self.up_0(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        x = self.up_1(F.interpolate(x, scale_factor=2, mode="nearest"), seg)
        return torch.sigmoid(self.conv_img(F.leaky_relu(x, 0.2)))
