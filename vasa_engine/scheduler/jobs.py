"""The device scheduler's units of work: a stream's motion window or block of frames, with its deadline, its
session's slot, and the result handed back; and the meter of the frame rate the scheduler sustains."""

from __future__ import annotations

import threading
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from ..streaming.settings import StreamClosed


class Slot:
    """A session's place in the scheduler: its live jobs (cancelled together when the session goes)."""

    def __init__(self, sid: int, fps: float):
        self.sid = sid
        self.fps = fps
        self.open = True


@dataclass(eq=False)
class Job:
    """One unit of a session's work. kind: "window" (payload: a generation.WindowRequest) or "frames" (payload:
    (avatar, Motion)). deadline: the clock time its first frame is due. steps: the sampler steps a window ran
    with (fewer than asked when it was degraded to keep its deadline)."""

    kind: str
    slot: Slot
    payload: Any
    deadline: float
    submitted: float
    seq: int = 0
    steps: int | None = None
    started: float | None = None
    finished: float | None = None
    result: Any = None
    error: BaseException | None = None
    parts: list = field(default_factory=list)  # frames: the launched pieces, in row order
    rows_left: int = 0
    _done: threading.Event = field(default_factory=threading.Event)

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def finish(self, result: Any = None, error: BaseException | None = None, at: float | None = None) -> None:
        if self._done.is_set():
            return
        self.result, self.error, self.finished = result, error, at
        self._done.set()

    def cancel(self) -> None:
        self.finish(error=StreamClosed("the stream session was closed while its work was queued"))

    def wait(self, timeout: float | None = None):
        """The result (the window's motion; the frames' list of frames.RenderedFrames), once the scheduler ran it."""
        if not self._done.wait(timeout):
            raise TimeoutError(f"the device scheduler did not run this {self.kind} job within {timeout} s")
        if self.error is not None:
            raise self.error
        return self.result


class FramesResult:
    """A frames job's result as a session's worker takes it (frames.RenderedFrames' `wait`): the job's launched
    pieces, concatenated in row order once the scheduler has run every row."""

    def __init__(self, job: Job):
        self.job = job

    def wait(self):
        import torch

        return torch.cat([piece.wait() for piece in self.job.wait()])


class RateMeter:
    """Frames the scheduler produced and the seconds it was busy producing them, over its last `rounds` rounds:
    the frame rate it sustains when busy (None before anything was measured)."""

    def __init__(self, rounds: int = 64):
        self._rounds: deque[tuple[int, float]] = deque(maxlen=rounds)

    def add(self, frames: int, seconds: float) -> None:
        self._rounds.append((frames, seconds))

    def fps(self) -> float | None:
        frames = sum(f for f, _ in self._rounds)
        seconds = sum(s for _, s in self._rounds)
        if frames == 0 or seconds <= 0:
            return None
        return frames / seconds
