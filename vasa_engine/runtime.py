"""Devices and dtypes: what "auto" means on this machine, and what the install can use."""

from __future__ import annotations

import contextlib

import torch

from .errors import InputError

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16, "fp16": torch.float16,
          "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    if isinstance(device, torch.device):
        if device.type != "cuda" or device.index is not None:
            return device
        device = "cuda"
    if device == "auto":
        return resolve_device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    try:
        dev = torch.device(device)
    except RuntimeError:
        raise InputError(f"unknown device {device!r} (use auto, cpu, cuda or cuda:N)") from None
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise InputError(f"device {device!r} asked for, but no CUDA device is available")
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise InputError(f"device {device!r} asked for, but only {torch.cuda.device_count()} CUDA device(s) exist")
    if dev.type not in ("cpu", "cuda"):
        raise InputError(f"unsupported device {device!r} (use auto, cpu, cuda or cuda:N)")
    if dev.type == "cuda" and dev.index is None:
        # pinned when the engine is built: a worker thread's own current device must not change it later
        dev = torch.device("cuda", torch.cuda.current_device())
    return dev


def device_context(device: str | torch.device):
    """The context that makes `device` the current device for the work launched inside it: `torch.cuda.device` for
    a CUDA device (so kernels, streams, events and allocations without an explicit device go to it, whichever
    device the calling thread had selected), a null context for any other device. Building it does not initialise
    CUDA; entering it does."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.device(device)
    return contextlib.nullcontext()


def resolve_dtype(dtype: str | torch.dtype, device: torch.device) -> torch.dtype:
    """"auto" is float16 on CUDA (the reference renderer's own half-precision mode) and float32 on the CPU."""
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    if dtype not in DTYPES:
        raise InputError(f"unknown dtype {dtype!r} (use auto, float32, float16 or bfloat16)")
    resolved = DTYPES[dtype]
    if device.type == "cpu" and resolved == torch.float16:
        raise InputError("float16 is not supported on the CPU (use float32 or bfloat16)")
    return resolved


def to_channels_last(module: torch.nn.Module) -> torch.nn.Module:
    """Convolution weights in channels-last layout (NHWC for 2-D, NDHWC for 3-D), which cuDNN and the engine's
    kernels read fastest; other parameters are left as they are."""
    for p in module.parameters():
        if p.dim() == 4:
            p.data = p.data.contiguous(memory_format=torch.channels_last)
        elif p.dim() == 5:
            p.data = p.data.contiguous(memory_format=torch.channels_last_3d)
    return module


def configure_cuda(*, cudnn_benchmark: bool = True, tf32: bool = False) -> None:
    """The process-wide CUDA switches, set deliberately by the program that embeds the engine (the `vasa-engine`
    command calls this once at start; an Engine never changes them). cudnn_benchmark: let cuDNN time its
    convolution algorithms per shape (the engine's shapes are fixed per batch size, so the search is paid once).
    tf32: allow TF32 in float32 matrix multiplies and convolutions (off: float32 stays float32; the engine's CUDA
    dtype is float16 anyway)."""
    torch.backends.cudnn.benchmark = cudnn_benchmark
    torch.backends.cuda.matmul.allow_tf32 = tf32
    torch.backends.cudnn.allow_tf32 = tf32


def cuda_settings(device: torch.device, choice: str = "auto") -> list[str]:
    """What an engine on `device` turns on, as it will actually run here (for `vasa-engine info`): a missing Triton
    or native CUDA extension shows as the PyTorch reference, with the reason."""
    from . import backend, native

    if device.type != "cuda":
        return ["CPU: float32, PyTorch reference, no CUDA graphs"]
    with backend.use(choice):
        kernels = backend.kernels_active(device)
    if kernels:
        ops_words = "Triton kernels"
    elif not backend.triton_available():
        ops_words = "PyTorch reference: Triton is not installed"
    elif backend.interpreting():
        ops_words = "PyTorch reference: TRITON_INTERPRET=1"
    else:
        ops_words = "PyTorch reference"
    step = native.implementation(device)
    step_words = ("fused sampler step (native CUDA kernel)" if step == native.NATIVE_CUDA
                  else f"sampler step and keypoint transform: {step}")
    return [f"dtype {str(resolve_dtype('auto', device)).replace('torch.', '')}", "channels-last convolution weights",
            f"cuDNN autotuning {'on' if torch.backends.cudnn.benchmark else 'off'}, TF32 "
            f"{'on' if torch.backends.cudnn.allow_tf32 or torch.backends.cuda.matmul.allow_tf32 else 'off'} "
            "(process-wide: vasa_engine.runtime.configure_cuda)", f"backend {choice} ({ops_words})",
            "CUDA graphs for the renderer (per batch size) and each window's sampler loop", step_words]


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        return f"{props.name} (sm_{props.major}{props.minor})"
    import platform

    return f"CPU ({platform.machine()}, {torch.get_num_threads()} threads)"


def stage_backends(device: torch.device, choice: str = "auto") -> dict[str, str]:
    """Which implementation each stage runs on `device` under the backend `choice`; for the native operations,
    what `vasa_engine.native` will actually run there (the PyTorch reference with its reason when the extension
    is missing or cannot launch)."""
    from . import backend, native, ops

    with backend.use(choice):
        active = backend.kernels_active(device)
    kernels = ops.registered_kernels() if active else {}
    out = {}
    for stage, names in ops.stage_operations().items():
        got = [n for n in names if n in kernels]
        out[stage] = f"triton kernels ({', '.join(got)}) + pytorch" if got else "pytorch (reference)"
    impl = native.implementation(device)
    out["keypoint transform"] = impl
    out["sampler step"] = f"{impl}: guidance + update fused" if impl.startswith("native") else impl
    return out
