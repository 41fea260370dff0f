"""Trilinear grid sample kernel (kernels/grid_sample.py) against torch.nn.functional.grid_sample in float64.

On CPU tensors the kernel runs in Triton's interpreter (tests/conftest.py sets TRITON_INTERPRET=1 without a GPU);
the same cases run on CUDA in the GPU-marked variants. Outputs are pre-filled with NaN so that an element the
kernel does not write fails the comparison.

The interpreter converts fp32 to bf16 by truncation (numpy has no bf16), where the GPU rounds to nearest: a
truncated result has twice the rounding error, so bf16 bounds are looser under the interpreter (see BF16_SLACK).
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from helpers import KERNEL_DEVICES, rel_err
from vasa_engine import backend, ops
from vasa_engine.errors import InputError
from vasa_engine.kernel_shapes import grid_sample_cases

gs = pytest.importorskip("vasa_engine.kernels.grid_sample")


CUDA = torch.cuda.is_available()
DEVICES = KERNEL_DEVICES
FP32_BOUND = 2e-6
FLOOR = 1e-6


def bf16_slack(device: str) -> float:
    return 3.0 if device == "cpu" else 2.0


def pytorch_grid_sample(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False,
                        padding_mode: str = "zeros") -> torch.Tensor:
    """PyTorch's own op, the baseline of the kernel (also imported by the benchmarks)."""
    return F.grid_sample(volume, grid, mode="bilinear", padding_mode=padding_mode, align_corners=align_corners)


def truth(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool, padding_mode: str) -> torch.Tensor:
    """float64 result on the CPU, from the same (already rounded) inputs the kernel sees."""
    return pytorch_grid_sample(volume.double().cpu(), grid.float().double().cpu(), align_corners, padding_mode)


def nan_out(volume: torch.Tensor, grid: torch.Tensor) -> torch.Tensor:
    b, c = volume.shape[:2]
    d, h, w = grid.shape[1:4]
    return torch.full((b, c, d, h, w), float("nan"), dtype=volume.dtype, device=volume.device).contiguous(
        memory_format=torch.channels_last_3d)


def random_grid(b, d, h, w, device, span=1.3, seed=0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return ((torch.rand(b, d, h, w, 3, generator=gen, dtype=torch.float64) * 2 - 1) * span).float().to(device)


def random_volume(shape, device, dtype=torch.float32, seed=1) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=gen, dtype=torch.float64).to(dtype).to(device)


