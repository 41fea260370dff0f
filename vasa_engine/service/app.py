"""The service's ASGI app (Starlette): health, metrics, the avatar store, the session WebSocket and the page.

`create_app(engine, config)` builds it around one engine (this process's device); `server.py` runs it on uvicorn.
The protocol is protocol.py's and the README's; one client session is session.py's `ServiceSession`.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import time

from starlette.applications import Starlette
from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect, WebSocketState

from ..errors import InputError, VasaError, one_line
from ..streaming import DEFAULT_STREAM_STEPS
from .avatar_store import AvatarNotFound, AvatarStore
from .config import ServiceConfig
from .metrics import ServiceMetrics
from .protocol import (CLOSE_IDLE_TIMEOUT, CLOSE_INTERNAL, CLOSE_NORMAL, CLOSE_POLICY, CLOSE_TRY_AGAIN,
                       CLOSE_UNAUTHORIZED, CLOSE_UNSUPPORTED, FPS, SAMPLE_RATE, ProtocolError, ServiceFull,
                       audio_samples, error, parse_json, parse_start)
from .session import Done, Failed, OutFrame, ServiceSession

log = logging.getLogger("vasa_engine.service")
LINGER_FACTOR = 4  # an upload without Content-Length is read and dropped up to this many times the limit


class LocalHost:
    """Where sessions run and avatars are prepared: this process's engine (the scale-out swaps in replicas with
    the same methods)."""

    def __init__(self, engine, config: ServiceConfig):
        self.engine, self.config = engine, config
        self.store = AvatarStore(config.avatars, engine)
        self.device_name = engine.device_name
        self.output_size = engine.output_size

    async def add_avatar(self, data: bytes, content_type: str | None) -> tuple[dict, bool]:
        return await run_in_threadpool(self.store.add, data, content_type)

    async def open_session(self, start, replica: str) -> ServiceSession:
        """A running session for `start` (AvatarNotFound, InputError: refused); `replica` is this process's name."""
        loop = asyncio.get_running_loop()
        avatar = await run_in_threadpool(self.store.get, start.avatar)
        return await run_in_threadpool(lambda: ServiceSession(self.engine, avatar, start, loop=loop,
                                                              max_buffered_s=self.config.max_buffered_s))


class ServiceState:
    """What the routes share: the host (engine and store), the metrics, the live sessions."""

    def __init__(self, host, config: ServiceConfig):
        self.host = host
        self.config = config
        self.store = host.store
        self.metrics = ServiceMetrics()
        self.metrics.avatars.set(len(self.store.list()))
        self.sessions: set = set()
        self.connections = 0  # WebSockets holding a session slot (from accept to close)
        self.started = time.time()
        self.replica = config.replica or f"{config.host}:{config.port}"

    def authorized(self, headers, query_token: str | None = None) -> bool:
        token = self.config.token
        if token is None:
            return True
        given = headers.get("authorization", "")
        if given.lower().startswith("bearer ") and hmac.compare_digest(given[7:].strip().encode(), token.encode()):
            return True
        return query_token is not None and hmac.compare_digest(query_token.encode(), token.encode())


