"""Instance norm + SPADE modulation + LeakyReLU in one op: the SPADE decoder's normalization step.

Reference: `vasa_engine.ops.spade_modulate_reference`:

    out = (x - mean[b, c]) / sqrt(var[b, c] + eps) * (1 + gamma) + beta,  then LeakyReLU(negative_slope)

with mean and biased variance per (b, c) over H * W, for x, gamma, beta of one shape (B, C, H, W) and one dtype.
Statistics and arithmetic are fp32; the result is written in x's dtype.

Cancellation. The decoder's activations can have a mean far larger than their spread (mean 50, std 0.1), where
sum(x^2) / n - mean^2 in fp32 loses every digit. So every value is shifted first by a per-(b, c) constant, the
plane's first element s (x - s is exact for values within a factor of 2 of s, and small for all of them), and the
statistics are exact two-pass ones on each register tile: tile mean of (x - s), then the sum of squared
deviations from it; tiles are merged with the parallel-variance update (Chan et al.)

    n = na + nb,  delta = mean_b - mean_a,  mean = mean_a + delta * nb / n,  M2 = M2a + M2b + delta^2 na nb / n

The normalization itself is then ((x - s) - mean_shifted) * rstd: no large value is ever subtracted from another.

Layouts: x, gamma and beta all contiguous (NCHW), or all contiguous in torch.channels_last (NHWC); the output has
x's layout. Any other combination (mixed layouts, other strides) returns NotImplemented and the reference runs.
A (b, c) plane is the H * W positions p of one channel: offset b*C*HW + c*HW + p (NCHW) or b*C*HW + p*C + c
(NHWC). Every program works on a (BLOCK_C channels, BLOCK_P positions) register tile: NCHW uses BLOCK_C = 1 and
long rows of positions, NHWC 64 channels (128 contiguous bytes in fp16) by a few positions.

Two launch plans:

- one tile (NCHW with H * W <= 4096, i.e. the 64x64 blocks, half of the decoder's calls): one program per (b, c)
  loads the whole plane into registers once, computes the statistics from them and writes the output: x, gamma
  and beta read once, the output written once (4 tensor passes).
- split (larger planes, and channels-last): H * W is cut into NCHUNK chunks so that there are enough programs
  for the GPU whatever B and C are (about TARGET_PROGRAMS). Kernel 1 writes each chunk's (mean, M2) of (x - s)
  per channel (fp32, tiny); when there is more than one chunk, a small merge kernel combines them per (b, c)
  (so the apply programs do not each re-read every chunk's statistics); kernel 3 normalizes, modulates and
  writes each chunk. x is read twice, gamma and beta once, the output written once (5 tensor passes).
"""

from __future__ import annotations

from typing import Optional

import torch
import triton
import triton.language as tl

from vasa_engine import ops

from ._library import launch, library_op

_DTYPES = (torch.float16, torch.bfloat16, torch.float32)
_TRITON_TYPES = {torch.float16: "*fp16", torch.bfloat16: "*bf16", torch.float32: "*fp32"}

FUSED_MAX_HW = 4096       # largest NCHW plane the one-tile plan keeps in registers
TARGET_PROGRAMS = 1024    # programs the split plan aims for (an H100 has 132 SMs; a few waves of 8 per SM)
CL_BLOCK_C = 64           # channels-last tile: 64 channels x 16 positions
CL_BLOCK_P = 16
NCHW_BLOCK_P = 2048       # NCHW split tile: 2048 positions of one plane
MIN_TILES_PER_CHUNK = 2   # a chunk is at least this many tiles (fewer programs, each with more work)
MERGE_BLOCK_R = 32        # merge kernel: 32 (b, c) rows x up to 32 chunk statistics a step
MERGE_BLOCK_K = 32


@triton.jit
def _offsets(offs_c, offs_p, C, HW, CHANNELS_LAST: tl.constexpr):
    """(BLOCK_C, BLOCK_P) element offsets inside one image of the batch."""
    if CHANNELS_LAST:
        return offs_p[None, :] * C + offs_c[:, None]
    else:
        return offs_c[:, None] * HW + offs_p[None, :]


@triton.jit
def _modulate(xs, mean, rstd, g, bt, slope, HAS_ACT: tl.constexpr):
    """xs: shifted x tile (fp32); mean: shifted mean per channel; g, bt: gamma, beta tiles (fp32)."""
    y = (xs - mean[:, None]) * rstd[:, None] * (1.0 + g) + bt
    if HAS_ACT:
        y = tl.where(y >= 0.0, y, y * slope)
    return y


