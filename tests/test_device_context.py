"""The engine works in its own device's context (vasa_engine.runtime.device_context): an engine on cuda:1 launches,
allocates and creates streams on device 1 whichever device the calling thread has selected."""

from __future__ import annotations

import contextlib
import sys

import numpy as np
import pytest
import torch

from vasa_engine import Engine, engine as engine_module, frames, generation
from vasa_engine.generation import Controls
from vasa_engine.motion_script import scripted_motion
from vasa_engine.runtime import device_context
from vasa_engine.streaming import worker

SPEECH = np.random.default_rng(11).normal(0, 0.1, 16000 * 5).astype(np.float32)


def test_a_cuda_device_gets_its_own_context_without_touching_cuda():
    initialized = torch.cuda.is_initialized()
    context = device_context("cuda:1")
    assert isinstance(context, torch.cuda.device) and context.idx == 1
    assert isinstance(device_context(torch.device("cuda", 3)), torch.cuda.device)
    assert device_context(torch.device("cuda", 3)).idx == 3
    assert torch.cuda.is_initialized() == initialized  # building it does not initialise CUDA


@pytest.mark.parametrize("device", ["cpu", torch.device("cpu")])
def test_other_devices_get_a_null_context(device):
    context = device_context(device)
    assert isinstance(context, contextlib.nullcontext)
    with context as entered:
        assert entered is None


def test_every_stage_runs_in_the_engine_device_context(monkeypatch, engine, avatar):
    """Preparation, the audio stage, motion sampling, the frame stage and a stream's worker thread each enter the
    engine's device context."""
    entered = []

    def recording(device):
        entered.append((sys._getframe(1).f_code.co_name, torch.device(device)))
        return contextlib.nullcontext()

    for module in (engine_module, frames, generation, worker):
        monkeypatch.setattr(module, "device_context", recording)
    av = engine.prepare(avatar.image)
    motion = engine.generate_motion(av, SPEECH[:16000], Controls(steps=2), sample_rate=16000)
    engine.render(av, motion[:2])
    with engine.stream(av, render=False, controls=Controls(steps=2)) as session:
        session.push(SPEECH[:8000], 16000)
        session.flush()
    sites = {name for name, device in entered if device == engine.device}
    assert {"prepare", "generate_motion", "window_features", "window", "render_on_device", "launch", "_run"} <= sites
    assert all(device == engine.device for _, device in entered)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available() or torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_an_engine_on_the_second_device_stays_there(tiny_full_weights, sample_image):
    """An engine on cuda:1, called from threads whose current device is 0 (this one and a stream's worker), keeps
    its tensors, graphs and allocations on device 1: nothing is allocated on device 0."""
    torch.cuda.set_device(0)
    torch.cuda.synchronize(0)
    before = torch.cuda.memory_allocated(0)
    eng = Engine(tiny_full_weights, device="cuda:1", dtype="float16")
    av = eng.prepare(sample_image)
    assert all(t.device == torch.device("cuda", 1) for t in (av.source.feature_3d, av.source.x_s, av.eye_ratio))
    motion = eng.generate_motion(av, SPEECH, Controls(steps=3), sample_rate=16000)
    frames_out = eng.render_on_device(av, scripted_motion(av, 4))
    assert frames_out.device == torch.device("cuda", 1) and eng.render(av, motion[:4]).shape[0] == 4
    with eng.stream(av) as session:
        streamed = session.push(SPEECH, 16000) + session.flush()
    assert streamed and all(f.image is not None for f in streamed)
    assert eng.sampler_graphs.calls and not eng.sampler_graphs.failed
    assert eng.render_graphs.calls and not eng.render_graphs.failed
    torch.cuda.synchronize(1)
    assert torch.cuda.current_device() == 0 and torch.cuda.memory_allocated(0) == before
