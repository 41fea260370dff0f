"""The optional native extensions: vasa_engine._C (CPU) and vasa_engine._C_cuda (CUDA).

Both are loaded lazily, on first use; a missing or broken extension never makes `import vasa_engine` fail, it only
routes the operations here to their PyTorch references. `extension_info()` says what was found and why not.
This module imports nothing heavy at import time (torch is imported inside the functions that need it).

Which implementation ran is never silent: every call records it (`usage()`, per operation, since `reset_usage()`),
`implementation(device)` says what a call on a device will run and why, and a CUDA tensor that goes through the
PyTorch reference because `_C_cuda` is missing, has no code for the device or cannot launch is recorded in
`cuda_fallbacks()` and announced by one RuntimeWarning per process.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
import threading
from pathlib import Path
from types import ModuleType
from typing import Any

_lock = threading.Lock()
_loaded: dict[str, tuple[ModuleType | None, str | None]] = {}
_device_support: dict[tuple[int, int], bool] = {}
_launch_failures: dict[tuple[int, int], str] = {}  # capability -> why _C_cuda could not launch there

NATIVE_CPU = "native extension (vasa_engine._C)"
NATIVE_CUDA = "native extension (vasa_engine._C_cuda)"
REFERENCE = "pytorch reference"
OPERATIONS = ("driving_keypoints", "sampler_step")

_usage: dict[str, set[str]] = {}  # operation -> implementations it ran on since reset_usage()
_cuda_fallbacks: dict[str, str] = {}  # operation -> why a CUDA call of it ran the reference
_fallback_warned = False


def _load(name: str) -> tuple[ModuleType | None, str | None]:
    with _lock:
        if name not in _loaded:
            try:
                _loaded[name] = (importlib.import_module(f"vasa_engine.{name}"), None)
            except Exception as exc:  # noqa: BLE001 - not built (ImportError), or built against something absent here
                _loaded[name] = (None, f"{type(exc).__name__}: {exc}")
        return _loaded[name]


def cpu_module() -> ModuleType | None:
    """vasa_engine._C, or None when it is not built or does not import."""
    return _load("_C")[0]


def cuda_module() -> ModuleType | None:
    """vasa_engine._C_cuda, or None when it is not built or does not import (importing needs no GPU)."""
    return _load("_C_cuda")[0]


def extension_info() -> dict[str, Any]:
    """What native code is available: {built, reason, path, compiler, cuda_built, cuda_reason, cuda_path,
    cuda_compiler, cuda_archs}. `reason` / `cuda_reason` say why a module did not load (None when it did)."""
    cpu, cpu_reason = _load("_C")
    cuda, cuda_reason = _load("_C_cuda")
    info: dict[str, Any] = {
        "built": cpu is not None,
        "reason": cpu_reason,
        "path": getattr(cpu, "__file__", None),
        "compiler": None,
        "cuda_built": cuda is not None,
        "cuda_reason": cuda_reason,
        "cuda_path": getattr(cuda, "__file__", None),
        "cuda_compiler": None,
        "cuda_archs": [],
    }
    if cpu is not None:
        info["compiler"] = cpu.build_info().get("compiler")
    if cuda is not None:
        cuda_info = cuda.build_info()
        info["cuda_compiler"] = cuda_info.get("cuda_compiler")
        info["cuda_archs"] = list(cuda_info.get("cuda_archs", []))
    return info


def require_native(cuda: bool = False) -> None:
    """Raise VasaError naming the reason when the CPU extension (or, with cuda=True, the CUDA one) is missing."""
    from .errors import VasaError

    for name, wanted in (("_C", True), ("_C_cuda", cuda)):
        mod, reason = _load(name)
        if wanted and mod is None:
            raise VasaError(f"native extension vasa_engine.{name} is not available ({reason}); "
                            "rebuild with `pip install -e .` or `python setup.py build_ext --inplace`")


def _arch_runs_on(arch: str, major: int, minor: int) -> bool:
    """Whether code built for a CMake CUDA architecture entry ('89-real', '90', '90a-real', ...) runs on sm_XY."""
    name, _, kind = arch.partition("-")
    specific = name.endswith(("a", "f"))
    digits = name.rstrip("af")
    if not digits.isdigit():
        return False
    a_major, a_minor = divmod(int(digits), 10)
    sass = kind in ("", "real") and (
        (a_major, a_minor) == (major, minor) if specific else a_major == major and a_minor <= minor)
    ptx = kind in ("", "virtual") and not specific and (a_major, a_minor) <= (major, minor)
    return sass or ptx


def _cuda_runs_on(device: Any, mod: ModuleType) -> bool:
    import torch

    cap = torch.cuda.get_device_capability(device)
    if cap not in _device_support:
        archs = mod.build_info().get("cuda_archs", [])
        _device_support[cap] = any(_arch_runs_on(str(a), cap[0], cap[1]) for a in archs)
    return _device_support[cap]


def cuda_status(device: Any) -> tuple[bool, str | None]:
    """(True, None) when vasa_engine._C_cuda will launch on the CUDA `device`, else (False, the reason): not
    built or not importable, built for other architectures, or a launch there already failed."""
    import torch

    mod, reason = _load("_C_cuda")
    if mod is None:
        return False, f"vasa_engine._C_cuda is not available ({reason})"
    cap = torch.cuda.get_device_capability(device)
    if cap in _launch_failures:
        return False, f"vasa_engine._C_cuda cannot launch on sm_{cap[0]}{cap[1]} ({_launch_failures[cap]})"
    if not _cuda_runs_on(device, mod):
        archs = ", ".join(map(str, mod.build_info().get("cuda_archs", []))) or "none"
        return False, f"vasa_engine._C_cuda has no code for sm_{cap[0]}{cap[1]} (built for {archs})"
    return True, None


def implementation(device: Any) -> str:
    """What the operations here run on `device` (a torch.device or its name), with the reason for a fallback."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        ok, reason = cuda_status(device)
        return NATIVE_CUDA if ok else f"{REFERENCE} ({reason})"
    mod, reason = _load("_C")
    return NATIVE_CPU if mod is not None else f"{REFERENCE} (vasa_engine._C is not available: {reason})"


