"""Attention kernel vs the engine's PyTorch reference vs PyTorch's own scaled_dot_product_attention, at the
engine's real shapes (tests/test_kernel_attention.py: ENGINE_SHAPES).

    pytest benches/test_bench_attention.py --benchmark-only        # needs a CUDA device; skips without one

Each case records in extra_info: the device, dtype and shape, the median time of every implementation measured
with triton.testing.do_bench (20th / 80th percentiles too), the kernel's speed-up over the reference and over
SDPA, achieved TFLOP/s (4 B H N^2 Dh FLOPs) and percent of the device's peak. pytest-benchmark's own table
times the implementation named in the test id.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from test_kernel_attention import ENGINE_SHAPES, padding_mask, reference_attention, torch_sdpa  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402

# Peak rates, dense (no sparsity), from NVIDIA's data sheets: H100 SXM5 989 TFLOP/s fp16 / bf16 tensor core,
# 67 TFLOP/s fp32 (non tensor core), 3.35 TB/s HBM3; H100 PCIe 756 / 51 TFLOP/s, 2.0 TB/s; H200 SXM the H100
# SXM's compute with 4.8 TB/s HBM3e.
PEAKS = {  # name fragment -> (tensor fp16/bf16 FLOP/s, fp32 FLOP/s, bytes/s)
    "H200": (989e12, 67e12, 4.8e12),
    "H100 PCIe": (756e12, 51e12, 2.0e12),
    "H100": (989e12, 67e12, 3.35e12),
}


def device_peaks() -> tuple[str, tuple[float, float, float] | None]:
    """(device name, its peaks) or (name, None): percent of peak is then reported as unknown."""
    name = torch.cuda.get_device_name()
    for fragment, peaks in PEAKS.items():
        if all(part in name for part in fragment.split()):
            return name, peaks
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


def kernel_attention(q, k, v, mask=None):
    with backend.use("kernels"):
        return ops.attention(q, k, v, key_padding_mask=mask)


IMPLS = {"kernel": kernel_attention, "reference": reference_attention, "torch_sdpa": torch_sdpa}


@pytest.mark.parametrize("impl", list(IMPLS))
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32], ids=str)
@pytest.mark.parametrize("shape", list(ENGINE_SHAPES))
def test_attention(benchmark, shape, dtype, impl):
    require_cuda()
    b, h, n, dh, padded = ENGINE_SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    # q, k, v as the models produce them: views of one packed (B, N, 3, H, Dh) projection.
    q, k, v = torch.randn(b, n, 3, h, dh, device="cuda", dtype=dtype, generator=gen).permute(2, 0, 3, 1, 4)
    mask = None
    if padded:
        lengths = [n - (i * n) // (2 * b) for i in range(b)]  # full length down to about half
        mask = padding_mask(lengths, n, "cuda")
    calls = {name: (lambda f=f: f(q, k, v, mask)) for name, f in IMPLS.items()}
    times = {name: time_ms(fn) for name, fn in calls.items()}
    flops = 4.0 * b * h * n * n * dh
    name, peaks = device_peaks()
    peak = None if peaks is None else (peaks[1] if dtype == torch.float32 else peaks[0])
    info = dict(device=name, dtype=str(dtype), shape=shape, B=b, H=h, N=n, Dh=dh, padded=padded,
                peak_flops=peak, peak_source="NVIDIA data sheet (dense)" if peak else "unknown peak")
    for impl_name, (med, lo, hi) in times.items():
        info[f"{impl_name}_ms"] = med
        info[f"{impl_name}_ms_p20_p80"] = (lo, hi)
        info[f"{impl_name}_tflops"] = flops / (med * 1e-3) / 1e12
        info[f"{impl_name}_pct_peak"] = None if peak is None else 100.0 * flops / (med * 1e-3) / peak
    info["kernel_speedup_vs_reference"] = times["reference"][0] / times["kernel"][0]
    info["kernel_speedup_vs_torch_sdpa"] = times["torch_sdpa"][0] / times["kernel"][0]
    benchmark.extra_info.update(info)
    benchmark.pedantic(synced(calls[impl]), rounds=20, iterations=10, warmup_rounds=2)
