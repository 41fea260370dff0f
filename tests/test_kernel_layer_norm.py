"""The fused residual add + LayerNorm kernel (kernels/add_layer_norm.py) against F.layer_norm in float64.

In Triton's interpreter on CPU tensors without a GPU, on CUDA in the tests marked gpu; fp32, fp16 and bf16 (this
kernel has no dot product, so the interpreter runs bf16 too). Bounds: fp32 <= 1e-5 relative error against fp64;
fp16 / bf16 at most twice the error of the reference computed in that dtype, plus a small floor. Outputs are
allocated NaN-filled. The baselines here are shared with benches/test_bench_layer_norm.py; the engine's real
widths come from vasa_engine.kernel_shapes.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from test_kernel_attention import DEVICES, INTERPRET, bound, rel_err
from vasa_engine import backend, ops
from vasa_engine.errors import InputError
from vasa_engine.kernel_shapes import add_layer_norm_cases, distinct

DTYPES = [torch.float32, torch.float16, torch.bfloat16]

# Awkward widths, then the engine's real ones, each with an awkward number of rows.
CASES = [((1,), 48), ((7,), 200), ((3, 130), 48)] + list(zip([(1, 130), (2, 7), (2, 63)], (
    case.width for case in distinct(add_layer_norm_cases(), "width"))))


# Baselines the benchmarks time against.
def reference_add_layer_norm(x, residual, weight, bias, eps=1e-5):
    """The engine's PyTorch reference."""
    return ops.add_layer_norm_reference(x, residual, weight, bias, eps)


def torch_add_layer_norm(x, residual, weight, bias, eps=1e-5):
    """PyTorch's own LayerNorm of the sum (two kernels: the add, then the norm)."""
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)


def make_inputs(lead, width, dtype, device, gen, param_dtype=None):
    x = torch.randn(*lead, width, generator=gen).to(dtype).to(device)
    residual = torch.randn(*lead, width, generator=gen).mul_(2.0).add_(0.5).to(dtype).to(device)
    param_dtype = param_dtype or dtype
    weight = torch.randn(width, generator=gen).to(param_dtype).to(device)
    bias = torch.randn(width, generator=gen).to(param_dtype).to(device)
    return x, residual, weight, bias


def run_kernel(x, residual, weight, bias, eps):
    norm = torch.nn.LayerNorm(weight.shape[0], eps=eps, bias=bias is not None, device=x.device,
                              dtype=weight.dtype)
    with torch.no_grad():
        norm.weight.copy_(weight)
        if bias is not None:
            norm.bias.copy_(bias)
    with backend.use("kernels"):
        return ops.add_layer_norm(x, residual, norm)


def check(x, residual, weight, bias, eps=1e-5):
    out = run_kernel(x, residual, weight, bias, eps)
    assert out.shape == x.shape and out.dtype == x.dtype and out.device == x.device
    ref = reference_add_layer_norm(*(t.double().cpu() if t is not None else None
                                     for t in (x, residual, weight, bias)), eps)
    err = rel_err(out.cpu(), ref)
    ref_err = 0.0
    if x.dtype != torch.float32:
        ref_err = rel_err(reference_add_layer_norm(x, residual, weight.to(x.dtype),
                                                   None if bias is None else bias.to(x.dtype), eps).cpu(), ref)
    assert err <= bound(x.dtype, ref_err, x.device.type), (err, ref_err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("lead,width", CASES, ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_add_layer_norm_matches_reference(nan_empty, device, dtype, lead, width):
    gen = torch.Generator().manual_seed(width * 1000 + sum(lead))
    check(*make_inputs(lead, width, dtype, device, gen))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_add_layer_norm_fp32_parameters(nan_empty, device, dtype):
    """Half-precision activations with fp32 norm parameters (read as fp32)."""
    gen = torch.Generator().manual_seed(9)
    check(*make_inputs((5, 13), 200, dtype, device, gen, param_dtype=torch.float32))


@pytest.mark.parametrize("device", DEVICES)
def test_add_layer_norm_no_bias_strided_and_eps(nan_empty, device):
    gen = torch.Generator().manual_seed(4)
    x, residual, weight, _ = make_inputs((3, 2 * 63), 200, torch.float32, device, gen)
    # strided rows (every other token) and a large eps
    check(x[:, ::2], residual[:, 1::2], weight, None, eps=0.5)


@pytest.mark.parametrize("device", DEVICES)
def test_add_layer_norm_large_offset_rows(nan_empty, device):
    """Rows with a large common offset: the variance is taken around the mean, not as E[x^2] - E[x]^2."""
    gen = torch.Generator().manual_seed(8)
    x, residual, weight, bias = make_inputs((9,), 256, torch.float32, device, gen)
    check(x + 100.0, residual, weight, bias)


@pytest.mark.skipif(not INTERPRET, reason="CPU tensors need TRITON_INTERPRET=1")
def test_add_layer_norm_errors_and_fallbacks():
    from vasa_engine.kernels import add_layer_norm as kernel

    gen = torch.Generator().manual_seed(1)
    x, residual, weight, bias = make_inputs((4,), 48, torch.float32, "cpu", gen)
    with pytest.raises(InputError, match="differ in shape"):
        kernel.add_layer_norm(x, residual[:2], weight, bias, 1e-5)
    with pytest.raises(InputError, match="width"):
        kernel.add_layer_norm(x, residual, weight[:40], bias[:40], 1e-5)
    assert kernel.add_layer_norm(x.double(), residual.double(), weight, bias, 1e-5) is NotImplemented
    wide = torch.randn(2, kernel.MAX_WIDTH + 1, generator=gen)
    assert kernel.add_layer_norm(wide, wide, torch.ones(kernel.MAX_WIDTH + 1), None, 1e-5) is NotImplemented
