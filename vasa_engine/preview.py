"""Live preview: a small local web server that streams a session's frames, with their audio, to a browser page.

`PreviewServer` listens on 127.0.0.1 (an ephemeral port unless one is given) with the `websockets` library: a plain
HTTP GET of `/` returns the page (`PAGE`), and `/ws` is the WebSocket the frames go out on. `send(frame)` may be
called from any thread (the stream's consumer): the frame is encoded there (JPEG by default, PNG for exact pixels)
and queued to every connected page; a page that falls behind loses its oldest queued frames, never the stream.

One binary WebSocket message per frame: a 4-byte big-endian length, a JSON header of that many bytes (index, kind,
utterance, frame, width, height, format, image_bytes, sample_rate, audio_samples, latency_ms), the encoded image,
then the frame's audio (`audio_samples` little-endian float32 samples at `sample_rate`). The page draws each image
into a canvas in order, schedules its audio with WebAudio right after the audio before it, and answers with a JSON
acknowledgement: the frame index and the RGB values it reads back from the canvas at a few points. The server
compares them with the pixels it sent (exactly for PNG, within `JPEG_TOLERANCE` for JPEG) and records the result in
`acks`, so a test can tell that frames arrived and were drawn.

A page that goes away (tab closed, network gone) is noticed when its connection closes: its sender stops, it is
removed from the clients and `disconnects` counts it; the stream is not affected. `close()` stops the server and
joins its thread.
"""

from __future__ import annotations

import asyncio
import io
import json
import struct
import threading
import time
from collections import OrderedDict
from typing import Any

import numpy as np

from .errors import InputError

JPEG_TOLERANCE = 40  # per channel: JPEG is lossy, and browsers decode it with their own IDCT
PROBE_POINTS = 5
KEEP_SENT = 256  # frames remembered for checking acknowledgements

PAGE = """<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>vasa-engine live preview</title>
<style>
  body { background: #111; color: #ddd; font: 14px system-ui, sans-serif; margin: 2em; }
  canvas { width: 512px; height: 512px; background: #000; display: block; }
  #stats { margin-top: 0.6em; font-variant-numeric: tabular-nums; }
  .note { color: #999; }
</style>
</head>
<body>
<canvas id="view" width="512" height="512"></canvas>
<div id="stats">connecting...</div>
<div class="note">AI-generated video (vasa-engine). Click the page if the browser holds the audio back.</div>
<script>
"use strict";
const canvas = document.getElementById("view");
const ctx = canvas.getContext("2d", { willReadFrequently: true });
const stats = document.getElementById("stats");
let audioCtx = null;
let nextAudio = 0;
let drawn = 0;
let chain = Promise.resolve();

function audio() {
  if (audioCtx === null) {
    try { audioCtx = new AudioContext(); } catch (e) { audioCtx = false; }
  }
  return audioCtx || null;
}
document.addEventListener("click", () => { const a = audio(); if (a) a.resume(); });

function play(pcm, rate) {
  const a = audio();
  if (!a || pcm.length === 0) return;
  const buffer = a.createBuffer(1, pcm.length, rate);
  buffer.copyToChannel(pcm, 0);
  const source = a.createBufferSource();
  source.buffer = buffer;
  source.connect(a.destination);
  const start = Math.max(nextAudio, a.currentTime + 0.05);
  source.start(start);
  nextAudio = start + pcm.length / rate;
}

function probes(w, h) {
  return [[0, 0], [w >> 1, h >> 1], [w - 1, h - 1], [w >> 2, (3 * h) >> 2], [(3 * w) >> 2, h >> 2]];
}

async function show(ws, data) {
  const view = new DataView(data);
  const headerLength = view.getUint32(0);
  const head = JSON.parse(new TextDecoder().decode(new Uint8Array(data, 4, headerLength)));
  let offset = 4 + headerLength;
  const image = new Blob([new Uint8Array(data, offset, head.image_bytes)], { type: head.format });
  offset += head.image_bytes;
  const pcm = new Float32Array(data.slice(offset, offset + 4 * head.audio_samples));
  const bitmap = await createImageBitmap(image);
  if (canvas.width !== bitmap.width || canvas.height !== bitmap.height) {
    canvas.width = bitmap.width;
    canvas.height = bitmap.height;
  }
  ctx.drawImage(bitmap, 0, 0);
  bitmap.close();
  play(pcm, head.sample_rate);
  drawn += 1;
  const points = probes(canvas.width, canvas.height);
  const pixels = points.map(([x, y]) => Array.from(ctx.getImageData(x, y, 1, 1).data.slice(0, 3)));
  if (ws.readyState === WebSocket.OPEN) {
    ws.send(JSON.stringify({ ack: head.index, points: points, pixels: pixels }));
  }
  const latency = head.latency_ms === null ? "" : `, latency ${head.latency_ms.toFixed(0)} ms`;
  stats.textContent = `frame ${head.index} (${head.kind})${latency}; ${drawn} drawn`;
}

const ws = new WebSocket(`ws://${location.host}/ws`);
ws.binaryType = "arraybuffer";
ws.onopen = () => { stats.textContent = "connected, waiting for frames"; };
ws.onclose = () => { stats.textContent += " (stream ended)"; };
ws.onmessage = (event) => { chain = chain.then(() => show(ws, event.data)).catch((e) => console.error(e)); };
</script>
</body>
</html>
"""


