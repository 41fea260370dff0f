"""What every kernel benchmark shares: the CUDA check, the timer, and one record of a case.

A case is one shape and dtype. Every implementation of it (the Triton kernel, the engine's PyTorch reference,
PyTorch's own op, ...) is timed with triton.testing.do_bench in the same test, so their ratios come from one run;
pytest-benchmark's own timing is of the kernel. `record` puts into the benchmark's extra_info, for each
implementation, its median time (and 20th / 80th percentiles), its achieved rate and its percent of the device's
peak, plus the kernel's speed-up over each of the others. The peaks are `vasa_engine.bench.DEVICE_PEAKS` (one
table for the whole engine, each row with its source).

VASA_KERNEL_BENCH_DTYPES (comma-separated: float16, bfloat16, float32; default all three) narrows the dtypes.
`vasa-engine gpu-suite` runs these files with the engine's CUDA dtype only and turns their extra_info into the
kernel table of its report.
"""

from __future__ import annotations

import functools
import os

import pytest
import torch

from vasa_engine import bench

KERNEL = "kernel"
_ALL_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}


def _dtypes() -> list[torch.dtype]:
    names = [n.strip() for n in os.environ.get("VASA_KERNEL_BENCH_DTYPES", "").split(",") if n.strip()]
    unknown = [n for n in names if n not in _ALL_DTYPES]
    if unknown:
        raise ValueError(f"VASA_KERNEL_BENCH_DTYPES: unknown dtype {unknown[0]!r} (use {', '.join(_ALL_DTYPES)})")
    return [_ALL_DTYPES[n] for n in names] or list(_ALL_DTYPES.values())


DTYPES = _dtypes()


def require_cuda() -> None:
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


@functools.cache
def commit() -> str:
    """The checkout's commit, read once per run (every case records it)."""
    return bench.git_commit()["commit"]


def device_peak(work: str, dtype: torch.dtype) -> tuple[str, float | None, str]:
    """(device name, peak in FLOP/s or bytes/s, source). work: "flops" (the dtype's dense peak; float32 without
    tensor cores, as the kernels use IEEE products) or "bytes" (memory bandwidth)."""
    row = bench.device_peak(torch.device("cuda"))
    name = torch.cuda.get_device_name()
    if not row.get("measured"):
        return name, None, row.get("reason", "unknown device")
    if work == "bytes":
        value = row.get("bandwidth")
    else:
        value = row.get({torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32"))
    return name, (value * 1e12 if value else None), row["source"]


def record(benchmark, calls: dict, *, work: str, amount: float, dtype: torch.dtype, rounds: int = 20,
           iterations: int = 5, **info) -> None:
    """Time every implementation in `calls` (name -> callable; KERNEL among them), store the figures in
    benchmark.extra_info, and let pytest-benchmark time the kernel.

    work: "flops" or "bytes"; amount: the FLOPs, or the minimum bytes moved, of one call.
    """
    if work not in ("flops", "bytes"):
        raise ValueError(f"work must be 'flops' or 'bytes', not {work!r}")
    times = {name: time_ms(fn) for name, fn in calls.items()}
    name, peak, source = device_peak(work, dtype)
    rate_unit = "tflops" if work == "flops" else "GBps"
    scale = 1e12 if work == "flops" else 1e9
    info.update(device=name, dtype=str(dtype).replace("torch.", ""), work=work, amount=amount, peak_per_s=peak,
                peak_source=source, commit=commit())
    for impl, (med, lo, hi) in times.items():
        per_s = amount / (med * 1e-3)
        info[f"{impl}_ms"] = med
        info[f"{impl}_ms_p20_p80"] = (lo, hi)
        info[f"{impl}_{rate_unit}"] = per_s / scale
        info[f"{impl}_pct_peak"] = None if peak is None else 100.0 * per_s / peak
    for other in calls:
        if other != KERNEL:
            info[f"kernel_speedup_vs_{other}"] = times[other][0] / times[KERNEL][0]
    benchmark.extra_info.update(info)
    benchmark.pedantic(synced(calls[KERNEL]), rounds=rounds, iterations=iterations, warmup_rounds=2)