def _used(op: str, impl: str) -> None:
    with _lock:
        _usage.setdefault(op, set()).add(impl)


def usage() -> dict[str, list[str]]:
    """Operation -> the implementations its calls ran on since the last reset_usage() (a captured CUDA graph
    replays what its capture ran, so a capture counts as the graph's calls)."""
    with _lock:
        return {op: sorted(impls) for op, impls in _usage.items()}


def reset_usage() -> None:
    with _lock:
        _usage.clear()


def cuda_fallbacks() -> dict[str, str]:
    """Operation -> why a call of it on CUDA tensors ran the PyTorch reference (empty when none did)."""
    with _lock:
        return dict(_cuda_fallbacks)


def _cuda_fallback(op: str, reason: str) -> None:
    """Record that `op` ran the reference on CUDA tensors, and warn once per process."""
    import warnings

    global _fallback_warned
    _used(op, REFERENCE)
    with _lock:
        _cuda_fallbacks.setdefault(op, reason)
        first, _fallback_warned = not _fallback_warned, True
    if first:
        warnings.warn(f"vasa_engine.native: {op} on CUDA tensors runs the PyTorch reference: {reason} "
                      "(native.cuda_fallbacks() lists every such operation)", RuntimeWarning, stacklevel=3)


def _cuda_launch(op: str, device: Any, launch) -> bool:
    """`launch(module, stream)` on `device`'s current stream when _C_cuda can run there: True; else False, the
    fallback recorded (and announced once)."""
    import torch

    ok, reason = cuda_status(device)
    if ok:
        try:
            with torch.cuda.device(device):
                launch(cuda_module(), torch.cuda.current_stream(device).cuda_stream)
            _used(op, NATIVE_CUDA)
            return True
        except RuntimeError as exc:  # e.g. a driver older than the CUDA runtime the module was built with
            cap = torch.cuda.get_device_capability(device)
            _launch_failures[cap] = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
            ok, reason = cuda_status(device)
    _cuda_fallback(op, reason or "unknown reason")
    return False


