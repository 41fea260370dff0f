"""The operations the models route through the backend switch.

Each function here is the plain PyTorch reference. The model code calls these, never the kernels directly, so
a backend can replace one operation without touching the math around it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False,
                   padding_mode: str = "zeros") -> torch.Tensor:
    """Trilinear sample of volume (B, C, D, H, W) at grid (B, d, h, w, 3) holding (x, y, z) in [-1, 1].

    The coordinates stay fp32: sampling happens in fp32 and the result is cast back to the volume's dtype.
    """
    out = F.grid_sample(volume.float(), grid.float(), mode="bilinear", padding_mode=padding_mode,
                        align_corners=align_corners)
    return out.to(volume.dtype)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, key_padding_mask: torch.Tensor | None = None
              ) -> torch.Tensor:
    """Softmax attention over (B, H, N, Dh) tensors, scale 1/sqrt(Dh). key_padding_mask: (B, N_k) bool, True for
    keys to ignore."""
    mask = None
    if key_padding_mask is not None:
        mask = ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm(x + residual): the post-norm transformer's residual step."""
    return F.layer_norm(x + residual, norm.normalized_shape, norm.weight, norm.bias, norm.eps)
