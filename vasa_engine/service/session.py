"""One client's live session inside the service: a `StreamSession` with idle frames on, fed and drained by two
threads of its own so the event loop never blocks on the engine.

The feed thread takes the client's messages in order (audio, controls, interrupt, end) and hands them to the
stream; a push the stream holds back (its `max_pending_ms`) is retried until it fits, unless an interrupt made
it stale. The output thread takes the stream's frames as they finish, encodes them for the client (the live
preview's message format for `output: websocket`) and queues them to the event loop. The loop side
(`next_event`) gets `OutFrame`s and, after an `end`, one `Done` with the report.

Transport-agnostic: the WebSocket handler (app.py) and the scale-out replicas use the same object.
"""

from __future__ import annotations

import asyncio
import math
import queue
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..errors import VasaError, one_line
from ..streaming import FRAME_MS, StreamBusy, StreamClosed
from ..streaming.settings import percentiles
from .protocol import SAMPLE_RATE, ProtocolError, Start, controls_from

OUTPUT_QUEUE_FRAMES = 250  # 10 s of frames a slow client may fall behind before the oldest are dropped
DEFAULT_MAX_BUFFERED_S = 120.0  # audio received and not yet accepted by the stream before the session is refused
SERVICE_PENDING_MS = 30_000  # the stream's own bound on accepted, unrendered audio (a TTS burst fits)


@dataclass
class OutFrame:
    index: int
    kind: str
    utterance: int
    frame: int | None
    image: np.ndarray
    audio: np.ndarray  # float32, 640 samples at 16 kHz
    audio_in: float | None  # time.perf_counter() when its audio reached the stream (speech frames)
    payload: bytes | None = None  # the encoded WebSocket message (output "websocket")


@dataclass
class Done:
    """Every frame of the ended speech has been queued before this (the report is taken once they are sent)."""


@dataclass
class Failed:
    message: str


@dataclass
class SessionStats:
    audio_samples: int = 0
    frames: int = 0
    speech_frames: int = 0
    idle_frames: int = 0
    late: int = 0
    dropped: int = 0
    dropped_speech: int = 0
    interrupts: int = 0
    latencies: list = field(default_factory=list)


