"""The fused dense-motion input kernel (kernels/dense_motion.py) against a float64 computation of the same
quantities: per motion, the keypoint heatmap and the volume sampled by torch's grid_sample.

On CPU tensors the kernel runs in Triton's interpreter; the GPU-marked variants run the same cases on CUDA and the
renderer's real shapes. Outputs are allocated NaN-filled (the `nan_empty` fixture), so an element the kernel does
not write fails. The renderer fixtures run with this kernel on in tests/test_kernel_grid_sample.py
(test_renderer_fixtures_with_kernels).
"""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from helpers import KERNEL_DEVICES, rel_err
from vasa_engine import backend, ops
from vasa_engine.errors import InputError
from vasa_engine.kernel_shapes import dense_motion_cases
from vasa_engine.models.warping import KP_VARIANCE, coordinate_grid

dm = pytest.importorskip("vasa_engine.kernels.dense_motion")

CUDA = torch.cuda.is_available()
# fp32: the sample coordinates are fp32 (grid + shift, rounded), as in PyTorch's fp32 path, which on a 63-voxel axis
# alone gives about 2e-6 against float64 coordinates; so the kernel must also stay within 10% of PyTorch's own fp32
# error on the same inputs.
FP32_BOUND = 5e-6
FLOOR = 1e-6


def assert_fp32_close(got, feature, grid, kd, ks):
    exact = truth(feature, grid, kd, ks)
    err = rel_err(got, exact)
    ref_err = rel_err(ops.dense_motion_input_reference(feature.float(), grid, kd, ks), exact)
    assert err <= FP32_BOUND and err <= 1.1 * ref_err + 1e-7, (err, ref_err)


def truth(feature, grid, kp_driving, kp_source, variance=KP_VARIANCE) -> torch.Tensor:
    """float64 on the CPU, written out per motion, from the same (already rounded) inputs the kernel sees."""
    feature, grid = feature.double().cpu(), grid.float().double().cpu()
    kp_driving, kp_source = kp_driving.float().double().cpu(), kp_source.float().double().cpu()
    b, c, d, h, w = feature.shape
    planes = []
    for k in range(kp_driving.shape[1] + 1):
        if k == 0:
            heat = torch.zeros(b, d, h, w, dtype=torch.float64)
            coords = grid.expand(b, d, h, w, 3)
        else:
            kd = kp_driving[:, k - 1].view(b, 1, 1, 1, 3)
            ks = kp_source[:, k - 1].view(b, 1, 1, 1, 3)
            heat = (torch.exp(-0.5 * ((grid - kd) ** 2).sum(-1) / variance)
                    - torch.exp(-0.5 * ((grid - ks) ** 2).sum(-1) / variance))
            coords = grid + (ks - kd)
        sampled = F.grid_sample(feature, coords, mode="bilinear", padding_mode="zeros", align_corners=False)
        planes += [heat[:, None], sampled]
    return torch.cat(planes, dim=1)


def inputs(b, c, size, k, device, dtype=torch.float32, seed=0, spread=0.15):
    gen = torch.Generator().manual_seed(seed)
    feature = torch.randn(b, c, *size, generator=gen, dtype=torch.float64).to(dtype).to(device)
    kp_driving = (torch.rand(b, k, 3, generator=gen, dtype=torch.float64) * 1.6 - 0.8).float()
    kp_source = (kp_driving + spread * torch.randn(b, k, 3, generator=gen, dtype=torch.float64)).float()
    grid = coordinate_grid(*size, device=device)
    return feature, grid, kp_driving.to(device), kp_source.to(device)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("b,c,size,k", [
    (1, 1, (2, 3, 5), 1),
    (2, 3, (3, 5, 7), 4),
    *((2, c.channels, (5, 7, 9), c.keypoints) for c in dense_motion_cases()[:1]),  # the renderer's K and C, odd sizes
    (1, 5, (4, 6, 11), 2),   # channels not a power of two
    (3, 4, (7, 2, 63), 7),   # two rows of 63; voxels not a multiple of the block
])
def test_matches_float64(nan_empty, device, b, c, size, k):
    feature, grid, kd, ks = inputs(b, c, size, k, device, seed=b * 100 + k)
    got = dm.dense_motion_input(feature, grid, kd, ks, block_v=32)
    assert got.shape == (b, (k + 1) * (c + 1), *size) and got.dtype == torch.float32
    assert_fp32_close(got, feature, grid, kd, ks)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_motions_far_outside_and_wide_keypoints(nan_empty, device):
    """Shifts that move whole motions outside the volume (zeros padding) and keypoints far from every voxel."""
    feature, grid, kd, ks = inputs(2, 4, (4, 5, 6), 6, device, seed=7, spread=1.5)
    kd[0, 0] = torch.tensor([3.0, -2.5, 4.0])
    got = dm.dense_motion_input(feature, grid, kd, ks, block_v=16)
    assert_fp32_close(got, feature, grid, kd, ks)
    # motion 0 is the identity: heat 0, and the volume sampled at the grid
    assert torch.equal(got[:, 0].cpu(), torch.zeros_like(got[:, 0].cpu()))


