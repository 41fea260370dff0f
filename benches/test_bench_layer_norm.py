"""Fused residual add + LayerNorm and the fused embedding sum vs the engine's PyTorch references and PyTorch's own
ops, at the engine's real shapes (vasa_engine.kernel_shapes).

    pytest benches/test_bench_layer_norm.py --benchmark-only      # needs a CUDA device; skips without one

Both are memory-bound: each case records the median time of every implementation (triton.testing.do_bench, 20th
and 80th percentiles too), the kernel's speed-up, and the achieved bandwidth as bytes the fused kernel must move
(reads + writes, each tensor once) over time, in percent of the device's memory bandwidth (kernel_bench.record).
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_bench import DTYPES, record, require_cuda  # noqa: E402
from test_kernel_add_embeddings import reference_add_embeddings  # noqa: E402
from test_kernel_layer_norm import reference_add_layer_norm, torch_add_layer_norm  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402
from vasa_engine.kernel_shapes import add_embeddings_cases, add_layer_norm_cases  # noqa: E402


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", add_layer_norm_cases(), ids=lambda c: c.name)
def test_add_layer_norm(benchmark, case, dtype):
    require_cuda()
    rows, width = case.rows, case.width
    gen = torch.Generator(device="cuda").manual_seed(0)
    x, residual = (torch.randn(rows, width, device="cuda", dtype=dtype, generator=gen) for _ in range(2))
    norm = torch.nn.LayerNorm(width, device="cuda", dtype=dtype)

    def kernel():
        with backend.use("kernels"):
            return ops.add_layer_norm(x, residual, norm)

    calls = {"kernel": kernel,
             "reference": lambda: reference_add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps),
             "torch_layer_norm": lambda: torch_add_layer_norm(x, residual, norm.weight, norm.bias, norm.eps)}
    element = x.element_size()
    nbytes = 3 * rows * width * element + 2 * width * norm.weight.element_size()
    record(benchmark, calls, work="bytes", amount=nbytes, dtype=dtype, iterations=20, shape=case.name, rows=rows,
           width=width)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", add_embeddings_cases(), ids=lambda c: c.name)
def test_add_embeddings(benchmark, case, dtype):
    require_cuda()
    b, n, width, table_rows = case.batch, case.tokens, case.width, case.table_rows
    gen = torch.Generator(device="cuda").manual_seed(0)
    x = torch.randn(b, n, width, device="cuda", dtype=dtype, generator=gen)
    positions = torch.randn(table_rows, width, device="cuda", dtype=dtype, generator=gen)
    condition = torch.randn(b, 1, width, device="cuda", dtype=dtype, generator=gen)

    def kernel():
        with backend.use("kernels"):
            return ops.add_embeddings(x, positions, condition)

    calls = {"kernel": kernel, "reference": lambda: reference_add_embeddings(x, positions, condition)}
    nbytes = (2 * b * n * width + n * width + b * width) * x.element_size()
    record(benchmark, calls, work="bytes", amount=nbytes, dtype=dtype, iterations=20, shape=case.name, B=b, N=n,
           width=width)
