"""A stream's settings, its output frames and its latency report."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np
import torch

from ..errors import InputError, VasaError

FPS = 25
FRAME_MS = 1000 // FPS  # 40
DEFAULT_STREAM_STEPS = 5


class StreamBusy(VasaError):
    """push(block=False) (or one with a timeout) found more unprocessed audio queued than `max_pending_ms`."""


class StreamClosed(InputError):
    """A call on a session that has been closed."""




@dataclass(frozen=True)
class StreamSettings:
    """What a stream can be tuned with (all keyword arguments of `Engine.stream`).

    chunk_ms: audio per generator window (multiple of 40, 40 .. 40 L); lookahead_ms: future audio a frame waits
    for (multiple of 40, 0 .. 1000); past_ms: audio before the new frames the encoder sees (0 .. 10000).
    max_pending_ms: accepted audio not yet turned into frames before push blocks (at least chunk + look-ahead + 40).
    max_ready_frames: finished frames not yet taken before the worker waits. render: False returns motion only.
    idle: keep a 25 fps clock and fill gaps with idle frames; idle_slack_ms: how far behind the clock before idle
    frames start (default chunk + look-ahead + 200 ms); end_after_ms: with idle, finish an utterance whose audio
    stopped this long ago (None: never). blink_period_s: idle blink period. crossfade_frames: frames of the
    cross-fade between utterances and idle frames. cuda_graphs: capture the sampler loop and the renderer on CUDA.
    batch_size: frames rendered per batch (default: the engine's). batched: hand the motion windows and frames to
    the engine's device scheduler (vasa_engine.scheduler), batched with every other batched session's;
    latency_budget_ms: with batched, how long after its audio arrives a frame is due (default chunk + look-ahead
    + 200 ms), which orders the scheduler's work and decides when a window runs with fewer steps.
    denoiser_factory: replaces the guided transformer, called as (window, audio (1, L, d), prev_motion (1, c, M)
    or None, prev_audio (1, c, d) or None) with the c <= Lp real context frames (tests plug exact predictors of
    known distributions in here).
    """

    chunk_ms: int = 200
    lookahead_ms: int = 80
    past_ms: int = 1000
    max_pending_ms: int = 2000
    max_ready_frames: int = 100
    render: bool = True
    idle: bool = False
    idle_slack_ms: int | None = None
    end_after_ms: int | None = 600
    blink_period_s: float = 4.0
    crossfade_frames: int = 6
    cuda_graphs: bool = True
    batch_size: int | None = None
    denoiser_factory: Callable | None = None
    batched: bool = False
    latency_budget_ms: int | None = None

    def check(self, window_frames: int) -> None:
        def whole_frames(name: str, value, low: int, high: int) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value % FRAME_MS:
                raise InputError(f"{name} must be a whole number of {FRAME_MS} ms video frames, got {value!r}")
            if not low <= value <= high:
                raise InputError(f"{name} must lie in [{low}, {high}] ms, got {value}")

        whole_frames("chunk_ms", self.chunk_ms, FRAME_MS, FRAME_MS * window_frames)
        whole_frames("lookahead_ms", self.lookahead_ms, 0, 1000)
        if isinstance(self.past_ms, bool) or not isinstance(self.past_ms, (int, np.integer)) \
                or not 0 <= self.past_ms <= 10000:
            raise InputError(f"past_ms must be an integer in [0, 10000], got {self.past_ms!r}")
        low = self.chunk_ms + self.lookahead_ms + FRAME_MS
        if not isinstance(self.max_pending_ms, (int, float)) or not low <= self.max_pending_ms <= 600_000:
            raise InputError(f"max_pending_ms must lie in [{low}, 600000] (at least chunk + look-ahead + one frame), "
                             f"got {self.max_pending_ms!r}")
        if not isinstance(self.max_ready_frames, int) or self.max_ready_frames < 1:
            raise InputError(f"max_ready_frames must be a positive integer, got {self.max_ready_frames!r}")
        if not isinstance(self.crossfade_frames, int) or not 0 <= self.crossfade_frames <= 100:
            raise InputError(f"crossfade_frames must be an integer in [0, 100], got {self.crossfade_frames!r}")
        if not (isinstance(self.blink_period_s, (int, float)) and 1.0 <= self.blink_period_s <= 60.0):
            raise InputError(f"blink_period_s must lie in [1, 60], got {self.blink_period_s!r}")
        for name in ("idle_slack_ms", "end_after_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 60_000):
                raise InputError(f"{name} must be None or lie in [0, 60000] ms, got {value!r}")
        if not isinstance(self.batched, bool):
            raise InputError(f"batched must be True or False, got {self.batched!r}")
        if self.batched and self.denoiser_factory is not None:
            raise InputError("batched sessions run the engine's guided transformer: denoiser_factory is not "
                             "supported with batched=True")
        if self.latency_budget_ms is not None and (isinstance(self.latency_budget_ms, bool) or not isinstance(
                self.latency_budget_ms, int) or not 0 < self.latency_budget_ms <= 60_000):
            raise InputError(f"latency_budget_ms must be None or an integer in (0, 60000], got "
                             f"{self.latency_budget_ms!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def chunk_frames(self) -> int:
        return self.chunk_ms // FRAME_MS

    @property
    def lookahead_frames(self) -> int:
        return self.lookahead_ms // FRAME_MS

    @property
    def latency_budget_s(self) -> float:
        budget = self.latency_budget_ms
        return (budget if budget is not None else self.chunk_ms + self.lookahead_ms + 200) / 1000

    @property
    def past_frames(self) -> int:
        return -(-self.past_ms // FRAME_MS)




@dataclass
class StreamFrame:
    """One output frame.

    index: position in the session's output (0, 1, ...). kind: "speech" or "idle". utterance: the utterance it
    belongs to (idle frames: the last one). frame: index within the utterance (speech frames; frame i shows the
    utterance's audio at 40 i ms). image: uint8 (S, S, 3), None when the session does not render. audio: the 640
    samples at 16 kHz it shows (zeros for idle frames). driving: its driving parameters (pitch, yaw, roll (1,),
    exp (1, K, 3), t (1, 3), scale (1, 1), eye (1,) or None). generated: the generator's normalized motion (M,)
    (speech frames). Times (time.perf_counter seconds): audio_in: its own audio had reached the engine; ready:
    its look-ahead had too (or the utterance was flushed); started / finished: its chunk's compute; returned.
    steps: the sampler steps its window ran with (speech frames of batched sessions; fewer than the controls'
    when the device scheduler degraded the window to keep its deadline).
    """

    index: int
    kind: str
    utterance: int
    frame: int | None
    image: np.ndarray | None
    audio: np.ndarray
    driving: dict[str, torch.Tensor]
    generated: torch.Tensor | None = None
    audio_in: float | None = None
    ready: float | None = None
    started: float | None = None
    finished: float | None = None
    returned: float | None = None
    steps: int | None = None

    @property
    def latency_s(self) -> float | None:
        """From its audio reaching the engine to the frame being returned (speech frames)."""
        if self.audio_in is None or self.returned is None:
            return None
        return self.returned - self.audio_in

    @property
    def lookahead_s(self) -> float | None:
        """Of the latency, the wait for the look-ahead audio (algorithmic)."""
        if self.audio_in is None or self.ready is None:
            return None
        return max(0.0, self.ready - self.audio_in)

    @property
    def compute_s(self) -> float | None:
        """Of the latency, everything after the audio it depends on was in: chunking, queueing, compute, hand-out."""
        if self.ready is None or self.returned is None:
            return None
        return max(0.0, self.returned - max(self.ready, self.audio_in))


def percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "max": math.nan}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


@dataclass
class LatencyReport:
    """Latency of the speech frames returned so far (seconds), with the settings it was measured under."""

    chunk_ms: int
    lookahead_ms: int
    past_ms: int
    steps: int
    frames: int
    speech_frames: int
    idle_frames: int
    total: dict[str, float]
    lookahead: dict[str, float]
    compute: dict[str, float]
    fps: float  # frames returned / seconds from the first audio in to the last frame returned
    degraded_frames: int = 0  # speech frames whose window ran with fewer sampler steps (batched sessions)

    def summary(self) -> str:
        def ms(d):
            return f"p50 {d['p50'] * 1000:.0f} ms, p95 {d['p95'] * 1000:.0f} ms, max {d['max'] * 1000:.0f} ms"

        return (f"latency (chunk {self.chunk_ms} ms, look-ahead {self.lookahead_ms} ms, past {self.past_ms} ms, "
                f"{self.steps} steps; {self.speech_frames} speech frames): {ms(self.total)}\n"
                f"  look-ahead (algorithmic): {ms(self.lookahead)}\n"
                f"  compute (chunking, queueing, compute, hand-out): {ms(self.compute)}\n"
                f"sustained: {self.fps:.2f} fps ({self.frames} frames, {self.idle_frames} idle"
                + (f", {self.degraded_frames} with fewer sampler steps" if self.degraded_frames else "") + ")")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}
