"""The fused embedding sum (kernels/add_embeddings.py): x + positions[:N] + condition, against float64.

In Triton's interpreter on CPU tensors without a GPU, on CUDA in the tests marked gpu; fp32, fp16, bf16 and
mixed dtypes (the result takes PyTorch's promoted dtype, as the reference does). Outputs are allocated NaN-filled.
"""

from __future__ import annotations

import pytest
import torch

from test_kernel_attention import DEVICES, INTERPRET, bound, rel_err
from vasa_engine import backend, ops
from vasa_engine.errors import InputError

DTYPES = [torch.float32, torch.float16, torch.bfloat16]


def reference_add_embeddings(x, positions, condition):
    """The engine's PyTorch reference (two broadcast adds)."""
    return ops.add_embeddings_reference(x, positions, condition)


def make_inputs(b, n, width, rows, dtypes, device, gen, cond_batch=None):
    x = torch.randn(b, n, width, generator=gen).to(dtypes[0]).to(device)
    positions = torch.randn(rows, width, generator=gen).to(dtypes[1]).to(device)
    condition = torch.randn(cond_batch or b, 1, width, generator=gen).to(dtypes[2]).to(device)
    return x, positions, condition


def check(x, positions, condition):
    with backend.use("kernels"):
        out = ops.add_embeddings(x, positions, condition)
    expected = reference_add_embeddings(x, positions, condition)
    assert out.shape == expected.shape and out.dtype == expected.dtype and out.device == x.device
    ref = reference_add_embeddings(x.double().cpu(), positions.double().cpu(), condition.double().cpu())
    err = rel_err(out.cpu(), ref)
    ref_err = 0.0 if out.dtype == torch.float32 else rel_err(expected.cpu(), ref)
    assert err <= bound(out.dtype, ref_err, x.device.type), (err, ref_err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b,n,width", [(1, 1, 48), (2, 7, 200), (3, 63, 48), (1, 130, 512), (2, 13, 1500)])
def test_add_embeddings_matches_reference(nan_empty, device, dtype, b, n, width):
    gen = torch.Generator().manual_seed(b * 10000 + n * 100 + width)
    check(*make_inputs(b, n, width, n + 5, (dtype,) * 3, device, gen))


@pytest.mark.parametrize("device", DEVICES)
def test_add_embeddings_mixed_dtypes_and_broadcast_condition(nan_empty, device):
    gen = torch.Generator().manual_seed(3)
    check(*make_inputs(3, 7, 200, 600, (torch.float16, torch.float32, torch.float16), device, gen, cond_batch=1))
    check(*make_inputs(2, 9, 48, 9, (torch.bfloat16, torch.bfloat16, torch.float32), device, gen))


@pytest.mark.parametrize("device", DEVICES)
def test_add_embeddings_strided_tokens(nan_empty, device):
    gen = torch.Generator().manual_seed(5)
    x, positions, condition = make_inputs(2, 2 * 63, 200, 200, (torch.float32,) * 3, device, gen)
    check(x[:, ::2], positions[::3], condition)


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
def test_add_embeddings_shape_errors_are_input_errors():
    gen = torch.Generator().manual_seed(1)
    x, positions, condition = make_inputs(2, 7, 48, 7, (torch.float32,) * 3, "cpu", gen)
    with backend.use("kernels"), pytest.raises(InputError, match="fewer than"):
        ops.add_embeddings(x, positions[:5], condition)
    with backend.use("kernels"), pytest.raises(InputError, match="condition"):
        ops.add_embeddings(x, positions, condition[:, :, :40])
