"""A bounded load test of a running service: N clients, each streaming speech in real time for S seconds over its
own session, then `end`; measured at the clients.

Latency is measured end to end at the client: a speech frame's latency is the time from sending the message that
completed its 40 ms of audio to receiving the frame. A frame is late when that exceeds the session's latency budget
(its `done` report says which). Lost audio: every client knows how much speech it sent (S samples, one utterance)
and must receive max(1, round(S / 640)) speech frames; each one missing is 40 ms lost.
"""

from __future__ import annotations

import asyncio
import math
import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..client import ServiceClient, SessionClosed
from ..streaming.settings import percentiles

CHUNK_MS = 100  # how much audio each message carries


@dataclass
class ClientResult:
    frames: int = 0
    speech_frames: int = 0
    expected_speech_frames: int = 0
    late: int = 0
    latencies: list[float] = field(default_factory=list)
    report: dict[str, Any] | None = None
    error: str | None = None
    replica: str | None = None

    @property
    def lost_audio_ms(self) -> int:
        return max(0, self.expected_speech_frames - self.speech_frames) * 40


def speech_like(seconds: float, seed: int) -> np.ndarray:
    """Noise shaped like speech loudness (syllable-rate bursts), int16 at 16 kHz: load needs no audio files."""
    rng = np.random.default_rng(seed)
    n = int(seconds * 16000)
    t = np.arange(n) / 16000
    envelope = 0.5 + 0.5 * np.sin(2 * math.pi * 4.0 * t + rng.uniform(0, 6.28)) ** 2
    return (rng.normal(0, 0.15, n) * envelope * 32767).clip(-32768, 32767).astype(np.int16)


async def one_client(client: ServiceClient, avatar: str, seconds: float, seed: int,
                     settings: dict[str, Any]) -> ClientResult:
    result = ClientResult()
    pcm = speech_like(seconds, seed)
    result.expected_speech_frames = max(1, round(pcm.size / 640))
    step = 16000 * CHUNK_MS // 1000
    sent_at: list[tuple[int, float]] = []  # (samples sent so far, when)
    try:
        async with client.session(avatar, settings=settings) as session:
            result.replica = session.ready.get("replica")

            async def feed():
                start = time.perf_counter()
                for i, a in enumerate(range(0, pcm.size, step)):
                    await asyncio.sleep(max(0.0, start + i * CHUNK_MS / 1000 - time.perf_counter()))
                    await session.send_audio(pcm[a : a + step])
                    sent_at.append((min(a + step, pcm.size), time.perf_counter()))
                await session.end()

            feeder = asyncio.create_task(feed())
            async for frame in session.frames():
                result.frames += 1
                if frame.kind != "speech":
                    continue
                result.speech_frames += 1
                need = (frame.header["frame"] + 1) * 640
                t_sent = next((t for n, t in sent_at if n >= need), sent_at[-1][1] if sent_at else None)
                if t_sent is not None:
                    result.latencies.append(frame.received - t_sent)
            await feeder
            result.report = session.report
    except (SessionClosed, OSError, asyncio.TimeoutError) as exc:
        result.error = str(exc)
    if result.report:
        budget = result.report["latency_budget_ms"] / 1000
        result.late = sum(lat > budget for lat in result.latencies)
    return result


async def run_load(url: str, avatar: str, *, clients: int, seconds: float, token: str | None = None,
                   settings: dict[str, Any] | None = None) -> dict[str, Any]:
    client = ServiceClient(url, token=token)
    started = time.perf_counter()
    results = await asyncio.gather(*(one_client(client, avatar, seconds, seed, settings or {})
                                     for seed in range(clients)))
    wall = time.perf_counter() - started
    latencies = [lat for r in results for lat in r.latencies]
    lat = percentiles(latencies)
    return {"clients": clients, "seconds": seconds, "wall_s": round(wall, 2),
            "frames": sum(r.frames for r in results), "speech_frames": sum(r.speech_frames for r in results),
            "expected_speech_frames": sum(r.expected_speech_frames for r in results),
            "late": sum(r.late for r in results), "lost_audio_ms": sum(r.lost_audio_ms for r in results),
            "errors": [r.error for r in results if r.error],
            "replicas": sorted({r.replica for r in results if r.replica}),
            "latency_ms": {k: (None if math.isnan(v) else round(v * 1000, 1)) for k, v in lat.items()},
            "server_latency_ms": [r.report.get("latency_ms") for r in results if r.report]}


def summary(result: dict[str, Any]) -> str:
    lat = result["latency_ms"]
    return (f"{result['clients']} clients x {result['seconds']:g} s of speech (wall {result['wall_s']} s): "
            f"{result['speech_frames']}/{result['expected_speech_frames']} speech frames, {result['frames']} in all; "
            f"latency p50 {lat['p50']} ms, p95 {lat['p95']} ms, max {lat['max']} ms; late {result['late']}; "
            f"lost audio {result['lost_audio_ms']} ms; errors {len(result['errors'])}")
