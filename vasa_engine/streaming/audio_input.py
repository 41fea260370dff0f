"""A stream's audio input: chunks checked and resampled to 16 kHz, each utterance's audio in JoyVASA's padded clip
coordinates, and the chunk planning (which frames the next window commits). No threads and no models here."""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import torch

from ..audio_features import JOYVASA_CLIP_PAD, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from ..errors import InputError
from ..generation import LEAD_IN_FRAMES
from ..io.audio import MAX_CHANNELS, samples_to_float32

MAX_RATE = 1_000_000


def check_chunk(pcm, sample_rate) -> tuple[np.ndarray, int]:
    """A pushed chunk -> mono float32 samples and its rate; InputError naming what is wrong."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not \
            0 < int(sample_rate) <= MAX_RATE:
        raise InputError(f"sample_rate must be a positive integer of at most {MAX_RATE} Hz, got {sample_rate!r}")
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().cpu()
        pcm = (pcm.float() if pcm.dtype == torch.bfloat16 else pcm).numpy()
    if not isinstance(pcm, np.ndarray):
        raise InputError(f"audio chunk must be a numpy array or torch tensor, got {type(pcm).__name__}")
    if pcm.ndim not in (1, 2):
        raise InputError(f"audio chunk must be 1-D (samples,) or 2-D (samples, channels), got shape {pcm.shape}")
    if pcm.ndim == 2 and not 1 <= pcm.shape[1] <= MAX_CHANNELS:
        raise InputError(f"audio chunk of shape {pcm.shape} is not (samples, channels) with 1 to {MAX_CHANNELS} "
                         "channels")
    x = samples_to_float32(pcm, "audio chunk")
    if x.ndim == 2:
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), int(sample_rate)


class Resampler:
    """Any rate -> 16 kHz mono float32, chunk by chunk, with libswresample's state kept between chunks."""

    def __init__(self, rate: int):
        self.rate = rate
        self._resampler = None
        self._pts = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.rate == SAMPLE_RATE or x.size == 0:
            return x
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += x.shape[0]
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self._resampler = None
        return out

    @staticmethod
    def _collect(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


class Utterance:
    """One utterance's audio and progress in padded clip coordinates (frame j = padded samples [640 j, 640 (j+1)),
    audio frame j - 2 of the utterance), with its driving stage (vasa_engine.driving.Driving)."""

    def __init__(self, uid: int, driving):
        self.uid = uid
        self.buf = np.zeros(JOYVASA_CLIP_PAD[0], np.float32)  # padded samples from buf_start on
        self.buf_start = 0
        self.padded = JOYVASA_CLIP_PAD[0]  # padded samples received (lead-in zeros included)
        self.arrivals: deque[tuple[int, float]] = deque()  # (padded end sample, time it arrived)
        self.committed = 0  # padded frames generated
        self.ended: float | None = None  # time of the flush
        self.total: int | None = None  # padded frames of a flushed utterance
        self.motion: torch.Tensor | None = None  # (1, <= Lp, M) last committed motion
        self.feats: torch.Tensor | None = None  # (1, <= Lp, d) their audio features
        self.driving = driving
        self.last_audio = time.perf_counter()
        self.settled = 0  # received samples no longer counted as pending

    def append(self, x: np.ndarray, t: float) -> None:
        if x.size:
            self.buf = np.concatenate([self.buf, x])
            self.padded += x.size
            self.arrivals.append((self.padded, t))
            self.last_audio = t

    def end(self, t: float) -> None:
        if self.ended is None:
            self.ended = t
            received = self.padded - JOYVASA_CLIP_PAD[0]
            self.total = LEAD_IN_FRAMES + max(1, round(received / SAMPLES_PER_VIDEO_FRAME)) if received else 0

    @property
    def received(self) -> int:
        return self.padded - JOYVASA_CLIP_PAD[0]

    def ready_frames(self, lookahead: int) -> int:
        if self.total is not None:
            return self.total
        return max(0, self.padded // SAMPLES_PER_VIDEO_FRAME - lookahead)

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Padded samples [start, stop), zeros beyond what was received."""
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self.buf_start), min(stop, self.buf_start + self.buf.size)
        if hi > lo:
            out[lo - start : hi - start] = self.buf[lo - self.buf_start : hi - self.buf_start]
        return out

    def arrival(self, sample: int) -> float | None:
        """When padded sample `sample` arrived (None: not received)."""
        for end, t in self.arrivals:
            if sample < end:
                return t
        return None

    def trim(self, keep_from_sample: int) -> None:
        cut = keep_from_sample - self.buf_start
        if cut > 0:
            self.buf = self.buf[cut:]
            self.buf_start = keep_from_sample
        while len(self.arrivals) > 1 and self.arrivals[0][0] <= keep_from_sample:
            self.arrivals.popleft()

    def next_chunk(self, chunk_frames: int, lookahead_frames: int, past_frames: int) -> "ChunkPlan | None":
        return plan_chunk(self.committed, self.ready_frames(lookahead_frames), self.total, chunk_frames,
                          lookahead_frames, past_frames)


@dataclass(frozen=True)
class ChunkPlan:
    """The next window of a stream: it commits padded frames [first, stop); the audio encoder sees frames
    [span_start, span_stop) (past, the new frames, the look-ahead)."""

    first: int
    stop: int
    span_start: int
    span_stop: int

    @property
    def frames(self) -> int:
        return self.stop - self.first


def plan_chunk(committed: int, ready: int, total: int | None, chunk_frames: int, lookahead_frames: int,
               past_frames: int) -> ChunkPlan | None:
    """Which frames the next window commits, or None when it must wait for more audio.

    committed: padded frames generated so far; ready: frames whose audio and look-ahead have arrived (all of them
    once the utterance is flushed, `total` then being its padded frame count). A window runs for every
    `chunk_frames` ready frames, and for the rest once the utterance is flushed."""
    if total is not None:
        if ready <= committed:
            return None
    elif ready - committed < chunk_frames:
        return None
    stop = committed + min(chunk_frames, ready - committed)
    return ChunkPlan(committed, stop, max(0, committed - past_frames), stop + lookahead_frames)
