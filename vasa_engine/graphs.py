"""CUDA graphs: capture a fixed-shape call once, replay it with new inputs copied into static buffers.

A captured call replays every kernel of the original call with one launch, which is what the per-frame renderer
and the sampler loop need (both are many small kernels). Outputs live in static buffers that the next replay
overwrites: callers copy what they keep. Capture is attempted only on CUDA; if it fails (an operation that
cannot be captured, not enough memory), the failure is logged once with its reason and the call runs eagerly
from then on.
"""

from __future__ import annotations

import logging
import threading
from typing import Callable, Hashable, Sequence

import torch

log = logging.getLogger("vasa_engine")


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


class CapturedCall:
    """`fn(*inputs) -> tensor or tuple of tensors`, captured for inputs shaped like `example`.

    An input may be None (an optional argument left out); it must then be None at every call, so a cache's key
    should say which inputs are present. Warm-up runs on a side stream first (library autotuning and Triton
    compilation must not happen inside the capture), then one capture into a private memory pool.
    """

    def __init__(self, fn: Callable, example: Sequence[torch.Tensor | None], warmup: int = 2, pool=None):
        self.fn = fn
        self.static_inputs = [None if t is None else t.detach().clone() for t in example]
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(*self.static_inputs)
        torch.cuda.current_stream().wait_stream(side)
        self.graph = torch.cuda.CUDAGraph()
        # thread_local: work other threads launch meanwhile (another engine call, a stream session) does not
        # invalidate this capture
        with torch.no_grad(), torch.cuda.graph(self.graph, pool=pool, capture_error_mode="thread_local"):
            out = fn(*self.static_inputs)
        self.tuple_out = isinstance(out, tuple)
        self.static_outputs = _as_tuple(out)

    @property
    def pool(self):
        return self.graph.pool()

    def __call__(self, *inputs: torch.Tensor):
        if len(inputs) != len(self.static_inputs):
            raise ValueError(f"captured call takes {len(self.static_inputs)} inputs, got {len(inputs)}")
        for dst, src in zip(self.static_inputs, inputs):
            if (dst is None) != (src is None):
                raise ValueError(f"captured with input {'absent' if dst is None else 'present'}, got the other")
            if dst is None:
                continue
            if dst.shape != src.shape:
                raise ValueError(f"captured for shape {tuple(dst.shape)}, got {tuple(src.shape)}")
            dst.copy_(src, non_blocking=True)
        self.graph.replay()
        return self.static_outputs if self.tuple_out else self.static_outputs[0]


class GraphCache:
    """Captured calls by key (a batch size, a sampler setting...), with one shared memory pool and an eager
    fallback: `run(key, fn, inputs)` replays the graph for `key`, capturing it on first use.

    A replay's inputs and outputs are static buffers, so threads sharing a cache must hold `lock` from the call
    until they have copied the output (`run(..., copy=True)` does that for them)."""

    def __init__(self, name: str, enabled: bool = True):
        self.name = name
        self.enabled = enabled
        self.calls: dict[Hashable, CapturedCall] = {}
        self.failed: dict[Hashable, str] = {}
        self._pool = None
        self.lock = threading.RLock()

    def run(self, key: Hashable, fn: Callable, inputs: Sequence[torch.Tensor | None], copy: bool = False):
        """fn(*inputs), replayed from a graph where one is (or can be) captured. copy: return a copy of a replayed
        output, taken under the lock (an eager result is returned as it is)."""
        usable = self.enabled and all(t.is_cuda for t in inputs if t is not None) and key not in self.failed
        if not usable:
            return fn(*inputs)
        with self.lock:
            out = self._replay(key, fn, inputs)
            if copy and key in self.calls:
                out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
            return out

    def _replay(self, key: Hashable, fn: Callable, inputs: Sequence[torch.Tensor | None]):
        call = self.calls.get(key)
        if call is None:
            try:
                call = CapturedCall(fn, inputs, pool=self._pool)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly, say why once
                reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
                self.failed[key] = reason
                log.warning("warning: CUDA graph capture of the %s failed (%s); running it eagerly", self.name, reason)
                torch.cuda.synchronize()
                return fn(*inputs)
            self._pool = call.pool
            self.calls[key] = call
        return call(*inputs)

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self._pool = None
