"""Instance norm + SPADE modulation + LeakyReLU kernel vs the engine's PyTorch reference vs PyTorch's own ops
(F.instance_norm, then * (1 + gamma) + beta, then F.leaky_relu), at the SPADE decoder's real shapes.

    pytest benches/test_bench_spade_modulate.py --benchmark-only     # needs a CUDA device; skips without one

Shapes: every SPADE input (B, C, H, W) of the decoder (vasa_engine.kernel_shapes.spade_cases), NCHW and
channels-last, LeakyReLU 0.2 (the norm_0 / norm_1 calls).

Each case records the figures of kernel_bench.record and the kernel's launch plan. Bytes moved: x, gamma, beta
read and the output written once (4 passes), plus x read again by the split plan (5 passes).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_bench import DTYPES, record, require_cuda  # noqa: E402
from test_kernel_spade_modulate import pytorch_spade  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402
from vasa_engine.kernel_shapes import spade_cases  # noqa: E402


def kernel(x, gamma, beta):
    with backend.use("kernels"):
        return ops.spade_modulate(x, gamma, beta, 0.2)


@pytest.mark.parametrize("layout", ["nchw", "channels_last"])
@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", spade_cases(), ids=lambda c: c.name)
def test_spade_modulate(benchmark, case, dtype, layout):
    require_cuda()
    from vasa_engine.kernels.spade_modulate import plan

    shape = case.shape

    gen = torch.Generator(device="cuda").manual_seed(0)
    fmt = torch.channels_last if layout == "channels_last" else torch.contiguous_format
    x, gamma, beta = (torch.randn(*shape, device="cuda", dtype=dtype, generator=gen).contiguous(memory_format=fmt)
                      for _ in range(3))
    calls = {
        "kernel": lambda: kernel(x, gamma, beta),
        "reference": lambda: ops.spade_modulate_reference(x, gamma, beta, 0.2),
        "torch": lambda: pytorch_spade(x, gamma, beta, 0.2),
    }
    cfg = plan(shape, layout == "channels_last")
    passes = 4 if cfg["kind"] == "one_tile" else 5
    record(benchmark, calls, work="bytes", amount=passes * x.numel() * x.element_size(), dtype=dtype, rounds=10,
           shape=shape, layout=layout, plan=cfg)
