"""Residual add fused with LayerNorm: y = LayerNorm(x + residual) * weight + bias over the last axis.

Reference: `vasa_engine.ops.add_layer_norm_reference` (F.layer_norm of x + residual).

One pass over memory: each program loads BLOCK_R rows of x and of the residual, sums them in fp32, takes the
mean and the biased variance of the sum in fp32 (two-pass over the registers, not E[x^2] - E[x]^2), and writes
(sum - mean) * rstd * weight + bias in the input dtype. Reads 2 rows, writes 1: the unfused path reads 3 and
writes 2.

Widths up to MAX_WIDTH run here (a row lives in registers; the engine's widths are 256, 512 and 768), wider rows
run the reference. x and the residual must share a dtype (fp16, bf16 or fp32); weight and bias may be any float
dtype (they are read as fp32); bias may be None.
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vasa_engine import ops
from vasa_engine.errors import InputError

from ._library import address, launch, library_op

MAX_WIDTH = 8192
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _add_layer_norm_fwd(X, R, W, B, Y, rows, width, stride_x, stride_r, stride_y, eps,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr, HAS_BIAS: tl.constexpr, ALIGN: tl.constexpr):
    first = (tl.program_id(0) * BLOCK_R).to(tl.int64)
    local = tl.arange(0, BLOCK_R)
    col = tl.arange(0, BLOCK_D)
    row_ok = first + local < rows
    col_ok = col < width
    ok = row_ok[:, None] & col_ok[None, :]

    x_base = X + first * stride_x
    r_base = R + first * stride_r
    y_base = Y + first * stride_y
    x_rows = local * stride_x
    r_rows = local * stride_r
    y_rows = local * stride_y
    if ALIGN > 1:
        # The wrapper checked: 16-byte aligned bases, row strides multiples of ALIGN elements (16 bytes). Lets
        # ahead-of-time builds, which get no argument specialization, use 16-byte loads and stores too.
        x_base = tl.multiple_of(x_base, 16)
        r_base = tl.multiple_of(r_base, 16)
        y_base = tl.multiple_of(y_base, 16)
        x_rows = tl.multiple_of(x_rows, ALIGN)
        r_rows = tl.multiple_of(r_rows, ALIGN)
        y_rows = tl.multiple_of(y_rows, ALIGN)

    x = tl.load(x_base + x_rows[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
    r = tl.load(r_base + r_rows[:, None] + col[None, :], mask=ok, other=0.0).to(tl.float32)
    h = x + r
    mean = tl.sum(h, 1) / width
    centred = tl.where(ok, h - mean[:, None], 0.0)
    var = tl.sum(centred * centred, 1) / width
    rstd = 1.0 / tl.sqrt(var + eps)

    w = tl.load(W + col, mask=col_ok, other=0.0).to(tl.float32)
    y = centred * rstd[:, None] * w[None, :]
    if HAS_BIAS:
        y += tl.load(B + col, mask=col_ok, other=0.0).to(tl.float32)[None, :]
    tl.store(y_base + y_rows[:, None] + col[None, :], y.to(Y.dtype.element_ty), mask=ok)


def block_config(width: int) -> dict:
    """BLOCK_D: the width rounded up to a power of two (one row per tile row). BLOCK_R rows per program so that a
    tile holds about 4096 elements (16 to 32 fp32 values a thread for each of x and the residual with 4 to 8
    warps: enough bytes in flight per thread to hide memory latency, few enough registers): widths 256/512/768
    give 16/8/4 rows per program, i.e. 63 to 400 programs for the engine's 1000 to 1600 rows."""
    block_d = triton.next_power_of_2(width)
    block_r = max(1, 4096 // block_d)
    num_warps = 8 if block_d >= 4096 else 4
    return dict(BLOCK_R=block_r, BLOCK_D=block_d, num_warps=num_warps)


def _rows(t: torch.Tensor, width: int) -> torch.Tensor:
    """t as a (rows, width) view with unit stride on the width (a copy only if no such view exists)."""
    t2 = t.reshape(-1, width)
    return t2 if t2.stride(1) == 1 else t2.contiguous()


def alignment(*tensors: torch.Tensor) -> int:
    """16 bytes in elements when every tensor's base and row stride are multiples of 16 bytes, else 1."""
    elems = 16 // tensors[0].element_size()
    for t in tensors:
        if address(t) % 16 or t.element_size() != tensors[0].element_size() or t.stride(0) % elems:
            return 1
    return elems


@library_op("add_layer_norm", mutates_args=("y",))
def _add_layer_norm_op(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: Optional[torch.Tensor],
                       y: torch.Tensor, eps: float) -> None:
    """Launch into `y`; x, residual and y are (rows, width) with unit stride on the width."""
    rows, width = x.shape
    cfg = block_config(width)
    launch(_add_layer_norm_fwd, (triton.cdiv(rows, cfg["BLOCK_R"]),),
           x, residual, weight, bias if bias is not None else weight, y, rows, width,
           x.stride(0), residual.stride(0), y.stride(0), eps,
           BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], HAS_BIAS=bias is not None,
           ALIGN=alignment(x, residual, y), num_warps=cfg["num_warps"])


