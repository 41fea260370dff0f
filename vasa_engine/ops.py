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
