"""Streaming latency: speech pushed into `Engine.stream` in real time, one session or several at once."""

from __future__ import annotations

import math
import statistics
import threading
import time

from ..io.audio import SAMPLE_RATE


def run_concurrently(n: int, fn, name: str = "bench-stream") -> float:
    """fn(i) for i in 0..n-1, each in a thread of its own, started together behind a barrier; returns the wall
    seconds from the start to the last one's end, and raises the first error any of them raised."""
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            fn(i)
        except BaseException as exc:  # noqa: BLE001 - raised below, in the caller's thread
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,), name=f"{name}-{i}") for i in range(n)]
    began = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    return time.perf_counter() - began


def stream_once(engine, avatar, samples, *, push_ms: int = 40, **settings) -> dict:
    """Push speech into `Engine.stream` in real time (`push_ms` per push, paced by the wall clock), flush, and
    return its latency report: p50 / p95 / max in ms (audio in -> frame returned, look-ahead included), with the
    chunk size and look-ahead it was measured under."""
    step = SAMPLE_RATE * push_ms // 1000
    returned = []
    lag = 0.0
    with engine.stream(avatar, **settings) as session:
        t0 = time.perf_counter()
        for i, start in enumerate(range(0, len(samples), step)):
            wait = t0 + i * push_ms / 1000.0 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            lag = max(lag, -wait)
            returned += session.push(samples[start : start + step], SAMPLE_RATE)
        returned += session.flush()
        report = session.report().to_dict()
    out = {"p50_ms": report["total"]["p50"] * 1000, "p95_ms": report["total"]["p95"] * 1000,
           "max_ms": report["total"]["max"] * 1000, "frames": len(returned)}
    # Falling behind shows as latency growing through the stream (or, once back-pressure blocks, as pushes late
    # on the real-time schedule): the median latency of the last quarter of the frames minus the first quarter's.
    lat = [f.latency_s for f in returned if f.kind == "speech" and f.latency_s is not None]
    q = len(lat) // 4
    out["latency_drift_ms"] = (statistics.median(lat[-q:]) - statistics.median(lat[:q])) * 1000 if q else math.nan
    out["push_lag_ms"] = lag * 1000
    # a frame misses its deadline when it comes later than the session's latency budget after its audio
    budget = settings.get("latency_budget_ms") or report["chunk_ms"] + report["lookahead_ms"] + 200
    out["missed_deadlines"] = sum(1 for x in lat if x * 1000 > budget)
    out["latency_budget_ms"] = budget
    out["degraded_frames"] = report.get("degraded_frames", 0)
    for part in ("lookahead", "compute"):
        out[f"{part}_p50_ms"] = report[part]["p50"] * 1000
        out[f"{part}_p95_ms"] = report[part]["p95"] * 1000
    out.update({k: report[k] for k in ("chunk_ms", "lookahead_ms", "past_ms", "steps", "fps")})
    out["push_ms"] = push_ms
    return out


def stream_concurrently(engine, avatar, samples, n: int, *, push_ms: int = 40, **settings) -> dict:
    """`n` sessions on one engine at once, each pushed in real time by its own thread (`stream_once`), started
    together (settings: the sessions', e.g. batched=True for the device scheduler). Returns the worst stream's
    latencies, the lowest and the mean sustained fps, the frames of all streams per second of the whole run, the
    frames that came later than their latency budget, and whether every stream kept up."""
    results: list[dict | None] = [None] * n

    def run(i: int) -> None:
        results[i] = stream_once(engine, avatar, samples, push_ms=push_ms, **settings)

    wall = run_concurrently(n, run)
    done = [r for r in results if r is not None]
    chunk = done[0]["chunk_ms"]
    keeps_up = all(r["latency_drift_ms"] < chunk and r["push_lag_ms"] < chunk for r in done)
    worst = {k: max(r[k] for r in done) for k in ("latency_drift_ms", "push_lag_ms", "p50_ms", "p95_ms", "max_ms",
                                                  "compute_p95_ms")}
    return {"streams": n, "keeps_up": keeps_up, "latency_drift_ms": worst["latency_drift_ms"],
            "push_lag_ms": worst["push_lag_ms"], "p50_ms": worst["p50_ms"], "p95_ms": worst["p95_ms"],
            "max_ms": worst["max_ms"], "compute_p95_ms": worst["compute_p95_ms"],
            "min_fps": min(r["fps"] for r in done), "frames": sum(r["frames"] for r in done), "chunk_ms": chunk,
            "lookahead_ms": done[0]["lookahead_ms"], "steps": done[0]["steps"], "push_ms": push_ms,
            "aggregate_fps": sum(r["frames"] for r in done) / wall if wall > 0 else math.nan,
            "per_stream_fps": statistics.mean(r["fps"] for r in done),
            "missed_deadlines": sum(r.get("missed_deadlines", 0) for r in done),
            "degraded_frames": sum(r.get("degraded_frames", 0) for r in done),
            "batched": bool(settings.get("batched", False))}