@ops.register_kernel("add_layer_norm")
def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                   eps: float):
    if x.shape != residual.shape:
        raise InputError(f"add_layer_norm: x {tuple(x.shape)} and residual {tuple(residual.shape)} differ in shape")
    if weight is None or weight.dim() != 1:
        return NotImplemented
    width = weight.shape[0]
    if x.dim() == 0 or x.shape[-1] != width or (bias is not None and tuple(bias.shape) != (width,)):
        raise InputError(f"add_layer_norm: x {tuple(x.shape)} does not end in the norm's width {width}")
    tensors = (x, residual, weight) + ((bias,) if bias is not None else ())
    if (x.dtype not in _DTYPES or residual.dtype != x.dtype or width > MAX_WIDTH or x.numel() == 0
            or any(t.device != x.device for t in tensors) or not all(t.is_floating_point() for t in tensors)):
        return NotImplemented
    x2, r2 = _rows(x, width), _rows(residual, width)
    y = torch.empty(x.shape, dtype=x.dtype, device=x.device)
    _add_layer_norm_op(x2, r2, weight, bias, y.view(x2.shape[0], width), float(eps))
    return y


_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
_ELEMENT_SIZE = {torch.float16: 2, torch.bfloat16: 2, torch.float32: 4}


def aot_specs() -> list[dict]:
    """Compile specs at the engine's real widths (`vasa_engine.kernel_shapes`), fp16, bf16 and fp32 activations
    with fp32 norm parameters (and with parameters in the activations' dtype, as in a model cast whole to fp16 /
    bf16)."""
    from vasa_engine.kernel_shapes import add_layer_norm_cases, distinct

    specs = []
    for case in distinct(add_layer_norm_cases(), "width"):
        width = case.width
        cfg = block_config(width)
        for dtype, ptr in _TRITON_TYPES.items():
            for param in sorted({ptr, "*fp32"}):
                signature = {"X": ptr, "R": ptr, "W": param, "B": param, "Y": ptr, "rows": "i32", "width": "i32",
                             "stride_x": "i32", "stride_r": "i32", "stride_y": "i32", "eps": "fp32",
                             "BLOCK_R": "constexpr", "BLOCK_D": "constexpr", "HAS_BIAS": "constexpr",
                             "ALIGN": "constexpr"}
                specs.append(dict(
                    name=f"add_layer_norm_d{width}_{ptr[1:]}_w{param[1:]}", kernel=_add_layer_norm_fwd,
                    signature=signature,
                    constexprs=dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], HAS_BIAS=True,
                                    ALIGN=16 // _ELEMENT_SIZE[dtype]),
                    num_warps=cfg["num_warps"], num_stages=1,
                    shapes=f"{case.what}; {ptr[1:]} activations, {param[1:]} weight and bias",
                ))
    return specs
