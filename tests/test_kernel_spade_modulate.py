"""Instance norm + SPADE modulation + LeakyReLU kernel (kernels/spade_modulate.py) against the float64 reference.

Inputs have a large mean and a small spread (mean 50, std 0.1) so that a one-pass sum / sum-of-squares variance
would fail. On CPU tensors the kernel runs in Triton's interpreter; the same cases run on CUDA in the GPU-marked
variants. Outputs are pre-filled with NaN. The interpreter converts fp32 to bf16 by truncation (twice the
rounding error of the GPU's round-to-nearest), so bf16 bounds are looser there.
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import KERNEL_DEVICES, rel_err
from vasa_engine import backend, ops
from vasa_engine.kernel_shapes import spade_cases

sm = pytest.importorskip("vasa_engine.kernels.spade_modulate")


CUDA = torch.cuda.is_available()
DEVICES = KERNEL_DEVICES
FP32_BOUND = 1e-6
FLOOR = 1e-6
# Small launch plans so the interpreter reaches every path at tiny sizes: the split plan with one chunk, and with
# several chunks of several tiles (merge kernel, partial last tile and chunk).
PLANS = {
    "default": {},
    "split_one_chunk": dict(fused_max_hw=0, target_programs=1),
    "split_chunks": dict(fused_max_hw=0, block_p=16, target_programs=32),
}


def pytorch_spade(x, gamma, beta, negative_slope=None, eps=1e-5):
    """PyTorch's own ops, the baseline of the kernel (also imported by the benchmarks)."""
    out = F.instance_norm(x, eps=eps) * (1 + gamma) + beta
    return out if negative_slope is None else F.leaky_relu(out, negative_slope)


