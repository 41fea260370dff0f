"""`vasa-engine serve`: a real server on 127.0.0.1 (uvicorn, tiny weights on the CPU) driven by real clients: HTTP,
the avatar store, sessions over the WebSocket with every control message, every error answered as specified,
authentication, limits, and the metrics."""

import asyncio
import http.client
import io
import json
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request

import numpy as np
import pytest
from PIL import Image

pytest.importorskip("starlette")
pytest.importorskip("uvicorn")

from vasa_engine.client import ServiceClient, ServiceError, SessionClosed  # noqa: E402
from vasa_engine.service import BackgroundServer, ServiceConfig  # noqa: E402
from vasa_engine.service.load import run_load, speech_like  # noqa: E402

FAST = {"chunk_ms": 120, "lookahead_ms": 40}


@pytest.fixture(scope="module")
def server(engine, tmp_path_factory):
    with BackgroundServer(engine, ServiceConfig(port=0, avatars=tmp_path_factory.mktemp("avatars"),
                                                max_sessions=4)) as srv:
        yield srv


@pytest.fixture(scope="module")
def portrait(sample_image) -> bytes:
    return sample_image.read_bytes()


@pytest.fixture(scope="module")
def avatar_id(server, portrait) -> str:
    return ServiceClient(server.url).upload_avatar(portrait, "image/png")["id"]


def get(url: str, headers=None):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=30) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


async def ws_connect(url: str, **kw):
    from websockets.asyncio.client import connect

    return await connect(url, max_size=None, compression=None, **kw)


async def recv_json(ws, timeout=60):
    """The next JSON message (frames skipped)."""
    while True:
        raw = await asyncio.wait_for(ws.recv(), timeout)
        if isinstance(raw, str):
            return json.loads(raw)


def run(coro, timeout=240):
    return asyncio.run(asyncio.wait_for(coro, timeout))


def healthy(server) -> bool:
    status, body = get(server.url + "/healthz")
    return status == 200 and json.loads(body)["status"] == "ok"


def wait_until(condition, timeout=10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.02)
    return condition()


# ---------------------------------------------------------------------------------------------- HTTP


def test_health_and_metrics(server, avatar_id):
    status, body = get(server.url + "/healthz")
    health = json.loads(body)
    assert status == 200 and health["status"] == "ok" and health["max_sessions"] == 4
    status, body = get(server.url + "/metrics")
    text = body.decode()
    assert status == 200
    for name in ("vasa_live_sessions", "vasa_refused_sessions_total", "vasa_frames_sent_total",
                 "vasa_frames_late_total", "vasa_frame_latency_seconds_bucket", "vasa_errors_total",
                 "vasa_avatars"):
        assert name in text, name
    assert "_created" not in text


def test_avatar_store_routes(server, portrait, avatar_id, tmp_path):
    client = ServiceClient(server.url)
    again = client.upload_avatar(portrait, "image/png")
    assert again["id"] == avatar_id and again["width"] == 512 and again["height"] == 512
    assert again["aligned"] is False  # no face models in the tests: centre crop
    assert avatar_id in [a["id"] for a in client.avatars()]
    assert client.avatar(avatar_id)["id"] == avatar_id
    # a second portrait: created (201), then deleted (204), then unknown (404)
    with Image.open(io.BytesIO(portrait)) as im:
        other = png_bytes(np.asarray(im)[:, ::-1])
    req = urllib.request.Request(server.url + "/v1/avatars", data=other, method="POST",
                                 headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(req, timeout=60) as r:
        assert r.status == 201
        created = json.loads(r.read())
    assert created["id"] != avatar_id
    client.delete_avatar(created["id"])
    with pytest.raises(ServiceError) as info:
        client.avatar(created["id"])
    assert info.value.status == 404 and "unknown avatar" in info.value.message
    with pytest.raises(ServiceError) as info:
        client.delete_avatar(created["id"])
    assert info.value.status == 404


def png_bytes(array) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.ascontiguousarray(array)).save(buf, format="PNG")
    return buf.getvalue()