def create_app(engine, config: ServiceConfig | None = None, *, host=None) -> Starlette:
    """The app around `engine` (or around `host`, an object with LocalHost's methods, when engine is None)."""
    config = (config or ServiceConfig()).check()
    state = ServiceState(host if host is not None else LocalHost(engine, config), config)

    def unauthorized() -> JSONResponse:
        state.metrics.errors.labels("unauthorized").inc()
        return JSONResponse({"error": "missing or wrong token: send Authorization: Bearer <token>"}, 401,
                            headers={"WWW-Authenticate": "Bearer"})

    def bad(status: int, message: str, kind: str) -> JSONResponse:
        state.metrics.errors.labels(kind).inc()
        return JSONResponse({"error": message}, status)

    async def page(request: Request) -> Response:
        from .page import PAGE

        return HTMLResponse(PAGE, headers={"Cache-Control": "no-store"})

    async def healthz(request: Request) -> Response:
        return JSONResponse({"status": "ok", "replica": state.replica, "device": state.host.device_name,
                             "sessions": len(state.sessions), "max_sessions": config.max_sessions,
                             "uptime_s": round(time.time() - state.started, 1)})

    async def metrics(request: Request) -> Response:
        return Response(state.metrics.render(), media_type="text/plain; version=0.0.4; charset=utf-8")

    async def read_body(request: Request, keep: int, upto: int) -> tuple[bytes, int]:
        """-> (the body's first `keep` bytes, bytes read). Reading goes on (dropping) up to `upto` bytes, so a
        client still sending gets the answer that follows."""
        body, seen = bytearray(), 0
        async for chunk in request.stream():
            if seen < keep:
                body += chunk[: keep - seen]
            seen += len(chunk)
            if seen > upto:
                break
        return bytes(body), seen

    async def create_avatar(request: Request) -> Response:
        limit = config.max_upload_bytes
        if not state.authorized(request.headers):
            await read_body(request, 0, limit)
            return unauthorized()
        length = request.headers.get("content-length")
        if length is not None and length.isdigit() and int(length) > limit:
            return bad(413, f"portrait too large: {int(length)} bytes, at most {limit}", "too_large")
        body, seen = await read_body(request, limit, LINGER_FACTOR * limit)
        if seen > limit:
            # the body was read (up to a bound) and dropped, so the client, still sending, gets this answer
            return bad(413, f"portrait too large: more than {limit} bytes", "too_large")
        try:
            info, new = await state.host.add_avatar(body, request.headers.get("content-type"))
        except InputError as exc:
            return bad(400, one_line(exc), "bad_image")
        except ServiceFull as exc:  # scale-out: no replica free to prepare it
            return bad(503, one_line(exc), "busy")
        state.metrics.avatars.set(len(state.store.list()))
        return JSONResponse(info, 201 if new else 200, headers={"Location": f"/v1/avatars/{info['id']}"})

    async def list_avatars(request: Request) -> Response:
        if not state.authorized(request.headers):
            return unauthorized()
        return JSONResponse({"avatars": await run_in_threadpool(state.store.list)})

    async def one_avatar(request: Request) -> Response:
        if not state.authorized(request.headers):
            return unauthorized()
        ident = request.path_params["avatar"]
        try:
            if request.method == "DELETE":
                await run_in_threadpool(state.store.delete, ident)
                state.metrics.avatars.set(len(state.store.list()))
                return Response(status_code=204)
            return JSONResponse(await run_in_threadpool(state.store.info, ident))
        except AvatarNotFound as exc:
            return bad(404, one_line(exc), "unknown_avatar")

    async def sessions(ws: WebSocket) -> None:
        await SessionConnection(state, ws).run()

    routes = [
        Route("/", page), Route("/index.html", page),
        Route("/healthz", healthz), Route("/metrics", metrics),
        Route("/v1/avatars", create_avatar, methods=["POST"]),
        Route("/v1/avatars", list_avatars, methods=["GET"]),
        Route("/v1/avatars/{avatar}", one_avatar, methods=["GET", "DELETE"]),
        WebSocketRoute("/v1/sessions", sessions),
    ]
    app = Starlette(routes=routes)
    app.state.service = state
    return app


