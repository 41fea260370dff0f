"""Token embeddings plus position rows plus the per-window condition embedding, in one pass.

Reference: `vasa_engine.ops.add_embeddings_reference`: x (B, N, d) + positions[:N] (a (>= N, d) table) +
condition (B, 1, d), the condition being the sum of the step, gaze, distance and emotion embeddings.

Each program takes BLOCK_R consecutive token rows of the flattened (B * N, d) tokens: token row t is window
b = t // N, position n = t % N. The three terms are added in fp32 and rounded once, to the dtype PyTorch's type
promotion gives the reference (the three dtypes promoted together).
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vasa_engine import ops
from vasa_engine.errors import InputError

from ._library import launch, library_op

MAX_WIDTH = 16384
_DTYPES = (torch.float16, torch.bfloat16, torch.float32)


@triton.jit
def _add_embeddings_fwd(X, P, C, Y, rows, n_tokens, width,
                        stride_xb, stride_xn, stride_p, stride_c, stride_y,
                        BLOCK_R: tl.constexpr, BLOCK_D: tl.constexpr):
    row = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    col = tl.program_id(1) * BLOCK_D + tl.arange(0, BLOCK_D)
    ok = (row < rows)[:, None] & (col < width)[None, :]
    b = (row // n_tokens).to(tl.int64)
    n = (row % n_tokens).to(tl.int64)
    x = tl.load(X + (b * stride_xb + n * stride_xn)[:, None] + col[None, :], mask=ok, other=0.0)
    p = tl.load(P + (n * stride_p)[:, None] + col[None, :], mask=ok, other=0.0)
    c = tl.load(C + (b * stride_c)[:, None] + col[None, :], mask=ok, other=0.0)
    y = x.to(tl.float32) + p.to(tl.float32) + c.to(tl.float32)
    tl.store(Y + (row.to(tl.int64) * stride_y)[:, None] + col[None, :], y.to(Y.dtype.element_ty), mask=ok)


def block_config(width: int) -> dict:
    """BLOCK_D: the width rounded up to a power of two, at most 1024 (wider rows take several programs along the
    second grid axis); BLOCK_R rows a program, about 2048 elements a tile (16 values a thread with 4 warps, three
    loads each): widths 256 / 512 give 8 / 4 rows a program, 125 to 250 programs for 1000 tokens."""
    block_d = min(1024, triton.next_power_of_2(width))
    return dict(BLOCK_R=max(1, 2048 // block_d), BLOCK_D=block_d, num_warps=4)


@library_op("add_embeddings", mutates_args=("y",))
def _add_embeddings_op(x: torch.Tensor, positions: torch.Tensor, condition: torch.Tensor, y: torch.Tensor) -> None:
    """Launch into `y` (B, N, d) contiguous; every input with unit stride on the width."""
    bsz, n_tokens, width = x.shape
    rows = bsz * n_tokens
    cfg = block_config(width)
    grid = (triton.cdiv(rows, cfg["BLOCK_R"]), triton.cdiv(width, cfg["BLOCK_D"]))
    launch(_add_embeddings_fwd, grid,
           x, positions, condition, y, rows, n_tokens, width,
           x.stride(0), x.stride(1), positions.stride(0), condition.stride(0) if condition.shape[0] > 1 else 0,
           y.stride(1),
           BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"], num_warps=cfg["num_warps"])


@ops.register_kernel("add_embeddings")
def add_embeddings(x: torch.Tensor, positions: torch.Tensor, condition: torch.Tensor):
    if x.dim() != 3 or positions.dim() != 2 or condition.dim() != 3:
        raise InputError(f"add_embeddings expects x (B, N, d), positions (rows, d), condition (B, 1, d); got "
                         f"{tuple(x.shape)}, {tuple(positions.shape)}, {tuple(condition.shape)}")
    bsz, n_tokens, width = x.shape
    if positions.shape[0] < n_tokens or positions.shape[1] != width:
        raise InputError(f"add_embeddings: the position table {tuple(positions.shape)} has fewer than "
                         f"{n_tokens} rows of width {width}")
    if condition.shape[1] != 1 or condition.shape[2] != width or condition.shape[0] not in (1, bsz):
        raise InputError(f"add_embeddings: condition {tuple(condition.shape)} is not ({bsz}, 1, {width})")
    out_dtype = torch.promote_types(torch.promote_types(x.dtype, positions.dtype), condition.dtype)
    if (any(t.dtype not in _DTYPES for t in (x, positions, condition)) or width > MAX_WIDTH or x.numel() == 0
            or positions.device != x.device or condition.device != x.device):
        return NotImplemented
    x, positions, condition = (t if t.stride(-1) == 1 else t.contiguous() for t in (x, positions, condition))
    y = torch.empty((bsz, n_tokens, width), dtype=out_dtype, device=x.device)
    _add_embeddings_op(x, positions, condition, y)
    return y


_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


def aot_specs() -> list[dict]:
    """Compile specs at the motion transformer's widths (`vasa_engine.kernel_shapes`), every tensor in the model's
    dtype."""
    from vasa_engine.kernel_shapes import add_embeddings_cases, distinct

    specs = []
    for case in distinct(add_embeddings_cases(), "width"):
        width = case.width
        cfg = block_config(width)
        for dtype, ptr in _TRITON_TYPES.items():
            signature = {"X": ptr, "P": ptr, "C": ptr, "Y": ptr}
            for name in ("rows", "n_tokens", "width", "stride_xb", "stride_xn", "stride_p", "stride_c", "stride_y"):
                signature[name] = "i32"
            signature.update(BLOCK_R="constexpr", BLOCK_D="constexpr")
            specs.append(dict(
                name=f"add_embeddings_d{width}_{ptr[1:]}", kernel=_add_embeddings_fwd, signature=signature,
                constexprs=dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_D=cfg["BLOCK_D"]),
                num_warps=cfg["num_warps"], num_stages=1,
                shapes=f"{case.what}; {ptr[1:]}",
            ))
    return specs
