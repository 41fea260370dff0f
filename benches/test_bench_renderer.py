"""Renderer per-frame cost (warp + decode) at sizes that run in seconds on a CPU.

    pytest benches/ --benchmark-only              # CPU sizes
    VASA_BENCH_FULL=1 pytest benches/ --benchmark-only   # the real 512x512 config (slow on a CPU)

Absolute times mean something only with the device, dtype, batch and commit next to them.
"""

import os

import pytest
import torch

from vasa_engine import Engine
from vasa_engine.config import RendererConfig
from vasa_engine.motion_script import scripted_motion

FULL = os.environ.get("VASA_BENCH_FULL") == "1"


@pytest.fixture(scope="module")
def setup(sample_image_path):
    config = RendererConfig() if FULL else RendererConfig.tiny()
    engine = Engine(None, device="auto", config=config)
    avatar = engine.prepare(sample_image_path)
    return engine, avatar


@pytest.mark.parametrize("batch", [1, 4])
def test_render_frames(benchmark, setup, batch):
    engine, avatar = setup
    motion = scripted_motion(avatar, batch)
    engine.render(avatar, motion, batch_size=batch)  # warm-up: primitive selection, allocations

    def run():
        engine.render(avatar, motion, batch_size=batch)
        if engine.device.type == "cuda":
            torch.cuda.synchronize()

    benchmark.extra_info.update(device=engine.device_name, dtype=str(engine.dtype), batch=batch,
                                config="full" if FULL else "tiny")
    benchmark.pedantic(run, rounds=5 if not FULL else 2, iterations=1)
