"""Trilinear 5-D grid sample on a channels-last feature volume.

Reference: `vasa_engine.ops.grid_sample_3d_reference` (torch.nn.functional.grid_sample, mode "bilinear" on a 5-D
input, i.e. trilinear), for padding "zeros" and "border" and both align_corners settings.

Layout. The volume (B, C, D, H, W) is read channels-last (memory order B, D, H, W, C): each output voxel reads 8
corners, and each corner is C contiguous values, one vector load per corner. A volume that is not already
contiguous in torch.channels_last_3d is copied to that layout by the wrapper first: one extra read and write of
the whole volume (for the dense motion network's (B*22, 4, 16, 64, 64) fp16 warps, 11.5 MB a frame written and
as much read), so callers should produce or keep their volumes channels-last. The output (B, C, d, h, w) is allocated channels-last
too (memory order B, d, h, w, C), so every program writes whole contiguous rows, and the next op can consume it
in that layout. The grid (B, d, h, w, 3) is used in fp32: a grid of another dtype is converted (exactly, for
fp16 / bf16) and a non-contiguous grid is made contiguous by the wrapper.

Index arithmetic is 32-bit where it can be: the output voxel index, and the element offsets within one batch item
of the volume (the product D * H * W * C included); batch offsets, grid offsets and output offsets are 64-bit. The
wrapper declines shapes past that (`offsets_fit_int32`), and the reference runs them.

Math per output voxel, per axis (x -> W, y -> H, z -> D), in fp32, in torch's order:

    align_corners True:   i = ((g + 1) / 2) * (size - 1)
    align_corners False:  i = ((g + 1) * size - 1) / 2
    border padding:       i = clip(i, 0, size - 1)   (before the weights, as torch does)
    i0 = floor(i), i1 = i0 + 1, w1 = i - i0, w0 = 1 - w1

and the output is sum over the 8 corners of wx * wy * wz * volume[corner], a corner outside the volume adding 0
(in border mode only the "+1" corner at the last index can be outside, with weight 0). Accumulation is fp32 and
the result is written in the volume's dtype.

Non-finite coordinates. Zeros padding: a NaN or infinite coordinate contributes nothing (output 0), as in torch;
coordinates are clamped to [-2, size + 1] before the integer conversion, which changes no result (every corner
of a coordinate outside [-1, size] is outside the volume) and keeps the conversion defined. Border padding: +inf
goes to size - 1 and -inf to 0, as in torch; NaN goes to 0 (the first voxel), which is what torch's CUDA kernel
does (its fmax / fmin clip drops the NaN). torch's CPU kernel sends NaN to size - 1 instead: the devices disagree,
and this kernel follows the CUDA one on every device.

Programs: one per BLOCK_V consecutive output voxels (over B * d * h * w), each with all channels as a
(BLOCK_V, BLOCK_C) tile, BLOCK_C = C rounded up to a power of two (masked). C is a compile-time constant (4 and 32
in the engine), so the compiler knows every corner row starts at a multiple of C elements and vectorizes the
corner loads and output stores.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vasa_engine import ops
from vasa_engine.errors import InputError

from ._library import launch, library_op

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}
PADDING_MODES = ("zeros", "border")
INT32_MAX = 2**31 - 1


@triton.jit
def _axis(g, size, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """Grid coordinate g (fp32) along an axis of `size` voxels -> (i0, i0 + 1, w0, w1, ok0, ok1)."""
    sizef = size * 1.0
    if ALIGN_CORNERS:
        i = ((g + 1.0) / 2.0) * (sizef - 1.0)
    else:
        i = ((g + 1.0) * sizef - 1.0) / 2.0
    if BORDER:
        i = tl.where(i != i, 0.0, i)
        i = tl.minimum(tl.maximum(i, 0.0), sizef - 1.0)
    else:
        i = tl.where(i != i, -2.0, i)
        i = tl.minimum(tl.maximum(i, -2.0), sizef + 1.0)
    i0f = tl.floor(i)
    w1 = i - i0f
    w0 = 1.0 - w1
    i0 = i0f.to(tl.int32)
    i1 = i0 + 1
    ok0 = (i0 >= 0) & (i0 < size)
    ok1 = (i1 >= 0) & (i1 < size)
    return i0, i1, w0, w1, ok0, ok1


@triton.jit
def _corner(base, r, x, ok, w, cols, cmask, C: tl.constexpr):
    """One corner's weighted contribution, (BLOCK_V, BLOCK_C) fp32: the C channels of voxel r + x (channels-last,
    a vector load each), times its weight w; 0 where `ok` is false."""
    v = tl.load(base + ((r + x) * C)[:, None] + cols, mask=ok[:, None] & cmask, other=0.0)
    return v.to(tl.float32) * w[:, None]


@triton.jit
def _trilinear(base, gx, gy, gz, v_ok, ID, IH, IW, cols, cmask,
               C: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr):
    """(BLOCK_V, BLOCK_C) fp32: the channels-last volume at `base` (a pointer, or one a voxel) sampled trilinearly at
    grid coordinates (gx, gy, gz), torch's math and corner order; rows where v_ok is false are 0."""
    x0, x1, wx0, wx1, okx0, okx1 = _axis(gx, IW, ALIGN_CORNERS, BORDER)
    y0, y1, wy0, wy1, oky0, oky1 = _axis(gy, IH, ALIGN_CORNERS, BORDER)
    z0, z1, wz0, wz1, okz0, okz1 = _axis(gz, ID, ALIGN_CORNERS, BORDER)
    okx0 = okx0 & v_ok
    okx1 = okx1 & v_ok
    # Voxel offsets (in voxels; times C in _corner) of the two z-planes and two y-rows.
    r00 = (z0 * IH + y0) * IW
    r01 = (z0 * IH + y1) * IW
    r10 = (z1 * IH + y0) * IW
    r11 = (z1 * IH + y1) * IW
    # Corner order as torch's: (z0, y0, x0), (z0, y0, x1), (z0, y1, x0), (z0, y1, x1), then z1.
    acc = _corner(base, r00, x0, okx0 & oky0 & okz0, wx0 * wy0 * wz0, cols, cmask, C)
    acc += _corner(base, r00, x1, okx1 & oky0 & okz0, wx1 * wy0 * wz0, cols, cmask, C)
    acc += _corner(base, r01, x0, okx0 & oky1 & okz0, wx0 * wy1 * wz0, cols, cmask, C)
    acc += _corner(base, r01, x1, okx1 & oky1 & okz0, wx1 * wy1 * wz0, cols, cmask, C)
    acc += _corner(base, r10, x0, okx0 & oky0 & okz1, wx0 * wy0 * wz1, cols, cmask, C)
    acc += _corner(base, r10, x1, okx1 & oky0 & okz1, wx1 * wy0 * wz1, cols, cmask, C)
    acc += _corner(base, r11, x0, okx0 & oky1 & okz1, wx0 * wy1 * wz1, cols, cmask, C)
    acc += _corner(base, r11, x1, okx1 & oky1 & okz1, wx1 * wy1 * wz1, cols, cmask, C)
    return acc


