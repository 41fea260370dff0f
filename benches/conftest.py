"""Fixtures of the stage benchmarks: engines at the sizes of `vasa-engine bench`'s modes.

VASA_BENCH_MODE picks the sizes: "cpu" (default without CUDA: reduced sizes that run in seconds), "gpu" (default
on CUDA: full sizes) or "smoke" (the smallest). VASA_BENCH_FULL=1 is the same as VASA_BENCH_MODE=gpu on any device.
"""

import os
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent


def bench_mode() -> str:
    if os.environ.get("VASA_BENCH_FULL") == "1":
        return "gpu"
    mode = os.environ.get("VASA_BENCH_MODE")
    if mode:
        return mode
    return "gpu" if torch.cuda.is_available() else "cpu"


@pytest.fixture(scope="session")
def sample_image_path() -> Path:
    return REPO / "vasa_engine" / "assets" / "astronaut.png"


@pytest.fixture(scope="session")
def bench_sizes():
    from vasa_engine import bench
    from vasa_engine.runtime import resolve_device

    mode = bench_mode()
    if mode not in bench.MODES:
        pytest.fail(f"VASA_BENCH_MODE must be one of {', '.join(bench.MODES)}, got {mode!r}")
    return bench.sizes_for(mode, resolve_device("auto"), full_size=mode == "gpu")


@pytest.fixture(scope="session", params=["reference", "auto"], ids=["eager", "engine"])
def stage_engine(request, bench_sizes):
    """The engine at the mode's sizes (seeded random weights): the reference, eager, or the engine's own backend
    and CUDA graphs."""
    # the engine with its CUDA graphs, the reference without
    return _base_engine(bench_sizes).variant(backend=request.param, cuda_graphs=request.param == "auto")


_ENGINES = {}


def _base_engine(sizes):
    from vasa_engine import bench
    from vasa_engine.runtime import resolve_device

    if sizes not in _ENGINES:
        device = resolve_device("auto")
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
        _ENGINES.clear()
        _ENGINES[sizes] = bench.build_engines(sizes, device, dtype, bf16=False)[dtype]
    return _ENGINES[sizes]


@pytest.fixture(scope="session")
def stage_avatar(stage_engine, sample_image_path):
    return stage_engine.prepare(sample_image_path)