@triton.jit
def _spade_one_tile(X, G, BETA, OUT, C, HW, eps, slope,
                    HAS_ACT: tl.constexpr, BLOCK_P: tl.constexpr):
    """NCHW, one program per (b, c) plane, the whole plane (HW <= BLOCK_P) in one register tile."""
    row = tl.program_id(0)  # b * C + c
    base = row.to(tl.int64) * HW
    offs_c = tl.arange(0, 1)
    offs_p = tl.arange(0, BLOCK_P)
    mask = (offs_p < HW)[None, :]
    offs = offs_c[:, None] * HW + offs_p[None, :]
    shift = tl.load(X + base + offs_c).to(tl.float32)
    x = tl.load(X + base + offs, mask=mask, other=0.0).to(tl.float32) - shift[:, None]
    x = tl.where(mask, x, 0.0)
    n = HW * 1.0
    mean = tl.sum(x, 1) / n
    dev = tl.where(mask, x - mean[:, None], 0.0)
    rstd = 1.0 / tl.sqrt(tl.sum(dev * dev, 1) / n + eps)
    g = tl.load(G + base + offs, mask=mask, other=0.0).to(tl.float32)
    bt = tl.load(BETA + base + offs, mask=mask, other=0.0).to(tl.float32)
    y = _modulate(x, mean, rstd, g, bt, slope, HAS_ACT)
    tl.store(OUT + base + offs, y.to(OUT.dtype.element_ty), mask=mask)


