"""CUDA-graph capture under threads and failures (vasa_engine.graphs).

On the CPU the capture protocol runs against a stand-in for torch's CUDA graph and stream API that keeps the
state a real device keeps (the current stream of each thread, which stream is capturing, how many captures are
underway, the allocator's routing of a capture's allocations and its references on memory pools) and refuses what
a real capture refuses: a capture on the default stream or on a stream already capturing, a host synchronisation
inside a capture (which also invalidates it), ending a capture on another stream. The same properties are checked
on a GPU by the tests marked gpu: a failed capture in a process of its own, and threads capturing at the same
moment while another runs eager work.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import subprocess
import sys
import textwrap
import threading

import pytest
import torch

from conftest import REPO, rel_err
from vasa_engine import graphs
from vasa_engine.graphs import GraphCache

CUDA = torch.cuda.is_available()


class FakeStream:
    def __init__(self, name: str):
        self.name = name
        self.device_index = 0
        self.capture = None  # the graph capturing on this stream

    def wait_stream(self, other) -> None:
        pass


class FakeCuda:
    """The device state a capture changes, and the rules a real capture enforces."""

    def __init__(self):
        self.local = threading.local()
        self.default = FakeStream("default")
        self.pool_refs: collections.Counter = collections.Counter()  # pool -> references held by captures
        self.routed: set = set()  # pools that a capture's allocations are still routed to
        self.lock = threading.Lock()
        self.capturing = 0
        self.most_capturing = 0
        self.resets = 0
        self.replays = 0
        self.handles = itertools.count(1)

    def current(self, device=None) -> FakeStream:
        return getattr(self.local, "stream", self.default)

    @contextlib.contextmanager
    def stream(self, stream: FakeStream):
        previous = self.current()
        self.local.stream = stream
        try:
            yield
        finally:
            self.local.stream = previous

    def is_capturing(self) -> bool:
        return self.current().capture is not None

    def sync(self) -> None:
        """A host synchronisation: refused inside a capture, which it invalidates."""
        capture = self.current().capture
        if capture is not None:
            capture.invalid = True
            raise RuntimeError("operation not permitted when stream is capturing\nCUDA kernel errors might be ...")

    def end_allocating(self, device: int, pool) -> None:
        if pool not in self.routed:
            raise RuntimeError("endAllocateToPool: not currently recording to mempool_id")
        self.routed.discard(pool)

    def release(self, device: int, pool) -> None:
        self.pool_refs[pool] -= 1

    def graph_class(self):
        cuda = self

        class FakeGraph:
            def __init__(self):
                self.invalid = self.ended = False
                self.stream = self.pool_id = None

            def capture_begin(self, pool=None, capture_error_mode="global"):
                assert capture_error_mode == "thread_local"
                stream = cuda.current()
                assert stream is not cuda.default, "captures must not run on the default stream"
                assert stream.capture is None, "a capture is already underway on this stream"
                with cuda.lock:
                    cuda.capturing += 1
                    cuda.most_capturing = max(cuda.most_capturing, cuda.capturing)
                cuda.pool_refs[pool] += 1
                cuda.routed.add(pool)
                self.stream, self.pool_id, stream.capture = stream, pool, self

            def capture_end(self):
                stream = cuda.current()
                assert stream is self.stream, "capture must end on the stream it began on"
                stream.capture = None
                with cuda.lock:
                    cuda.capturing -= 1
                if self.invalid:
                    raise RuntimeError("operation failed due to a previous error during capture")
                cuda.routed.discard(self.pool_id)
                self.ended = True

            def pool(self):
                if not self.ended:
                    raise RuntimeError("Called CUDAGraph::pool() without a preceding successful capture.")
                return self.pool_id

            def reset(self):
                cuda.resets += 1
                if self.ended:
                    cuda.pool_refs[self.pool_id] -= 1
                    self.ended = False

            def replay(self):
                cuda.replays += 1

        return FakeGraph


@pytest.fixture
def fake_cuda(monkeypatch):
    cuda = FakeCuda()
    monkeypatch.setattr(torch.cuda, "current_stream", cuda.current)
    monkeypatch.setattr(torch.cuda, "Stream", lambda device=None: FakeStream("side"))
    monkeypatch.setattr(torch.cuda, "stream", cuda.stream)
    monkeypatch.setattr(torch.cuda, "is_current_stream_capturing", cuda.is_capturing)
    monkeypatch.setattr(torch.cuda, "CUDAGraph", cuda.graph_class())
    monkeypatch.setattr(torch.cuda, "graph_pool_handle", lambda: (0, next(cuda.handles)))
    monkeypatch.setattr(torch._C, "_cuda_endAllocateToPool", cuda.end_allocating, raising=False)
    monkeypatch.setattr(torch._C, "_cuda_releasePool", cuda.release, raising=False)
    monkeypatch.setattr(graphs, "_capture_streams", {})
    monkeypatch.setattr(graphs, "_new_capture_stream", lambda index: FakeStream(f"capture {index}"))
    monkeypatch.setattr(graphs, "_graph_device", lambda inputs: torch.device("cuda", 0))
    monkeypatch.setattr(graphs, "device_context", lambda device: contextlib.nullcontext())
    return cuda


def _held_pools(cuda: FakeCuda) -> int:
    return sum(cuda.pool_refs.values())


@pytest.mark.parametrize("failure", ["invalidated", "python error"])
def test_failed_capture_leaves_the_thread_clean(fake_cuda, caplog, failure):
    """After a capture fails the thread is back on its own stream, nothing is capturing, the pool routing ends and
    no pool reference is left; the key is recorded with a one-line reason and the call runs eagerly, outside any
    capture. A later capture works."""
    cache = GraphCache("test")
    x = torch.randn(7, generator=torch.Generator().manual_seed(2))
    eager_calls_capturing = []

    def fails_in_capture(t):
        if fake_cuda.is_capturing():
            if failure == "invalidated":
                fake_cuda.sync()
            raise ValueError("cannot be captured\nsecond line")
        eager_calls_capturing.append(fake_cuda.is_capturing())
        return t * 3

    before = fake_cuda.current()
    with caplog.at_level(logging.WARNING, logger="vasa_engine"):
        out = cache.run("k", fails_in_capture, [x])
    assert torch.equal(out, x * 3) and not cache.calls
    reason = "operation not permitted when stream is capturing" if failure == "invalidated" else "cannot be captured"
    assert cache.failed == {"k": reason}
    assert any(f"capture of the test failed ({reason})" in r.getMessage() for r in caplog.records)
    assert fake_cuda.current() is before and not fake_cuda.is_capturing() and fake_cuda.capturing == 0
    assert not fake_cuda.routed and _held_pools(fake_cuda) == 0 and fake_cuda.resets == 1
    assert eager_calls_capturing == [False, False, False]  # two warm-ups and the eager fallback

    cache.run("k", fails_in_capture, [x])  # a failed key is not captured again
    assert fake_cuda.resets == 1 and len(eager_calls_capturing) == 4
    out = cache.run("k2", lambda t: t + 1, [x], copy=True)
    assert torch.equal(out, x + 1) and "k2" in cache.calls and _held_pools(fake_cuda) == 1
    assert not fake_cuda.routed and fake_cuda.current() is before


def test_captures_are_serialized_while_other_threads_warm_up(fake_cuda):
    """Thread a captures; thread b's warm-up (eager work) runs during that capture and b's own capture waits for
    a's to end: at most one capture at a time, and b's eager work never lands on a capturing stream."""
    a_capturing, b_warming = threading.Event(), threading.Event()
    seen = {}

    def fn_a(t):
        if fake_cuda.is_capturing():
            a_capturing.set()
            seen["b warmed up during a's capture"] = b_warming.wait(10)
        return t + 1

    def fn_b(t):
        if not fake_cuda.is_capturing():
            seen.setdefault("b's eager work on a capturing stream", fake_cuda.current().capture is not None)
            a_capturing.wait(10)
            b_warming.set()
        return t * 2

    caches = [GraphCache("a"), GraphCache("b")]
    x = torch.randn(5, generator=torch.Generator().manual_seed(3))
    results, errors = {}, []

    def work(name, cache, fn):
        try:
            results[name] = cache.run(name, fn, [x], copy=True)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)

    threads = [threading.Thread(target=work, args=("a", caches[0], fn_a)),
               threading.Thread(target=work, args=("b", caches[1], fn_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert not errors and not any(t.is_alive() for t in threads)
    assert seen == {"b's eager work on a capturing stream": False, "b warmed up during a's capture": True}
    assert fake_cuda.most_capturing == 1
    assert "a" in caches[0].calls and "b" in caches[1].calls and not caches[0].failed and not caches[1].failed
    assert torch.equal(results["a"], x + 1) and torch.equal(results["b"], x * 2)


def test_a_caller_inside_a_capture_is_not_captured_again(fake_cuda):
    """Work asked for while the caller's own stream is capturing runs as it is (it belongs to that capture)."""
    cache = GraphCache("test")
    outer = torch.cuda.CUDAGraph()
    x = torch.randn(3, generator=torch.Generator().manual_seed(4))
    with fake_cuda.stream(FakeStream("caller's capture")):
        outer.capture_begin(pool=(0, 0), capture_error_mode="thread_local")
        out = cache.run("k", lambda t: t - 1, [x])
        outer.capture_end()
    assert torch.equal(out, x - 1) and not cache.calls and not cache.failed


