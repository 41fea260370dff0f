"""Per-frame keypoint math: pose bins -> degrees, rotation matrices, the implicit keypoint transform."""

from __future__ import annotations

import math

import torch


def bins_to_degrees(logits: torch.Tensor) -> torch.Tensor:
    """(B, bins) logits -> (B,) degrees: 3 * E[bin index] - 97.5 (66 bins cover +-97.5)."""
    idx = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
    return (torch.softmax(logits, dim=-1) * idx).sum(-1) * 3 - 97.5


def rotation_matrix(pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor) -> torch.Tensor:
    """(B,) degrees each -> (B, 3, 3) matrix R for row-vector keypoints (x @ R): R = (Rz Ry Rx)^T."""
    p, y, r = (a.reshape(-1) * (math.pi / 180) for a in (pitch, yaw, roll))
    one, zero = torch.ones_like(p), torch.zeros_like(p)
    cp, sp, cy, sy, cr, sr = p.cos(), p.sin(), y.cos(), y.sin(), r.cos(), r.sin()
    rx = torch.stack([one, zero, zero, zero, cp, -sp, zero, sp, cp], dim=1).view(-1, 3, 3)
    ry = torch.stack([cy, zero, sy, zero, one, zero, -sy, zero, cy], dim=1).view(-1, 3, 3)
    rz = torch.stack([cr, -sr, zero, sr, cr, zero, zero, zero, one], dim=1).view(-1, 3, 3)
    return (rz @ ry @ rx).transpose(1, 2)


def transform_keypoints(kp: torch.Tensor, rot: torch.Tensor, exp: torch.Tensor, t: torch.Tensor,
                        scale: torch.Tensor) -> torch.Tensor:
    """scale * (kp @ R + exp), then + t on x and y (t_z is never used). kp, exp: (B, K, 3) or (B, 3K)."""
    b = rot.shape[0]
    x = kp.reshape(b, -1, 3) @ rot + exp.reshape(b, -1, 3)
    x = x * scale.reshape(b, 1, 1)
    shift = torch.zeros_like(x[:, :1, :])
    shift[..., :2] = t.reshape(b, -1)[:, None, :2]
    return x + shift


def _dist(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.linalg.vector_norm(a - b, dim=-1)


def eye_ratios(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 203, 2) landmarks -> (B, 2) left and right eye openness (lid distance over eye width)."""
    left = _dist(landmarks[:, 6], landmarks[:, 18]) / (_dist(landmarks[:, 0], landmarks[:, 12]) + 1e-6)
    right = _dist(landmarks[:, 30], landmarks[:, 42]) / (_dist(landmarks[:, 24], landmarks[:, 36]) + 1e-6)
    return torch.stack([left, right], dim=1)


def lip_ratio(landmarks: torch.Tensor) -> torch.Tensor:
    """(B, 203, 2) landmarks -> (B, 1) mouth openness (lip distance over mouth width)."""
    return (_dist(landmarks[:, 90], landmarks[:, 102]) / (_dist(landmarks[:, 48], landmarks[:, 66]) + 1e-6))[:, None]
