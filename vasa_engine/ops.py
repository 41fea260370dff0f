"""The operations the models route through the backend switch.

Each operation has a plain PyTorch reference here (`<name>_reference`). The model code calls the operation, never
a kernel directly; a Triton kernel registers itself for an operation with `@register_kernel(name)` (in the
`vasa_engine.kernels` package, imported on first use), and runs when `backend.kernels_active` says so for the
tensors' device. A kernel may return `NotImplemented` for arguments it does not handle; the reference runs then.
Past those checks a kernel allocates its outputs and launches through a PyTorch library operator named after the
operation (`torch.ops.vasa_engine.<name>`, see kernels/_library.py), so the kernels trace on fake tensors
(`vasa-engine gpu-check`) and under torch.compile.

`OPERATIONS` says, for every operation, which stages' models call it and which file of benches/ times its kernel:
`vasa-engine info` (`runtime.stage_backends`) and the GPU suite read it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F

from . import backend

STAGES = ("audio encoder", "motion generator", "renderer")


@dataclass(frozen=True)
class Operation:
    stages: tuple[str, ...]  # the stages whose models call it, from STAGES
    bench: str  # the file of benches/ that times its kernel, in a test named test_<operation>


OPERATIONS = {
    "attention": Operation(("audio encoder", "motion generator"), "test_bench_attention.py"),
    "add_layer_norm": Operation(("audio encoder", "motion generator"), "test_bench_layer_norm.py"),
    "add_embeddings": Operation(("motion generator",), "test_bench_layer_norm.py"),
    "dense_motion_input": Operation(("renderer",), "test_bench_grid_sample.py"),
    "grid_sample_3d": Operation(("renderer",), "test_bench_grid_sample.py"),
    "spade_modulate": Operation(("renderer",), "test_bench_spade_modulate.py"),
}


def stage_operations() -> dict[str, tuple[str, ...]]:
    """Stage -> the operations its models call, in the order of OPERATIONS."""
    return {stage: tuple(name for name, op in OPERATIONS.items() if stage in op.stages) for stage in STAGES}


def kernel_benches() -> tuple[str, ...]:
    """The files of benches/ that time the operations' kernels, each once."""
    return tuple(dict.fromkeys(op.bench for op in OPERATIONS.values()))


_KERNELS: dict[str, Callable] = {}
_loaded = False


def register_kernel(name: str):
    def decorate(fn: Callable) -> Callable:
        _KERNELS[name] = fn
        return fn

    return decorate


def registered_kernels() -> dict[str, Callable]:
    _load_kernels()
    return dict(_KERNELS)


def _load_kernels() -> None:
    global _loaded
    if not _loaded:
        _loaded = True
        import vasa_engine.kernels  # noqa: F401  (registers every kernel module)


def _dispatch(name: str, device, *args, **kwargs):
    if backend.kernels_active(device):
        _load_kernels()
        kernel = _KERNELS.get(name)
        if kernel is not None:
            out = kernel(*args, **kwargs)
            if out is not NotImplemented:
                return out
    return NotImplemented


# ------------------------------------------------------------------------------------------------ grid sample


def grid_sample_3d_reference(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False,
                             padding_mode: str = "zeros") -> torch.Tensor:
    out = F.grid_sample(volume.float(), grid.float(), mode="bilinear", padding_mode=padding_mode,
                        align_corners=align_corners)
    return out.to(volume.dtype)


def grid_sample_3d(volume: torch.Tensor, grid: torch.Tensor, align_corners: bool = False,
                   padding_mode: str = "zeros") -> torch.Tensor:
    """Trilinear sample of volume (B, C, D, H, W) at grid (B, d, h, w, 3) holding (x, y, z) in [-1, 1]
    -> (B, C, d, h, w) in the volume's dtype. Coordinates are used in fp32 whatever the volume's dtype.
    padding_mode "zeros" or "border"."""
    out = _dispatch("grid_sample_3d", volume.device, volume, grid, align_corners=align_corners,
                    padding_mode=padding_mode)
    if out is NotImplemented:
        out = grid_sample_3d_reference(volume, grid, align_corners, padding_mode)
    return out


# ------------------------------------------------------------------------------------------------ dense motion


def _dense_motion_input(feature, grid, kp_driving, kp_source, variance, sample):
    b, c, d, h, w = feature.shape
    k = kp_driving.shape[1]
    ident = grid.float()[None, None]  # (1, 1, d, h, w, 3)
    kp_driving, kp_source = kp_driving.float(), kp_source.float()
    shift = (kp_source - kp_driving).view(b, k, 1, 1, 1, 3)
    motions = torch.cat([ident.expand(b, 1, d, h, w, 3), ident + shift], dim=1)
    repeated = feature.unsqueeze(1).expand(b, k + 1, c, d, h, w).reshape(b * (k + 1), c, d, h, w)
    deformed = sample(repeated, motions.reshape(b * (k + 1), d, h, w, 3)).view(b, k + 1, c, d, h, w)

    def gauss(kp: torch.Tensor) -> torch.Tensor:
        diff = ident - kp.view(b, k, 1, 1, 1, 3)
        return torch.exp(-0.5 * (diff**2).sum(-1) / variance)

    heat = gauss(kp_driving) - gauss(kp_source)
    heat = torch.cat([heat.new_zeros(b, 1, d, h, w), heat], dim=1).unsqueeze(2).to(deformed.dtype)
    return torch.cat([heat, deformed], dim=2).view(b, (k + 1) * (c + 1), d, h, w)


