"""Attention kernel vs the engine's PyTorch reference vs PyTorch's own scaled_dot_product_attention, at the
engine's real shapes (vasa_engine.kernel_shapes.attention_cases).

    pytest benches/test_bench_attention.py --benchmark-only        # needs a CUDA device; skips without one

Each case (shape, dtype) records in extra_info the median time of every implementation (kernel_bench.record),
the kernel's speed-up over the reference and over SDPA, achieved TFLOP/s (4 B H N^2 Dh FLOPs) and percent of the
device's dense peak for the dtype.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_bench import DTYPES, record, require_cuda  # noqa: E402
from test_kernel_attention import padding_mask, reference_attention, torch_sdpa  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402
from vasa_engine.kernel_shapes import attention_cases  # noqa: E402


def kernel_attention(q, k, v, mask=None):
    with backend.use("kernels"):
        return ops.attention(q, k, v, key_padding_mask=mask)


IMPLS = {"kernel": kernel_attention, "reference": reference_attention, "torch_sdpa": torch_sdpa}


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", attention_cases(), ids=lambda c: c.name)
def test_attention(benchmark, case, dtype):
    require_cuda()
    b, h, n, dh, padded = case.batch, case.heads, case.tokens, case.head_dim, case.padded
    gen = torch.Generator(device="cuda").manual_seed(0)
    # q, k, v as the models produce them: views of one packed (B, N, 3, H, Dh) projection.
    q, k, v = torch.randn(b, n, 3, h, dh, device="cuda", dtype=dtype, generator=gen).permute(2, 0, 3, 1, 4)
    mask = None
    if padded:
        lengths = [n - (i * n) // (2 * b) for i in range(b)]  # full length down to about half
        mask = padding_mask(lengths, n, "cuda")
    calls = {name: (lambda f=f: f(q, k, v, mask)) for name, f in IMPLS.items()}
    record(benchmark, calls, work="flops", amount=4.0 * b * h * n * n * dh, dtype=dtype, iterations=10,
           shape=case.name, B=b, H=h, N=n, Dh=dh, padded=padded)
