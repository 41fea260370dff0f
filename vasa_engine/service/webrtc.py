"""A session's frames out over WebRTC (aiortc): one video track and one audio track, paced by the wall clock.

`WebRTCOutput.answer` takes the client's SDP offer (non-trickle: every ICE candidate in it) and returns the
answer with the server's candidates. Frames `put` from the event loop wait in a queue; once the peer is
connected a pacer takes one every 1/fps s and hands the video track the image (pts on the 90 kHz RTP clock) and
the audio track the frame's audio (`sample_rate / fps` samples, as 20 ms s16 mono frames, pts in samples), both
stamped with the same tick, so the two tracks stay in sync. With nothing queued the video repeats its last image
and the audio is silence, so both clocks keep running; when the loop falls far behind, the missed ticks become one
block of silence and a jump of the video pts, so the two stay aligned. aiortc encodes (VP8 or H.264, Opus) and
sends them.

Before the peer is connected only the newest `KEEP_BEFORE_CONNECT` frames are kept (a session's idle frames do not
pile up while the client sets up); once connected, `put` waits while more than about a second of frames is
queued, so a stalled peer holds back the session (whose own queue then drops its oldest frames).
"""

from __future__ import annotations

import asyncio
import fractions
import logging
from collections import deque
from typing import Callable

import numpy as np
from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription
from aiortc.mediastreams import MediaStreamError, MediaStreamTrack
from av import AudioFrame, VideoFrame

from ..errors import one_line
from .session import OutFrame

log = logging.getLogger("vasa_engine.service.webrtc")

VIDEO_CLOCK_RATE = 90_000
AUDIO_PACKET_S = 0.020
KEEP_BEFORE_CONNECT = 3
MAX_LATE_S = 0.5  # the pacer further behind than this skips ahead (silence for the gap) instead of bursting
DONE_STATES = ("failed", "closed")


class PacedTrack(MediaStreamTrack):
    """A track whose `recv` hands the encoder the av frames the pacer pushed, in order; at most `limit` wait (an
    encoder that falls further behind loses the oldest). `on_taken(source)` runs as each one is taken."""

    def __init__(self, kind: str, limit: int, on_taken: Callable[[OutFrame | None], None]):
        super().__init__()
        self.kind = kind
        self.limit = limit
        self.on_taken = on_taken
        self.frames: deque = deque()  # (av frame, the OutFrame it shows or None)
        self.dropped = 0  # OutFrames pushed and never taken
        self._ready = asyncio.Event()

    def push(self, frame, source: OutFrame | None = None) -> None:
        self.frames.append((frame, source))
        while len(self.frames) > self.limit:
            self.dropped += self.frames.popleft()[1] is not None
        self._ready.set()

    def waiting(self) -> int:
        """OutFrames pushed and not yet taken."""
        return sum(source is not None for _, source in self.frames)

    async def recv(self):
        while not self.frames:
            if self.readyState != "live":
                raise MediaStreamError
            self._ready.clear()
            await self._ready.wait()
        frame, source = self.frames.popleft()
        self.on_taken(source)
        return frame

    def stop(self) -> None:
        super().stop()
        self._ready.set()


