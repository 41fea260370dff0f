"""Trilinear grid sample kernel vs the engine's PyTorch reference vs PyTorch's own F.grid_sample (on an NCDHW
volume and on a channels-last one), at the engine's real shapes (vasa_engine.kernel_shapes).

    pytest benches/test_bench_grid_sample.py --benchmark-only     # needs a CUDA device; skips without one

test_grid_sample_3d: the dense motion network's K + 1 warps of the compressed volume and the warp of the appearance
volume (`grid_sample_cases`), each volume sampled at its own size of fp32 grid points. Each case (shape, dtype)
records the figures of kernel_bench.record. Bytes moved (the minimum): the fp32 grid read (12 B a point), the output
written (C values a point) and the volume read once. "kernel" is the op on a volume already channels-last (what the
engine keeps); "kernel_ncdhw" includes the wrapper's layout copy.

test_dense_motion_input: the fused dense-motion input (kernels/dense_motion.py: the K + 1 warps of the compressed
volume with their keypoint heatmaps, written as the hourglass's input; `dense_motion_cases`) against the same
computation unfused (motions, volume copy, grid-sample kernel, heatmaps, concatenation) and the PyTorch reference.
Bytes moved: the volume and the coordinate grid read, the output written.
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
from vasa_engine.kernel_shapes import dense_motion_cases, grid_sample_cases  # noqa: E402
from vasa_engine.models.warping import KP_VARIANCE, coordinate_grid  # noqa: E402


def kernel(volume, grid):
    with backend.use("kernels"):
        return ops.grid_sample_3d(volume, grid)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", grid_sample_cases(), ids=lambda c: c.name)
def test_grid_sample_3d(benchmark, case, dtype):
    require_cuda()
    b, c = case.batch, case.channels
    gen = torch.Generator(device="cuda").manual_seed(0)
    volume = torch.randn(*case.shape, device="cuda", dtype=dtype, generator=gen)
    volume_cl = volume.contiguous(memory_format=torch.channels_last_3d)
    # displacements of a few voxels around the identity, as the dense motion produces
    grid = (torch.rand(b, *case.size, 3, device="cuda", generator=gen) * 2.2 - 1.1)
    calls = {
        "kernel": lambda: kernel(volume_cl, grid),
        "kernel_ncdhw": lambda: kernel(volume, grid),
        "reference": lambda: ops.grid_sample_3d_reference(volume, grid),
        "torch_ncdhw": lambda: pytorch_grid_sample(volume, grid),
        "torch_channels_last": lambda: pytorch_grid_sample(volume_cl, grid),
    }
    points = grid.numel() // 3
    moved = points * 12 + points * c * volume.element_size() + volume.numel() * volume.element_size()
    record(benchmark, calls, work="bytes", amount=moved, dtype=dtype, shape=case.name, volume=tuple(volume.shape),
           grid=tuple(grid.shape))


def unfused_dense_motion_input(feature, grid, kp_driving, kp_source):
    with backend.use("kernels"):
        return ops._dense_motion_input(feature, grid, kp_driving, kp_source, KP_VARIANCE, ops.grid_sample_3d)


@pytest.mark.parametrize("dtype", DTYPES, ids=str)
@pytest.mark.parametrize("case", dense_motion_cases(), ids=lambda c: c.name)
def test_dense_motion_input(benchmark, case, dtype):
    require_cuda()
    b, k = case.batch, case.keypoints
    gen = torch.Generator(device="cuda").manual_seed(0)
    feature = torch.randn(*case.shape, device="cuda", dtype=dtype, generator=gen).contiguous(
        memory_format=torch.channels_last_3d)
    grid = coordinate_grid(*case.size, device="cuda")
    kp_driving = torch.rand(b, k, 3, device="cuda", generator=gen) * 1.6 - 0.8
    kp_source = kp_driving + 0.1 * torch.randn(b, k, 3, device="cuda", generator=gen)

    def kernel_call():
        with backend.use("kernels"):
            return ops.dense_motion_input(feature, grid, kp_driving, kp_source, KP_VARIANCE)

    calls = {
        "kernel": kernel_call,
        "unfused": lambda: unfused_dense_motion_input(feature, grid, kp_driving, kp_source),
        "reference": lambda: ops.dense_motion_input_reference(feature, grid, kp_driving, kp_source, KP_VARIANCE),
    }
    voxels = grid.numel() // 3
    moved = (b * case.out_channels * voxels + feature.numel()) * feature.element_size() + voxels * 12
    record(benchmark, calls, work="bytes", amount=moved, dtype=dtype, shape=case.name, volume=tuple(feature.shape))