# ------------------------------------------------------------------------------------------------ on a GPU

_FAILED_CAPTURE = textwrap.dedent("""
    import logging
    import torch
    from vasa_engine.graphs import GraphCache

    records = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("vasa_engine").addHandler(handler)

    x = torch.arange(4.0, device="cuda")
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    reserved = torch.cuda.memory_reserved()
    original = torch.cuda.current_stream()

    def needs_the_host(t):
        scratch = torch.ones(1 << 24, device=t.device)  # 64 MiB from the graph's pool while capturing
        return t * float((scratch.sum() > 0).item())  # a device-to-host copy cannot be captured

    cache = GraphCache("test")
    out = cache.run("k", needs_the_host, [x])
    assert torch.equal(out, x), out
    assert torch.cuda.current_stream() == original, "the thread stayed on the capture stream"
    assert not torch.cuda.is_current_stream_capturing()
    assert "k" in cache.failed and "k" not in cache.calls and "\\n" not in cache.failed["k"], cache.failed
    assert any("capture of the test failed" in r.getMessage() for r in records)
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    leaked = torch.cuda.memory_reserved() - reserved
    assert leaked < 32 << 20, f"{leaked} bytes still reserved: the failed capture's pool was not released"

    # the same cache and a new one capture afterwards, and their replays are right
    for c in (cache, GraphCache("later")):
        assert torch.equal(c.run("k2", lambda t: t * 2, [x], copy=True), x * 2)
        assert torch.equal(c.run("k2", lambda t: t * 2, [x + 1], copy=True), (x + 1) * 2)
        assert "k2" in c.calls and not c.failed.get("k2"), c.failed
    assert torch.cuda.current_stream() == original
    print("ok")
""")


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_failed_capture_in_a_process_of_its_own():
    """A capture that fails on purpose runs in a subprocess, so no other graph test shares its process."""
    done = subprocess.run([sys.executable, "-c", _FAILED_CAPTURE], cwd=REPO, capture_output=True, text=True,
                          timeout=300)
    assert done.returncode == 0 and done.stdout.strip().endswith("ok"), done.stdout + done.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_capture_stream_is_in_no_pool(caplog):
    """The capture stream is created for captures alone: none of torch's pooled streams is the same stream."""
    with caplog.at_level(logging.WARNING, logger="vasa_engine"):
        with graphs._CAPTURE_LOCK:
            stream = graphs.capture_stream(torch.device("cuda", torch.cuda.current_device()))
    assert not [r for r in caplog.records if "dedicated CUDA stream" in r.getMessage()]
    pooled = {torch.cuda.Stream().cuda_stream for _ in range(128)}
    assert stream.cuda_stream not in pooled and stream.cuda_stream != torch.cuda.default_stream().cuda_stream


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_threads_capturing_at_once_get_eager_results():
    """Two threads behind a barrier capture a different function at once, key after key (cuBLAS, elementwise
    and reduction kernels), while a third thread runs eager work with host synchronisations; every replay equals
    the eager call and no capture fails."""

    def matmul_relu(a, w):
        return torch.relu(a @ w) + 1

    def scaled_softmax(a, w):
        return (a * w.sum(0)).softmax(-1)

    functions, caches = (matmul_relu, scaled_softmax), (GraphCache("a"), GraphCache("b"))
    sizes = range(1, 17)
    barrier, stop = threading.Barrier(2), threading.Event()
    results: dict[int, list] = {0: [], 1: []}
    errors = []

    def eager_load():
        gen = torch.Generator(device="cuda").manual_seed(9)
        while not stop.is_set():
            a = torch.randn(257, 129, device="cuda", generator=gen)
            (a @ a.T).sum().item()

    def work(i):
        try:
            gen = torch.Generator().manual_seed(i)
            fn, cache = functions[i], caches[i]
            for n in sizes:
                a, w = torch.randn(n, 33, generator=gen).cuda(), torch.randn(33, 33, generator=gen).cuda()
                barrier.wait(60)
                for inputs in ([a, w], [a + 1, w]):
                    results[i].append((cache.run(("key", n), fn, inputs, copy=True), fn(*inputs)))
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            errors.append(exc)
            barrier.abort()

    load = threading.Thread(target=eager_load)
    load.start()
    threads = [threading.Thread(target=work, args=(i,)) for i in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(300)
    stop.set()
    load.join(60)
    assert not errors, errors
    for i in (0, 1):
        assert not caches[i].failed and len(caches[i].calls) == len(sizes)
        assert len(results[i]) == 2 * len(sizes)
        for got, expected in results[i]:
            assert rel_err(got, expected) < 1e-6
