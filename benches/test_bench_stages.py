"""Per-stage benchmarks (pytest-benchmark) on the very callables `vasa-engine bench` times.

    pytest benches/ --benchmark-only                      # CPU sizes (seconds each), or full sizes on CUDA
    VASA_BENCH_MODE=gpu pytest benches/ --benchmark-only  # full sizes (VASA_BENCH_FULL=1 says the same)
    VASA_BENCH_MODE=smoke pytest benches/ --benchmark-disable -q   # each body once, untimed: checks they run

Each stage runs on the eager PyTorch reference ("eager") and on the engine's backend ("engine"); on a CPU the two
are the same path. Absolute times mean something only with the device, dtype, sizes and commit recorded beside them
(`extra_info`); `vasa-engine bench` adds torch.compile, bfloat16, counted work and ratios.
"""

import pytest
import torch

from vasa_engine import bench
from vasa_engine.motion_script import scripted_motion


def record(benchmark, engine, **extra) -> None:
    """Device, dtype, backend and sizes beside every timing."""
    benchmark.extra_info.update(device=engine.device_name, dtype=str(engine.dtype).replace("torch.", ""),
                                backend=engine.backend, commit=bench.git_commit()["commit"], **extra)


def _sync(engine):
    if engine.device.type == "cuda":
        torch.cuda.synchronize(engine.device)


def _timed(fn, engine):
    def run():
        out = fn()
        _sync(engine)
        return out

    return run


def _rounds(sizes) -> int:
    return max(1, sizes.repeats)


def test_audio_encoder(benchmark, stage_engine, bench_sizes):
    cfg = stage_engine.motion_stack.generator.cfg
    window = cfg.n_motions * bench.SAMPLE_RATE // bench.FPS
    windows = 0.1 * torch.randn(bench_sizes.audio_windows, window, generator=torch.Generator().manual_seed(1))
    fn = _timed(bench.audio_encoder_stage(stage_engine, windows), stage_engine)
    fn()  # warm-up
    record(benchmark, stage_engine, seconds_of_audio=windows.numel() / bench.SAMPLE_RATE)
    out = benchmark.pedantic(fn, rounds=_rounds(bench_sizes), iterations=1)
    assert out.shape == (bench_sizes.audio_windows, cfg.n_motions, cfg.feature_dim)


@pytest.mark.parametrize("steps", bench.STEPS)
def test_motion_generator_window(benchmark, stage_engine, bench_sizes, steps):
    cfg = stage_engine.motion_stack.generator.cfg
    features = torch.randn(1, cfg.n_motions, cfg.feature_dim, generator=torch.Generator().manual_seed(2))
    fn = _timed(bench.motion_generator_stage(stage_engine, features, steps), stage_engine)
    fn()
    record(benchmark, stage_engine, steps=steps, frames_per_window=cfg.n_motions)
    out = benchmark.pedantic(fn, rounds=_rounds(bench_sizes), iterations=1)
    assert out.shape == (cfg.n_motions, cfg.motion_dim)


@pytest.mark.parametrize("batch", [1, 4])
def test_renderer_frames(benchmark, stage_engine, stage_avatar, bench_sizes, batch):
    motion = scripted_motion(stage_avatar, batch)
    fn = _timed(bench.renderer_stage(stage_engine, stage_avatar, motion), stage_engine)
    fn()  # warm-up: primitive selection, allocations
    record(benchmark, stage_engine, batch=batch, output=stage_engine.output_size)
    out = benchmark.pedantic(fn, rounds=_rounds(bench_sizes), iterations=1)
    assert out.shape == (batch, 3, stage_engine.output_size, stage_engine.output_size) and out.dtype == torch.uint8


def test_end_to_end(benchmark, stage_engine, stage_avatar, bench_sizes):
    samples = bench.speech_clip(bench_sizes.e2e_seconds)
    fn = bench.end_to_end_stage(stage_engine, stage_avatar, samples)
    fn()
    frames = round(len(samples) / (bench.SAMPLE_RATE / bench.FPS))
    record(benchmark, stage_engine, frames=frames, batch=stage_engine.batch_size)
    out = benchmark.pedantic(fn, rounds=max(1, bench_sizes.e2e_repeats), iterations=1)
    assert out.shape == (frames, stage_engine.output_size, stage_engine.output_size, 3)
