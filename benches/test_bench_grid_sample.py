"""Trilinear grid sample kernel vs the engine's PyTorch reference vs PyTorch's own F.grid_sample (on an NCDHW
volume and on a channels-last one), at the engine's real shapes.

    pytest benches/test_bench_grid_sample.py --benchmark-only     # needs a CUDA device; skips without one

Shapes: the dense motion network's 22 warps of the compressed volume, (B*22, 4, 16, 64, 64), and the warp of the
appearance volume, (B, 32, 16, 64, 64), at B = 1 and 8, sampled at (B*, 16, 64, 64) fp32 grid points.

Each case (shape, dtype) records the figures of kernel_bench.record. Bytes moved (the minimum): the fp32 grid read
(12 B a point), the output written (C values a point) and the volume read once. "kernel" is the op on a volume
already channels-last (what the engine keeps); "kernel_ncdhw" includes the wrapper's layout copy.

test_dense_motion_input: the fused dense-motion input (kernels/dense_motion.py: 22 warps of the (B, 4, 16, 64, 64)
volume with their keypoint heatmaps, written as the hourglass's (B, 110, 16, 64, 64) input) against the same
computation unfused (motions, volume copy, grid-sample kernel, heatmaps, concatenation: what the engine ran before)
and the PyTorch reference. Bytes moved: the volume and the coordinate grid read, the output written.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from kernel_bench import DTYPES, record, require_cuda  # noqa: E402
from test_kernel_grid_sample import pytorch_grid_sample  # noqa: E402
from vasa_engine import backend, ops  # noqa: E402
from vasa_engine.models.warping import KP_VARIANCE, coordinate_grid  # noqa: E402

# name -> (B of the call, C, (D, H, W) of the volume)
SHAPES = {
    "dense_motion_warps_b1": (22, 4, (16, 64, 64)),
    "dense_motion_warps_b8": (176, 4, (16, 64, 64)),
    "appearance_warp_b1": (1, 32, (16, 64, 64)),
    "appearance_warp_b8": (8, 32, (16, 64, 64)),
}
OUT_SIZE = (16, 64, 64)


def kernel(volume, grid):
    with backend.use("kernels"):
        return ops.grid_sample_3d(volume, grid)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("shape", list(SHAPES))
def test_grid_sample(benchmark, shape, dtype):
    require_cuda()
    b, c, size = SHAPES[shape]
    gen = torch.Generator(device="cuda").manual_seed(0)
    volume = torch.randn(b, c, *size, device="cuda", dtype=dtype, generator=gen)
    volume_cl = volume.contiguous(memory_format=torch.channels_last_3d)
    # displacements of a few voxels around the identity, as the dense motion produces
    grid = (torch.rand(b, *OUT_SIZE, 3, device="cuda", generator=gen) * 2.2 - 1.1)
    calls = {
        "kernel": lambda: kernel(volume_cl, grid),
        "kernel_ncdhw": lambda: kernel(volume, grid),
        "reference": lambda: ops.grid_sample_3d_reference(volume, grid),
        "torch_ncdhw": lambda: pytorch_grid_sample(volume, grid),
        "torch_channels_last": lambda: pytorch_grid_sample(volume_cl, grid),
    }
    points = b * OUT_SIZE[0] * OUT_SIZE[1] * OUT_SIZE[2]
    moved = points * 12 + points * c * volume.element_size() + volume.numel() * volume.element_size()
    record(benchmark, calls, work="bytes", amount=moved, dtype=dtype, shape=shape, volume=tuple(volume.shape),
           grid=tuple(grid.shape))


def unfused_dense_motion_input(feature, grid, kp_driving, kp_source):
    with backend.use("kernels"):
        return ops._dense_motion_input(feature, grid, kp_driving, kp_source, KP_VARIANCE, ops.grid_sample_3d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("b", [1, 8])
def test_dense_motion_input(benchmark, b, dtype):
    require_cuda()
    gen = torch.Generator(device="cuda").manual_seed(0)
    feature = torch.randn(b, 4, *OUT_SIZE, device="cuda", dtype=dtype, generator=gen).contiguous(
        memory_format=torch.channels_last_3d)
    grid = coordinate_grid(*OUT_SIZE, device="cuda")
    kp_driving = torch.rand(b, 21, 3, device="cuda", generator=gen) * 1.6 - 0.8
    kp_source = kp_driving + 0.1 * torch.randn(b, 21, 3, device="cuda", generator=gen)

    def kernel_call():
        with backend.use("kernels"):
            return ops.dense_motion_input(feature, grid, kp_driving, kp_source, KP_VARIANCE)

    calls = {
        "kernel": kernel_call,
        "unfused": lambda: unfused_dense_motion_input(feature, grid, kp_driving, kp_source),
        "reference": lambda: ops.dense_motion_input_reference(feature, grid, kp_driving, kp_source, KP_VARIANCE),
    }
    voxels = OUT_SIZE[0] * OUT_SIZE[1] * OUT_SIZE[2]
    moved = (b * 22 * 5 * voxels + feature.numel()) * feature.element_size() + voxels * 12
    record(benchmark, calls, work="bytes", amount=moved, dtype=dtype, shape=f"dense_motion_input_b{b}",
           volume=tuple(feature.shape))
