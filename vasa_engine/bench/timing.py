"""Timing one stage call: warm-up, repeats (CUDA events on a GPU, the wall clock elsewhere), min / median / p80;
and the run's time budget, which also stamps the progress lines."""

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


def time_call(fn: StageFn, device: torch.device, *, warmup: int = 1, repeats: int = 3,
              repeat_seconds: float | None = None) -> dict:
    """Warm-up calls, then up to `repeats` timed calls (fewer once `repeat_seconds` are spent; one at least).

    CUDA: CUDA events around each call, synchronized; CPU: time.perf_counter. Returns min / median / p80 in ms.
    """
    for _ in range(warmup):
        fn()
    sync(device)
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        if repeat_seconds is not None and sum(times) / 1000.0 >= repeat_seconds:
            break
    return {"measured": True, "ms": summarize(times), "repeats": len(times), "warmup": warmup}


def summarize(times_ms: list[float]) -> dict:
    s = sorted(times_ms)

    def quantile(q):
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"min": s[0], "median": quantile(0.5), "p80": quantile(0.8)}


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