def driving_keypoints(kp, pitch, yaw, roll, exp, t, scale):
    """Driving keypoints (B, K, 3) float32: scale * (kp @ R(pitch, yaw, roll) + exp), then + t on x and y.

    kp: (B, K, 3) or (1, K, 3) (also (B, 3K) / (1, 3K)); pitch, yaw, roll: (B,) degrees; exp: (B, K, 3) or
    (B, 3K); t: (B, 3); scale: (B,) (or (B, 1)). Torch tensors; everything is moved to exp's device and computed
    in float32. CPU tensors go through vasa_engine._C, CUDA tensors through vasa_engine._C_cuda on the current
    stream; without the extension (or when gradients are needed) the PyTorch reference computes it, and `usage()`
    (on CUDA also `cuda_fallbacks()`) says so.
    """
    import torch

    device = exp.device
    batch = exp.shape[0]

    def prep(x, name: str, shape: tuple[int, ...]) -> torch.Tensor:
        x = torch.as_tensor(x).to(device=device, dtype=torch.float32)
        if x.numel() != _numel(shape) or (x.dim() > 0 and x.shape[0] != shape[0]):
            raise ValueError(f"driving_keypoints: {name} must have shape {shape}, got {tuple(x.shape)}")
        return x.reshape(shape).contiguous()

    per_frame = _numel(tuple(exp.shape[1:]))
    if exp.dim() < 2 or per_frame % 3 != 0:
        raise ValueError(f"driving_keypoints: exp must have shape (B, K, 3) or (B, 3K), got {tuple(exp.shape)}")
    num_kp = per_frame // 3
    kp_batch = kp.shape[0] if kp.dim() >= 2 else -1
    if kp_batch not in (1, batch):
        raise ValueError(f"driving_keypoints: kp must have shape ({batch}, {num_kp}, 3) or (1, {num_kp}, 3), "
                         f"got {tuple(kp.shape)}")
    args = (
        prep(kp, "kp", (kp_batch, num_kp, 3)),
        prep(pitch, "pitch", (batch,)),
        prep(yaw, "yaw", (batch,)),
        prep(roll, "roll", (batch,)),
        prep(exp, "exp", (batch, num_kp, 3)),
        prep(t, "t", (batch, 3)),
        prep(scale, "scale", (batch,)),
    )
    out = torch.empty((batch, num_kp, 3), device=device, dtype=torch.float32)
    if out.numel() == 0:
        return out

    needs_grad = torch.is_grad_enabled() and any(a.requires_grad for a in args)
    if not needs_grad:
        if device.type == "cpu":
            mod = cpu_module()
            if mod is not None:
                mod.driving_keypoints(*(a.detach().numpy() for a in args), out.numpy())
                _used("driving_keypoints", NATIVE_CPU)
                return out
        elif device.type == "cuda":
            def launch(mod, stream):
                mod.driving_keypoints(*(a.data_ptr() for a in args), out.data_ptr(), batch, num_kp, kp_batch, stream)

            if _cuda_launch("driving_keypoints", device, launch):
                return out
    _used("driving_keypoints", REFERENCE)
    return _reference(*args)


def _numel(shape: tuple[int, ...]) -> int:
    n = 1
    for s in shape:
        n *= s
    return n


def _reference(kp, pitch, yaw, roll, exp, t, scale):
    from .models.keypoints import rotation_matrix, transform_keypoints

    kp = kp.expand(exp.shape[0], -1, -1)
    return transform_keypoints(kp, rotation_matrix(pitch, yaw, roll), exp, t, scale).float()


_STEP_DTYPES = {"torch.float32": 0, "torch.float16": 1, "torch.bfloat16": 2}


def sampler_step_reference(branches, scales, x_t, x0_prev, z, a: float, b0: float, b1: float, sigma: float):
    """PyTorch reference of the fused step (same operation order): returns (x_prev, x0), both float32."""
    out = branches.float()
    x0 = out[0]
    for k, s in enumerate(scales, start=1):
        x0 = x0 + s * (out[k] - out[k - 1])
    x = a * x_t + b0 * x0
    if x0_prev is not None:
        x = x + b1 * x0_prev
    if z is not None:
        x = x + sigma * z
    return x, x0


