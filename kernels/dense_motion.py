"""The dense motion network's hourglass input in one pass: keypoint heatmaps and the compressed volume warped by
every sparse motion.

Reference: `vasa_engine.ops.dense_motion_input_reference`. Unfused, it materializes the (B, K+1, d, h, w, 3)
motions, a (B*(K+1), C, D, H, W) copy of the volume, the warped volumes, the heatmaps through six elementwise
passes, and then concatenates them; at the renderer's shapes (K = 21, C = 4, 16x64x64) that is about 300 MB of
memory traffic a frame in fp16, and 30-odd launches. This kernel reads the volume (0.5 MB), the coordinate grid
(0.8 MB) and the keypoints, and writes the (B, (K+1)*(C+1), d, h, w) result once (14.4 MB).

Per output voxel v (coordinate g_v from the grid) and motion k = 0..K:

    k = 0:   heat = 0,   coordinate = g_v
    k >= 1:  heat = exp(-0.5 |g_v - x_d[k]|^2 / variance) - exp(-0.5 |g_v - x_s[k]|^2 / variance)
             coordinate = g_v + (x_s[k] - x_d[k])
    out[b, k*(C+1)]           = heat
    out[b, k*(C+1) + 1 + c]   = trilinear sample of channel c at the coordinate (zeros padding, align_corners
                                False: `kernels.grid_sample._trilinear`, the grid-sample kernel's own sampling)

in fp32, written in the volume's dtype. The sums of squares run in the reference's order ((dx^2 + dy^2) + dz^2).

Layout. The volume is read channels-last (B, D, H, W, C): each corner is one C-wide vector load (the wrapper
converts another layout; at C = 4 that is 0.5 MB). The output is contiguous (B, (K+1)*(C+1), d, h, w), the
reference's layout: for each (k, channel) a program's BLOCK_V consecutive voxels are one contiguous run, so every
store is coalesced. Programs: one per BLOCK_V voxels of one batch item, looping over the K+1 motions, so the grid
coordinates and the keypoint loads are shared by the whole loop.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl

from vasa_engine import ops
from vasa_engine.errors import InputError

from ._library import launch, library_op
from .grid_sample import _trilinear

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}


@triton.jit
def _dense_motion_input_fwd(FEAT, GRID, KPD, KPS, OUT,
                            SPATIAL, ID, IH, IW, NEG_HALF_INV_VAR,
                            K: tl.constexpr, C: tl.constexpr, BLOCK_V: tl.constexpr, BLOCK_C: tl.constexpr):
    pid_v = tl.program_id(0)
    b = tl.program_id(1)
    offs_v = pid_v * BLOCK_V + tl.arange(0, BLOCK_V)
    v_ok = offs_v < SPATIAL
    offs_c = tl.arange(0, BLOCK_C)
    cols = offs_c[None, :]
    cmask = (offs_c < C)[None, :]

    g_ptr = GRID + offs_v * 3
    gx = tl.load(g_ptr, mask=v_ok, other=0.0)
    gy = tl.load(g_ptr + 1, mask=v_ok, other=0.0)
    gz = tl.load(g_ptr + 2, mask=v_ok, other=0.0)

    base = FEAT + b.to(tl.int64) * (ID * IH * IW * C)
    out_b = OUT + b.to(tl.int64) * ((K + 1) * (C + 1)) * SPATIAL
    rows = offs_v[:, None]
    out_mask = v_ok[:, None] & cmask

    for k in range(K + 1):
        # Motion 0 is the identity: its keypoint loads are masked to 0, so the shift is 0 and the two Gaussians
        # are the same expression, whose difference is exactly 0.
        real = k > 0
        kd = KPD + (b * K + k - 1) * 3
        ks = KPS + (b * K + k - 1) * 3
        dx = tl.load(kd, mask=real, other=0.0)
        dy = tl.load(kd + 1, mask=real, other=0.0)
        dz = tl.load(kd + 2, mask=real, other=0.0)
        qx = tl.load(ks, mask=real, other=0.0)
        qy = tl.load(ks + 1, mask=real, other=0.0)
        qz = tl.load(ks + 2, mask=real, other=0.0)
        sx = qx - dx
        sy = qy - dy
        sz = qz - dz
        ex = gx - dx
        ey = gy - dy
        ez = gz - dz
        fx = gx - qx
        fy = gy - qy
        fz = gz - qz
        heat = (tl.exp(NEG_HALF_INV_VAR * (ex * ex + ey * ey + ez * ez))
                - tl.exp(NEG_HALF_INV_VAR * (fx * fx + fy * fy + fz * fz)))

        acc = _trilinear(base, gx + sx, gy + sy, gz + sz, v_ok, ID, IH, IW, cols, cmask, C, False, False)

        plane = out_b + (k * (C + 1)) * SPATIAL
        tl.store(plane + offs_v, heat.to(OUT.dtype.element_ty), mask=v_ok)
        tl.store(plane + (cols + 1) * SPATIAL + rows, acc.to(OUT.dtype.element_ty), mask=out_mask)


def block_config(channels: int) -> dict:
    """128 voxels a program with 4 warps: one voxel a thread, its C channels in that thread (each corner one vector
    load). At the renderer's shapes: 48 registers on sm_90a, 40 on sm_89, in fp16 (256 voxels a program took 96
    and halved the occupancy), and 1 KB of shared memory for the transposed store of the sampled channels.
    512 programs a batch item at 16x64x64."""
    return dict(BLOCK_V=128, BLOCK_C=triton.next_power_of_2(max(1, channels)), num_warps=4, num_stages=1)


def offsets_fit_int32(feature_shape: tuple, keypoints: int) -> bool:
    """Whether the kernel's 32-bit offsets within one batch item hold: the output planes ((K + 1) * (C + 1) * d * h * w
    elements), the channels-last volume (d * h * w * C) and the coordinate grid (d * h * w * 3) stay below 2^31."""
    _, c, d, h, w = feature_shape
    spatial = d * h * w
    return max((keypoints + 1) * (c + 1) * spatial, spatial * c, spatial * 3) < 2**31


@library_op("dense_motion_input", mutates_args=("out",))
def _dense_motion_input_op(feature: torch.Tensor, grid: torch.Tensor, kp_driving: torch.Tensor,
                           kp_source: torch.Tensor, out: torch.Tensor, variance: float, block_v: int) -> None:
    """Launch into `out`; feature channels-last, grid and keypoints fp32 contiguous."""
    b, c, d, h, w = feature.shape
    k = kp_driving.shape[1]
    spatial = d * h * w
    cfg = block_config(c)
    launch(_dense_motion_input_fwd, (triton.cdiv(spatial, block_v), b),
           feature, grid, kp_driving, kp_source, out, spatial, d, h, w, -0.5 / variance,
           K=k, C=c, BLOCK_V=block_v, BLOCK_C=cfg["BLOCK_C"], num_warps=cfg["num_warps"],
           num_stages=cfg["num_stages"])


@ops.register_kernel("dense_motion_input")
def dense_motion_input(feature: torch.Tensor, grid: torch.Tensor, kp_driving: torch.Tensor,
                       kp_source: torch.Tensor, variance: float = 0.01, block_v: int | None = None):
    """Kernel of `vasa_engine.ops.dense_motion_input`. block_v overrides the voxels per program (tests)."""
    if feature.dim() != 5 or grid.dim() != 4 or grid.shape[-1] != 3 or kp_driving.dim() != 3 \
            or kp_driving.shape != kp_source.shape or kp_driving.shape[-1] != 3:
        raise InputError(f"dense_motion_input expects a (B, C, d, h, w) feature, a (d, h, w, 3) grid and two "
                         f"(B, K, 3) keypoint sets, got {tuple(feature.shape)}, {tuple(grid.shape)}, "
                         f"{tuple(kp_driving.shape)} and {tuple(kp_source.shape)}")
    b, c, d, h, w = feature.shape
    if tuple(grid.shape[:3]) != (d, h, w) or kp_driving.shape[0] != b:
        raise InputError(f"dense_motion_input: grid {tuple(grid.shape)} and keypoints {tuple(kp_driving.shape)} "
                         f"do not match the feature {tuple(feature.shape)}")
    if feature.dtype not in _DTYPES or len({feature.device, grid.device, kp_driving.device, kp_source.device}) != 1:
        return NotImplemented
    if not variance > 0:
        raise InputError(f"dense_motion_input: variance must be positive, got {variance}")
    k = kp_driving.shape[1]
    if not offsets_fit_int32(tuple(feature.shape), k):
        return NotImplemented
    out = torch.empty((b, (k + 1) * (c + 1), d, h, w), dtype=feature.dtype, device=feature.device)
    if b == 0 or d * h * w == 0:
        return out
    if c == 0:
        return ops.dense_motion_input_reference(feature, grid, kp_driving, kp_source, variance)
    feature = feature.contiguous(memory_format=torch.channels_last_3d)
    grid = grid.to(torch.float32).contiguous()
    kp_driving = kp_driving.to(torch.float32).contiguous()
    kp_source = kp_source.to(torch.float32).contiguous()
    block_v = block_v if block_v is not None else block_config(c)["BLOCK_V"]
    _dense_motion_input_op(feature, grid, kp_driving, kp_source, out, float(variance), block_v)
    return out


def aot_specs() -> list[dict]:
    """The renderer's shapes (`vasa_engine.kernel_shapes`: keypoints and compressed channels); fp16, bf16, fp32."""
    from vasa_engine.kernel_shapes import dense_motion_cases, distinct

    specs = []
    for case in distinct(dense_motion_cases(), "keypoints", "channels"):
        k, c = case.keypoints, case.channels
        cfg = block_config(c)
        for dtype, ptr in _TRITON_TYPES.items():
            signature = {"FEAT": ptr, "GRID": "*fp32", "KPD": "*fp32", "KPS": "*fp32", "OUT": ptr}
            for name in ("SPATIAL", "ID", "IH", "IW"):
                signature[name] = "i32"
            signature["NEG_HALF_INV_VAR"] = "fp32"
            constexprs = dict(K=k, C=c, BLOCK_V=cfg["BLOCK_V"], BLOCK_C=cfg["BLOCK_C"])
            for name in constexprs:
                signature[name] = "constexpr"
            specs.append(dict(
                name=f"dense_motion_input_k{k}_c{c}_{ptr[1:]}", kernel=_dense_motion_input_fwd, signature=signature,
                constexprs=constexprs, num_warps=cfg["num_warps"], num_stages=cfg["num_stages"],
                shapes=f"{case.what}; {ptr[1:]} volume",
                divisible_by_16=["FEAT", "GRID", "KPD", "KPS", "OUT", "SPATIAL", "ID", "IH", "IW"],
            ))
    return specs
