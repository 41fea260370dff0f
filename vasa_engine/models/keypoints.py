"""Keypoint math: pose bins -> degrees, rotation matrices, the implicit keypoint transform, eye and lip ratios,
and the two steps built on them that every path runs (the renderer, the ONNX export, the parity fixtures): the
source keypoints, once per portrait, and the driving keypoints, per frame."""

from __future__ import annotations

import math
from typing import Callable, Mapping, NamedTuple, Sequence

import torch

from .retarget import RetargetMLP, apply_stitching


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


class SourceKeypoints(NamedTuple):
    """A portrait's keypoint parameters: pose in degrees (B,) and its rotation (B, 3, 3), canonical keypoints and
    expression (B, K, 3), translation (B, 3), scale (B, 1), and x_s (B, K, 3), the implicit keypoints."""

    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    rot: torch.Tensor
    kp: torch.Tensor
    exp: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    x_s: torch.Tensor


def source_keypoints(raw: Mapping[str, torch.Tensor]) -> SourceKeypoints:
    """The motion extractor's outputs (pitch, yaw, roll bin logits, kp, exp, t, scale) -> keypoint parameters,
    in fp32 whatever the extractor's dtype."""
    raw = {name: value.float() for name, value in raw.items()}
    b = raw["kp"].shape[0]
    pitch, yaw, roll = (bins_to_degrees(raw[name]) for name in ("pitch", "yaw", "roll"))
    rot = rotation_matrix(pitch, yaw, roll)
    kp, exp = raw["kp"].reshape(b, -1, 3), raw["exp"].reshape(b, -1, 3)
    x_s = transform_keypoints(kp, rot, exp, raw["t"], raw["scale"])
    return SourceKeypoints(pitch, yaw, roll, rot, kp, exp, raw["t"], raw["scale"], x_s)


def implicit_keypoints(kp: torch.Tensor, pitch: torch.Tensor, yaw: torch.Tensor, roll: torch.Tensor,
                       exp: torch.Tensor, t: torch.Tensor, scale: torch.Tensor) -> torch.Tensor:
    """scale * (kp @ R(pitch, yaw, roll) + exp) + t_xy for a batch of N poses; kp (1, K, 3) serves all N."""
    kp = kp.reshape(kp.shape[0], -1, 3).expand(exp.shape[0], -1, -1)
    return transform_keypoints(kp, rotation_matrix(pitch, yaw, roll), exp, t, scale)


def driving_keypoints(kp: torch.Tensor, x_s: torch.Tensor, pitch: torch.Tensor, yaw: torch.Tensor,
                      roll: torch.Tensor, exp: torch.Tensor, t: torch.Tensor, scale: torch.Tensor, *,
                      offsets: Sequence[torch.Tensor] = (), stitching: RetargetMLP | None = None,
                      multiplier: float | torch.Tensor = 1.0,
                      transform: Callable[..., torch.Tensor] = implicit_keypoints) -> torch.Tensor:
    """Driving parameters of N frames -> driving keypoints (N, K, 3); kp and x_s may be (1, K, 3).

    x_d = transform(kp, pitch, yaw, roll, exp, t, scale) (the implicit keypoint transform; the engine passes its
    fused native version), plus each of `offsets` in turn (the eye and lip retargeting deltas), then the stitching
    MLP's correction when it is given, then x_s + (x_d - x_s) * multiplier (skipped for the number 1.0).
    """
    x_d = transform(kp, pitch, yaw, roll, exp, t, scale)
    for offset in offsets:
        x_d = x_d + offset
    x_s = x_s.expand(x_d.shape[0], -1, -1)
    if stitching is not None:
        x_d = apply_stitching(stitching, x_s, x_d)
    if isinstance(multiplier, torch.Tensor) or multiplier != 1.0:
        x_d = x_s + (x_d - x_s) * multiplier
    return x_d