def dense_motion_input_reference(feature: torch.Tensor, grid: torch.Tensor, kp_driving: torch.Tensor,
                                 kp_source: torch.Tensor, variance: float = 0.01) -> torch.Tensor:
    return _dense_motion_input(feature, grid, kp_driving, kp_source, variance, grid_sample_3d_reference)


def dense_motion_input(feature: torch.Tensor, grid: torch.Tensor, kp_driving: torch.Tensor, kp_source: torch.Tensor,
                       variance: float = 0.01) -> torch.Tensor:
    """The dense motion network's hourglass input, for K keypoints: per motion k = 0..K (k = 0 the identity, k >= 1
    the sparse motion grid - kp_driving[k] + kp_source[k]), the heatmap Gaussian(kp_driving[k]) -
    Gaussian(kp_source[k]) over the grid (0 for k = 0) followed by the C channels of the feature volume sampled
    trilinearly at that motion (zeros padding, align_corners False).

    feature (B, C, d, h, w); grid (d, h, w, 3) fp32, the (x, y, z) of each voxel in [-1, 1]; keypoints (B, K, 3).
    Returns (B, (K + 1) * (C + 1), d, h, w) in the feature's dtype, heatmaps and sampled motions in fp32 first."""
    out = _dispatch("dense_motion_input", feature.device, feature, grid, kp_driving, kp_source, variance=variance)
    if out is NotImplemented:  # the unfused path (its grid sample may still run a kernel)
        out = _dense_motion_input(feature, grid, kp_driving, kp_source, variance, grid_sample_3d)
    return out


# ------------------------------------------------------------------------------------------------ attention


def attention_reference(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                        key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    mask = None if key_padding_mask is None else ~key_padding_mask[:, None, None, :]
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
              key_padding_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Softmax attention over (B, H, N, Dh) tensors, scale 1/sqrt(Dh), no causal mask. key_padding_mask:
    (B, N_k) bool, True for keys to ignore (every query row must keep at least one key)."""
    out = _dispatch("attention", q.device, q, k, v, key_padding_mask=key_padding_mask)
    if out is NotImplemented:
        out = attention_reference(q, k, v, key_padding_mask)
    return out


# ------------------------------------------------------------------------------------------------ norms


def add_layer_norm_reference(x: torch.Tensor, residual: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor,
                             eps: float) -> torch.Tensor:
    return F.layer_norm(x + residual, weight.shape, weight, bias, eps)


def add_layer_norm(x: torch.Tensor, residual: torch.Tensor, norm: torch.nn.LayerNorm) -> torch.Tensor:
    """LayerNorm(x + residual) over the last axis: the post-norm transformer's residual step."""
    out = _dispatch("add_layer_norm", x.device, x, residual, norm.weight, norm.bias, norm.eps)
    if out is NotImplemented:
        out = add_layer_norm_reference(x, residual, norm.weight, norm.bias, norm.eps)
    return out


def add_embeddings_reference(x: torch.Tensor, positions: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    return x + positions[None, : x.shape[1]] + condition


def add_embeddings(x: torch.Tensor, positions: torch.Tensor, condition: torch.Tensor) -> torch.Tensor:
    """Tokens (B, N, d) + position table rows (>= N, d) + per-window condition embedding (B, 1, d): the sum of
    the step, gaze, distance and emotion embeddings."""
    out = _dispatch("add_embeddings", x.device, x, positions, condition)
    if out is NotImplemented:
        out = add_embeddings_reference(x, positions, condition)
    return out


def spade_modulate_reference(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor,
                             negative_slope: float | None = None, eps: float = 1e-5) -> torch.Tensor:
    out = F.instance_norm(x, eps=eps) * (1 + gamma) + beta
    return out if negative_slope is None else F.leaky_relu(out, negative_slope)


def spade_modulate(x: torch.Tensor, gamma: torch.Tensor, beta: torch.Tensor, negative_slope: float | None = None,
                   eps: float = 1e-5) -> torch.Tensor:
    """InstanceNorm(x) * (1 + gamma) + beta, then LeakyReLU(negative_slope) unless it is None. All (B, C, H, W)."""
    out = _dispatch("spade_modulate", x.device, x, gamma, beta, negative_slope=negative_slope, eps=eps)
    if out is NotImplemented:
        out = spade_modulate_reference(x, gamma, beta, negative_slope, eps)
    return out