@triton.jit
def _grid_sample_3d_fwd(VOL, GRID, OUT,
                        N, OUT_SPATIAL, ID, IH, IW,
                        C: tl.constexpr, ALIGN_CORNERS: tl.constexpr, BORDER: tl.constexpr,
                        BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    pid = tl.program_id(0)
    offs_v = pid * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < N
    offs_c = tl.arange(0, BLOCK_C)
    c_ok = offs_c < C

    g_ptr = GRID + offs_v.to(tl.int64) * 3
    gx = tl.load(g_ptr, mask=v_ok, other=0.0)
    gy = tl.load(g_ptr + 1, mask=v_ok, other=0.0)
    gz = tl.load(g_ptr + 2, mask=v_ok, other=0.0)

    b = offs_v // OUT_SPATIAL
    base = VOL + (b.to(tl.int64) * (ID * IH * IW * C))[:, None]
    cols = offs_c[None, :]
    cmask = c_ok[None, :]
    acc = _trilinear(base, gx, gy, gz, v_ok, ID, IH, IW, cols, cmask, C, ALIGN_CORNERS, BORDER)

    o_ptr = OUT + offs_v.to(tl.int64)[:, None] * C + cols
    tl.store(o_ptr, acc.to(OUT.dtype.element_ty), mask=v_ok[:, None] & cmask)


def block_config(channels: int) -> dict:
    """Tile and launch settings for C channels.

    A program owns a (BLOCK_V, BLOCK_C) tile of 1024 output elements with 4 warps (8 a thread). C = 4: 256
    voxels a program, two voxels a thread, each corner one 8-byte (fp16) or 16-byte (fp32) vector load, 16 loads
    in flight a thread; 55 registers on sm_90a (512 voxels took 95 and only halves the occupancy). C = 32: 32
    voxels a program, 8 channels (one 16-byte fp16 vector) a thread, 44 registers. The 22 warps at B = 8 are
    45,056 programs, the full warp at B = 8 16,384. No loop, so no software pipelining (num_stages 1).
    """
    block_c = triton.next_power_of_2(max(1, channels))
    return dict(BLOCK_C=block_c, BLOCK_V=max(16, 1024 // block_c), num_warps=4, num_stages=1)


def _check(volume: torch.Tensor, grid: torch.Tensor) -> None:
    if volume.dim() != 5 or grid.dim() != 5 or grid.shape[-1] != 3:
        raise InputError(f"grid_sample_3d expects a (B, C, D, H, W) volume and a (B, d, h, w, 3) grid, got "
                         f"{tuple(volume.shape)} and {tuple(grid.shape)}")
    if grid.shape[0] != volume.shape[0]:
        raise InputError(f"grid_sample_3d: the grid's batch {grid.shape[0]} differs from the volume's "
                         f"{volume.shape[0]}")


def offsets_fit_int32(volume_shape: tuple, grid_shape: tuple, block_v: int) -> bool:
    """Whether the kernel's 32-bit index arithmetic holds for these shapes: the output voxel index (up to
    B * d * h * w, rounded up to whole programs of block_v) and the element offsets within one batch item of the
    channels-last volume (up to D * H * W * C) stay within 2^31 - 1. Batch offsets and output offsets are 64-bit."""
    b, c, d_in, h_in, w_in = volume_shape
    _, d, h, w, _ = grid_shape
    voxels = b * d * h * w
    last_index = -(-voxels // block_v) * block_v - 1
    return last_index <= INT32_MAX and d_in * h_in * w_in * c <= INT32_MAX


@library_op("grid_sample_3d", mutates_args=("out",))
def _grid_sample_3d_op(volume: torch.Tensor, grid: torch.Tensor, out: torch.Tensor, align_corners: bool,
                       border: bool, block_v: int) -> None:
    """Launch into `out` (B, C, d, h, w), channels-last; volume channels-last, grid (B, d, h, w, 3) fp32 contiguous."""
    b, c, d_in, h_in, w_in = volume.shape
    _, d, h, w, _ = grid.shape
    n = b * d * h * w
    cfg = block_config(c)
    launch(_grid_sample_3d_fwd, (triton.cdiv(n, block_v),),
           volume, grid, out, n, d * h * w, d_in, h_in, w_in,
           C=c, ALIGN_CORNERS=align_corners, BORDER=border, BLOCK_V=block_v, BLOCK_C=cfg["BLOCK_C"],
           num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


@ops.register_kernel("grid_sample_3d")
def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False,
                   padding_mode: str = "zeros", out: torch.Tensor | None = None, block_v: int | None = None):
    """Kernel of `vasa_engine.ops.grid_sample_3d`. Returns (B, C, d, h, w) with channels_last_3d strides.

    out: optional (B, C, d, h, w) tensor, contiguous in channels_last_3d, of the volume's dtype, to write into.
    block_v: voxels per program (a power of two), to override block_config (tests use it for many programs).
    Declines (NotImplemented) other padding modes and dtypes, tensors on two devices, and shapes whose offsets
    would overflow the kernel's 32-bit index arithmetic (`offsets_fit_int32`).
    """
    _check(volume, grid)
    if padding_mode not in PADDING_MODES or volume.dtype not in _DTYPES or not grid.is_floating_point():
        return NotImplemented
    if volume.device != grid.device:
        return NotImplemented
    b, c, d_in, h_in, w_in = volume.shape
    _, d, h, w, _ = grid.shape
    block_v = block_v if block_v is not None else block_config(c)["BLOCK_V"]
    if not offsets_fit_int32(tuple(volume.shape), tuple(grid.shape), block_v):
        return NotImplemented
    if out is None:
        out = torch.empty((b, c, d, h, w), dtype=volume.dtype, device=volume.device,
                          memory_format=torch.channels_last_3d)
    elif (tuple(out.shape) != (b, c, d, h, w) or out.dtype != volume.dtype or out.device != volume.device
          or not out.is_contiguous(memory_format=torch.channels_last_3d)):
        raise InputError(f"grid_sample_3d: out must be a channels-last {volume.dtype} tensor of shape "
                         f"{(b, c, d, h, w)}")
    if b * d * h * w == 0 or c == 0:
        return out
    if volume.numel() == 0:
        return out.zero_()  # every corner of an empty volume is outside it
    if not volume.is_contiguous(memory_format=torch.channels_last_3d):
        volume = volume.contiguous(memory_format=torch.channels_last_3d)
    grid = grid.to(torch.float32).contiguous()
    _grid_sample_3d_op(volume, grid, out, bool(align_corners), padding_mode == "border", block_v)
    return out


def aot_specs() -> list[dict]:
    """Compile specs at the engine's real shapes (`vasa_engine.kernel_shapes`; the block settings depend on C
    only), fp16, bf16 and fp32.

    Border padding and align_corners True are compiled too at every channel count (same blocks), as the op
    offers them."""
    from vasa_engine.kernel_shapes import distinct, grid_sample_cases

    cases = distinct(grid_sample_cases(), "channels")
    variants = [(case.what, case.channels, False, "zeros") for case in cases]
    variants += [(f"C = {case.channels}, border padding and align_corners True (other modes of the op)",
                  case.channels, True, "border") for case in cases]
    specs = []
    for what, c, ac, pad in variants:
        cfg = block_config(c)
        for dtype, ptr in _TRITON_TYPES.items():
            signature = {"VOL": ptr, "GRID": "*fp32", "OUT": ptr}
            for name in ("N", "OUT_SPATIAL", "ID", "IH", "IW"):
                signature[name] = "i32"
            constexprs = dict(C=c, ALIGN_CORNERS=ac, BORDER=pad == "border", BLOCK_V=cfg["BLOCK_V"],
                              BLOCK_C=cfg["BLOCK_C"])
            for name in constexprs:
                signature[name] = "constexpr"
            specs.append(dict(
                name=f"grid_sample_3d_c{c}_{pad}{'_ac' if ac else ''}_{ptr[1:]}",
                kernel=_grid_sample_3d_fwd, signature=signature, constexprs=constexprs,
                num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                shapes=f"{what}; {ptr[1:]} volume, fp32 grid",
                # torch allocations are 16-byte aligned, and at the real shapes every size is a multiple of 16
                # (N = B * 65536, d*h*w = 65536, D = 16, H = W = 64): the launch specializes all of them.
                divisible_by_16=["VOL", "GRID", "OUT", "N", "OUT_SPATIAL", "ID", "IH", "IW"],
            ))
    return specs
