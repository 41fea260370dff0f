"""Attention forward, flash-style: softmax(q k^T / sqrt(Dh)) v in one pass over the keys and values.

Reference: `vasa_engine.ops.attention_reference` (PyTorch's scaled_dot_product_attention).

Each program owns BLOCK_M queries of one (batch, head) and walks the keys and values once, BLOCK_N at a time,
with the online-softmax recurrence: for each key block, with scores s (already multiplied by log2(e) / sqrt(Dh),
so that exp2 gives the softmax's exp),

    m_new = max(m, rowmax(s))          running maximum, fp32
    p     = exp2(s - m_new)
    l     = l * exp2(m - m_new) + rowsum(p)
    acc   = acc * exp2(m - m_new) + p v

and the output is acc / l, written in the inputs' dtype. Statistics and the accumulator are fp32. For fp16 and
bf16 inputs p is rounded to the input dtype before the p v product (tensor-core inputs); fp32 inputs use
full-precision fp32 products (input_precision "ieee", no TF32).

Keys past N_k and keys the padding mask drops get a score of -inf before the maximum. The running maximum starts
at a large finite negative value rather than -inf, so a block whose keys are all masked contributes exp2(-inf) = 0
and never computes (-inf) - (-inf). A query row whose keys are ALL masked is a caller error (the operation asks
for at least one key per row); l stays 0 there and the row is written as zeros, as PyTorch's
scaled_dot_product_attention (math path, torch >= 2.5) does, rather than NaN.

Shapes: q (B, H, N_q, Dh), k and v (B, H, N_k, Dh), any strides with unit stride on Dh; Dh a power of two in
{16, 32, 64, 128} (others run the reference). The output is allocated as (B, N_q, H, Dh) memory and returned as
its (B, H, N_q, Dh) view, so the callers' `out.transpose(1, 2).reshape(B, N_q, H * Dh)` is free.
"""

from __future__ import annotations

import math
from typing import Optional

import torch
import triton
import triton.language as tl

from vasa_engine import backend, ops
from vasa_engine.errors import InputError

from ._library import address, launch, library_op

HEAD_DIMS = (16, 32, 64, 128)
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_LOG2E = 1.4426950408889634


