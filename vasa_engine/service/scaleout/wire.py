"""What an engine replica streams back to the ingress for one session: `Accepted` first, then `WireFrame`s, then
one `WireEnd`. Plain dataclasses (pickled by Ray); no Ray import here."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..session import OutFrame


@dataclass
class Accepted:
    """The replica took the session. inbox: the replica's `ray.util.queue.Queue` that the session's messages go
    to; settings: the stream's StreamSettings (the report's chunk and look-ahead)."""

    session: str
    replica: str
    inbox: Any
    settings: Any
    latency_budget_s: float
    device_name: str
    output_size: int


@dataclass
class WireFrame:
    """One OutFrame on its way. payload for output "websocket" (image and audio stay home), image and audio for
    "webrtc". age_s: how long before `sent_wall` (the replica's wall clock) its audio reached the stream. gen: the
    interrupts the replica had applied when it sent the frame. taken: audio samples the stream had taken."""

    index: int
    kind: str
    utterance: int
    frame: int | None
    gen: int
    taken: int
    payload: bytes | None
    image: np.ndarray | None
    audio: np.ndarray | None
    age_s: float | None
    sent_wall: float

    @classmethod
    def of(cls, event: OutFrame, gen: int, taken: int) -> "WireFrame":
        age = None if event.audio_in is None else max(0.0, time.perf_counter() - event.audio_in)
        keep_pixels = event.payload is None
        return cls(event.index, event.kind, event.utterance, event.frame, gen, taken, event.payload,
                   event.image if keep_pixels else None, event.audio if keep_pixels else None, age, time.time())

    def out_frame(self) -> OutFrame:
        """The OutFrame on this side, its audio_in moved to this process's perf_counter: the frame's age at the
        replica plus its time in transit (wall clocks; never negative)."""
        audio_in = None
        if self.age_s is not None:
            transit = max(0.0, time.time() - self.sent_wall)
            audio_in = time.perf_counter() - transit - self.age_s
        return OutFrame(self.index, self.kind, self.utterance, self.frame, self.image, self.audio, audio_in,
                        self.payload)


@dataclass
class WireEnd:
    """The session is over: message None after every frame of the ended speech (Done), else why it failed."""

    message: str | None = None
