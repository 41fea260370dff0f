"""Rendered crops back into the photo: the inverse warp, blended with a feathered mask that is exactly 0 outside the
face region (so the rest of the photo is untouched, bit for bit)."""

from __future__ import annotations

import math

import numpy as np
import torch

from .alignment import Alignment
from .geometry import apply_affine, pixel_grid, sample_points, to_nchw
from .specs import MASK, MaskSpec


def feather_mask(xc: torch.Tensor, yc: torch.Tensor, size: int, spec: MaskSpec = MASK) -> torch.Tensor:
    """Blend weight at crop points (xc, yc) of a size x size crop: exactly 1 well inside, exactly 0 outside the
    rounded square, an edge shaped like a Gaussian's integral (erf, truncated at 3 sigma) in between."""
    c = (size - 1) / 2.0
    half = size / 2.0 - spec.margin * size
    r = spec.radius * size
    qx = (xc - c).abs() - (half - r)
    qy = (yc - c).abs() - (half - r)
    # signed distance to the rounded square's outline (negative inside)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    dist = outside + torch.maximum(qx, qy).clamp(max=0) - r
    t = (-dist / (spec.feather * size)).clamp(0.0, 1.0)
    k = 3.0 / math.sqrt(2.0)
    m = (torch.erf((2.0 * t - 1.0) * k) + math.erf(k)) / (2.0 * math.erf(k))
    return torch.where(t <= 0, torch.zeros_like(m), torch.where(t >= 1, torch.ones_like(m), m.clamp(0, 1)))


def _paste_plan(alignment: Alignment, device: torch.device, mask: MaskSpec):
    """Photo region touched by the mask, the crop points of its pixels and their blend weights (cached)."""
    key = (str(device), mask)
    plan = alignment._paste_cache.get(key)
    if plan is not None:
        return plan
    s = alignment.size
    h, w = alignment.image_shape
    inset = mask.margin * s
    square = np.array([[inset - 0.5, inset - 0.5], [s - 0.5 - inset, inset - 0.5], [s - 0.5 - inset, s - 0.5 - inset],
                       [inset - 0.5, s - 0.5 - inset]])
    corners = apply_affine(alignment.crop_to_image, square)
    x0 = max(0, int(math.floor(corners[:, 0].min())) - 1)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - 1)
    x1 = min(w, int(math.ceil(corners[:, 0].max())) + 2)
    y1 = min(h, int(math.ceil(corners[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        plan = (0, 0, 0, 0, None, None, None)
    else:
        xs, ys = pixel_grid(y1 - y0, x1 - x0, device, x0, y0)
        m = alignment.image_to_crop
        xc = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        yc = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        weight = feather_mask(xc, yc, s, mask).to(torch.float32)
        plan = (x0, y0, x1, y1, xs, ys, weight)
    alignment._paste_cache[key] = plan
    return plan


def paste_back(original, frames, alignment: Alignment, device=None, *, mask: MaskSpec = MASK):
    """Blend rendered crops back into the photo: out = w * warp(frame) + (1 - w) * photo, w the feathered mask.

    original: the photo, uint8 (H, W, 3), numpy or torch. frames: uint8 (N, S', S', 3) (or one (S', S', 3)),
    numpy or torch: crops in the alignment's frame (any S'; S' = 512 for the renderer). device: where to compute
    (default: the frames' device; numpy frames: the CPU). Returns uint8 (N, H, W, 3): a torch tensor on that
    device for torch frames, a numpy array for numpy frames. Pixels where the mask is 0 (outside the face region)
    are the photo's, bit for bit.
    """
    as_numpy = not isinstance(frames, torch.Tensor)
    fr = torch.as_tensor(np.ascontiguousarray(frames)) if as_numpy else frames
    dev = torch.device(device) if device is not None else fr.device
    fr = fr.to(dev)
    if fr.dim() == 3:
        fr = fr[None]
    if fr.dim() != 4 or fr.shape[-1] != 3 or fr.shape[1] != fr.shape[2]:
        raise ValueError(f"frames must be (N, S, S, 3), got {tuple(fr.shape)}")
    orig = (original if isinstance(original, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(original)))
    orig = orig.to(dev)
    h, w = alignment.image_shape
    if tuple(orig.shape) != (h, w, 3):
        raise ValueError(f"original has shape {tuple(orig.shape)}, the alignment was made on a ({h}, {w}, 3) photo")
    n = fr.shape[0]
    out = orig.to(torch.uint8)[None].repeat(n, 1, 1, 1)
    x0, y0, x1, y1, xs, ys, weight = _paste_plan(alignment, dev, mask)
    if weight is None or n == 0:
        return out.cpu().numpy() if as_numpy else out
    s = alignment.size
    fs = fr.shape[1]
    # crop pixel (xc, yc) of an S crop is at ((xc + 0.5) * S' / S - 0.5) in an S' frame
    k = fs / s
    m = alignment.image_to_crop * k
    m[:, 2] += 0.5 * k - 0.5
    sampled = sample_points(to_nchw(fr), m, xs, ys, "border", "supersample").permute(0, 2, 3, 1)  # (N, h, w, 3)
    region = out[:, y0:y1, x0:x1].to(torch.float32)
    wgt = weight[None, :, :, None]
    blended = torch.where(wgt > 0, wgt * sampled + (1.0 - wgt) * region, region)
    out[:, y0:y1, x0:x1] = blended.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out.cpu().numpy() if as_numpy else out