@triton.jit
def _attention_fwd(Q, K, V, O, PAD,
                   stride_qb, stride_qh, stride_qn,
                   stride_kb, stride_kh, stride_kn,
                   stride_vb, stride_vh, stride_vn,
                   stride_ob, stride_oh, stride_on,
                   stride_pb,
                   H, N_Q, N_K, qk_scale,
                   HEAD_DIM: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr,
                   HAS_PAD: tl.constexpr, IEEE: tl.constexpr, ALIGN: tl.constexpr):
    pid_m = tl.program_id(0)
    pid_bh = tl.program_id(1)
    b = (pid_bh // H).to(tl.int64)
    h = pid_bh % H

    offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
    offs_d = tl.arange(0, HEAD_DIM)
    offs_n = tl.arange(0, BLOCK_N)
    row_ok = offs_m < N_Q

    q_base = Q + b * stride_qb + h * stride_qh
    k_base = K + b * stride_kb + h * stride_kh
    v_base = V + b * stride_vb + h * stride_vh
    o_base = O + b * stride_ob + h * stride_oh
    q_rows = offs_m * stride_qn
    k_rows = offs_n * stride_kn
    v_rows = offs_n * stride_vn
    o_rows = offs_m * stride_on
    if ALIGN > 1:
        # The wrapper checked that every base is 16-byte aligned and every stride a multiple of ALIGN elements
        # (16 bytes). Saying so lets the compiler use 16-byte loads; ahead-of-time builds get no argument
        # specialization to infer it from.
        q_base = tl.multiple_of(q_base, 16)
        k_base = tl.multiple_of(k_base, 16)
        v_base = tl.multiple_of(v_base, 16)
        o_base = tl.multiple_of(o_base, 16)
        q_rows = tl.multiple_of(q_rows, ALIGN)
        k_rows = tl.multiple_of(k_rows, ALIGN)
        v_rows = tl.multiple_of(v_rows, ALIGN)
        o_rows = tl.multiple_of(o_rows, ALIGN)

    q = tl.load(q_base + q_rows[:, None] + offs_d[None, :], mask=row_ok[:, None], other=0.0)
    # K is read transposed, (HEAD_DIM, BLOCK_N), so the score product is a plain q @ kt.
    kt_ptrs = k_base + k_rows[None, :] + offs_d[:, None]
    v_ptrs = v_base + v_rows[:, None] + offs_d[None, :]
    pad_ptrs = PAD + b * stride_pb + offs_n  # the mask's rows are contiguous (the wrapper sees to it)

    m_i = tl.full((BLOCK_M,), -1.0e30, dtype=tl.float32)
    l_i = tl.zeros((BLOCK_M,), dtype=tl.float32)
    acc = tl.zeros((BLOCK_M, HEAD_DIM), dtype=tl.float32)

    for start_n in range(0, N_K, BLOCK_N):
        cols = start_n + offs_n
        col_ok = cols < N_K
        kt = tl.load(kt_ptrs + start_n * stride_kn, mask=col_ok[None, :], other=0.0)
        if IEEE:
            s = tl.dot(q, kt, input_precision="ieee")
        else:
            s = tl.dot(q, kt)
        keep = col_ok
        if HAS_PAD:
            drop = tl.load(pad_ptrs + start_n, mask=col_ok, other=1)
            keep = keep & (drop == 0)
        s = tl.where(keep[None, :], s * qk_scale, float("-inf"))

        m_new = tl.maximum(m_i, tl.max(s, 1))
        alpha = tl.exp2(m_i - m_new)
        p = tl.exp2(s - m_new[:, None])
        l_i = l_i * alpha + tl.sum(p, 1)
        acc = acc * alpha[:, None]

        v = tl.load(v_ptrs + start_n * stride_vn, mask=col_ok[:, None], other=0.0)
        if IEEE:
            acc = tl.dot(p, v, acc, input_precision="ieee")
        else:
            acc = tl.dot(p.to(v.dtype), v, acc)
        m_i = m_new

    out = acc / tl.where(l_i > 0.0, l_i, 1.0)[:, None]  # acc is 0 where l is 0 (every key masked): zeros
    tl.store(o_base + o_rows[:, None] + offs_d[None, :], out.to(O.dtype.element_ty), mask=row_ok[:, None])


def block_config(head_dim: int, dtype: torch.dtype, has_pad: bool = False) -> dict:
    """Tile sizes and launch settings (checked free of register spills for sm_90a and sm_89).

    fp16 / bf16: BLOCK_M = 64 queries with 4 warps, one Hopper warpgroup: the smallest tile for which Triton
    emits warpgroup MMA (HGMMA) on sm_90a. On the engine's short sequences (N = 125 and 200) it also gives 2 to 4
    query blocks per (batch, head): 16 to 128 programs for the motion transformer (B = 1..8, 8 heads), 48 to 384
    for the audio encoder (12 heads), against an H100's 132 SMs; bigger query tiles would leave more SMs idle. BLOCK_N = 64 keys: N = 125 is two key blocks, N = 200
    four. BLOCK_N = 32 with a padding mask or at Dh = 128: those variants reach sm_89's 255-register cap at 64
    (with a spill under Triton 3.6); at 32 they take 97 to 142 (padded, Dh = 64). Two stages let the next key /
    value block load while this one computes.

    fp32 (input_precision "ieee": FMA products, no tensor cores): an FMA dot holds a whole row of q and a whole
    column of k^T per thread, so the tiles are small: 32 x 16 with 4 warps (8 at Dh = 128), one stage.
    """
    if dtype == torch.float32:
        return dict(BLOCK_M=32, BLOCK_N=16, num_warps=8 if head_dim >= 128 else 4, num_stages=1)
    return dict(BLOCK_M=64, BLOCK_N=32 if (has_pad or head_dim >= 128) else 64, num_warps=4, num_stages=2)


def _check(q, k, v, key_padding_mask):
    if q.dim() != 4 or k.dim() != 4 or v.dim() != 4:
        raise InputError(f"attention expects (B, H, N, Dh) tensors, got shapes {tuple(q.shape)}, "
                         f"{tuple(k.shape)}, {tuple(v.shape)}")
    b, h, _, dh = q.shape
    if k.shape != v.shape or k.shape[0] != b or k.shape[1] != h or k.shape[3] != dh:
        raise InputError(f"attention: q {tuple(q.shape)}, k {tuple(k.shape)} and v {tuple(v.shape)} do not match")
    if key_padding_mask is not None and tuple(key_padding_mask.shape) != (b, k.shape[2]):
        raise InputError(f"attention: key_padding_mask has shape {tuple(key_padding_mask.shape)}, expected "
                         f"{(b, k.shape[2])}")


def _alignment(*tensors) -> int:
    """ALIGN: 16 bytes in elements when every tensor's base and non-unit strides are 16-byte multiples, else 1."""
    elems = 16 // tensors[0].element_size()
    for t in tensors:
        if address(t) % 16 or any(st % elems for st in t.stride()[:3]):
            return 1
    return elems


@library_op("attention", mutates_args=("out",))
def _attention_op(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, pad: Optional[torch.Tensor],
                  out: torch.Tensor) -> None:
    """Launch into `out`, the (B, N_q, H, Dh) memory of the result; pad: the (B, N_k) uint8 padding mask with
    contiguous rows, or None."""
    b, h, n_q, dh = q.shape
    n_k = k.shape[2]
    cfg = block_config(dh, q.dtype, pad is not None)
    grid = (triton.cdiv(n_q, cfg["BLOCK_M"]), b * h)
    launch(_attention_fwd, grid,
           q, k, v, out, q if pad is None else pad,  # without a mask PAD is never read (HAS_PAD is False)
           q.stride(0), q.stride(1), q.stride(2),
           k.stride(0), k.stride(1), k.stride(2),
           v.stride(0), v.stride(1), v.stride(2),
           out.stride(0), out.stride(2), out.stride(1),  # out is (B, N_q, H, Dh): strides of batch, head, query
           0 if pad is None else pad.stride(0),
           h, n_q, n_k, _LOG2E / math.sqrt(dh),
           HEAD_DIM=dh, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"],
           HAS_PAD=pad is not None, IEEE=q.dtype == torch.float32,
           ALIGN=_alignment(q, k, v, out),
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


@ops.register_kernel("attention")
def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_padding_mask: torch.Tensor | None = None):
    _check(q, k, v, key_padding_mask)
    b, h, n_q, dh = q.shape
    n_k = k.shape[2]
    if (dh not in HEAD_DIMS or q.dtype not in _DTYPES or k.dtype != q.dtype or v.dtype != q.dtype
            or not (q.device == k.device == v.device) or n_q == 0 or n_k == 0 or b * h == 0):
        return NotImplemented
    if q.dtype == torch.bfloat16 and backend.interpreting():
        return NotImplemented  # Triton's interpreter computes bf16 dot products wrongly (numpy has no bf16)
    if key_padding_mask is not None and (key_padding_mask.dtype != torch.bool
                                         or key_padding_mask.device != q.device):
        return NotImplemented
    q, k, v = (t if t.stride(3) == 1 else t.contiguous() for t in (q, k, v))
    pad = None
    if key_padding_mask is not None:
        pad = key_padding_mask.view(torch.uint8)
        if pad.stride(1) != 1:
            pad = pad.contiguous()
    out = torch.empty((b, n_q, h, dh), dtype=q.dtype, device=q.device)
    _attention_op(q, k, v, pad, out)
    return out.transpose(1, 2)


# ------------------------------------------------------------------------------------------------ AOT specs

_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def aot_specs() -> list[dict]:
    """Compile specs of the kernel at the engine's real shapes (`vasa_engine.kernel_shapes`: one per head size,
    length and masking), for fp16, bf16 and fp32 inputs."""
    from vasa_engine.kernel_shapes import attention_cases, distinct

    specs = []
    for case in distinct(attention_cases(), "head_dim", "tokens", "padded"):
        dh, n, has_pad = case.head_dim, case.tokens, case.padded
        for dtype, ptr in _TRITON_TYPES.items():
            cfg = block_config(dh, dtype, has_pad)
            signature = {name: ptr for name in ("Q", "K", "V", "O")}
            signature["PAD"] = "*u8" if has_pad else ptr
            for name in ("stride_qb", "stride_qh", "stride_qn", "stride_kb", "stride_kh", "stride_kn",
                         "stride_vb", "stride_vh", "stride_vn", "stride_ob", "stride_oh", "stride_on",
                         "stride_pb", "H", "N_Q", "N_K"):
                signature[name] = "i32"
            signature["qk_scale"] = "fp32"
            constexprs = dict(HEAD_DIM=dh, BLOCK_M=cfg["BLOCK_M"], BLOCK_N=cfg["BLOCK_N"], HAS_PAD=has_pad,
                              IEEE=dtype == torch.float32, ALIGN=16 // torch.tensor([], dtype=dtype).element_size())
            for name in constexprs:
                signature[name] = "constexpr"
            specs.append(dict(
                name=f"attention_d{dh}_n{n}{'_pad' if has_pad else ''}_{ptr[1:]}",
                kernel=_attention_fwd, signature=signature, constexprs=constexprs,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                shapes=f"{case.what}; Dh = {dh}, {ptr[1:]}",
                expect_hgmma=dtype != torch.float32,  # fp16 / bf16 tiles are wgmma-sized on sm_90a
            ))
    return specs