def encode_frame(frame, image_format: str = "jpeg", quality: int = 85) -> tuple[bytes, np.ndarray]:
    """A StreamFrame -> (the binary message, the image sent)."""
    from PIL import Image

    image = frame.image
    if image is None:
        raise InputError("the preview needs rendered frames (a session with render=True)")
    buf = io.BytesIO()
    if image_format == "png":
        Image.fromarray(image).save(buf, format="PNG", compress_level=1)
        mime = "image/png"
    else:
        Image.fromarray(image).save(buf, format="JPEG", quality=quality)
        mime = "image/jpeg"
    data = buf.getvalue()
    pcm = np.ascontiguousarray(frame.audio, dtype="<f4")
    latency = frame.latency_s
    head = {"index": frame.index, "kind": frame.kind, "utterance": frame.utterance, "frame": frame.frame,
            "width": int(image.shape[1]), "height": int(image.shape[0]), "format": mime, "image_bytes": len(data),
            "sample_rate": 16000, "audio_samples": int(pcm.size),
            "latency_ms": None if latency is None else latency * 1000}
    header = json.dumps(head).encode()
    return struct.pack(">I", len(header)) + header + data + pcm.tobytes(), image


class PreviewServer:
    """The preview web server on its own thread. Use as a context manager, or start() / close()."""

    def __init__(self, host: str = "127.0.0.1", port: int = 0, *, image_format: str = "jpeg", quality: int = 85,
                 max_queue: int = 8):
        if image_format not in ("jpeg", "png"):
            raise InputError(f"preview image format must be jpeg or png, got {image_format!r}")
        if not isinstance(port, int) or not 0 <= port <= 65535:
            raise InputError(f"preview port must be an integer in [0, 65535], got {port!r}")
        self.host, self.port = host, port
        self.image_format, self.quality, self.max_queue = image_format, quality, max_queue
        self._lock = threading.Lock()
        self._clients: set = set()
        self._acks: list[dict[str, Any]] = []
        self._sent: OrderedDict[int, np.ndarray] = OrderedDict()
        self._connects = 0
        self._disconnects = 0
        self._frames_sent = 0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._stop: asyncio.Future | None = None
        self._started = threading.Event()
        self._start_error: BaseException | None = None

    # ------------------------------------------------------------------------------------------ lifecycle

    def start(self) -> "PreviewServer":
        if self._thread is not None:
            return self
        try:
            import websockets  # noqa: F401
        except ImportError:
            raise InputError("the live preview needs the websockets package: pip install 'vasa-engine[preview]'") \
                from None
        self._thread = threading.Thread(target=self._main, name="vasa-preview", daemon=True)
        self._thread.start()
        self._started.wait(30)
        if self._start_error is not None:
            self._thread.join(5)
            err = self._start_error
            raise InputError(f"cannot start the preview server on {self.host}:{self.port} ({err})") from None
        return self

    def close(self) -> None:
        """Stop serving, close every connection and join the server thread. Idempotent."""
        thread, loop = self._thread, self._loop
        if thread is None:
            return
        if loop is not None and thread.is_alive():
            def stop():
                if self._stop is not None and not self._stop.done():
                    self._stop.set_result(None)
            try:
                loop.call_soon_threadsafe(stop)
            except RuntimeError:  # loop already closed
                pass
        thread.join(15)
        self._thread = None

    def __enter__(self) -> "PreviewServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}/"

    # ------------------------------------------------------------------------------------------ frames

    def send(self, frame) -> int:
        """Queue a StreamFrame to every connected page (thread-safe). Returns how many pages it was queued to."""
        loop = self._loop
        if loop is None or self._thread is None:
            raise InputError("the preview server is not running")
        with self._lock:
            if not self._clients:
                return 0
            clients = list(self._clients)
        payload, image = encode_frame(frame, self.image_format, self.quality)
        with self._lock:
            self._sent[frame.index] = image
            while len(self._sent) > KEEP_SENT:
                self._sent.popitem(last=False)
            self._frames_sent += 1
        try:
            loop.call_soon_threadsafe(self._enqueue, payload)
        except RuntimeError:  # closing
            return 0
        return len(clients)

    def _enqueue(self, payload: bytes) -> None:
        for queue in list(self._clients):
            if queue.full():  # a slow page loses its oldest frame, never the stream
                queue.get_nowait()
            queue.put_nowait(payload)

    # ------------------------------------------------------------------------------------------ what happened

    @property
    def clients(self) -> int:
        with self._lock:
            return len(self._clients)

    @property
    def connects(self) -> int:
        with self._lock:
            return self._connects

    @property
    def frames_sent(self) -> int:
        with self._lock:
            return self._frames_sent

    @property
    def disconnects(self) -> int:
        with self._lock:
            return self._disconnects

    @property
    def acks(self) -> list[dict[str, Any]]:
        """Acknowledgements received: {"ack": index, "points", "pixels", "match": drawn pixels = pixels sent}."""
        with self._lock:
            return list(self._acks)

    def wait_for(self, condition, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if condition(self):
                return True
            time.sleep(0.02)
        return bool(condition(self))

    # ------------------------------------------------------------------------------------------ the server thread

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            loop.run_until_complete(self._serve())
        except BaseException as exc:  # a bind failure before start() returned
            self._start_error = exc
        finally:
            self._started.set()
            try:
                loop.run_until_complete(loop.shutdown_asyncgens())
            finally:
                loop.close()
                self._loop = None

    async def _serve(self) -> None:
        from websockets.asyncio.server import serve

        self._stop = asyncio.get_running_loop().create_future()
        async with serve(self._handler, self.host, self.port, process_request=self._http,
                         max_size=1 << 16, compression=None) as server:
            self.port = server.sockets[0].getsockname()[1]
            self._started.set()
            await self._stop
            server.close(close_connections=True)
            await server.wait_closed()

    def _http(self, connection, request):
        path = request.path.split("?", 1)[0]
        if path == "/ws":
            return None  # the WebSocket handshake
        if path in ("/", "/index.html"):
            response = connection.respond(200, PAGE)
            del response.headers["Content-Type"]  # a multi-dict: replace, not add
            response.headers["Content-Type"] = "text/html; charset=utf-8"
            response.headers["Cache-Control"] = "no-store"
            return response
        return connection.respond(404, "not found\n")

    async def _handler(self, ws) -> None:
        from websockets.exceptions import ConnectionClosed

        queue: asyncio.Queue = asyncio.Queue(self.max_queue)
        with self._lock:
            self._clients.add(queue)
            self._connects += 1

        async def sender():
            while True:
                payload = await queue.get()
                await ws.send(payload)

        task = asyncio.create_task(sender())
        try:
            async for message in ws:
                self._ack(message)
        except ConnectionClosed:
            pass
        finally:
            task.cancel()
            try:
                await task
            except (asyncio.CancelledError, ConnectionClosed):
                pass
            with self._lock:
                self._clients.discard(queue)
                self._disconnects += 1

    def _ack(self, message) -> None:
        try:
            data = json.loads(message)
            index = int(data["ack"])
            points, pixels = data.get("points", []), data.get("pixels", [])
        except (ValueError, KeyError, TypeError):
            return
        with self._lock:
            image = self._sent.get(index)
            match = None
            if image is not None and len(points) == len(pixels) and points:
                tol = 0 if self.image_format == "png" else JPEG_TOLERANCE
                try:
                    match = all(max(abs(int(image[y, x, c]) - int(p[c])) for c in range(3)) <= tol
                                for (x, y), p in zip(points, pixels))
                except (IndexError, TypeError, ValueError):
                    match = False
            self._acks.append({"ack": index, "points": points, "pixels": pixels, "match": match})
