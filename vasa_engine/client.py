"""A small client for `vasa-engine serve`, for agent pipelines: TTS audio in, frames (or a WebRTC track) out.

    from vasa_engine.client import ServiceClient

    client = ServiceClient("http://127.0.0.1:8000", token=None)
    avatar = client.upload_avatar("portrait.png")["id"]          # prepared once, kept by the server

    async with client.session(avatar) as session:                # output "websocket": frames as messages
        await session.send_audio(pcm16k)                          # int16 or float samples at 16 kHz, any length
        await session.end()                                       # end of speech
        async for frame in session.frames():                      # until the server's "done"
            show(frame.image, frame.audio)                        # uint8 (H, W, 3); float32 samples of its 40 ms
        print(session.report)                                     # latency p50 / p95 / max, frames, late, ...

    async with client.session(avatar, output="webrtc") as session:
        video, audio = await session.webrtc()                     # aiortc tracks: await video.recv() -> av.VideoFrame

HTTP calls use the standard library; the session uses `websockets` (and `aiortc` for WebRTC). Server errors on
HTTP raise `ServiceError` with the server's one-line message and the status; `{"type": "error"}` messages during a
session are kept in `session.errors` (the server keeps the session open for them); a session the server closes
with another code than 1000 raises `SessionClosed` from `frames()` with the code and reason.
"""

from __future__ import annotations

import asyncio
import io
import json
import mimetypes
import os
import struct
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from typing import Any, AsyncIterator

import numpy as np

SAMPLE_RATE = 16000


class ServiceError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(f"{status}: {message}")
        self.status, self.message = status, message


class SessionClosed(Exception):
    def __init__(self, code: int, reason: str):
        super().__init__(f"session closed with code {code}: {reason}")
        self.code, self.reason = code, reason


@dataclass
class Frame:
    """One frame from the server: its header (index, kind, utterance, frame, width, height, latency_ms, ...),
    the image and the frame's 40 ms of audio; received: time.perf_counter() when it arrived."""

    header: dict[str, Any]
    image_bytes: bytes
    audio: np.ndarray
    received: float

    @property
    def kind(self) -> str:
        return self.header["kind"]

    @property
    def image(self) -> np.ndarray:
        from PIL import Image

        with Image.open(io.BytesIO(self.image_bytes)) as im:
            return np.asarray(im.convert("RGB"))


def parse_frame(message: bytes, received: float | None = None) -> Frame:
    """A binary frame message -> Frame (format: the README's protocol section)."""
    (length,) = struct.unpack(">I", message[:4])
    header = json.loads(message[4 : 4 + length])
    start = 4 + length
    image = message[start : start + header["image_bytes"]]
    audio = np.frombuffer(message[start + header["image_bytes"] :], dtype="<f4")
    return Frame(header, image, audio, received if received is not None else time.perf_counter())


def pcm16(samples: np.ndarray) -> bytes:
    """Samples (int16, or float in [-1, 1]) -> 16-bit little-endian PCM bytes."""
    a = np.asarray(samples)
    if a.dtype != np.int16:
        a = (np.clip(a.astype(np.float32), -1.0, 32767 / 32768) * 32768.0).round().astype(np.int16)
    return a.astype("<i2").tobytes()


class ServiceClient:
    """HTTP calls and sessions against one server (base URL http(s)://host:port)."""

    def __init__(self, url: str = "http://127.0.0.1:8000", *, token: str | None = None, timeout: float = 60.0):
        self.url = url.rstrip("/")
        self.token = token
        self.timeout = timeout

    # ------------------------------------------------------------------------------------------ HTTP

    def _request(self, method: str, path: str, body: bytes | None = None, content_type: str | None = None):
        headers = {}
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        if content_type:
            headers["Content-Type"] = content_type
        req = urllib.request.Request(self.url + path, data=body, headers=headers, method=method)
        try:
            with urllib.request.urlopen(req, timeout=self.timeout) as response:
                data = response.read()
                return response.status, (json.loads(data) if data else None)
        except urllib.error.HTTPError as exc:
            data = exc.read()
            try:
                message = json.loads(data)["error"]
            except (ValueError, KeyError, TypeError):
                message = data.decode(errors="replace").strip() or exc.reason
            raise ServiceError(exc.code, message) from None

    def health(self) -> dict:
        return self._request("GET", "/healthz")[1]

    def upload_avatar(self, portrait: str | os.PathLike | bytes, content_type: str | None = None) -> dict:
        """A portrait file (or its bytes) -> the avatar's info ({"id", "width", "height", "aligned", ...})."""
        if not isinstance(portrait, (bytes, bytearray)):
            content_type = content_type or mimetypes.guess_type(os.fspath(portrait))[0]
            with open(portrait, "rb") as f:
                portrait = f.read()
        return self._request("POST", "/v1/avatars", bytes(portrait), content_type or "image/png")[1]

    def avatars(self) -> list[dict]:
        return self._request("GET", "/v1/avatars")[1]["avatars"]

    def avatar(self, avatar_id: str) -> dict:
        return self._request("GET", f"/v1/avatars/{urllib.parse.quote(avatar_id)}")[1]

    def delete_avatar(self, avatar_id: str) -> None:
        self._request("DELETE", f"/v1/avatars/{urllib.parse.quote(avatar_id)}")

    # ------------------------------------------------------------------------------------------ sessions

    def session(self, avatar: str, *, output: str = "websocket", controls: dict | None = None,
                settings: dict | None = None, **start) -> "Session":
        """A session (use with `async with`): the start message is sent and `ready` awaited on entry."""
        message = {"type": "start", "avatar": avatar, "output": output, "controls": controls or {},
                   "settings": settings or {}, **start}
        ws_url = "ws" + self.url[4:] + "/v1/sessions"
        if self.token:
            ws_url += "?" + urllib.parse.urlencode({"token": self.token})
        return Session(ws_url, message)