class SessionConnection:
    """One WebSocket on /v1/sessions, from the handshake to the close."""

    def __init__(self, state: ServiceState, ws: WebSocket):
        self.state, self.ws = state, ws
        self.session: ServiceSession | None = None
        self.rtc = None  # WebRTCOutput, once output is webrtc

    async def run(self) -> None:
        state, ws, m = self.state, self.ws, self.state.metrics
        await ws.accept()
        if not state.authorized(ws.headers, ws.query_params.get("token")):
            m.refused_sessions.labels("unauthorized").inc()
            await ws.close(CLOSE_UNAUTHORIZED, "missing or wrong token")
            return
        if state.connections >= state.config.max_sessions:
            m.refused_sessions.labels("full").inc()
            await ws.close(CLOSE_TRY_AGAIN, f"the server is full ({state.config.max_sessions} live sessions): "
                                            "try again later")
            return
        state.connections += 1
        try:
            if await self._start():
                await self._serve()
        except WebSocketDisconnect:
            pass
        finally:
            state.connections -= 1
            await self._cleanup()

    async def _close(self, code: int, reason: str) -> None:
        if self.ws.client_state == WebSocketState.CONNECTED:
            try:
                await self.ws.close(code, reason[:120])
            except (RuntimeError, OSError):
                pass

    async def _send_json(self, obj) -> None:
        await self.ws.send_text(obj if isinstance(obj, str) else json.dumps(obj))

    async def _start(self) -> bool:
        state, m = self.state, self.state.metrics
        try:
            message = await asyncio.wait_for(self.ws.receive(), state.config.start_timeout_s)
        except asyncio.TimeoutError:
            m.refused_sessions.labels("no_start").inc()
            await self._close(CLOSE_IDLE_TIMEOUT, f"no start message within {state.config.start_timeout_s:g} s")
            return False
        if message["type"] == "websocket.disconnect":
            return False
        if message.get("text") is None:
            m.errors.labels("protocol").inc()
            await self._send_json(error("audio before start: the first message must be a JSON start message"))
            await self._close(CLOSE_UNSUPPORTED, "the first message must be a JSON start message")
            return False
        try:
            start = parse_start(parse_json(message["text"]), DEFAULT_STREAM_STEPS)
            self.session = await state.host.open_session(start, state.replica)
        except ServiceFull as exc:
            m.refused_sessions.labels("full").inc()
            await self._close(CLOSE_TRY_AGAIN, one_line(exc))
            return False
        except (ProtocolError, InputError, VasaError) as exc:
            kind = "unknown_avatar" if isinstance(exc, AvatarNotFound) else "protocol"
            m.errors.labels(kind).inc()
            m.refused_sessions.labels(kind).inc()
            await self._send_json(error(one_line(exc)))
            await self._close(CLOSE_POLICY, one_line(exc))
            return False
        state.sessions.add(self.session)
        m.sessions.inc()
        m.live_sessions.set(len(state.sessions))
        if start.output == "webrtc":
            from .webrtc import WebRTCOutput

            self.rtc = WebRTCOutput(fps=FPS, sample_rate=SAMPLE_RATE, on_sent=self._on_rtc_sent)
        await self._send_json({"type": "ready", "session": self.session.id, "replica": self.session.replica
                               or state.replica, "sample_rate": SAMPLE_RATE, "fps": FPS, "output": start.output,
                               "width": state.host.output_size, "height": state.host.output_size})
        return True

    async def _serve(self) -> None:
        sender = asyncio.create_task(self._send_frames())
        receiver = asyncio.create_task(self._receive())
        done, pending = await asyncio.wait({sender, receiver}, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        for task in pending:
            try:
                await task
            except (asyncio.CancelledError, WebSocketDisconnect, RuntimeError, OSError):
                pass
        for task in done:
            exc = task.exception()
            if exc is not None and not isinstance(exc, (WebSocketDisconnect, RuntimeError, OSError)):
                log.warning("session ended by an error: %s", one_line(exc))
                self.state.metrics.errors.labels("internal").inc()
                await self._close(CLOSE_INTERNAL, one_line(exc))

    async def _receive(self) -> None:
        m, session = self.state.metrics, self.session
        while True:
            message = await self.ws.receive()
            if message["type"] == "websocket.disconnect":
                return
            try:
                if message.get("bytes") is not None:
                    samples = audio_samples(message["bytes"])
                    session.audio(samples)
                    m.audio_received.inc(samples.size / SAMPLE_RATE)
                    continue
                body = parse_json(message.get("text") or "")
                kind = body["type"]
                if kind == "controls":
                    session.controls(body)
                elif kind == "interrupt":
                    session.interrupt()
                elif kind == "end":
                    session.end()
                elif kind == "offer":
                    await self._answer(body)
                elif kind == "client_report":  # what the page at / drew (page.py)
                    from .page import record_client_report

                    record_client_report(self.state, body)
                elif kind == "start":
                    raise ProtocolError("the session has already started")
                else:
                    raise ProtocolError(f"unknown message type {kind!r} "
                                        "(controls, interrupt, end, offer; audio as binary messages)")
            except ProtocolError as exc:
                m.errors.labels("protocol").inc()
                await self._send_json(error(one_line(exc)))

    async def _answer(self, body) -> None:
        if self.rtc is None:
            raise ProtocolError("offer on a session whose output is not webrtc")
        sdp = body.get("sdp")
        if not isinstance(sdp, str) or not sdp.startswith("v="):
            raise ProtocolError("offer needs \"sdp\": the client's SDP offer")
        try:
            answer = await self.rtc.answer(sdp)
        except ValueError as exc:
            raise ProtocolError(f"cannot answer the offer: {one_line(exc)}") from None
        await self._send_json({"type": "answer", "sdp": answer})

    async def _send_frames(self) -> None:
        session, m = self.session, self.state.metrics
        output = session.start.output
        next_stats = time.monotonic() + 1.0
        while True:
            event = await session.next_event(timeout=1.0)
            if isinstance(event, OutFrame):
                if self.rtc is not None:
                    await self.rtc.put(event)
                else:
                    await self.ws.send_bytes(event.payload)
                    self._count(event, output)
            elif isinstance(event, Done):
                if self.rtc is not None:
                    await self.rtc.drain(timeout=30.0)
                await self._send_json({"type": "done", "report": session.report()})
                await self._close(CLOSE_NORMAL, "done")
                return
            elif isinstance(event, Failed):
                m.errors.labels("session").inc()
                await self._send_json(error(event.message))
                await self._close(CLOSE_INTERNAL, event.message)
                return
            if self.rtc is not None and time.monotonic() >= next_stats:
                next_stats = time.monotonic() + 1.0
                report = session.report()
                await self._send_json({"type": "stats", "frames": report["frames"], "late": report["late"],
                                       "latency_ms": report["latency_ms"]})

    def _count(self, frame: OutFrame, output: str) -> None:
        m = self.state.metrics
        latency = self.session.sent(frame)
        m.frames_sent.labels(frame.kind, output).inc()
        if latency is not None:
            m.latency.observe(latency)
            if latency > self.session.latency_budget_s:
                m.frames_late.inc()

    def _on_rtc_sent(self, frame: OutFrame) -> None:
        if self.session is not None:
            self._count(frame, "webrtc")

    async def _cleanup(self) -> None:
        state, session = self.state, self.session
        if self.rtc is not None:
            await self.rtc.close()
        if session is not None:
            state.sessions.discard(session)
            state.metrics.live_sessions.set(len(state.sessions))
            state.metrics.frames_dropped.inc(session.stats.dropped)
            await session.aclose()
        await self._close(CLOSE_NORMAL, "closed")
