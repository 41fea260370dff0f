"""The service's WebRTC output and its page: the output's pacing (audio and video stamped on the same tick, each
frame's own audio beside its image, silence and the last image when nothing waits), its queue before and after the
peer connects, bad offers; a whole session over WebRTC to an aiortc client; the page at `/` in headless Chromium,
which receives the video over WebRTC, draws it and reports what it drew."""

import asyncio
import json
import time
import urllib.request

import numpy as np
import pytest

pytest.importorskip("aiortc")
pytest.importorskip("websockets")

from aiortc import RTCConfiguration, RTCPeerConnection, RTCSessionDescription  # noqa: E402
from helpers import launch_headless_chromium  # noqa: E402
from test_preview import chromium_binary, stop_process  # noqa: E402

from vasa_engine.service import BackgroundServer, ServiceConfig  # noqa: E402
from vasa_engine.service import webrtc  # noqa: E402
from vasa_engine.service.session import OutFrame  # noqa: E402
from vasa_engine.service.webrtc import PacedTrack, WebRTCOutput  # noqa: E402

SR, FPS, FRAME_SAMPLES = 16000, 25, 640
WEBRTC_FLAGS = ("--use-fake-device-for-media-stream", "--use-fake-ui-for-media-stream",
                "--disable-features=WebRtcHideLocalIpsWithMdns")
CODEC_TOLERANCE = 24  # per channel, on the mean of a 1/16 cell of the image: VP8 and YUV 4:2:0 are lossy


@pytest.fixture(autouse=True)
def host_candidates():
    from aioice.ice import get_host_addresses

    if not get_host_addresses(use_ipv4=True, use_ipv6=True):
        pytest.skip("no network interface besides loopback: aiortc gathers no ICE candidates")


class Peer:
    """An aiortc client: recvonly video and audio, collecting what arrives on each track."""

    def __init__(self):
        self.pc = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        self.pc.addTransceiver("video", direction="recvonly")
        self.pc.addTransceiver("audio", direction="recvonly")
        self.received = {"video": [], "audio": []}
        self.readers = []
        self.pc.on("track", lambda track: self.readers.append(asyncio.ensure_future(self._read(track))))

    async def _read(self, track):
        try:
            while True:
                self.received[track.kind].append(await track.recv())
        except Exception:  # noqa: BLE001 - the track ended
            pass

    async def offer(self) -> str:
        await self.pc.setLocalDescription(await self.pc.createOffer())
        return self.pc.localDescription.sdp

    async def accept(self, answer_sdp: str, output: WebRTCOutput | None = None, timeout: float = 20.0) -> None:
        """Take the answer; wait until this side (and `output`'s, when given) is connected."""
        await self.pc.setRemoteDescription(RTCSessionDescription(answer_sdp, "answer"))
        deadline = time.monotonic() + timeout
        while self.pc.connectionState != "connected" or (output is not None and not output.connected):
            assert time.monotonic() < deadline, f"not connected: {self.pc.connectionState}"
            await asyncio.sleep(0.01)

    async def close(self) -> None:
        await self.pc.close()
        for reader in self.readers:
            reader.cancel()
        await asyncio.gather(*self.readers, return_exceptions=True)

    def audio_seconds(self) -> float:
        return sum(f.samples / f.sample_rate for f in self.received["audio"])


def out_frame(index: int, rng) -> OutFrame:
    image = rng.integers(0, 256, (48, 64, 3), dtype=np.uint8)
    audio = rng.uniform(-0.5, 0.5, FRAME_SAMPLES).astype(np.float32)
    return OutFrame(index, "speech", 0, index, image, audio, time.perf_counter())


def record_pushed(monkeypatch) -> list:
    """What the pacer hands the tracks, in order: (kind, av frame, OutFrame or None)."""
    pushed = []
    push = PacedTrack.push

    def recording(self, frame, source=None):
        pushed.append((self.kind, frame, source))
        push(self, frame, source)

    monkeypatch.setattr(PacedTrack, "push", recording)
    return pushed


def run_closing(main, timeout: float = 120.0):
    """asyncio.run(main(closing)) within `timeout` s; what main adds to `closing` (peers, outputs) is closed at the
    end, in reverse order, even when it fails."""

    async def closing_all():
        closing = []
        try:
            return await asyncio.wait_for(main(closing), timeout)
        finally:
            for thing in reversed(closing):
                await thing.close()

    return asyncio.run(closing_all())