@dataclass
class Session:
    url: str
    start_message: dict
    ready: dict | None = None
    report: dict | None = None
    errors: list[str] = field(default_factory=list)
    stats: dict | None = None
    _ws: Any = None
    _pc: Any = None
    _answer: Any = None

    async def __aenter__(self) -> "Session":
        from websockets.asyncio.client import connect

        self._ws = await connect(self.url, max_size=None, compression=None)
        await self._ws.send(json.dumps(self.start_message))
        while True:
            message = await self._next()
            if message is None:
                raise SessionClosed(self._ws.close_code or 1006, self._ws.close_reason or "")
            if isinstance(message, dict) and message.get("type") == "ready":
                self.ready = message
                return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    async def close(self) -> None:
        if self._pc is not None:
            await self._pc.close()
            self._pc = None
        if self._ws is not None:
            await self._ws.close()

    async def send_audio(self, samples: np.ndarray) -> None:
        """Speech at 16 kHz (int16, or float in [-1, 1]), any length."""
        await self._ws.send(pcm16(samples))

    async def controls(self, **fields) -> None:
        await self._ws.send(json.dumps({"type": "controls", **fields}))

    async def interrupt(self) -> None:
        await self._ws.send(json.dumps({"type": "interrupt"}))

    async def end(self) -> None:
        await self._ws.send(json.dumps({"type": "end"}))

    async def frames(self) -> AsyncIterator[Frame]:
        """Frames until the server's `done` (then `report` is set); JSON messages are handled on the way."""
        while True:
            message = await self._next()
            if message is None:
                code = self._ws.close_code
                if code not in (1000, None) or self.report is None:
                    raise SessionClosed(code or 1006, self._ws.close_reason or "")
                return
            if isinstance(message, Frame):
                yield message

    async def wait_done(self, timeout: float | None = None) -> dict:
        """Read (and discard) until `done`; -> the report."""
        async def run():
            async for _ in self.frames():
                pass
        await asyncio.wait_for(run(), timeout)
        return self.report

    async def webrtc(self, timeout: float = 30.0):
        """Negotiate WebRTC (output "webrtc"): -> (video track, audio track), aiortc MediaStreamTracks."""
        from aiortc import RTCPeerConnection, RTCSessionDescription

        pc = self._pc = RTCPeerConnection()
        tracks: dict[str, Any] = {}
        got = asyncio.Event()

        @pc.on("track")
        def on_track(track):
            tracks[track.kind] = track
            if len(tracks) == 2:
                got.set()

        pc.addTransceiver("video", direction="recvonly")
        pc.addTransceiver("audio", direction="recvonly")
        await pc.setLocalDescription(await pc.createOffer())
        await self._ws.send(json.dumps({"type": "offer", "sdp": pc.localDescription.sdp}))
        self._answer = asyncio.get_running_loop().create_future()
        # the answer arrives among other messages: read until it does
        deadline = time.monotonic() + timeout
        while not self._answer.done():
            message = await asyncio.wait_for(self._next(), max(0.1, deadline - time.monotonic()))
            if message is None:
                raise SessionClosed(self._ws.close_code or 1006, self._ws.close_reason or "")
        await pc.setRemoteDescription(RTCSessionDescription(self._answer.result(), "answer"))
        await asyncio.wait_for(got.wait(), max(0.1, deadline - time.monotonic()))
        return tracks["video"], tracks["audio"]

    async def _next(self):
        """The next message: a Frame, a JSON dict (error, stats, answer, done are also recorded), None at close."""
        from websockets.exceptions import ConnectionClosed

        try:
            raw = await self._ws.recv()
        except ConnectionClosed:
            return None
        if isinstance(raw, bytes):
            return parse_frame(raw)
        message = json.loads(raw)
        kind = message.get("type")
        if kind == "error":
            self.errors.append(message.get("message", ""))
        elif kind == "done":
            self.report = message.get("report")
        elif kind == "stats":
            self.stats = message
        elif kind == "answer" and self._answer is not None and not self._answer.done():
            self._answer.set_result(message["sdp"])
        return message