def inputs(shape, device, dtype=torch.float32, channels_last=False, mean=50.0, std=0.1, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(*shape, generator=gen, dtype=torch.float64) * std + mean
    # per-channel offsets too, so channels differ
    x = x + torch.randn(1, shape[1], 1, 1, generator=gen, dtype=torch.float64)
    gamma = torch.randn(*shape, generator=gen, dtype=torch.float64) * 0.5
    beta = torch.randn(*shape, generator=gen, dtype=torch.float64)
    fmt = torch.channels_last if channels_last else torch.contiguous_format
    return [t.to(dtype).to(device).contiguous(memory_format=fmt) for t in (x, gamma, beta)]


def nan_like(x: torch.Tensor) -> torch.Tensor:
    return torch.full_like(x, float("nan"))  # keeps x's memory format


def truth(x, gamma, beta, slope):
    return ops.spade_modulate_reference(x.double().cpu(), gamma.double().cpu(), beta.double().cpu(), slope)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("plan", list(PLANS))
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("slope", [None, 0.2])
@pytest.mark.parametrize("shape", [(2, 3, 5, 7), (1, 5, 9, 11)])
def test_matches_reference_fp32_large_mean(device, plan, channels_last, slope, shape):
    x, gamma, beta = inputs(shape, device, channels_last=channels_last)
    out = nan_like(x)
    got = sm.spade_modulate(x, gamma, beta, slope, out=out, **PLANS[plan])
    assert got is out
    err = rel_err(got.cpu(), truth(x, gamma, beta, slope))
    assert err <= FP32_BOUND, err


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(device, channels_last, dtype):
    """Bound: about 2x the error of the fp32-computed reference rounded to the dtype (+ a floor)."""
    x, gamma, beta = inputs((2, 5, 7, 9), device, dtype=dtype, channels_last=channels_last)
    exact = truth(x, gamma, beta, 0.2)
    got = sm.spade_modulate(x, gamma, beta, 0.2, out=nan_like(x))
    ref = ops.spade_modulate_reference(x.float(), gamma.float(), beta.float(), 0.2).to(dtype)
    slack = 3.0 if (dtype == torch.bfloat16 and device == "cpu") else 2.0
    err, ref_err = rel_err(got.cpu(), exact), rel_err(ref.cpu(), exact)
    assert got.dtype == dtype
    assert err <= slack * ref_err + FLOOR, (err, ref_err)


@pytest.mark.parametrize("device", DEVICES)
def test_dispatch_layouts_and_fallback(device):
    x, gamma, beta = inputs((2, 4, 6, 5), device)
    with backend.use("kernels"):
        assert ops.registered_kernels()["spade_modulate"] is sm.spade_modulate
        got = ops.spade_modulate(x, gamma, beta, 0.2)
        assert got.is_contiguous()
        xc, gc, bc = (t.contiguous(memory_format=torch.channels_last) for t in (x, gamma, beta))
        got_cl = ops.spade_modulate(xc, gc, bc, 0.2)
        assert got_cl.is_contiguous(memory_format=torch.channels_last)
    exact = truth(x, gamma, beta, 0.2)
    assert rel_err(got.cpu(), exact) <= FP32_BOUND
    assert rel_err(got_cl.cpu(), exact) <= FP32_BOUND
    # mixed layouts, broadcast gamma, float64: the kernel declines and the reference runs
    assert sm.spade_modulate(x, gc, beta) is NotImplemented
    assert sm.spade_modulate(x, gamma[:, :, :1], beta) is NotImplemented
    assert sm.spade_modulate(x.double(), gamma.double(), beta.double()) is NotImplemented
    with backend.use("kernels"):
        mixed = ops.spade_modulate(x, gc, beta, 0.2)
    assert rel_err(mixed.cpu(), exact) <= 1e-4  # torch's fp32 instance norm itself loses ~1e-5 at mean 50


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("channels_last", [False, True], ids=["nchw", "nhwc"])
@pytest.mark.parametrize("case", spade_cases(batches=(1,)), ids=lambda c: c.name)
def test_decoder_shapes_on_gpu(dtype, channels_last, case):
    x, gamma, beta = inputs(case.shape, "cuda", dtype=dtype, channels_last=channels_last)
    exact = truth(x, gamma, beta, 0.2)
    got = sm.spade_modulate(x, gamma, beta, 0.2, out=nan_like(x))
    ref = ops.spade_modulate_reference(x.float(), gamma.float(), beta.float(), 0.2).to(dtype)
    bound = FP32_BOUND if dtype == torch.float32 else 2 * rel_err(ref.cpu(), exact) + FLOOR
    assert rel_err(got.cpu(), exact) <= bound


def test_plans():
    """The decoder's shapes: NCHW planes up to FUSED_MAX_HW use one tile, every split plan has enough programs."""
    for case in spade_cases():
        b, c, h, w = case.shape
        for channels_last in (False, True):
            cfg = sm.plan(case.shape, channels_last)
            if not channels_last and h * w <= sm.FUSED_MAX_HW:
                assert cfg["kind"] == "one_tile"
                continue
            assert cfg["kind"] == "split"
            assert cfg["NCHUNK"] * cfg["CHUNK"] >= h * w > (cfg["NCHUNK"] - 1) * cfg["CHUNK"]
            assert cfg["CHUNK"] % cfg["BLOCK_P"] == 0
            assert cfg["rows"] * cfg["NCHUNK"] >= min(sm.TARGET_PROGRAMS // 2, b * c * h * w // 8192)


def test_aot_specs_cover_dtypes():
    specs = sm.aot_specs()
    kinds = {(s["name"].split("_")[1], s["signature"].get("X", "*fp32")) for s in specs}
    for kind in ("one", "stats", "apply"):
        assert {t for k, t in kinds if k == kind} == {"*fp16", "*bf16", "*fp32"}
    assert any(s["name"].startswith("spade_merge") for s in specs)
    for s in specs:
        assert list(s["signature"]) == s["kernel"].arg_names


@pytest.mark.skipif(not backend.interpreting() and not CUDA, reason="needs CUDA or Triton's interpreter")
def test_spade_generator_fixture_with_kernels():
    """The public reference's outputs, with every registered kernel on (fp32, CPU tensors in the interpreter)."""
    from safetensors.torch import load_file

    from conftest import require_parity_dir
    from vasa_engine.compat import run_fixture

    path = require_parity_dir() / "lp_spade_generator.safetensors"
    expected = {k.removeprefix("outputs."): v for k, v in load_file(str(path)).items() if k.startswith("outputs.")}
    torch.manual_seed(0)
    with backend.use("kernels"):
        out = run_fixture(path)
    assert set(out) >= set(expected)
    for key, value in expected.items():
        err = rel_err(out[key], value)
        assert err <= 1e-5, f"lp_spade_generator.{key}: relative error {err:.3e}"
