"""`StreamSession`: the public side of a stream (push, flush, interrupt, get, frames, close, report, and their
asyncio forms); its worker thread is worker.py's, its work compute.py's (the package docstring has the design)."""

from __future__ import annotations

import asyncio
import math
import threading
import time
from collections import deque
from typing import AsyncIterator, Iterator

import numpy as np
import torch

from ..audio_features import SAMPLE_RATE
from ..controls import Controls, check_for_model
from ..errors import InputError, VasaError
from .audio_input import Resampler, Utterance, check_chunk
from .compute import StreamCompute
from .settings import (DEFAULT_STREAM_STEPS, LatencyReport, StreamBusy, StreamClosed, StreamFrame, StreamSettings,
                       percentiles)
from .worker import SessionWorker


class AsyncForms:
    """The asyncio forms of a session's blocking calls: they run in the loop's default executor."""

    async def __aenter__(self) -> "StreamSession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def apush(self, pcm, sample_rate: int, **kw) -> list[StreamFrame]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.push(pcm, sample_rate, **kw))

    async def aflush(self, timeout: float | None = None, **kw) -> list[StreamFrame]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.flush(timeout, **kw))

    async def aget(self, timeout: float | None = None) -> StreamFrame | None:
        return await asyncio.get_running_loop().run_in_executor(None, self.get, timeout)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def aframes(self, timeout: float | None = None) -> AsyncIterator[StreamFrame]:
        """Frames as they come, until the session closes (or none comes for `timeout` seconds)."""
        while True:
            frame = await self.aget(timeout if timeout is not None else 0.5)
            if frame is None:
                if self._closed or timeout is not None:
                    return
                continue
            yield frame


class Reporting:
    """`report()`: the latency and frame rate of what a session has returned."""

    def report(self) -> LatencyReport:
        """Latency and frame rate of the frames returned so far, with the chunk size and look-ahead."""
        with self._cond:
            frames = list(self._returned)
            first, last = self._first_audio, self._last_returned
        speech = [f for f in frames if f.kind == "speech" and f.latency_s is not None]
        span = (last - first) if first is not None and last is not None and last > first else math.nan
        s = self.settings
        steps = self._cfg.n_diff_steps if self.controls.sampler == "ddpm" else self.controls.steps
        return LatencyReport(
            chunk_ms=s.chunk_ms, lookahead_ms=s.lookahead_ms, past_ms=s.past_ms, steps=steps, frames=len(frames),
            speech_frames=len(speech), idle_frames=sum(f.kind == "idle" for f in frames),
            total=percentiles([f.latency_s for f in speech]),
            lookahead=percentiles([f.lookahead_s for f in speech]),
            compute=percentiles([f.compute_s for f in speech]),
            fps=len(frames) / span if span == span and span > 0 else math.nan,
            degraded_frames=sum(f.steps is not None and f.steps < self.controls.steps for f in speech))