class WebRTCOutput:
    """One session's WebRTC peer: `answer` once, then `put` frames; `drain` before the end, `close` after."""

    def __init__(self, *, fps: int, sample_rate: int, on_sent: Callable[[OutFrame], None]):
        self.fps, self.sample_rate = fps, sample_rate
        self.frame_samples = sample_rate // fps
        self.packet_samples = round(sample_rate * AUDIO_PACKET_S)
        if sample_rate % fps or self.frame_samples % self.packet_samples:
            raise ValueError(f"a frame's audio ({sample_rate} Hz / {fps} fps) must be whole 20 ms packets")
        self.on_sent = on_sent
        self.max_queued = fps  # about a second of frames waiting before `put` holds back
        self.pending: deque[OutFrame] = deque()
        self.sent = 0  # frames whose video went out
        self._dropped = 0
        self._pc = None
        self._video = self._audio = None
        self._pacer: asyncio.Task | None = None
        self._changed = asyncio.Event()
        self._closed = False

    # ------------------------------------------------------------------------------------------ signalling

    async def answer(self, offer_sdp: str) -> str:
        """The answer to the client's offer, with every ICE candidate in it; ValueError for an offer it cannot take
        (malformed, no video, a second offer). After a refused offer the client may send another."""
        if self._closed:
            raise ValueError("the output is closed")
        if self._pc is not None:
            raise ValueError("an offer was already answered (renegotiation is not supported)")
        # no STUN server: the answer carries host candidates, which a client that reaches the service reaches too
        pc = self._pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        pc.on("connectionstatechange", lambda: self._connection_changed(pc))
        self._video = PacedTrack("video", self.fps, self._video_taken)
        self._audio = PacedTrack("audio", 4 * self.fps, lambda source: None)
        try:
            await pc.setRemoteDescription(RTCSessionDescription(sdp=offer_sdp, type="offer"))
            kinds = [t.kind for t in pc.getTransceivers()]
            if "video" not in kinds:
                raise ValueError("the offer has no video (add a recvonly video transceiver)")
            pc.addTrack(self._video)
            if "audio" in kinds:
                pc.addTrack(self._audio)
            for transceiver in pc.getTransceivers():
                transceiver.direction = "sendonly"  # the client's media, if it offered any, is not taken
            await pc.setLocalDescription(await pc.createAnswer())
        except Exception as exc:  # noqa: BLE001 - aiortc raises many kinds on a bad offer; all are the client's
            self._pc = self._video = self._audio = None
            await pc.close()
            raise ValueError(one_line(exc)) from None
        return pc.localDescription.sdp

    def _connection_changed(self, pc) -> None:
        if pc is not self._pc:
            return  # a refused offer's connection, closing
        state = pc.connectionState
        if state == "connected" and self._pacer is None and not self._closed:
            self._pacer = asyncio.get_running_loop().create_task(self._pace(), name="vasa-webrtc-pacer")
            self._pacer.add_done_callback(self._pacer_ended)
        elif state in DONE_STATES:
            self._stop_pacing()
        self._wake()

    def _pacer_ended(self, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.warning("WebRTC output stopped: %s", one_line(task.exception()))
        self._wake()

    @property
    def dropped(self) -> int:
        """Frames put that never went out: before the peer connected, behind a slow encoder, or left at close."""
        return self._dropped + (self._video.dropped if self._video is not None else 0)

    @property
    def connected(self) -> bool:
        """The peer is connected and frames are going out."""
        return self._pacer is not None and not self._pacer.done()

    # ------------------------------------------------------------------------------------------ frames

    async def put(self, frame: OutFrame) -> None:
        """Queue `frame` (from the event loop); waits while the connected peer has about a second queued."""
        if self._closed:
            self._dropped += 1
            return
        if self.connected:
            await self._wait_for(lambda: len(self.pending) < self.max_queued or not self.connected or self._closed)
            if self._closed:
                self._dropped += 1
                return
        self.pending.append(frame)
        if not self.connected:
            while len(self.pending) > KEEP_BEFORE_CONNECT:
                self.pending.popleft()
                self._dropped += 1

    async def drain(self, timeout: float) -> None:
        """Until every frame put has gone out on the video track, or `timeout` s; at once when no peer is connected
        (frames kept for a peer that never connected are not waited for)."""

        def drained() -> bool:
            return not self.connected or (not self.pending and not self._video.waiting())

        try:
            await asyncio.wait_for(self._wait_for(drained), timeout)
        except asyncio.TimeoutError:
            log.warning("WebRTC output: %d frames still queued after %g s", len(self.pending), timeout)

    async def close(self) -> None:
        """Stop the pacer and the tracks and close the peer connection. Idempotent."""
        if self._closed:
            return
        self._closed = True
        self._stop_pacing()
        self._dropped += len(self.pending) + (self._video.waiting() if self._video is not None else 0)
        self.pending.clear()
        for track in (self._video, self._audio):
            if track is not None:
                track.frames.clear()
                track.stop()
        if self._pc is not None:
            await self._pc.close()
        self._wake()

    # ------------------------------------------------------------------------------------------ pacing

    async def _pace(self) -> None:
        loop = asyncio.get_running_loop()
        period = 1.0 / self.fps
        start, tick, last_image = loop.time(), 0, None
        while not self._closed:
            late = loop.time() - (start + tick * period)
            if late < 0:
                await asyncio.sleep(-late)
            elif late > MAX_LATE_S:
                skipped = int(late / period)
                self._audio.push(self._audio_frame(np.zeros(skipped * self.frame_samples, np.int16), tick))
                tick += skipped
            frame = self.pending.popleft() if self.pending else None
            if frame is not None:
                last_image = np.ascontiguousarray(frame.image, dtype=np.uint8)
            if last_image is not None:
                self._video.push(self._video_frame(last_image, tick), frame)
            pcm = self._pcm(frame)
            for offset in range(0, self.frame_samples, self.packet_samples):
                self._audio.push(self._audio_frame(pcm[offset : offset + self.packet_samples], tick, offset))
            tick += 1
            self._wake()

    def _stop_pacing(self) -> None:
        if self._pacer is not None and not self._pacer.done():
            self._pacer.cancel()

    def _video_frame(self, image: np.ndarray, tick: int):
        video = VideoFrame.from_ndarray(image, format="rgb24")
        video.pts = tick * VIDEO_CLOCK_RATE // self.fps
        video.time_base = fractions.Fraction(1, VIDEO_CLOCK_RATE)
        return video

    def _pcm(self, frame: OutFrame | None) -> np.ndarray:
        """A frame's audio as int16, exactly `frame_samples` long (zero-padded or cut); silence for no frame."""
        pcm = np.zeros(self.frame_samples, np.int16)
        if frame is not None:
            audio = np.asarray(frame.audio, np.float32).reshape(-1)[: self.frame_samples]
            pcm[: audio.size] = np.clip(np.rint(audio * 32768.0), -32768, 32767).astype(np.int16)
        return pcm

    def _audio_frame(self, pcm: np.ndarray, tick: int, offset: int = 0):
        audio = AudioFrame.from_ndarray(pcm.reshape(1, -1), format="s16", layout="mono")
        audio.sample_rate = self.sample_rate
        audio.pts = tick * self.frame_samples + offset
        audio.time_base = fractions.Fraction(1, self.sample_rate)
        return audio

    def _video_taken(self, source: OutFrame | None) -> None:
        if source is not None:
            self.sent += 1
            try:
                self.on_sent(source)
            except Exception as exc:  # noqa: BLE001 - the media must keep flowing
                log.warning("on_sent failed: %s", one_line(exc))
        self._wake()

    # ------------------------------------------------------------------------------------------ waiting

    def _wake(self) -> None:
        self._changed.set()
        self._changed = asyncio.Event()

    async def _wait_for(self, predicate: Callable[[], bool]) -> None:
        while not predicate():
            await self._changed.wait()
