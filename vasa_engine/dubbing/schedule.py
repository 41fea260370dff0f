"""The dub's timing and driving parameters, as pure functions: which source frame each output frame shows, how far
it follows the new speech (1 while the speech lasts, a cross-fade back to the original after it), the generated
25 fps expression resampled to the source's frame rate, and the driving parameters built from the source frame's
own pose and the generated expression."""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from ..controls import Controls
from ..driving import LIP_KEYPOINTS, Motion, apply_controls
from ..errors import InputError

MODES = ("lips", "expression")
ON_LONG = ("error", "loop")
MOTION_FPS = 25.0  # the motion generator's frame rate


@dataclass
class Schedule:
    """source[i]: the source frame output frame i shows; weight[i]: how far it follows the new speech (1 dubbed,
    0 the original frame, in between a cross-fade); motion_time[i]: its time in generated frames (25 fps)."""

    source: np.ndarray
    weight: np.ndarray
    motion_time: np.ndarray

    def __len__(self) -> int:
        return len(self.source)


def ping_pong(count: int, frames: int) -> np.ndarray:
    """Indices 0, 1, .., frames - 1, frames - 2, .., 1, 0, 1, .. (the video played back and forth), count of them."""
    if frames == 1:
        return np.zeros(count, np.int64)
    period = 2 * (frames - 1)
    k = np.arange(count) % period
    return np.where(k < frames, k, period - k)


def plan(source_frames: int, fps: float, speech_seconds: float, *, on_long: str = "error",
         fade_frames: int = 6) -> Schedule:
    """The output's frames for a video of source_frames at fps and speech_seconds of speech. Speech longer than the
    video: on_long "error" refuses, "loop" plays the video back and forth for as long as the speech. Speech shorter:
    the rest of the video keeps its original mouth, reached by a linear cross-fade over fade_frames frames."""
    if on_long not in ON_LONG:
        raise InputError(f"on-long must be one of {', '.join(ON_LONG)}, got {on_long!r}")
    speech_frames = max(1, math.ceil(speech_seconds * fps - 1e-6))
    if speech_frames > source_frames and on_long == "error":
        raise InputError(f"the speech ({speech_seconds:.2f} s) is longer than the video ({source_frames / fps:.2f} s); "
                         "cut the speech, or play the video back and forth with --on-long loop")
    total = max(source_frames, speech_frames)
    source = ping_pong(total, source_frames) if total > source_frames else np.arange(total)
    after = np.arange(total) - speech_frames + 1  # 1 for the first frame after the speech
    weight = np.clip(1.0 - after / (fade_frames + 1), 0.0, 1.0) if fade_frames > 0 else (after <= 0).astype(float)
    motion_time = np.minimum(np.arange(total), speech_frames - 1) * (MOTION_FPS / fps)
    return Schedule(source.astype(np.int64), weight.astype(np.float64), motion_time)


def resample(values: torch.Tensor, times: np.ndarray) -> torch.Tensor:
    """Per-frame values (G, ...) at 25 fps -> values at the given times (in 25 fps frames), linearly interpolated
    between the two nearest generated frames and held at the ends."""
    g = values.shape[0]
    t = torch.as_tensor(np.clip(times, 0, g - 1), dtype=torch.float64)
    low = t.floor().long()
    high = (low + 1).clamp(max=g - 1)
    frac = (t - low).to(values.dtype).reshape(-1, *([1] * (values.dim() - 1)))
    return values[low] * (1 - frac) + values[high] * frac


def dub_expression(frame_exp: torch.Tensor, generated_exp: torch.Tensor, reference_exp: torch.Tensor, mode: str,
                   weight: torch.Tensor) -> torch.Tensor:
    """The expression of dubbed frames (n, K, 3).

    generated_exp: the generated motion's expression on the reference frame (its own expression plus the
    generated change, the lip keypoints absolute, as vasa_engine.driving makes it). "lips": the frame's expression
    with the lip keypoints taken from the generated motion. "expression": the frame's expression plus the whole
    generated change (generated - reference), the lip keypoints from the generated motion. weight (n,): blends
    from the frame's own expression (0) to that target (1)."""
    if mode not in MODES:
        raise InputError(f"dub mode must be one of {', '.join(MODES)}, got {mode!r}")
    target = frame_exp + (generated_exp - reference_exp) if mode == "expression" else frame_exp.clone()
    lips = list(LIP_KEYPOINTS)
    target[:, lips] = generated_exp[:, lips]
    return frame_exp + weight.reshape(-1, 1, 1).to(frame_exp) * (target - frame_exp)


def dub_motion(frame_params: dict[str, torch.Tensor], generated_exp: torch.Tensor, reference_exp: torch.Tensor,
               mode: str, weight: torch.Tensor, controls: Controls) -> Motion:
    """Driving parameters of n dubbed frames: pitch, yaw, roll, scale and translation of each source frame itself
    (frame_params, from the motion extractor on its crop), the expression from `dub_expression`, then the controls
    (pose offsets, openness, renderer settings) as for generated motion."""
    d = {k: frame_params[k].float().cpu() for k in ("pitch", "yaw", "roll", "t", "scale")}
    d["exp"] = dub_expression(frame_params["exp"].float().cpu(), generated_exp.float().cpu(),
                              reference_exp.float().cpu(), mode, weight)
    return apply_controls(d, controls)