class StreamSession(AsyncForms, Reporting, SessionWorker):
    """Audio chunks in, frames out. Create with `Engine.stream(avatar, controls, **settings)` (settings: see
    `StreamSettings`); see the module docstring for the design. Close it (or use it as a context manager)."""

    def __init__(self, engine, avatar, controls: Controls | None = None, **settings):
        unknown = set(settings) - set(StreamSettings.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown stream setting(s): {', '.join(sorted(unknown))}")
        self.engine = engine
        self.avatar = avatar
        self.controls = controls if controls is not None else Controls(steps=DEFAULT_STREAM_STEPS)
        cfg = engine.motion_stack.generator.cfg
        check_for_model(self.controls, cfg)
        self.settings = StreamSettings(**settings)
        self.settings.check(cfg.n_motions)
        self._cfg = cfg
        self.device = engine.device
        self._compute = StreamCompute(engine, avatar, self.controls, self.settings, cancelled=lambda: self._closed)

        self._cond = threading.Condition()
        self._events: deque = deque()  # ("audio", uid, samples16k, t) | ("end", uid, t)
        self._out: deque[StreamFrame] = deque()
        self._uid = 0  # utterance new pushes belong to
        self._rate: int | None = None
        self._resampler: Resampler | None = None
        self._pending = 0  # samples accepted but not yet turned into frames (or dropped)
        self._queued_ends = 0
        self._done_uid = -1  # every utterance up to this one is finished (or dropped)
        self._dropped: set[int] = set()  # interrupted utterances
        self._last_taken: dict[str, torch.Tensor] | None = None  # driving of the last frame returned
        self._busy = False  # the worker is between taking events and publishing their frames
        self._closed = False
        self._released = False  # close() has freed the buffers
        self._error: BaseException | None = None
        self._emitted = 0  # frames produced (index of the next)
        self._returned: deque[StreamFrame] = deque(maxlen=100_000)  # returned frames' timing (no images)
        self._first_audio: float | None = None
        self._last_returned: float | None = None
        self._t0 = time.perf_counter()

        # worker-only state
        self._utt: Utterance | None = None
        self._inflight: tuple | None = None
        self._worker = threading.Thread(target=self._run, name="vasa-stream", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------ producer side

    def push(self, pcm, sample_rate: int, *, new_utterance: bool = False, block: bool = True,
             timeout: float | None = None, collect: bool = True) -> list[StreamFrame]:
        """Queue a chunk of speech (1-D samples or (samples, channels); int16, int32 or float) and return the
        frames finished so far (collect=False: return none, leave them to a consumer thread).

        The sample rate is fixed for an utterance (a new utterance may change it). Blocks while more than
        `max_pending_ms` of accepted audio waits to be turned into frames; block=False raises StreamBusy instead
        (and so does a push still blocked after `timeout` seconds); nothing is queued then."""
        self._check_open()
        x, rate = check_chunk(pcm, sample_rate)
        t_in = time.perf_counter()
        with self._cond:
            self._check_open()
            if new_utterance:
                self._interrupt_locked()
            if self._rate is not None and rate != self._rate:
                raise InputError(f"sample rate changed from {self._rate} Hz to {rate} Hz mid-utterance; push with "
                                 "new_utterance=True (or call interrupt()) to change it")
            resampler = self._resampler if self._rate is not None else Resampler(rate)
        x16 = resampler.push(x)
        frames: list[StreamFrame] = []
        limit = self.settings.max_pending_ms * SAMPLE_RATE // 1000
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while True:
                self._raise_if_failed()
                self._check_open()
                if self._pending == 0 or self._pending + x16.size <= limit:
                    break
                if collect:
                    frames += self._take_locked()
                left = None if deadline is None else deadline - time.perf_counter()
                if not block or (left is not None and left <= 0):
                    raise StreamBusy(f"the stream holds {self._pending / SAMPLE_RATE * 1000:.0f} ms of audio not yet "
                                     f"turned into frames (max_pending_ms {self.settings.max_pending_ms}); push "
                                     "again later")
                self._cond.wait(0.05 if left is None else min(0.05, left))
            if self._rate is None:
                self._rate, self._resampler = rate, resampler
            if x16.size:
                if self._first_audio is None:
                    self._first_audio = t_in
                self._events.append(("audio", self._uid, x16, t_in))
                self._pending += x16.size
                self._cond.notify_all()
            if collect:
                frames += self._take_locked()
        return frames

    def flush(self, timeout: float | None = None, *, collect: bool = True) -> list[StreamFrame]:
        """End the current utterance (its audio is padded with silence, as offline), wait until all its frames
        are finished and return every frame not taken yet (collect=False: just wait)."""
        self._check_open()
        with self._cond:
            self._check_open()
            tail = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
            t = time.perf_counter()
            if tail.size:
                self._events.append(("audio", self._uid, tail, t))
                self._pending += tail.size
            self._events.append(("end", self._uid, t))
            self._queued_ends += 1
            target = self._uid
            self._rate, self._resampler = None, None
            self._uid += 1
            self._cond.notify_all()
        return self._wait_done(target, timeout, collect)

    def set_controls(self, controls: Controls) -> None:
        """New controls, checked here (a bad value raises, nothing changes), applied in order with the audio queued
        before them, from the next chunk on (`StreamCompute.set_controls`)."""
        if not isinstance(controls, Controls):
            raise InputError(f"controls must be a Controls, got {type(controls).__name__}")
        check_for_model(controls, self._cfg)
        with self._cond:
            self._check_open()
            self.controls = controls
            self._events.append(("controls", self._uid, controls, time.perf_counter()))
            self._cond.notify_all()

    def interrupt(self) -> None:
        """Drop the current utterance: its queued audio and its frames not taken yet. The next push starts a new
        utterance, cross-faded from the last frame shown."""
        self._check_open()
        with self._cond:
            self._interrupt_locked()

    def _interrupt_locked(self) -> None:
        uid = self._uid
        kept = deque()
        for ev in self._events:
            if ev[1] == uid and ev[0] == "audio":
                self._pending -= ev[2].size
            else:
                kept.append(ev)
        self._events = kept
        self._out = deque(f for f in self._out if not (f.kind == "speech" and f.utterance == uid))
        self._dropped.add(uid)
        self._events.append(("drop", uid, time.perf_counter()))
        self._rate, self._resampler = None, None
        self._uid += 1
        self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ consumer side

    def get(self, timeout: float | None = None) -> StreamFrame | None:
        """The next frame, waiting up to `timeout` seconds (None: until one comes or the session closes);
        None when none came."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while True:
                self._raise_if_failed()
                if self._out:
                    return self._take_locked(1)[0]
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(0.1 if left is None else min(0.1, left))

    def poll(self) -> list[StreamFrame]:
        """Every frame finished so far, without waiting."""
        with self._cond:
            self._raise_if_failed()
            return self._take_locked()

    def frames(self, timeout: float | None = None) -> Iterator[StreamFrame]:
        """Frames as they come, until the session closes (or none comes for `timeout` seconds)."""
        while True:
            frame = self.get(timeout)
            if frame is None:
                return
            yield frame

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk is turned into frames as far as the audio allows; True if it did."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while self._events or self._busy:
                self._raise_if_failed()
                left = None if deadline is None else deadline - time.perf_counter()
                if self._closed or (left is not None and left <= 0):
                    return False
                self._cond.wait(0.05 if left is None else min(0.05, left))
        return True

    # ------------------------------------------------------------------------------------------ lifecycle

    def cancel(self) -> None:
        """Close without waiting (safe from an event loop): the worker stops after its current step, what is
        queued is dropped; `close()` joins it and frees the buffers. Idempotent."""
        with self._cond:
            self._closed = True
            self._events.clear()
            self._out.clear()
            self._pending = 0
            self._cond.notify_all()
        self._compute.release()  # cancels its queued scheduler work, so a worker waiting on it wakes

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker, drop what is queued, free the buffers. Idempotent."""
        self.cancel()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        with self._cond:
            if self._released:
                return
            self._released = True
        self._utt = None
        self._inflight = None
        self._compute.crossfade.clear()
        self._resampler = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # ------------------------------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            self._raise_if_failed()
            raise StreamClosed("the stream session is closed")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, VasaError):
                raise type(err)(str(err))
            raise RuntimeError(f"the stream session failed: {type(err).__name__}: {err}") from err

    def _take_locked(self, limit: int | None = None) -> list[StreamFrame]:
        now = time.perf_counter()
        out = []
        while self._out and (limit is None or len(out) < limit):
            f = self._out.popleft()
            f.returned = now
            out.append(f)
            self._last_taken = f.driving
            self._returned.append(StreamFrame(f.index, f.kind, f.utterance, f.frame, None, np.zeros(0, np.float32),
                                              {}, None, f.audio_in, f.ready, f.started, f.finished, f.returned,
                                              f.steps))
        if out:
            self._last_returned = now
            self._cond.notify_all()
        return out

    def _wait_done(self, uid: int, timeout: float | None, collect: bool) -> list[StreamFrame]:
        deadline = None if timeout is None else time.perf_counter() + timeout
        frames: list[StreamFrame] = []
        with self._cond:
            while self._done_uid < uid:  # set once the utterance's frames are published (or it was dropped)
                self._raise_if_failed()
                self._check_open()
                if collect:
                    frames += self._take_locked()
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    raise StreamBusy(f"the stream did not finish within {timeout} s")
                self._cond.wait(0.05 if left is None else min(0.05, left))
            self._raise_if_failed()
            if collect:
                frames += self._take_locked()
        return frames
