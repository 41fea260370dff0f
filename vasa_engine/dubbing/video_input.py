"""The source video of a dub: every frame decoded upright (the display matrix applied), its frame rate, and the
refusal of inputs a frame-by-frame edit cannot keep in step with the speech (no frames, a variable frame rate)."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError
from ..errors import one_line
from ..io.video import open_for_reading

# Frame intervals may differ from the nominal one by this fraction (timestamp rounding in the container) before a
# video counts as variable-frame-rate.
FRAME_INTERVAL_TOLERANCE = 0.25


@dataclass
class SourceVideo:
    """Frames as displayed, uint8 (H, W, 3) each; fps: the nominal rate; rotation: the display rotation applied
    (degrees counter-clockwise, as PyAV reports the display matrix); times: each frame's presentation time (s)."""

    frames: list[np.ndarray]
    fps: float
    rotation: int
    times: np.ndarray
    name: str

    def __len__(self) -> int:
        return len(self.frames)

    @property
    def duration(self) -> float:
        return len(self.frames) / self.fps


def upright(image: np.ndarray, rotation: int) -> np.ndarray:
    """A decoded frame turned as the display matrix says (rotation: degrees counter-clockwise)."""
    quarter_turns = round(rotation / 90) % 4
    return np.ascontiguousarray(np.rot90(image, k=quarter_turns)) if quarter_turns else image


def read_source_video(path: str | os.PathLike, max_frames: int | None = None) -> SourceVideo:
    """Decode every frame (at most max_frames) upright. One-line InputError for a file that is not a video, has no
    video stream, no decodable frame, no frame rate, or a variable frame rate."""
    container, p = open_for_reading(path)
    frames, times, rotation = [], [], 0
    with container:
        stream = container.streams.video[0]
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        try:
            for frame in container.decode(video=0):
                rotation = int(getattr(frame, "rotation", 0) or 0)
                frames.append(upright(frame.to_ndarray(format="rgb24"), rotation))
                times.append(float(frame.time) if frame.time is not None else float("nan"))
                if max_frames is not None and len(frames) >= max_frames:
                    break
        except Exception as e:  # av.error.FFmpegError and friends
            if not frames:
                raise InputError(f"corrupt video ({one_line(e)}): {p}") from None
    if not frames:
        raise InputError(f"no decodable video frames in file: {p}")
    fps = float(rate) if rate else 0.0
    if not fps > 0:
        raise InputError(f"video has no frame rate: {p}")
    video = SourceVideo(frames, fps, rotation, np.asarray(times, np.float64), str(Path(p)))
    check_constant_rate(video)
    return video


def check_constant_rate(video: SourceVideo) -> None:
    """Refuse a variable-frame-rate video: the dub maps output frame i to time i / fps, which only holds when every
    frame lasts 1 / fps."""
    times = video.times
    if len(times) < 3 or not np.isfinite(times).all():
        return
    intervals = np.diff(times)
    nominal = 1.0 / video.fps
    if np.abs(intervals - nominal).max() > FRAME_INTERVAL_TOLERANCE * nominal:
        raise InputError(f"variable frame rate (frame intervals from {intervals.min() * 1000:.1f} to "
                         f"{intervals.max() * 1000:.1f} ms) is not supported; re-encode it at a constant rate "
                         f"(e.g. ffmpeg -i in.mp4 -vf fps=25 out.mp4): {video.name}")
