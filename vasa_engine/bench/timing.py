"""Timing one stage call: warm-up, repeats (CUDA events on a GPU, the wall clock elsewhere), min / p20 / median / p80;
the machine probe timed beside each repeat; and the run's time budget, which also stamps the progress lines."""

from __future__ import annotations

import math
import sys
import time
from typing import Any, Callable

import torch

StageFn = Callable[[], Any]


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def _timed_ms(fn: StageFn, device: torch.device) -> float:
    if device.type == "cuda":
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        end.synchronize()
        return start.elapsed_time(end)
    t0 = time.perf_counter()
    fn()
    return (time.perf_counter() - t0) * 1000.0


def time_call(fn: StageFn, device: torch.device, *, warmup: int = 1, repeats: int = 3,
              repeat_seconds: float | None = None, probe: StageFn | None = None) -> dict:
    """Warm-up calls, then up to `repeats` timed calls (fewer once `repeat_seconds` are spent; one at least).

    CUDA: CUDA events around each call, synchronized; CPU: time.perf_counter. Returns min / p20 / median / p80 in
    ms (the 20%-80% spread is the figure's run-to-run noise, which `vasa-engine compare` allows for). With `probe`
    (`machine_probe`), the probe is timed just before every repeat and its times returned as `probe_ms`: how fast
    the machine itself was while this figure was measured.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times, probes = [], []
    for _ in range(max(1, repeats)):
        if probe is not None:
            probes.append(_timed_ms(probe, device))
        times.append(_timed_ms(fn, device))
        if repeat_seconds is not None and sum(times) / 1000.0 >= repeat_seconds:
            break
    out = {"measured": True, "ms": summarize(times), "repeats": len(times), "warmup": warmup}
    if probes:
        out["probe_ms"] = summarize(probes)
    return out


PROBE_SIZES = {"cpu": 256, "cuda": 2048}  # a few milliseconds per probe: long enough for a steady time


def machine_probe(device: torch.device, rounds: int = 4) -> StageFn:
    """A fixed workload that depends on nothing in the engine (`rounds` products of float32 square matrices, each
    through tanh; PROBE_SIZES), for timing the machine beside each figure: on a shared machine another process's
    load slows it as it slows the figure, so `vasa-engine compare` can tell a slower machine from slower code."""
    size = PROBE_SIZES.get(device.type, PROBE_SIZES["cpu"])
    g = torch.Generator().manual_seed(0)
    a = torch.randn(size, size, generator=g).to(device) / size**0.5
    b = torch.randn(size, size, generator=g).to(device) / size**0.5

    def run():
        x = a
        for _ in range(rounds):
            x = torch.tanh(x @ b)
        return x

    run()  # first-call allocations out of the way
    sync(device)
    return run


def summarize(times_ms: list[float]) -> dict:
    s = sorted(times_ms)

    def quantile(q):
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"min": s[0], "p20": quantile(0.2), "median": quantile(0.5), "p80": quantile(0.8)}


class Budget:
    """Seconds the run may take (None: no limit); measurements are not started once they are spent."""

    def __init__(self, seconds: float | None):
        self.start = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed >= self.seconds

    def reason(self) -> str:
        return f"skipped: the time budget of {self.seconds:g} s was spent"

    def log(self, message: str) -> None:
        print(f"[{self.elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)