@pytest.mark.parametrize("device", KERNEL_DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_low_precision(nan_empty, device, dtype):
    feature, grid, kd, ks = inputs(2, 4, (5, 6, 7), 5, device, dtype=dtype, seed=3)
    exact = truth(feature, grid, kd, ks)
    got = dm.dense_motion_input(feature, grid, kd, ks, block_v=64)
    assert got.dtype == dtype
    ref = ops.dense_motion_input_reference(feature, grid, kd, ks)
    slack = 3.0 if (device == "cpu" and dtype == torch.bfloat16) else 2.0  # the interpreter truncates to bf16
    err, ref_err = rel_err(got, exact), rel_err(ref, exact)
    assert err <= slack * ref_err + FLOOR, (err, ref_err)


@pytest.mark.parametrize("device", KERNEL_DEVICES)
def test_dispatch_layouts_and_bad_input(nan_empty, device):
    feature, grid, kd, ks = inputs(2, 4, (3, 4, 5), 3, device, seed=5)
    with backend.use("kernels"):
        plain = ops.dense_motion_input(feature, grid, kd, ks)
        channels_last = ops.dense_motion_input(feature.contiguous(memory_format=torch.channels_last_3d), grid,
                                               kd, ks)
    assert torch.equal(plain, channels_last) and plain.is_contiguous()
    assert_fp32_close(plain, feature, grid, kd, ks)
    with backend.use("reference"):
        assert torch.equal(ops.dense_motion_input(feature, grid, kd, ks),
                           ops.dense_motion_input_reference(feature, grid, kd, ks))
    with pytest.raises(InputError):
        dm.dense_motion_input(feature, grid[..., :2], kd, ks)
    with pytest.raises(InputError):
        dm.dense_motion_input(feature, grid[:2], kd, ks)
    with pytest.raises(InputError):
        dm.dense_motion_input(feature, grid, kd, ks[:, :2])
    with pytest.raises(InputError):
        dm.dense_motion_input(feature, grid, kd, ks, variance=0.0)


def test_module_deformation_is_the_mask_weighted_motion_sum():
    """The warping module's deformation (the grid plus the mask-weighted shifts) equals the mask-weighted sum of
    the sparse motions it stands for."""
    from vasa_engine.config import RendererConfig
    from vasa_engine.models.warping import DenseMotionNetwork

    cfg = RendererConfig.tiny().warping_module
    torch.manual_seed(0)
    net = DenseMotionNetwork(cfg.dense_motion_params, cfg.num_kp, cfg.reshape_channel, True).eval()
    feature = torch.randn(2, cfg.reshape_channel, 4, 8, 8)
    kd = torch.rand(2, cfg.num_kp, 3) * 1.6 - 0.8
    ks = kd + 0.1 * torch.randn(2, cfg.num_kp, 3)
    with torch.no_grad(), backend.use("reference"):
        out = net(feature, kd, ks)
    grid = coordinate_grid(4, 8, 8).double()
    motions = torch.cat([grid.expand(2, 1, 4, 8, 8, 3),
                         grid + (ks - kd).double().view(2, cfg.num_kp, 1, 1, 1, 3)], dim=1)
    expected = torch.einsum("bkdhw,bkdhwc->bdhwc", out["mask"].double(), motions)
    assert rel_err(out["deformation"], expected) <= 1e-6


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", dense_motion_cases(), ids=lambda c: c.name)
def test_renderer_shapes_on_gpu(nan_empty, dtype, case):
    """The renderer's real shapes (vasa_engine.kernel_shapes)."""
    b = case.batch
    feature, grid, kd, ks = inputs(b, case.channels, case.size, case.keypoints, "cuda", dtype=dtype, seed=b)
    got = dm.dense_motion_input(feature.contiguous(memory_format=torch.channels_last_3d), grid, kd, ks)
    if dtype == torch.float32:
        assert_fp32_close(got, feature, grid, kd, ks)
    else:
        exact = truth(feature, grid, kd, ks)
        assert rel_err(got, exact) <= 2 * rel_err(ops.dense_motion_input_reference(feature, grid, kd, ks),
                                                  exact) + FLOOR


def test_aot_specs():
    specs = dm.aot_specs()
    assert {s["signature"]["FEAT"] for s in specs} == {"*fp16", "*bf16", "*fp32"}
    real = {(c.keypoints, c.channels) for c in dense_motion_cases()}
    assert {(s["constexprs"]["K"], s["constexprs"]["C"]) for s in specs} == real
    for s in specs:
        assert s["constexprs"]["BLOCK_C"] == 1 << (s["constexprs"]["C"] - 1).bit_length()
        assert set(s["constexprs"]) <= {k for k, v in s["signature"].items() if v == "constexpr"}