class ServiceSession:
    """Create in the event loop that will read it; `start.settings` are checked by the stream (InputError)."""

    def __init__(self, engine, avatar, start: Start, *, loop: asyncio.AbstractEventLoop | None = None,
                 max_buffered_s: float = DEFAULT_MAX_BUFFERED_S):
        settings = {"max_pending_ms": SERVICE_PENDING_MS, **start.settings, "idle": True, "render": True}
        self.start = start
        self.engine = engine
        self.id = uuid.uuid4().hex[:12]
        self.replica: str | None = None  # where it runs, when not this process (scale-out)
        self.stream = engine.stream(avatar, start.controls, **settings)
        self.latency_budget_s = self.stream.settings.latency_budget_s
        self.loop = loop or asyncio.get_running_loop()
        self.max_buffered = int(max_buffered_s * SAMPLE_RATE)
        self.stats = SessionStats()
        self._events: asyncio.Queue = asyncio.Queue()
        self._frames_queued = 0  # OutFrames in _events (bounded: a slow client loses its oldest)
        self._inbox: queue.Queue = queue.Queue()
        self._buffered = 0  # samples in the inbox
        self._gen = 0  # bumped by interrupt: queued audio of older generations is dropped
        self._lock = threading.Lock()
        self._ending = False
        self._flushed = threading.Event()
        self._stop = threading.Event()
        self._closed = False
        self._feeder = threading.Thread(target=self._feed, name="vasa-session-feed", daemon=True)
        self._output = threading.Thread(target=self._drain, name="vasa-session-out", daemon=True)
        self._feeder.start()
        self._output.start()

    # ------------------------------------------------------------------------------------------ client side

    def audio(self, samples: np.ndarray) -> None:
        """Queue speech (float32 at 16 kHz). Refused after `end`, and when the client has sent far more than the
        stream has taken (more than `max_buffered_s` of audio waiting)."""
        if self._ending:
            raise ProtocolError("audio after end: the session is finishing")
        with self._lock:
            if self._buffered + samples.size > self.max_buffered:
                raise ProtocolError(f"more than {self.max_buffered / SAMPLE_RATE:.0f} s of audio waiting to be "
                                    "rendered: send audio no faster than the stream renders it")
            self._buffered += samples.size
            gen = self._gen
        self.stats.audio_samples += samples.size
        self._inbox.put(("audio", gen, samples))

    def controls(self, fields: dict[str, Any]) -> None:
        """Change controls mid-stream (the fields given, over the current ones); ProtocolError if out of range."""
        fields = {k: v for k, v in fields.items() if k != "type"}
        controls = controls_from(fields, self.stream.controls, self.stream.controls.steps)
        self._inbox.put(("controls", self._gen, controls))

    def interrupt(self) -> None:
        """Barge-in: drop the audio not yet rendered and the frames of the current utterance not yet sent."""
        with self._lock:
            self._gen += 1
            gen = self._gen
        self.stats.interrupts += 1
        self._drop_queued_speech()
        self._inbox.put(("interrupt", gen, None))

    def end(self) -> None:
        """End of speech: the remaining frames follow, then `Done`."""
        if not self._ending:
            self._ending = True
            self._inbox.put(("end", self._gen, None))

    async def next_event(self, timeout: float | None = None):
        """The next OutFrame, Done or Failed (None after `timeout` seconds without one)."""
        try:
            event = await asyncio.wait_for(self._events.get(), timeout)
        except asyncio.TimeoutError:
            return None
        if isinstance(event, OutFrame):
            self._frames_queued -= 1
        return event

    def sent(self, frame: OutFrame, now: float | None = None) -> float | None:
        """Record that `frame` reached the client's transport; -> its audio-in -> out latency (speech frames)."""
        s = self.stats
        s.frames += 1
        if frame.kind != "speech":
            s.idle_frames += 1
            return None
        s.speech_frames += 1
        if frame.audio_in is None:
            return None
        latency = (now if now is not None else time.perf_counter()) - frame.audio_in
        s.latencies.append(latency)
        if latency > self.latency_budget_s:
            s.late += 1
        return latency

    def report(self) -> dict[str, Any]:
        s = self.stats
        lat = percentiles(s.latencies)
        st = self.stream.settings
        return {"frames": s.frames, "speech_frames": s.speech_frames, "idle_frames": s.idle_frames, "late": s.late,
                "dropped": s.dropped, "interrupts": s.interrupts,
                "audio_received_ms": round(s.audio_samples * 1000 / SAMPLE_RATE, 1),
                "speech_ms_sent": s.speech_frames * FRAME_MS, "lost_audio_ms": s.dropped_speech * FRAME_MS,
                "latency_ms": {k: (None if math.isnan(v) else round(v * 1000, 1)) for k, v in lat.items()},
                "latency_budget_ms": round(self.latency_budget_s * 1000), "chunk_ms": st.chunk_ms,
                "lookahead_ms": st.lookahead_ms, "steps": self.stream.controls.steps}

    def cancel(self) -> None:
        """Stop at once without waiting (from the event loop): the threads and the stream's worker stop after
        what they are doing; `close()` joins them."""
        self._stop.set()
        self._inbox.put(None)
        self.stream.cancel()

    async def aclose(self) -> None:
        self.cancel()  # the worker stops computing now, not when an executor thread gets to the join
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    def close(self) -> None:
        """Stop both threads and the stream (its worker joined, its buffers freed). Idempotent."""
        if self._closed:
            return
        self._closed = True
        self.cancel()
        self.stream.close()
        for thread in (self._feeder, self._output):
            if thread is not threading.current_thread():
                thread.join(30)

    # ------------------------------------------------------------------------------------------ feed thread

    def _feed(self) -> None:
        try:
            while not self._stop.is_set():
                item = self._inbox.get()
                if item is None:
                    return
                kind, gen, value = item
                if kind == "audio":
                    self._push(gen, value)
                elif kind == "controls":
                    self.stream.set_controls(value)
                elif kind == "interrupt":
                    self.stream.interrupt()
                elif kind == "end":
                    self.stream.flush(collect=False)
                    self._flushed.set()
                    return
        except StreamClosed:
            pass  # closed under us: the session is going away
        except BaseException as exc:  # noqa: BLE001 - surfaced to the client as an error event
            self._fail(exc)

    def _push(self, gen: int, samples: np.ndarray) -> None:
        try:
            while not self._stop.is_set() and gen == self._gen:
                try:
                    self.stream.push(samples, SAMPLE_RATE, collect=False, timeout=0.2)
                    return
                except StreamBusy:
                    continue  # the stream holds its maximum: retry until it fits or the audio goes stale
        finally:
            with self._lock:
                self._buffered -= samples.size

    # ------------------------------------------------------------------------------------------ output thread

    def _drain(self) -> None:
        try:
            while not self._stop.is_set():
                if self._flushed.is_set():  # every frame of the last utterance is finished: take the rest
                    for f in self.stream.poll():
                        self._post(self._out_frame(f))
                    self._post(Done())
                    return
                frame = self.stream.get(0.05)
                if frame is not None:
                    self._post(self._out_frame(frame))
        except StreamClosed:
            pass
        except BaseException as exc:  # noqa: BLE001
            self._fail(exc)

    def _out_frame(self, f) -> OutFrame:
        out = OutFrame(f.index, f.kind, f.utterance, f.frame, f.image, np.asarray(f.audio, np.float32), f.audio_in)
        if self.start.output == "websocket":
            from ..preview import encode_frame

            out.payload, _ = encode_frame(f, self.start.image_format, self.start.quality)
        return out

    def _post(self, event) -> None:
        try:
            self.loop.call_soon_threadsafe(self._enqueue, event)
        except RuntimeError:  # the loop is closed: the server is going away
            self._stop.set()

    def _enqueue(self, event) -> None:
        if isinstance(event, OutFrame):
            if self._frames_queued >= OUTPUT_QUEUE_FRAMES:
                self._drop_oldest_frame()
            self._frames_queued += 1
        self._events.put_nowait(event)

    def _drop_oldest_frame(self) -> None:
        """A slow client: the oldest queued frame goes (counted as dropped)."""
        for event in self._remove_frames(lambda f: True, limit=1):
            self.stats.dropped += 1
            self.stats.dropped_speech += event.kind == "speech"

    def _drop_queued_speech(self) -> None:
        """Interrupt: frames of speech queued for the client but not sent go too (they are the dropped utterance's
        or older; idle frames stay)."""
        self._remove_frames(lambda f: f.kind == "speech")

    def _remove_frames(self, which, limit: int | None = None) -> list[OutFrame]:
        """Take the queued OutFrames `which(frame)` selects (the first `limit` of them) out of the event queue,
        keeping the order of everything else; -> the frames taken."""
        kept, taken = [], []
        while not self._events.empty():
            event = self._events.get_nowait()
            if isinstance(event, OutFrame) and (limit is None or len(taken) < limit) and which(event):
                taken.append(event)
            else:
                kept.append(event)
        for event in kept:
            self._events.put_nowait(event)
        self._frames_queued -= len(taken)
        return taken

    def _fail(self, exc: BaseException) -> None:
        message = str(exc) if isinstance(exc, VasaError) else f"the session failed: {one_line(exc)}"
        self._post(Failed(message))