def centre_grid(b, size, align_corners, device) -> torch.Tensor:
    """Grid hitting exact voxel centres of a (D, H, W) = size volume (a shuffled selection of them)."""
    d, h, w = size

    def centres(n):
        i = torch.arange(n, dtype=torch.float64)
        return (2 * i / (n - 1) - 1) if align_corners else ((2 * i + 1) / n - 1)

    z, y, x = torch.meshgrid(centres(d), centres(h), centres(w), indexing="ij")
    pts = torch.stack((x, y, z), -1).reshape(-1, 3)
    pts = pts[torch.randperm(pts.shape[0], generator=torch.Generator().manual_seed(2))]
    return pts.reshape(1, d, h, w, 3).expand(b, d, h, w, 3).float().contiguous().to(device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("channels", [1, 3, 4, 5])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
@pytest.mark.parametrize("align_corners", [False, True])
def test_matches_pytorch_fp32(device, channels, padding_mode, align_corners):
    volume = random_volume((2, channels, 3, 5, 7), device, seed=channels)
    grid = random_grid(2, 3, 4, 5, device, seed=channels + 10)
    out = nan_out(volume, grid)
    got = gs.grid_sample_3d(volume, grid, align_corners=align_corners, padding_mode=padding_mode, out=out,
                            block_v=32)
    assert got is out
    err = rel_err(got.cpu(), truth(volume, grid, align_corners, padding_mode))
    assert err <= FP32_BOUND, err


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_exact_voxel_centres(device, align_corners):
    volume = random_volume((2, 3, 4, 5, 6), device)
    grid = centre_grid(2, (4, 5, 6), align_corners, device)
    for padding_mode in ("zeros", "border"):
        got = gs.grid_sample_3d(volume, grid, align_corners=align_corners, padding_mode=padding_mode,
                                out=nan_out(volume, grid))
        err = rel_err(got.cpu(), truth(volume, grid, align_corners, padding_mode))
        assert err <= FP32_BOUND, (padding_mode, err)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("padding_mode", ["zeros", "border"])
def test_low_precision_volume_fp32_grid(device, dtype, padding_mode):
    volume = random_volume((2, 5, 4, 6, 9), device, dtype=dtype)
    grid = random_grid(2, 3, 5, 6, device)
    exact = truth(volume, grid, False, padding_mode)
    got = gs.grid_sample_3d(volume, grid, padding_mode=padding_mode, out=nan_out(volume, grid))
    assert got.dtype == dtype
    ref = ops.grid_sample_3d_reference(volume, grid, padding_mode=padding_mode)
    slack = bf16_slack(device) if dtype == torch.bfloat16 else 2.0
    err, ref_err = rel_err(got.cpu(), exact), rel_err(ref.cpu(), exact)
    assert err <= slack * ref_err + FLOOR, (err, ref_err)


@pytest.mark.parametrize("device", DEVICES)
def test_input_layouts_and_output_channels_last(device):
    """Contiguous (NCDHW) and channels-last volumes, a non-contiguous grid, and an fp16 grid all give the same
    result; the output is channels-last."""
    volume = random_volume((2, 5, 3, 6, 8), device)
    grid = random_grid(2, 7, 4, 3, device).permute(0, 3, 2, 1, 4)  # (2, 3, 4, 7, 3), non-contiguous
    exact = truth(volume, grid, False, "zeros")
    for vol in (volume, volume.contiguous(memory_format=torch.channels_last_3d)):
        with backend.use("kernels"):
            got = ops.grid_sample_3d(vol, grid)
        assert got.is_contiguous(memory_format=torch.channels_last_3d)
        assert rel_err(got.cpu(), exact) <= FP32_BOUND
    half_grid = grid.half()
    got = gs.grid_sample_3d(volume, half_grid, out=nan_out(volume, half_grid))
    assert rel_err(got.cpu(), truth(volume, half_grid, False, "zeros")) <= FP32_BOUND


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("align_corners", [False, True])
def test_non_finite_coordinates(device, align_corners):
    """Zeros padding: NaN and +-inf contribute nothing. Border: +inf -> last voxel, -inf and NaN -> first voxel
    (torch's CUDA behaviour; see the kernel module)."""
    volume = random_volume((1, 3, 3, 4, 5), device)
    grid = random_grid(1, 2, 3, 4, device, span=0.9)
    specials = [float("nan"), float("inf"), -float("inf")]
    flat = grid.view(-1, 3)
    for i in range(flat.shape[0]):
        flat[i, i % 3] = specials[i % 3]
        if i % 4 == 0:
            flat[i, (i + 1) % 3] = specials[(i + 1) % 3]
    replaced = torch.nan_to_num(grid, nan=-1e6, posinf=1e6, neginf=-1e6)
    zeros = gs.grid_sample_3d(volume, grid, align_corners=align_corners, out=nan_out(volume, grid))
    assert torch.equal(zeros.cpu(), torch.zeros_like(zeros.cpu()))
    border = gs.grid_sample_3d(volume, grid, align_corners=align_corners, padding_mode="border",
                               out=nan_out(volume, grid))
    assert rel_err(border.cpu(), truth(volume, replaced, align_corners, "border")) <= FP32_BOUND
    if device == "cuda":  # the same as torch's own CUDA kernel, non-finite coordinates included
        for mode, got in (("zeros", zeros), ("border", border)):
            assert rel_err(got, pytorch_grid_sample(volume, grid, align_corners, mode)) <= FP32_BOUND


@pytest.mark.parametrize("device", DEVICES)
def test_dispatch_and_fallback(device):
    volume = random_volume((2, 3, 3, 4, 5), device)
    grid = random_grid(2, 2, 3, 4, device)
    assert gs.grid_sample_3d(volume, grid, padding_mode="reflection") is NotImplemented
    with backend.use("kernels"):
        assert ops.registered_kernels()["grid_sample_3d"] is gs.grid_sample_3d
        got = ops.grid_sample_3d(volume, grid, padding_mode="reflection")  # the reference runs
    assert rel_err(got.cpu(), pytorch_grid_sample(volume.double(), grid.double(), False, "reflection").cpu()) < 1e-6
    with pytest.raises(InputError):
        gs.grid_sample_3d(volume, grid[..., :2])
    with pytest.raises(InputError):
        gs.grid_sample_3d(volume, grid[:1])
    with pytest.raises(InputError):
        gs.grid_sample_3d(volume, grid, out=torch.empty(2, 3, 2, 3, 4, device=device))


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("case", grid_sample_cases(batches=(1,)), ids=lambda c: c.name)
def test_engine_shapes_on_gpu(dtype, case):
    """The engine's real shapes (vasa_engine.kernel_shapes), against PyTorch's op in fp32 on the GPU."""
    volume = random_volume(case.shape, "cuda", dtype=dtype)
    grid = random_grid(case.batch, *case.size, "cuda", span=1.1)
    exact = pytorch_grid_sample(volume.double(), grid.double())
    got = gs.grid_sample_3d(volume, grid, out=nan_out(volume, grid))
    ref = ops.grid_sample_3d_reference(volume, grid)
    assert rel_err(got, exact) <= 2 * rel_err(ref, exact) + FLOOR


def test_aot_specs_cover_dtypes_and_channels():
    specs = gs.aot_specs()
    seen = {(s["constexprs"]["C"], s["signature"]["VOL"]) for s in specs}
    assert seen == {(c.channels, t) for c in grid_sample_cases() for t in ("*fp16", "*bf16", "*fp32")}
    for s in specs:
        assert s["signature"]["GRID"] == "*fp32"
        assert set(s["constexprs"]) <= {k for k, v in s["signature"].items() if v == "constexpr"}
        assert s["constexprs"]["BLOCK_C"] == 2 ** math.ceil(math.log2(s["constexprs"]["C"]))


@pytest.mark.skipif(not backend.interpreting() and not CUDA, reason="needs CUDA or Triton's interpreter")
@pytest.mark.parametrize("name", ["lp_warping_module", "lp_render"])
def test_renderer_fixtures_with_kernels(name):
    """The public reference's outputs, with every registered kernel on (fp32, CPU tensors in the interpreter)."""
    import json

    from safetensors.torch import load_file

    from conftest import require_parity_dir
    from vasa_engine.compat import run_fixture

    path = require_parity_dir() / f"{name}.safetensors"
    expected = {k.removeprefix("outputs."): v for k, v in load_file(str(path)).items() if k.startswith("outputs.")}
    assert set(expected) == set(json.loads(path.with_suffix(".json").read_text())["outputs"])
    torch.manual_seed(0)
    with backend.use("kernels"):
        out = run_fixture(path)
    for key, value in expected.items():
        err = rel_err(out[key], value)
        assert err <= 1e-5, f"{name}.{key}: relative error {err:.3e}"
