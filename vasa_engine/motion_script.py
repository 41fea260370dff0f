"""A scripted driving motion: a head turn, a blink and the mouth opening and closing, around the portrait's rest."""

from __future__ import annotations

import math

import torch

from .engine import Avatar, Motion


def _bump(t: torch.Tensor, centre: float, width: float) -> torch.Tensor:
    """A smooth 0 -> 1 -> 0 pulse (raised cosine) of the given width centred at `centre` (seconds)."""
    x = ((t - centre) / width).clamp(-0.5, 0.5)
    return 0.5 * (1 + torch.cos(2 * math.pi * x))


def scripted_motion(avatar: Avatar, frames: int, fps: float = 25.0, *, yaw_degrees: float = 20.0,
                    open_eye: float | None = None, open_lip: float = 0.6) -> Motion:
    """`frames` frames that fit the script into their duration, whatever it is.

    Over the clip: the head turns to one side and back (+-yaw_degrees, one sine period, with a little nod), the
    eyes blink once at 40% of the clip, and the mouth opens and closes twice, at 25% and 70%.
    """
    if frames < 1:
        raise ValueError("frames must be at least 1")
    rest = avatar.rest_motion(frames)
    duration = frames / fps
    t = torch.arange(frames, dtype=torch.float32) / fps
    phase = 2 * math.pi * t / duration
    rest.yaw = rest.yaw + yaw_degrees * torch.sin(phase)
    rest.pitch = rest.pitch + 0.2 * yaw_degrees * torch.sin(2 * phase)
    eye_open = float(avatar.eye_ratio.mean()) if open_eye is None else open_eye
    blink_width = min(0.3, 0.25 * duration)
    rest.eye = eye_open * (1 - _bump(t, 0.4 * duration, blink_width))
    mouth_width = min(0.8, 0.35 * duration)
    rest.lip = open_lip * torch.maximum(_bump(t, 0.25 * duration, mouth_width), _bump(t, 0.7 * duration, mouth_width))
    return rest