@triton.jit
def _spade_stats(X, MEAN, M2, C, HW, CHUNK, NCHUNK,
                 CHANNELS_LAST: tl.constexpr, BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Per (b, channel block, chunk): mean and M2 of (x - shift) over the chunk's positions, per channel."""
    pid = tl.program_id(0)  # b * n_cblocks + channel block
    chunk = tl.program_id(1)
    n_cb = tl.cdiv(C, BLOCK_C)
    b = pid // n_cb
    offs_c = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    base = X + b.to(tl.int64) * C * HW
    shift = tl.load(base + _offsets(offs_c, tl.arange(0, 1), C, HW, CHANNELS_LAST), mask=c_ok[:, None],
                    other=0.0).to(tl.float32)
    p_start = chunk * CHUNK
    p_end = tl.minimum(p_start + CHUNK, HW)
    mean = tl.zeros((BLOCK_C,), dtype=tl.float32)
    m2 = tl.zeros((BLOCK_C,), dtype=tl.float32)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = c_ok[:, None] & (offs_p < p_end)[None, :]
        x = tl.load(base + _offsets(offs_c, offs_p, C, HW, CHANNELS_LAST), mask=mask, other=0.0)
        x = tl.where(mask, x.to(tl.float32) - shift, 0.0)
        n_a = (p0 - p_start) * 1.0
        n_b = tl.minimum(p_end - p0, BLOCK_P) * 1.0
        t_mean = tl.sum(x, 1) / n_b
        dev = tl.where(mask, x - t_mean[:, None], 0.0)
        t_m2 = tl.sum(dev * dev, 1)
        n = n_a + n_b
        delta = t_mean - mean
        mean = mean + delta * (n_b / n)
        m2 = m2 + t_m2 + delta * delta * (n_a * n_b / n)
    idx = (b * C + offs_c).to(tl.int64) * NCHUNK + chunk
    tl.store(MEAN + idx, mean, mask=c_ok)
    tl.store(M2 + idx, m2, mask=c_ok)


@triton.jit
def _spade_merge(MEAN, M2, OUT_MEAN, OUT_M2, ROWS, HW, CHUNK, NCHUNK,
                 BLOCK_R: tl.constexpr, BLOCK_K: tl.constexpr):
    """Merge each (b, c) row's chunk statistics: mean = sum_i n_i mean_i / HW,
    M2 = sum_i (M2_i + n_i (mean_i - mean)^2)."""
    rows = tl.program_id(0) * BLOCK_R + tl.arange(0, BLOCK_R)
    r_ok = rows < ROWS
    base = rows.to(tl.int64)[:, None] * NCHUNK
    total = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, NCHUNK, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        cnt = tl.minimum(tl.maximum(HW - ks * CHUNK, 0), CHUNK) * 1.0
        mk = r_ok[:, None] & (ks < NCHUNK)[None, :]
        m = tl.load(MEAN + base + ks[None, :], mask=mk, other=0.0)
        total += tl.sum(m * cnt[None, :], 1)
    mean = total / (HW * 1.0)
    m2 = tl.zeros((BLOCK_R,), dtype=tl.float32)
    for k0 in range(0, NCHUNK, BLOCK_K):
        ks = k0 + tl.arange(0, BLOCK_K)
        cnt = tl.minimum(tl.maximum(HW - ks * CHUNK, 0), CHUNK) * 1.0
        mk = r_ok[:, None] & (ks < NCHUNK)[None, :]
        m = tl.load(MEAN + base + ks[None, :], mask=mk, other=0.0)
        q = tl.load(M2 + base + ks[None, :], mask=mk, other=0.0)
        d = m - mean[:, None]
        m2 += tl.sum(tl.where(mk, q + cnt[None, :] * d * d, 0.0), 1)
    tl.store(OUT_MEAN + rows, mean, mask=r_ok)
    tl.store(OUT_M2 + rows, m2, mask=r_ok)


@triton.jit
def _spade_apply(X, G, BETA, OUT, MEAN, M2, C, HW, CHUNK, eps, slope,
                 CHANNELS_LAST: tl.constexpr, HAS_ACT: tl.constexpr,
                 BLOCK_C: tl.constexpr, BLOCK_P: tl.constexpr):
    """Normalize, modulate (and activate) one chunk, from the merged per-(b, c) mean and M2 of (x - shift)."""
    pid = tl.program_id(0)
    chunk = tl.program_id(1)
    n_cb = tl.cdiv(C, BLOCK_C)
    b = pid // n_cb
    offs_c = (pid % n_cb) * BLOCK_C + tl.arange(0, BLOCK_C)
    c_ok = offs_c < C
    img = b.to(tl.int64) * C * HW
    shift = tl.load(X + img + _offsets(offs_c, tl.arange(0, 1), C, HW, CHANNELS_LAST), mask=c_ok[:, None],
                    other=0.0).to(tl.float32)
    mean = tl.load(MEAN + b * C + offs_c, mask=c_ok, other=0.0)
    m2 = tl.load(M2 + b * C + offs_c, mask=c_ok, other=0.0)
    rstd = 1.0 / tl.sqrt(m2 / (HW * 1.0) + eps)

    p_start = chunk * CHUNK
    p_end = tl.minimum(p_start + CHUNK, HW)
    for p0 in range(p_start, p_end, BLOCK_P):
        offs_p = p0 + tl.arange(0, BLOCK_P)
        mask = c_ok[:, None] & (offs_p < p_end)[None, :]
        offs = img + _offsets(offs_c, offs_p, C, HW, CHANNELS_LAST)
        x = tl.load(X + offs, mask=mask, other=0.0).to(tl.float32) - shift
        g = tl.load(G + offs, mask=mask, other=0.0).to(tl.float32)
        bt = tl.load(BETA + offs, mask=mask, other=0.0).to(tl.float32)
        y = _modulate(x, mean, rstd, g, bt, slope, HAS_ACT)
        tl.store(OUT + offs, y.to(OUT.dtype.element_ty), mask=mask)


def plan(shape: tuple, channels_last: bool, fused_max_hw: int = FUSED_MAX_HW,
         target_programs: int = TARGET_PROGRAMS, block_p: int | None = None) -> dict:
    """Launch plan for x of `shape` (B, C, H, W): "one_tile" (with BLOCK_P) or "split" (with the tile, CHUNK
    positions a chunk, NCHUNK chunks, BLOCK_K chunk statistics merged at a time)."""
    b, c, h, w = shape
    hw = h * w
    if not channels_last and hw <= fused_max_hw:
        bp = triton.next_power_of_2(hw)
        return dict(kind="one_tile", BLOCK_P=bp, num_warps=8 if bp >= 4096 else 4, num_stages=1)
    block_c = min(CL_BLOCK_C, triton.next_power_of_2(c)) if channels_last else 1
    bp = block_p or (CL_BLOCK_P if channels_last else NCHW_BLOCK_P)
    if channels_last:
        bp = max(bp, 1024 // block_c) if block_p is None else bp
    rows = b * triton.cdiv(c, block_c)
    tiles = triton.cdiv(hw, bp)
    want = max(1, triton.cdiv(target_programs, rows))
    n_chunks = max(1, min(want, tiles // MIN_TILES_PER_CHUNK if tiles >= MIN_TILES_PER_CHUNK else 1))
    chunk = triton.cdiv(tiles, n_chunks) * bp
    n_chunks = triton.cdiv(hw, chunk)
    return dict(kind="split", BLOCK_C=block_c, BLOCK_P=bp, CHUNK=chunk, NCHUNK=n_chunks, rows=rows,
                BLOCK_R=MERGE_BLOCK_R, BLOCK_K=min(MERGE_BLOCK_K, triton.next_power_of_2(n_chunks)),
                num_warps=4, num_stages=1)


def _layout(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor) -> bool | None:
    """False: all NCHW-contiguous; True: all channels-last; None: anything else."""
    if x.is_contiguous() and gamma.is_contiguous() and beta.is_contiguous():
        return False
    cl = torch.channels_last
    if (x.is_contiguous(memory_format=cl) and gamma.is_contiguous(memory_format=cl)
            and beta.is_contiguous(memory_format=cl)):
        return True
    return None


@library_op("spade_modulate", mutates_args=("out",))
def _spade_modulate_op(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, out: torch.Tensor,
                       negative_slope: Optional[float], eps: float, channels_last: bool, fused_max_hw: int,
                       target_programs: int, block_p: Optional[int]) -> None:
    """Launch the plan for x's shape into `out`; x, gamma, beta and out all in one layout (channels_last or NCHW)."""
    b, c, h, w = x.shape
    hw = h * w
    has_act = negative_slope is not None
    slope = float(negative_slope) if has_act else 0.0
    cfg = plan(tuple(x.shape), channels_last, fused_max_hw, target_programs, block_p)
    if cfg["kind"] == "one_tile":
        launch(_spade_one_tile, (b * c,), x, gamma, beta, out, c, hw, eps, slope, HAS_ACT=has_act,
               BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
        return
    n_chunks = cfg["NCHUNK"]
    mean = torch.empty((b * c, n_chunks), dtype=torch.float32, device=x.device)
    m2 = torch.empty((b * c, n_chunks), dtype=torch.float32, device=x.device)
    grid = (cfg["rows"], n_chunks)
    launch(_spade_stats, grid, x, mean, m2, c, hw, cfg["CHUNK"], n_chunks, CHANNELS_LAST=channels_last,
           BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])
    if n_chunks > 1:
        merged_mean = torch.empty((b * c,), dtype=torch.float32, device=x.device)
        merged_m2 = torch.empty((b * c,), dtype=torch.float32, device=x.device)
        launch(_spade_merge, (triton.cdiv(b * c, cfg["BLOCK_R"]),),
               mean, m2, merged_mean, merged_m2, b * c, hw, cfg["CHUNK"], n_chunks,
               BLOCK_R=cfg["BLOCK_R"], BLOCK_K=cfg["BLOCK_K"], num_warps=4, num_stages=1)
        mean, m2 = merged_mean, merged_m2
    launch(_spade_apply, grid, x, gamma, beta, out, mean, m2, c, hw, cfg["CHUNK"], eps, slope,
           CHANNELS_LAST=channels_last, HAS_ACT=has_act, BLOCK_C=cfg["BLOCK_C"],
           BLOCK_P=cfg["BLOCK_P"], num_warps=cfg["num_warps"], num_stages=cfg["num_stages"])


@ops.register_kernel("spade_modulate")
def spade_modulate(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None = None,
                   eps: float = 1e-5, out: torch.Tensor | None = None, fused_max_hw: int = FUSED_MAX_HW,
                   target_programs: int = TARGET_PROGRAMS, block_p: int | None = None):
    """Kernel of `vasa_engine.ops.spade_modulate`; out: optional tensor like x (same shape, dtype and layout) to
    write into; fused_max_hw, target_programs, block_p: overrides of `plan` (tests use them to reach every path at
    small sizes)."""
    if (x.dim() != 4 or x.dtype not in _DTYPES or gamma.dtype != x.dtype or beta.dtype != x.dtype
            or gamma.shape != x.shape or beta.shape != x.shape or not (x.device == gamma.device == beta.device)):
        return NotImplemented
    channels_last = _layout(x, gamma, beta)
    if channels_last is None:
        return NotImplemented
    if out is None:
        out = torch.empty_like(x, memory_format=torch.channels_last if channels_last else torch.contiguous_format)
    if x.numel() == 0:
        return out
    _spade_modulate_op(x, gamma, beta, out, None if negative_slope is None else float(negative_slope), float(eps),
                       channels_last, fused_max_hw, target_programs, block_p)
    return out


def _spec(kind: str, kernel, ptr: str, constexprs: dict, cfg: dict, shapes: str) -> dict:
    types = {"X": ptr, "G": ptr, "BETA": ptr, "OUT": ptr, "MEAN": "*fp32", "M2": "*fp32", "OUT_MEAN": "*fp32",
             "OUT_M2": "*fp32", "eps": "fp32", "slope": "fp32"}
    signature = {name: "constexpr" if name in constexprs else types.get(name, "i32") for name in kernel.arg_names}
    tag = "_".join(f"{k[6:].lower()}{int(v)}" for k, v in constexprs.items() if k.startswith("BLOCK_"))
    flags = "".join(f"_{k.lower()}" for k in ("CHANNELS_LAST", "HAS_ACT") if constexprs.get(k))
    # torch allocations are 16-byte aligned, and at the decoder's shapes C, H * W and the chunk length are multiples
    # of 16: the launch specializes them (the chunk count and row count are not, and need not be).
    divisible = [a for a in kernel.arg_names if signature[a].startswith("*") or a in ("C", "HW", "CHUNK")]
    return dict(name=f"spade_{kind}{flags}_{tag}_{ptr[1:]}", kernel=kernel, signature=signature,
                constexprs=constexprs, num_warps=cfg.get("num_warps", 4), num_stages=cfg.get("num_stages", 1),
                shapes=shapes, divisible_by_16=divisible)


def aot_specs() -> list[dict]:
    """Compile specs of every kernel and block setting the decoder's shapes use (`vasa_engine.kernel_shapes`; the
    plan depends on B only through the chunk count), fp16, bf16 and fp32, both layouts, with and without the
    activation."""
    from vasa_engine.kernel_shapes import spade_cases

    specs, seen = [], set()

    def add(kind, kernel, ptr, constexprs, cfg, shapes):
        key = (kind, ptr, tuple(sorted(constexprs.items())))
        if key not in seen:
            seen.add(key)
            specs.append(_spec(kind, kernel, ptr, constexprs, cfg, shapes))

    for case in spade_cases():
        for channels_last in (False, True):
            cfg = plan(case.shape, channels_last)
            where = f"{case.what} {'channels-last' if channels_last else 'NCHW'}"
            for dtype, ptr in _TRITON_TYPES.items():
                if cfg["kind"] == "one_tile":
                    for act in (True, False):
                        add("one_tile", _spade_one_tile, ptr, dict(HAS_ACT=act, BLOCK_P=cfg["BLOCK_P"]), cfg,
                            f"{where}, {'with' if act else 'without'} LeakyReLU, {ptr[1:]}")
                    continue
                chunks = f"{cfg['NCHUNK']} chunks of {cfg['CHUNK']} positions"
                add("stats", _spade_stats, ptr, dict(CHANNELS_LAST=channels_last, BLOCK_C=cfg["BLOCK_C"],
                                                     BLOCK_P=cfg["BLOCK_P"]), cfg,
                    f"{where}, {chunks}, {ptr[1:]}")
                if cfg["NCHUNK"] > 1:
                    add("merge", _spade_merge, ptr, dict(BLOCK_R=cfg["BLOCK_R"], BLOCK_K=cfg["BLOCK_K"]), cfg,
                        f"{where}, merging {chunks} (fp32 statistics; {ptr[1:]} input)")
                for act in (True, False):
                    add("apply", _spade_apply, ptr, dict(CHANNELS_LAST=channels_last, HAS_ACT=act,
                                                         BLOCK_C=cfg["BLOCK_C"], BLOCK_P=cfg["BLOCK_P"]), cfg,
                        f"{where}, {chunks}, {'with' if act else 'without'} LeakyReLU, {ptr[1:]}")
    # The merge kernel reads fp32 statistics only: one spec per block setting is enough.
    return [s for s in specs if not (s["name"].startswith("spade_merge") and not s["name"].endswith("fp32"))]
