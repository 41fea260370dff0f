"""Instance norm + SPADE modulation + LeakyReLU kernel vs the engine's PyTorch reference vs PyTorch's own ops
(F.instance_norm, then * (1 + gamma) + beta, then F.leaky_relu), at the SPADE decoder's real shapes.

    pytest benches/test_bench_spade_modulate.py --benchmark-only     # needs a CUDA device; skips without one

Shapes (B, C, H, W): C, H, W in (512, 64, 64), (512, 128, 128), (256, 128, 128), (256, 256, 256), (64, 256, 256)
at B = 1 and 8, NCHW and channels-last, LeakyReLU 0.2 (the norm_0 / norm_1 calls).

Each case records in extra_info: the device, dtype, shape and layout, the kernel's launch plan, the median time of
every implementation with triton.testing.do_bench (20th / 80th percentiles too), the kernel's speed-up over each,
and the kernel's bytes moved / time as a percent of the device's peak memory bandwidth. Bytes moved: x, gamma,
beta read and the output written once (4 passes), plus x read again by the split plan (5 passes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_kernel_spade_modulate import pytorch_spade  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402

# Peak HBM bandwidth from NVIDIA's data sheets: H100 SXM5 3.35 TB/s (HBM3), H100 PCIe 2.0 TB/s (HBM2e), H200 SXM
# 4.8 TB/s (HBM3e). Picked by torch.cuda.get_device_name(); another device reports percent of peak as None.
PEAK_BYTES = {"H200": 4.8e12, "H100 PCIe": 2.0e12, "H100": 3.35e12}
PEAK_SOURCE = "NVIDIA H100 / H200 data sheets (HBM bandwidth)"

SHAPES = [(b, c, h, w) for c, h, w in ((512, 64, 64), (512, 128, 128), (256, 128, 128), (256, 256, 256),
                                        (64, 256, 256)) for b in (1, 8)]


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


def kernel(x, gamma, beta):
    with backend.use("kernels"):
        return ops.spade_modulate(x, gamma, beta, 0.2)


@pytest.mark.parametrize("impl", ["kernel", "reference", "torch"])
@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: "x".join(map(str, s)))
def test_spade_modulate(benchmark, shape, dtype, layout, impl):
    require_cuda()
    from vasa_engine.kernels.spade_modulate import plan

    gen = torch.Generator(device="cuda").manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x, gamma, beta = (torch.randn(*shape, device="cuda", dtype=dtype, generator=gen).contiguous(memory_format=fmt)
                      for _ in range(3))
    calls = {
        "kernel": lambda: kernel(x, gamma, beta),
        "reference": lambda: ops.spade_modulate_reference(x, gamma, beta, 0.2),
        "torch": lambda: pytorch_spade(x, gamma, beta, 0.2),
    }
    times = {name: time_ms(fn) for name, fn in calls.items()}
    cfg = plan(tuple(shape), layout == "channels_last")
    passes = 4 if cfg["kind"] == "one_tile" else 5
    moved = passes * x.numel() * x.element_size()
    name, peak = peak_bandwidth()
    info = dict(device=name, dtype=str(dtype), shape=tuple(shape), layout=layout, plan=cfg, bytes_moved=moved,
                peak_bytes_per_s=peak, peak_source=PEAK_SOURCE if peak else "unknown device")
    for impl_name, (med, lo, hi) in times.items():
        info[f"{impl_name}_ms"] = med
        info[f"{impl_name}_ms_p20_p80"] = (lo, hi)
    for other in ("reference", "torch"):
        info[f"kernel_speedup_vs_{other}"] = times[other][0] / times["kernel"][0]
    achieved = moved / (times["kernel"][0] * 1e-3)
    info["kernel_bytes_per_s"] = achieved
    info["kernel_pct_peak_bandwidth"] = None if peak is None else 100.0 * achieved / peak
    benchmark.extra_info.update(info)
    benchmark.pedantic(synced(calls[impl]), rounds=10, iterations=5, warmup_rounds=2)
