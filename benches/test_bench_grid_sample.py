"""Trilinear grid sample kernel vs the engine's PyTorch reference vs PyTorch's own F.grid_sample (on an NCDHW
volume and on a channels-last one), at the engine's real shapes.

    pytest benches/test_bench_grid_sample.py --benchmark-only     # needs a CUDA device; skips without one

Shapes: the dense motion network's 22 warps of the compressed volume, (B*22, 4, 16, 64, 64), and the warp of the
appearance volume, (B, 32, 16, 64, 64), at B = 1 and 8, sampled at (B*, 16, 64, 64) fp32 grid points.

Each case records in extra_info: the device, dtype and shape, the median time of every implementation with
triton.testing.do_bench (20th / 80th percentiles too), the kernel's speed-up over each, and the kernel's bytes
moved / time as a percent of the device's peak memory bandwidth. Bytes moved (the minimum): the fp32 grid read
(12 B a point), the output written (C values a point) and the volume read once. "kernel" is the op on a volume
already channels-last (what the engine should keep); "kernel_ncdhw" includes the wrapper's layout copy.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_kernel_grid_sample import pytorch_grid_sample  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402

# Peak HBM bandwidth from NVIDIA's data sheets: H100 SXM5 3.35 TB/s (HBM3), H100 PCIe 2.0 TB/s (HBM2e), H200 SXM
# 4.8 TB/s (HBM3e). Picked by torch.cuda.get_device_name(); another device reports percent of peak as None.
PEAK_BYTES = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12}
PEAK_SOURCE = "NVIDIA H100 / H200 data sheets (HBM bandwidth)"

# name -> (B of the call, C, (D, H, W) of the volume)
SHAPES = {
    "dense_motion_warps_b1": (22, 4, (16, 64, 64)),
    "dense_motion_warps_b8": (176, 4, (16, 64, 64)),
    "appearance_warp_b1": (1, 32, (16, 64, 64)),
    "appearance_warp_b8": (8, 32, (16, 64, 64)),
}
OUT_SIZE = (16, 64, 64)


def peak_bandwidth() -> tuple[str, float | None]:
    name = torch.cuda.get_device_name()
    for fragment, peak in PEAK_BYTES.items():
        if all(part in name for part in fragment.split()):
            return name, peak
    return name, None


def require_cuda():
    if not torch.cuda.is_available():
        pytest.skip("kernel benchmarks need a CUDA device")


def time_ms(fn) -> tuple[float, float, float]:
    """(median, 20th, 80th percentile) milliseconds per call."""
    import triton.testing

    return tuple(triton.testing.do_bench(fn, warmup=25, rep=100, quantiles=[0.5, 0.2, 0.8]))


def synced(fn):
    def run():
        fn()
        torch.cuda.synchronize()

    return run


def kernel(volume, grid):
    with backend.use("kernels"):
        return ops.grid_sample_3d(volume, grid)


@pytest.mark.parametrize("impl", ["kernel", "kernel_ncdhw", "reference", "torch_ncdhw", "torch_channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_grid_sample(benchmark, shape, dtype, impl):
    require_cuda()
    b, c, size = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    volume = torch.randn(b, c, *size, device="cuda", dtype=dtype, generator=gen)
    volume_cl = volume.contiguous(memory_format=torch.channels_last_3d)
    # displacements of a few voxels around the identity, as the dense motion produces
    grid = (torch.rand(b, *OUT_SIZE, 3, device="cuda", generator=gen) * 2.2 - 1.1)
    calls = {
        "kernel": lambda: kernel(volume_cl, grid),
        "kernel_ncdhw": lambda: kernel(volume, grid),
        "reference": lambda: ops.grid_sample_3d_reference(volume, grid),
        "torch_ncdhw": lambda: pytorch_grid_sample(volume, grid),
        "torch_channels_last": lambda: pytorch_grid_sample(volume_cl, grid),
    }
    times = {name: time_ms(fn) for name, fn in calls.items()}
    points = b * OUT_SIZE[0] * OUT_SIZE[1] * OUT_SIZE[2]
    moved = points * 12 + points * c * volume.element_size() + volume.numel() * volume.element_size()
    name, peak = peak_bandwidth()
    info = dict(device=name, dtype=str(dtype), shape=shape, volume=tuple(volume.shape), grid=tuple(grid.shape),
                bytes_moved=moved, peak_bytes_per_s=peak, peak_source=PEAK_SOURCE if peak else "unknown device")
    for impl_name, (med, lo, hi) in times.items():
        info[f"{impl_name}_ms"] = med
        info[f"{impl_name}_ms_p20_p80"] = (lo, hi)
    for other in ("reference", "torch_ncdhw", "torch_channels_last", "kernel_ncdhw"):
        info[f"kernel_speedup_vs_{other}"] = times[other][0] / times["kernel"][0]
    achieved = moved / (times["kernel"][0] * 1e-3)
    info["kernel_bytes_per_s"] = achieved
    info["kernel_pct_peak_bandwidth"] = None if peak is None else 100.0 * achieved / peak
    benchmark.extra_info.update(info)
    benchmark.pedantic(synced(calls[impl]), rounds=20, iterations=5, warmup_rounds=2)