def test_bad_uploads(server, portrait, tmp_path):
    client = ServiceClient(server.url)
    # not an image: the same one-line message the CLI gives for such a file
    with pytest.raises(ServiceError) as info:
        client.upload_avatar(b"this is not a picture", "image/png")
    assert info.value.status == 400
    assert info.value.message == "not an image (or an unsupported format): the uploaded portrait"
    bad = tmp_path / "bad.png"
    bad.write_bytes(b"this is not a picture")
    cli = subprocess.run([sys.executable, "-m", "vasa_engine.cli", "render", "--image", str(bad), "-o",
                          str(tmp_path / "x.mp4"), "--frames", "1"], capture_output=True, text=True, timeout=120)
    assert cli.returncode == 2
    assert f"not an image (or an unsupported format): {bad}" in cli.stderr
    # truncated, too small, wrong type
    with pytest.raises(ServiceError) as info:
        client.upload_avatar(portrait[: len(portrait) // 2], "image/png")
    assert info.value.status == 400 and info.value.message.startswith("truncated or corrupt image")
    with pytest.raises(ServiceError) as info:
        client.upload_avatar(png_bytes(np.full((32, 32, 3), 128, np.uint8)), "image/png")
    assert info.value.status == 400 and "image too small" in info.value.message
    with pytest.raises(ServiceError) as info:
        client.upload_avatar(portrait, "text/plain")
    assert info.value.status == 400 and "Content-Type" in info.value.message
    # too large: refused from its Content-Length, and when streamed without one
    conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
    conn.putrequest("POST", "/v1/avatars")
    conn.putheader("Content-Type", "image/png")
    conn.putheader("Content-Length", str(server.config.max_upload_bytes + 1))
    conn.endheaders()  # no body sent: the declared length alone is refused
    response = conn.getresponse()
    assert response.status == 413 and "portrait too large" in json.loads(response.read())["error"]
    conn.close()

    def chunks():
        for _ in range(17):
            yield b"\0" * (1 << 20)

    req = urllib.request.Request(server.url + "/v1/avatars", data=chunks(), method="POST",
                                 headers={"Content-Type": "image/png", "Transfer-Encoding": "chunked"})
    with pytest.raises(urllib.error.HTTPError) as refused:
        urllib.request.urlopen(req, timeout=60)
    assert refused.value.code == 413
    assert healthy(server)


def test_store_survives_restart_without_preparing_again(engine, portrait, tmp_path, monkeypatch):
    root = tmp_path / "avatars"
    with BackgroundServer(engine, ServiceConfig(port=0, avatars=root)) as first:
        ident = ServiceClient(first.url).upload_avatar(portrait, "image/png")["id"]
        prepared = first.state.store.get(ident)
    files = sorted(p.name for p in (root / ident).iterdir())
    assert files == ["avatar.json", "avatar.safetensors", "portrait.png"]
    assert not any(p.suffix in (".pt", ".pkl", ".pickle") for p in root.rglob("*"))
    calls = []
    monkeypatch.setattr(engine, "prepare", lambda *a, **k: calls.append(1))
    with BackgroundServer(engine, ServiceConfig(port=0, avatars=root)) as second:
        assert [a["id"] for a in ServiceClient(second.url).avatars()] == [ident]
        loaded = second.state.store.get(ident)
    assert calls == []  # loaded from disk, not prepared again
    for key in ("feature_3d", "kp", "exp", "x_s"):
        assert np.array_equal(getattr(loaded.source, key).numpy(), getattr(prepared.source, key).numpy()), key
    assert np.array_equal(loaded.image, prepared.image)


# ---------------------------------------------------------------------------------------------- sessions


def test_session_frames_match_audio_duration_and_done_report(server, avatar_id):
    async def go():
        client = ServiceClient(server.url)
        pcm = speech_like(1.0, seed=1)
        async with client.session(avatar_id, settings=FAST) as session:
            ready = session.ready
            assert ready["sample_rate"] == 16000 and ready["fps"] == 25 and ready["replica"]
            for a in range(0, pcm.size, 1234):  # odd message sizes
                await session.send_audio(pcm[a : a + 1234])
            await session.end()
            frames = [f async for f in session.frames()]
        return ready, frames, session.report

    ready, frames, report = run(go())
    speech = [f for f in frames if f.kind == "speech"]
    assert len(speech) == round(16000 / 640) == 25  # 1 s of audio at 25 fps
    assert [f.header["frame"] for f in speech] == list(range(25))
    indices = [f.header["index"] for f in frames]
    assert indices == sorted(indices)
    first = speech[0]
    assert first.image.shape == (ready["height"], ready["width"], 3)
    assert first.audio.shape == (640,) and first.header["latency_ms"] is not None
    assert first.header["format"] == "image/jpeg"
    # the frames carry the audio that was sent, frame by frame
    sent = speech_like(1.0, seed=1).astype(np.float32) / 32768
    got = np.concatenate([f.audio for f in speech])[: sent.size]
    assert np.allclose(got, sent[: got.size], atol=1e-6)
    assert report["speech_frames"] == 25 and report["lost_audio_ms"] == 0
    assert set(report["latency_ms"]) == {"p50", "p95", "max"} and report["latency_ms"]["p50"] > 0
    assert report["audio_received_ms"] == 1000.0


def test_idle_frames_before_speech(server, avatar_id):
    async def go():
        async with ServiceClient(server.url).session(avatar_id, settings={**FAST, "idle_slack_ms": 0}) as session:
            kinds = []
            async for frame in session.frames():
                kinds.append(frame.kind)
                if len(kinds) == 4:
                    break
            return kinds

    assert run(go()) == ["idle"] * 4  # no speech: the avatar idles instead of freezing


def test_interrupt_controls_and_errors_keep_the_session(server, avatar_id):
    async def go():
        ws = await ws_connect(server.ws_url)
        await ws.send(json.dumps({"type": "start", "avatar": avatar_id, "settings": FAST}))
        assert (await recv_json(ws))["type"] == "ready"
        answers = []
        for bad in ("{not json", json.dumps({"type": "dance"}), json.dumps({"kind": "end"}),
                    json.dumps({"type": "controls", "head_yaw": 400}), json.dumps({"type": "controls", "mood": 1}),
                    json.dumps({"type": "start", "avatar": avatar_id}), b"\x01\x02\x03"):
            await ws.send(bad)
            answers.append(await recv_json(ws))
        await ws.send(json.dumps({"type": "controls", "head_yaw": 10.0, "smoothing": 0.5}))
        await ws.send(pcm_bytes(2.0, 3))
        await ws.send(json.dumps({"type": "interrupt"}))
        await ws.send(pcm_bytes(0.4, 4))
        await ws.send(json.dumps({"type": "end"}))
        frames, done = [], None
        async for raw in ws:
            if isinstance(raw, bytes):
                (n,) = struct.unpack(">I", raw[:4])
                frames.append(json.loads(raw[4 : 4 + n]))
            else:
                message = json.loads(raw)
                assert message["type"] in ("done",), message
                done = message
        return answers, frames, done, ws.close_code

    answers, frames, done, code = run(go())
    assert all(a["type"] == "error" for a in answers), answers
    messages = [a["message"] for a in answers]
    assert messages[0].startswith("malformed message: not JSON")
    assert messages[1].startswith("unknown message type 'dance'")
    assert messages[2] == 'malformed message: no "type" field'
    assert messages[3] == "head yaw must lie in [-45, 45] degrees, got 400"
    assert messages[4].startswith("unknown control(s): mood")
    assert messages[5] == "the session has already started"
    assert messages[6].startswith("audio must be 16-bit PCM")
    speech = [f for f in frames if f["kind"] == "speech"]
    last = max(f["utterance"] for f in speech)
    assert sum(f["utterance"] == last for f in speech) == 10  # the 0.4 s after the barge-in, complete
    assert all(f["utterance"] < last for f in speech[: -10])
    assert done is not None and done["report"]["interrupts"] == 1 and code == 1000


def pcm_bytes(seconds: float, seed: int) -> bytes:
    return speech_like(seconds, seed).astype("<i2").tobytes()


@pytest.mark.parametrize("first, code, message", [
    (b"\x00\x01" * 100, 1003, "audio before start"),
    ("not json at all", 1008, "malformed message: not JSON"),
    (json.dumps({"type": "end"}), 1008, "the first message must be"),
    (json.dumps({"type": "start"}), 1008, "start needs \"avatar\""),
    (json.dumps({"type": "start", "avatar": "0123456789abcdef"}), 1008, "unknown avatar"),
    (json.dumps({"type": "start", "avatar": "x", "output": "fax"}), 1008, "output must be one of"),
    (json.dumps({"type": "start", "avatar": "x", "settings": {"render": False}}), 1008, "server-only setting"),
])
def test_bad_first_messages_close_the_session(server, first, code, message):
    async def go():
        ws = await ws_connect(server.ws_url)
        await ws.send(first)
        answer = await recv_json(ws)
        await ws.wait_closed()
        return answer, ws.close_code

    answer, close = run(go())
    assert answer["type"] == "error" and message in answer["message"], answer
    assert close == code
    assert healthy(server)


def test_bad_settings_and_controls_in_start(server, avatar_id):
    async def go(start):
        ws = await ws_connect(server.ws_url)
        await ws.send(json.dumps({"type": "start", "avatar": avatar_id, **start}))
        answer = await recv_json(ws)
        await ws.wait_closed()
        return answer["message"], ws.close_code

    assert run(go({"settings": {"chunk_ms": 50}})) == (
        "chunk_ms must be a whole number of 40 ms video frames, got 50", 1008)
    assert run(go({"controls": {"steps": 0}})) == ("steps must lie in [1, 1000], got 0", 1008)


def test_oversized_message_is_refused_not_buffered(server, avatar_id):
    async def go():
        ws = await ws_connect(server.ws_url)
        await ws.send(json.dumps({"type": "start", "avatar": avatar_id, "settings": FAST}))
        assert (await recv_json(ws))["type"] == "ready"
        try:
            await ws.send(b"\0" * (64 << 20))  # 64 MiB of audio in one message
        except Exception:  # noqa: BLE001 - the server may close while the client is still sending
            pass
        await asyncio.wait_for(ws.wait_closed(), 60)
        return ws.close_code

    assert run(go()) == 1009
    assert wait_until(lambda: not server.state.sessions, 10)
    assert healthy(server)


def test_max_sessions_refuses_with_1013(engine, avatar_id, server, tmp_path):
    cfg = ServiceConfig(port=0, avatars=server.config.avatars, max_sessions=1)
    with BackgroundServer(engine, cfg) as one:
        async def go():
            async with ServiceClient(one.url).session(avatar_id, settings=FAST):
                ws = await ws_connect(one.ws_url)
                await ws.wait_closed()
                return ws.close_code, ws.close_reason

        code, reason = run(go())
        assert code == 1013 and "full" in reason
        assert "vasa_refused_sessions_total{reason=\"full\"} 1.0" in get(one.url + "/metrics")[1].decode()
        assert wait_until(lambda: one.state.connections == 0)


def test_silent_connection_is_closed_after_the_start_timeout(engine, server):
    cfg = ServiceConfig(port=0, avatars=server.config.avatars, start_timeout_s=0.5)
    with BackgroundServer(engine, cfg) as quick:
        async def go():
            ws = await ws_connect(quick.ws_url)
            await asyncio.wait_for(ws.wait_closed(), 30)
            return ws.close_code, ws.close_reason

        code, reason = run(go())
        assert code == 4408 and "no start message" in reason
        assert wait_until(lambda: quick.state.connections == 0)


def test_token(engine, server, avatar_id, portrait):
    cfg = ServiceConfig(port=0, avatars=server.config.avatars, token="s3cret")
    with BackgroundServer(engine, cfg) as locked:
        assert get(locked.url + "/v1/avatars")[0] == 401
        assert get(locked.url + "/v1/avatars", {"Authorization": "Bearer wrong"})[0] == 401
        assert get(locked.url + "/v1/avatars", {"Authorization": "Bearer s3cret"})[0] == 200
        assert get(locked.url + "/healthz")[0] == 200 and get(locked.url + "/metrics")[0] == 200
        with pytest.raises(ServiceError) as info:
            ServiceClient(locked.url).upload_avatar(portrait, "image/png")
        assert info.value.status == 401

        async def go():
            ws = await ws_connect(locked.ws_url)
            await ws.wait_closed()
            refused = ws.close_code
            async with ServiceClient(locked.url, token="s3cret").session(avatar_id, settings=FAST) as session:
                by_query = session.ready["type"]
            ws = await ws_connect(locked.ws_url, additional_headers={"Authorization": "Bearer s3cret"})
            await ws.send(json.dumps({"type": "start", "avatar": avatar_id, "settings": FAST}))
            by_header = (await recv_json(ws))["type"]
            await ws.close()
            return refused, by_query, by_header

        assert run(go()) == (4401, "ready", "ready")
    with pytest.raises(Exception, match="needs --token"):
        ServiceConfig(host="0.0.0.0").check()


def test_vanished_client_frees_its_session_at_once(server, avatar_id):
    async def go():
        ws = await ws_connect(server.ws_url)
        await ws.send(json.dumps({"type": "start", "avatar": avatar_id, "settings": FAST}))
        assert (await recv_json(ws))["type"] == "ready"
        await ws.send(pcm_bytes(1.0, 5))
        ws.transport.abort()  # the TCP connection dies: no close frame

    run(go())
    assert wait_until(lambda: not server.state.sessions and server.state.connections == 0, 5)
    assert wait_until(lambda: not session_threads(), 10), session_threads()


def session_threads() -> list[str]:
    import threading

    return [t.name for t in threading.enumerate() if t.name.startswith(("vasa-session", "vasa-stream"))]


def test_cycles_and_abrupt_disconnects_leak_nothing(server, avatar_id):
    """200 connect / start / close cycles and 50 abrupt disconnects mid-utterance: no thread, session, file handle
    or stream buffer left behind."""
    import gc

    from vasa_engine.streaming import StreamSession

    def streams_alive() -> int:
        gc.collect()
        return sum(isinstance(o, StreamSession) for o in gc.get_objects())

    async def cycle(abrupt: bool, seed: int):
        ws = await ws_connect(server.ws_url)
        await ws.send(json.dumps({"type": "start", "avatar": avatar_id, "settings": FAST}))
        assert (await recv_json(ws))["type"] == "ready"
        if abrupt:
            await ws.send(pcm_bytes(0.5, seed))
            await asyncio.sleep(0.05)
            ws.transport.abort()
        else:
            await ws.close()

    async def go():
        for i in range(200):
            await cycle(False, i)
        for i in range(50):
            await cycle(True, i)

    fds_before = len(os.listdir("/proc/self/fd"))
    run(go(), timeout=600)
    assert wait_until(lambda: not server.state.sessions and server.state.connections == 0, 30)
    assert wait_until(lambda: not session_threads(), 30), session_threads()
    assert streams_alive() == 0  # every StreamSession (its buffers with it) collected
    assert len(os.listdir("/proc/self/fd")) <= fds_before + 5  # no descriptor per session (a leak: 250+)
    assert healthy(server)


def test_load_two_clients_lose_no_audio(server, avatar_id):
    result = run(run_load(server.url, avatar_id, clients=2, seconds=2.0, settings=FAST), timeout=300)
    assert not result["errors"], result["errors"]
    assert result["expected_speech_frames"] == 2 * 50
    assert result["speech_frames"] == result["expected_speech_frames"] and result["lost_audio_ms"] == 0
    assert result["latency_ms"]["p50"] is not None


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_cli_serve_and_load_test(tiny_full_weights, tmp_path, sample_image):
    port = free_port()
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vasa_engine.cli", "serve", "--weights", str(tiny_full_weights),
                             "--device", "cpu", "--port", str(port), "--avatars", str(tmp_path / "avatars"),
                             "--max-sessions", "2", "--log-level", "warning"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        url = f"http://127.0.0.1:{port}"
        assert wait_until(lambda: proc.poll() is None and port_open(port), 120), proc.stderr.read()
        out = tmp_path / "load.json"
        load = subprocess.run([sys.executable, "-m", "vasa_engine.cli", "load-test", "--url", url, "--image",
                               str(sample_image), "--clients", "2", "--seconds", "1", "--chunk-ms", "120",
                               "--lookahead-ms", "40", "--json", str(out)], capture_output=True, text=True,
                              timeout=300)
        assert load.returncode == 0, load.stderr
        assert "lost audio 0 ms" in load.stdout
        assert json.loads(out.read_text())["speech_frames"] == 50
    finally:
        proc.send_signal(signal.SIGINT)  # Ctrl-C: a graceful shutdown, exit 0
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "serving on http://127.0.0.1:" in err and err.rstrip().endswith("stopped")


def port_open(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def test_client_reports_a_refused_session(server):
    async def go():
        async with ServiceClient(server.url).session("0123456789abcdef"):
            pass

    with pytest.raises(SessionClosed) as info:
        run(go())
    assert info.value.code == 1008