def test_pacing_keeps_each_frames_audio_beside_its_image(monkeypatch):
    pushed = record_pushed(monkeypatch)
    rng = np.random.default_rng(7)
    frames = [out_frame(i, rng) for i in range(30)]

    async def run(closing):
        sent = []
        output = WebRTCOutput(fps=FPS, sample_rate=SR, on_sent=sent.append)
        peer = Peer()
        closing += [peer, output]
        await peer.accept(await output.answer(await peer.offer()), output)
        started = time.monotonic()
        most_queued = 0
        for frame in frames:
            await output.put(frame)  # waits while a second of frames is queued
            most_queued = max(most_queued, len(output.pending))
        assert most_queued == output.max_queued == FPS
        await output.drain(timeout=30)
        drained = time.monotonic() - started
        await asyncio.sleep(0.3)  # nothing waits: the last image repeats, the audio is silence
        time.sleep(2 * webrtc.MAX_LATE_S)  # the loop stalls: the pacer skips ahead, the audio keeps its timeline
        await asyncio.sleep(0.3)
        await output.close()
        await output.close()
        return sent, output, peer, drained

    sent, output, peer, drained = run_closing(run)
    assert sent == frames and output.sent == len(frames) and output.dropped == 0
    video = [(f, source) for kind, f, source in pushed if kind == "video"]
    audio = {f.pts: f for kind, f, _ in pushed if kind == "audio"}
    assert [source for _, source in video[: len(frames)]] == frames
    for f, source in video:
        tick, rest = divmod(f.pts, 90000 // FPS)
        assert rest == 0 and f.time_base == webrtc.fractions.Fraction(1, 90000)
        pcm = np.concatenate([audio[tick * FRAME_SAMPLES + offset].to_ndarray()[0] for offset in (0, 320)])
        if source is None:  # a repeat: the image before, silence
            assert np.array_equal(f.to_ndarray(format="rgb24"), frames[-1].image) and not pcm.any()
        else:
            assert np.array_equal(f.to_ndarray(format="rgb24"), source.image)
            assert np.abs(pcm / 32768.0 - source.audio).max() <= 1 / 32768
    ticks = [f.pts // (90000 // FPS) for f, _ in video]
    assert all(b > a for a, b in zip(ticks, ticks[1:]))  # one image per tick, never two
    assert max(b - a for a, b in zip(ticks, ticks[1:])) > webrtc.MAX_LATE_S * FPS  # the stall, skipped
    assert len(video) > len(frames)  # repeats after the last frame
    span = ticks[len(frames) - 1] - ticks[0]
    assert len(frames) - 1 <= span <= (drained + 0.1) * FPS  # the ticks never run ahead of the clock
    audio_frames = sorted(audio.values(), key=lambda f: f.pts)
    assert audio_frames[0].pts == 0 and all(a.pts + a.samples == b.pts for a, b in zip(audio_frames, audio_frames[1:]))
    # the client got the video at the frames' size and the audio as Opus (decoded at 48 kHz)
    assert peer.received["video"] and {(f.width, f.height) for f in peer.received["video"]} == {(64, 48)}
    assert peer.received["audio"] and peer.received["audio"][0].sample_rate == 48000
    assert any(np.abs(f.to_ndarray()).max() > 1000 for f in peer.received["audio"])


def test_queue_before_connecting_bad_offers_and_close():
    rng = np.random.default_rng(3)
    frames = [out_frame(i, rng) for i in range(10)]

    async def run(closing):
        sent = []
        output = WebRTCOutput(fps=FPS, sample_rate=SR, on_sent=sent.append)
        closing.append(output)
        await output.drain(timeout=30)  # no peer: nothing to wait for
        for frame in frames:
            await output.put(frame)  # not connected: never waits, keeps the newest few
        assert list(output.pending) == frames[-webrtc.KEEP_BEFORE_CONNECT:]
        assert output.dropped == len(frames) - webrtc.KEEP_BEFORE_CONNECT
        with pytest.raises(ValueError):
            await output.answer("v=0\r\nnot an offer\r\n")

        audio_only = RTCPeerConnection(RTCConfiguration(iceServers=[]))
        closing.append(audio_only)
        audio_only.addTransceiver("audio", direction="recvonly")
        await audio_only.setLocalDescription(await audio_only.createOffer())
        with pytest.raises(ValueError, match="no video"):
            await output.answer(audio_only.localDescription.sdp)
        peer = Peer()  # a good offer after the refused ones
        closing.append(peer)
        offer = await peer.offer()
        await peer.accept(await output.answer(offer), output)
        with pytest.raises(ValueError, match="already answered"):
            await output.answer(offer)
        await output.drain(timeout=30)
        assert sent == frames[-webrtc.KEEP_BEFORE_CONNECT:]  # the frames kept went out once connected
        await output.close()
        await output.put(frames[0])  # after close: counted, not kept
        return output

    output = run_closing(run)
    assert output.dropped == len(frames) - webrtc.KEEP_BEFORE_CONNECT + 1 and not output.pending


@pytest.fixture
def server(engine, tmp_path):
    with BackgroundServer(engine, ServiceConfig(port=0, avatars=tmp_path / "avatars")) as running:
        yield running


def upload(server, image_path) -> str:
    request = urllib.request.Request(f"{server.url}/v1/avatars", data=image_path.read_bytes(), method="POST",
                                     headers={"Content-Type": "image/png"})
    with urllib.request.urlopen(request, timeout=120) as response:
        assert response.status in (200, 201)
        return json.loads(response.read())["id"]


def test_session_over_webrtc_to_an_aiortc_client(server, sample_image):
    from websockets.asyncio.client import connect

    avatar = upload(server, sample_image)
    seconds = 1.0
    speech = np.random.default_rng(0).normal(0, 0.1, int(seconds * SR))
    pcm = (np.clip(speech, -1, 1) * 32767).astype("<i2")

    async def run(closing):
        peer = Peer()
        closing.append(peer)
        messages = []
        async with connect(server.ws_url, open_timeout=30) as ws:
            await ws.send(json.dumps({"type": "start", "avatar": avatar, "output": "webrtc"}))
            ready = json.loads(await asyncio.wait_for(ws.recv(), 60))
            assert ready["type"] == "ready" and ready["output"] == "webrtc"
            await ws.send(json.dumps({"type": "offer", "sdp": await peer.offer()}))
            answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            while answer["type"] == "stats":
                answer = json.loads(await asyncio.wait_for(ws.recv(), 30))
            assert answer["type"] == "answer", answer
            await peer.accept(answer["sdp"])
            connected = time.monotonic()
            for start in range(0, pcm.size, 1600):  # 100 ms messages in real time
                await ws.send(pcm[start : start + 1600].tobytes())
                await asyncio.sleep(0.1)
            await ws.send(json.dumps({"type": "end"}))
            async for message in ws:
                messages.append(json.loads(message))
            closed = (ws.close_code, time.monotonic() - connected)
        await asyncio.sleep(0.2)
        return ready, peer, messages, closed

    ready, peer, messages, (close_code, elapsed) = run_closing(run)
    assert close_code == 1000
    assert messages[-1]["type"] == "done", messages[-3:]
    report = messages[-1]["report"]
    assert report["speech_frames"] == round(seconds * FPS) and report["lost_audio_ms"] == 0
    assert report["frames"] == report["speech_frames"] + report["idle_frames"]
    assert any(m["type"] == "stats" for m in messages) or elapsed < 1.5
    video = peer.received["video"]
    assert {(f.width, f.height) for f in video} == {(ready["width"], ready["height"])}
    # every frame the server sent went out, at most one image per 40 ms tick (repeats fill the gaps)
    assert report["frames"] <= len(video) <= FPS * (elapsed + 1.0)
    # the audio runs from the connection on (silence until the first frame), so it covers at least the video's
    # span, and no faster than real time
    assert len(video) / FPS - 0.2 <= peer.audio_seconds() <= elapsed + 1.0
    assert any(np.abs(f.to_ndarray()).max() > 100 for f in peer.received["audio"])


def test_page_is_served(server):
    with urllib.request.urlopen(server.url + "/", timeout=10) as response:
        page = response.read().decode()
        assert response.headers["Content-Type"].startswith("text/html")
    for needed in ("RTCPeerConnection", "getUserMedia", "decodeAudioData", "/v1/avatars", "client_report",
                   "iceGatheringState", "interrupt"):
        assert needed in page, needed
    assert "http://" not in page and "https://" not in page and "//cdn" not in page  # self-contained


def cell_means(image: np.ndarray, grid: int) -> np.ndarray:
    h, w = image.shape[:2]
    return np.array([[image[h * gy // grid : h * (gy + 1) // grid, w * gx // grid : w * (gx + 1) // grid]
                      .reshape(-1, 3).mean(0) for gx in range(grid)] for gy in range(grid)]).reshape(-1, 3)


def test_page_in_headless_chromium_draws_the_webrtc_video(server, engine, sample_image, monkeypatch, tmp_path):
    binary = chromium_binary()
    sent_images = []
    put = WebRTCOutput.put

    async def recording_put(self, frame):
        sent_images.append(frame.image.copy())
        await put(self, frame)

    monkeypatch.setattr(WebRTCOutput, "put", recording_put)
    avatar = upload(server, sample_image)
    wanted = 10
    url = f"{server.url}/?avatar={avatar}&source=mic&autostart=1&report={wanted}"
    launched = time.monotonic()
    browser = launch_headless_chromium(binary, url, tmp_path / "profile", *WEBRTC_FLAGS)
    try:
        deadline = time.monotonic() + 120
        while not getattr(server.state, "client_reports", None):
            assert browser.poll() is None, "chromium exited"
            assert time.monotonic() < deadline, "no client report from the page"
            time.sleep(0.2)
        report = server.state.client_reports[-1]
        audio_in_s = sum(s.stats.audio_samples for s in server.state.sessions) / SR
        running_s = time.monotonic() - launched
    finally:
        stop_process(browser)
    assert report["frames_drawn"] == wanted
    assert (report["width"], report["height"]) == (engine.output_size, engine.output_size)
    drawn = np.asarray(report["pixels"], np.float64)
    assert drawn.shape == (report["grid"] ** 2, 3) and drawn.max() > 16  # not black
    # the canvas shows one of the frames the server sent, within the codec's loss
    errors = [np.abs(cell_means(image, report["grid"]) - drawn).max() for image in sent_images]
    assert min(errors) <= CODEC_TOLERANCE, (min(errors), len(sent_images))
    assert 0 < audio_in_s <= running_s + 0.5  # the fake microphone's audio arrived, resampled to 16 kHz
