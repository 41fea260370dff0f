"""The live preview: the page is served, frames reach a real browser (headless Chromium) and are drawn (the page
reads the canvas back and the pixels match what was sent), and a page that goes away mid-stream is noticed while
the stream goes on, with no thread left behind."""

import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
import urllib.request

import numpy as np
import pytest

from helpers import launch_headless_chromium
from vasa_engine.preview import PreviewServer

pytest.importorskip("websockets")

SR = 16000
CHROMIUM_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")


def chromium_binary() -> str:
    found = next((shutil.which(name) for name in CHROMIUM_NAMES if shutil.which(name)), None)
    if found is None:
        message = "no chromium binary found (apt-get install chromium)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return found


def launch_chromium(binary: str, url: str, profile) -> subprocess.Popen:
    return launch_headless_chromium(binary, url, profile)


def stop_process(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, 9)  # the browser and its helper processes (its own process group)
    proc.wait(30)


def noise(seconds: float, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).normal(0, 0.1, int(seconds * SR)).astype(np.float32)


def test_page_is_served():
    with PreviewServer() as server:
        with urllib.request.urlopen(server.url, timeout=10) as response:
            page = response.read().decode()
            assert response.headers["Content-Type"].startswith("text/html")
        assert "<canvas" in page and "WebSocket" in page and "AudioContext" in page
        with pytest.raises(urllib.error.HTTPError):
            urllib.request.urlopen(server.url + "missing", timeout=10)


def test_frames_drawn_in_headless_chromium_and_disconnect(engine, avatar, tmp_path):
    binary = chromium_binary()
    threads_before = len(threading.enumerate())
    server = PreviewServer(image_format="png").start()
    browser = launch_chromium(binary, server.url, tmp_path / "profile")
    session = engine.stream(avatar, chunk_ms=120, lookahead_ms=40)
    try:
        assert server.wait_for(lambda s: s.clients == 1, 90), "the page did not connect"
        frames = session.push(noise(0.24), SR) + session.flush()
        assert len(frames) == 6
        for frame in frames:
            assert server.send(frame) == 1
        assert server.wait_for(lambda s: len(s.acks) >= len(frames), 60), server.acks
        acks = server.acks
        assert [a["ack"] for a in acks] == [f.index for f in frames]  # drawn in order
        assert all(a["match"] is True for a in acks), acks  # the canvas shows exactly the frames sent

        # the page goes away mid-stream: the server notices, the stream goes on
        more = session.push(noise(0.24, seed=1), SR, collect=False)
        browser_gone = threading.Thread(target=stop_process, args=(browser,))
        browser_gone.start()
        more += session.flush()
        browser_gone.join(30)
        assert server.wait_for(lambda s: s.clients == 0 and s.disconnects == 1, 30)
        for frame in more:
            assert server.send(frame) == 0
        assert len(more) == 6 and [f.index for f in more] == list(range(6, 12))
    finally:
        session.close()
        stop_process(browser)
        server.close()
    deadline = time.monotonic() + 10
    while len(threading.enumerate()) > threads_before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(threading.enumerate()) == threads_before, threading.enumerate()


def test_client_that_disconnects_mid_stream(engine, avatar):
    """A WebSocket client that reads one frame and drops its connection without a closing handshake."""
    from websockets.sync.client import connect

    threads_before = len(threading.enumerate())
    fds_before = len(os.listdir("/proc/self/fd"))
    server = PreviewServer().start()
    session = engine.stream(avatar, chunk_ms=80, lookahead_ms=40)
    try:
        with connect(f"ws://127.0.0.1:{server.port}/ws", open_timeout=10) as client:
            assert server.wait_for(lambda s: s.clients == 1, 10)
            frames = session.push(noise(0.16), SR) + session.flush()
            for frame in frames:
                server.send(frame)
            message = client.recv(timeout=30)
            n = struct.unpack(">I", message[:4])[0]
            head = json.loads(message[4 : 4 + n])
            assert head["index"] == 0 and head["format"] == "image/jpeg" and head["audio_samples"] == 640
            assert len(message) == 4 + n + head["image_bytes"] + 4 * 640
            client.socket.shutdown(socket.SHUT_RDWR)  # gone, no closing handshake
            assert server.wait_for(lambda s: s.clients == 0 and s.disconnects == 1, 30)
        later = session.push(noise(0.16, seed=2), SR) + session.flush()
        assert len(later) == 4 and all(server.send(f) == 0 for f in later)
    finally:
        session.close()
        server.close()
    deadline = time.monotonic() + 10
    while (len(threading.enumerate()), len(os.listdir("/proc/self/fd"))) != (threads_before, fds_before) \
            and time.monotonic() < deadline:
        time.sleep(0.05)
    assert len(threading.enumerate()) == threads_before, threading.enumerate()
    assert len(os.listdir("/proc/self/fd")) == fds_before