def sampler_step(branches, scales, x_t, x0_prev=None, z=None, *, a: float, b0: float, b1: float = 0.0,
                 sigma: float = 0.0, out=None, x0_out=None):
    """One fused reverse-diffusion step: guidance over every branch, then
    x_prev = ((a x_t + b0 x0) + b1 x0_prev) + sigma z.

    branches: (nb, *shape) model outputs in float32, float16 or bfloat16 (branch 0 all conditions dropped, branch k
    adding the k-th); scales: nb - 1 guidance weights; x_t, x0_prev, z: float32 of `shape` (x0_prev and z optional).
    Returns (x_prev, x0) float32 (written into `out` / `x0_out` when given). CPU tensors go through vasa_engine._C,
    CUDA tensors through vasa_engine._C_cuda on the current stream (capturable in a CUDA graph); without the
    extension the PyTorch reference computes it, and `usage()` (on CUDA also `cuda_fallbacks()`) says so.
    """
    import torch

    nb = branches.shape[0]
    if len(scales) != nb - 1:
        raise ValueError(f"sampler_step: {nb} branches need {nb - 1} scales, got {len(scales)}")
    shape = tuple(branches.shape[1:])
    for name, tensor in (("x_t", x_t), ("x0_prev", x0_prev), ("z", z)):
        if tensor is not None and (tuple(tensor.shape) != shape or tensor.dtype != torch.float32):
            raise ValueError(f"sampler_step: {name} must be float32 of shape {shape}, got {tensor.dtype} "
                             f"{tuple(tensor.shape)}")
    dtype = _STEP_DTYPES.get(str(branches.dtype))
    device = x_t.device
    if out is None:
        out = torch.empty(shape, device=device, dtype=torch.float32)
    if x0_out is None:
        x0_out = torch.empty(shape, device=device, dtype=torch.float32)
    flat = [t.contiguous() if t is not None else None for t in (branches, x_t, x0_prev, z)]
    needs_grad = torch.is_grad_enabled() and any(t is not None and t.requires_grad for t in flat)
    fast = dtype is not None and out.is_contiguous() and x0_out.is_contiguous() and not needs_grad
    if fast and device.type == "cpu" and cpu_module() is not None:
        b = flat[0].reshape(nb, -1)
        b_np = b.view(torch.int16).numpy() if dtype == 2 else b.numpy()
        vec = [None if t is None else t.reshape(-1).numpy() for t in flat[1:]]
        cpu_module().sampler_step(b_np, dtype, [float(s) for s in scales], vec[0], vec[1], vec[2], float(a),
                                  float(b0), float(b1), float(sigma), out.view(-1).numpy(), x0_out.view(-1).numpy())
        _used("sampler_step", NATIVE_CPU)
        return out, x0_out
    if fast and device.type == "cuda":
        def launch(mod, stream):
            ptr = [0 if t is None else t.data_ptr() for t in flat]
            mod.sampler_step(ptr[0], dtype, out.numel(), [float(s) for s in scales], ptr[1], ptr[2], ptr[3],
                             float(a), float(b0), float(b1), float(sigma), out.data_ptr(), x0_out.data_ptr(), stream)

        if _cuda_launch("sampler_step", device, launch):
            return out, x0_out
    else:
        _used("sampler_step", REFERENCE)
    x, x0 = sampler_step_reference(branches, scales, x_t, x0_prev, z, a, b0, b1, sigma)
    out.copy_(x)
    x0_out.copy_(x0)
    return out, x0_out


class _SourceKernelsFinder(importlib.abc.MetaPathFinder):
    """Resolves vasa_engine.kernels to the top-level kernels/ folder of a source checkout."""

    def __init__(self, folder: Path):
        self.folder = folder

    def find_spec(self, fullname, path=None, target=None):
        if fullname != "vasa_engine.kernels":
            return None
        return importlib.util.spec_from_file_location(
            fullname, self.folder / "__init__.py", submodule_search_locations=[str(self.folder)])


def install_kernels_fallback() -> bool:
    """Make `import vasa_engine.kernels` work from a source checkout that was never pip-installed (for example
    after `python setup.py build_ext --inplace`). Installed and editable installs resolve it themselves; this
    finder goes last on sys.meta_path, so it only answers when nothing else does. Returns whether it was added."""
    pkg = Path(__file__).resolve().parent
    source_kernels = pkg.parent / "kernels"
    if (pkg / "kernels").is_dir() or not (pkg.parent / "pyproject.toml").is_file():
        return False
    if not (source_kernels / "__init__.py").is_file():
        return False
    if any(isinstance(f, _SourceKernelsFinder) for f in sys.meta_path):
        return False
    sys.meta_path.append(_SourceKernelsFinder(source_kernels))
    return True
