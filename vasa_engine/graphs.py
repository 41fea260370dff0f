"""CUDA graphs: capture a fixed-shape call once, replay it with new inputs copied into static buffers.

A captured call replays every kernel of the original call with one launch, which is what the per-frame renderer
and the sampler loop need (both are many small kernels). Outputs live in static buffers that the next replay
overwrites: callers copy what they keep. Capture is attempted only on CUDA; if it fails (an operation that
cannot be captured, not enough memory), the failure is logged once with its reason and the call runs eagerly
from then on.

Captures are safe under threads and failures:

- the warm-up (library autotuning, Triton compilation, lazy allocations) runs eagerly on a side stream, outside
  any capture and without the capture lock;
- captures are serialized by one process-wide lock and run on their device's capture stream, a stream created
  for captures alone (`torch.cuda.Stream` hands out streams from a small pool that the whole process shares
  round-robin, so another thread's work could land on a pooled stream while it captures), in thread-local error
  mode, so other threads keep launching eager work and allocating meanwhile;
- begin and end are paired by hand under try/finally: after a failure the thread is back on its own stream, the
  capture is ended, the half-captured graph reset and its hold on the memory pool released, and the call runs
  eagerly on the caller's stream, never inside a capture.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from typing import Callable, Hashable, Sequence

import torch

from .errors import first_line
from .runtime import device_context

log = logging.getLogger("vasa_engine")

_CAPTURE_LOCK = threading.Lock()  # one capture at a time in the process
_capture_streams: dict[int, torch.cuda.Stream] = {}  # device index -> its capture stream (under _CAPTURE_LOCK)


def _as_tuple(out) -> tuple[torch.Tensor, ...]:
    return out if isinstance(out, tuple) else (out,)


def capture_stream(device: torch.device) -> torch.cuda.Stream:
    """The stream every capture on `device` runs on, created on first use; callers hold the capture lock."""
    index = device.index if device.index is not None else torch.cuda.current_device()
    stream = _capture_streams.get(index)
    if stream is None:
        stream = _capture_streams[index] = _new_capture_stream(index)
    return stream


def _new_capture_stream(index: int) -> torch.cuda.Stream:
    """A non-blocking stream made by the CUDA driver, so no pool hands it out to anyone else; a pooled torch stream
    (with a warning) where the driver library cannot be called."""
    try:
        return torch.cuda.ExternalStream(_driver_stream(index), device=torch.device("cuda", index))
    except Exception as exc:  # noqa: BLE001 - any failure here leaves torch's own streams, which still work
        log.warning("warning: no dedicated CUDA stream for graph captures (%s); using a pooled stream",
                    first_line(exc))
        return torch.cuda.Stream(index)


def _driver_stream(index: int) -> int:
    """cuStreamCreate(CU_STREAM_NON_BLOCKING) in the primary context of device `index` (the context the CUDA
    runtime, and so torch, works in). The stream lives as long as the process, so the context's reference taken
    here is kept."""
    import ctypes

    cuda = ctypes.CDLL("libcuda.so.1")

    def check(name: str, status: int) -> None:
        if status != 0:
            raise RuntimeError(f"{name} failed with CUDA driver error {status}")

    device, context, handle = ctypes.c_int(), ctypes.c_void_p(), ctypes.c_void_p()
    check("cuInit", cuda.cuInit(0))
    check("cuDeviceGet", cuda.cuDeviceGet(ctypes.byref(device), index))
    check("cuDevicePrimaryCtxRetain", cuda.cuDevicePrimaryCtxRetain(ctypes.byref(context), device))
    check("cuCtxPushCurrent", cuda.cuCtxPushCurrent_v2(context))
    try:
        check("cuStreamCreate", cuda.cuStreamCreate(ctypes.byref(handle), 1))  # 1: CU_STREAM_NON_BLOCKING
    finally:
        cuda.cuCtxPopCurrent_v2(ctypes.byref(ctypes.c_void_p()))
    return handle.value


def _pool_call(names: tuple[str, ...], device_index: int, pool) -> bool:
    """Call the first of torch's private allocator functions `names` that this torch has, with (device, pool);
    False when it refuses (RuntimeError) or none exists."""
    for name in names:
        fn = getattr(torch._C, name, None)
        if fn is not None:
            try:
                fn(device_index, pool)
            except RuntimeError:
                return False
            return True
    log.debug("torch has none of %s: a failed capture's memory pool is not released", names)
    return False


def _abandon(graph: torch.cuda.CUDAGraph, pool, device_index: int) -> None:
    """Clean up after a capture that failed anywhere between begin and end, on the capture stream."""
    if torch.cuda.is_current_stream_capturing():
        with contextlib.suppress(RuntimeError):
            graph.capture_end()  # ends the capture sequence; an invalidated capture raises after ending it
    try:
        graph.pool()  # only a graph whose capture ended has a pool: its reset releases it
    except RuntimeError:
        # capture_begin routed this stream's allocations to the pool and took a reference on it; a capture that
        # never ended holds both
        if _pool_call(("_cuda_endAllocateToPool", "_cuda_endAllocateCurrentStreamToPool"), device_index, pool):
            _pool_call(("_cuda_releasePool",), device_index, pool)
    graph.reset()


def _capture(graph: torch.cuda.CUDAGraph, fn: Callable, inputs: Sequence, pool, stream: torch.cuda.Stream,
             device_index: int):
    """fn(*inputs) captured into `graph` on `stream`; on failure the capture is abandoned before the exception
    propagates, and the thread is back on the stream it came with."""
    with torch.cuda.stream(stream), torch.no_grad():
        ended = False
        try:
            graph.capture_begin(pool=pool, capture_error_mode="thread_local")
            out = fn(*inputs)
            graph.capture_end()
            ended = True
        finally:
            if not ended:
                _abandon(graph, pool, device_index)
    return out


class CapturedCall:
    """`fn(*inputs) -> tensor or tuple of tensors`, captured on `device` for inputs shaped like `example`.

    An input may be None (an optional argument left out); it must then be None at every call, so a cache's key
    should say which inputs are present. Warm-up runs on a side stream first, then one capture into the memory
    pool `pool` (a new one when None; `pool` holds the one used).
    """

    def __init__(self, fn: Callable, example: Sequence[torch.Tensor | None], device: torch.device, warmup: int = 2,
                 pool=None):
        self.fn = fn
        self.static_inputs = [None if t is None else t.detach().clone() for t in example]
        caller = torch.cuda.current_stream(device)
        side = torch.cuda.Stream(device)
        side.wait_stream(caller)
        with torch.cuda.stream(side), torch.no_grad():
            for _ in range(warmup):
                fn(*self.static_inputs)
        caller.wait_stream(side)
        self.pool = pool if pool is not None else torch.cuda.graph_pool_handle()
        self.graph = torch.cuda.CUDAGraph()
        with _CAPTURE_LOCK:
            stream = capture_stream(device)
            out = _capture(self.graph, fn, self.static_inputs, self.pool, stream, stream.device_index)
        self.tuple_out = isinstance(out, tuple)
        self.static_outputs = _as_tuple(out)

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


def _graph_device(inputs: Sequence[torch.Tensor | None]) -> torch.device | None:
    """The CUDA device a call on `inputs` can be captured on (every input on that one device), else None."""
    devices = {t.device for t in inputs if t is not None}
    if len(devices) != 1:
        return None
    (device,) = devices
    return device if device.type == "cuda" else None


class GraphCache:
    """Captured calls by key (a batch size, a sampler setting...), with one shared memory pool and an eager
    fallback: `run(key, fn, inputs)` replays the graph for `key`, capturing it on first use.

    A replay's inputs and outputs are static buffers, so threads sharing a cache must hold `lock` from the call
    until they have copied the output (`run(..., copy=True)` does that for them). The graphs of one cache share
    its memory pool, so their replays must not overlap on the device."""

    def __init__(self, name: str, enabled: bool = True):
        self.name = name
        self.enabled = enabled
        self.calls: dict[Hashable, CapturedCall] = {}
        self.failed: dict[Hashable, str] = {}  # key -> the one-line reason its capture failed
        self._pool = None
        self.lock = threading.RLock()

    def run(self, key: Hashable, fn: Callable, inputs: Sequence[torch.Tensor | None], copy: bool = False):
        """fn(*inputs), replayed from a graph where one is (or can be) captured. copy: return a copy of a replayed
        output, taken under the lock (an eager result is returned as it is)."""
        device = _graph_device(inputs) if self.enabled and key not in self.failed else None
        if device is None:
            return fn(*inputs)
        with device_context(device):
            if torch.cuda.is_current_stream_capturing():
                return fn(*inputs)  # the caller is capturing: this work belongs to its capture
            with self.lock:
                out = self._replay(key, fn, inputs, device)
                if copy and key in self.calls:
                    out = tuple(t.clone() for t in out) if isinstance(out, tuple) else out.clone()
                return out

    def _replay(self, key: Hashable, fn: Callable, inputs: Sequence[torch.Tensor | None], device: torch.device):
        call = self.calls.get(key)
        if call is None:
            try:
                call = CapturedCall(fn, inputs, device, pool=self._pool)
            except Exception as exc:  # noqa: BLE001 - any capture failure means: run eagerly, say why once
                self.failed[key] = reason = first_line(exc)
                log.warning("warning: CUDA graph capture of the %s failed (%s); running it eagerly", self.name, reason)
                return fn(*inputs)  # on the caller's stream, which is not capturing (see run)
            self._pool = call.pool
            self.calls[key] = call
        return call(*inputs)

    def clear(self) -> None:
        with self.lock:
            self.calls.clear()
            self._pool = None
