"""Run the traced stages (vasa_engine.tracing.stages) under fake tensors on "cuda:0" and collect what they did: each
output's shape, dtype and device, the kernels each stage ran, and the device memory they take.

A stage fails (`GpuCheckError`, one line naming the stage and the problem) when it raises, when an operator gets
tensors its CUDA kernel refuses (vasa_engine.tracing.watch), when one of its operations ran the PyTorch reference
instead of its kernel, or when an output is not on the device or not in the dtype the engine keeps it in.
"""

from __future__ import annotations

import os
import traceback
from collections import Counter
from dataclasses import dataclass, field

import torch

from .fake_cuda import DEVICE, guard_free_bindings, runtime_set_aside
from .stages import MODEL_DTYPE, Models, Stage, build_models, expected_kernels, stages, stream_context_bytes, wanted
from .watch import BLOCK_BYTES, DeviceWatch

_PACKAGE = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
_KERNELS = os.path.join(os.path.dirname(_PACKAGE), "kernels")


class GpuCheckError(Exception):
    """A stage of the traced CUDA path failed: `stage` and `problem`, one line together."""

    def __init__(self, stage: str, problem: str):
        super().__init__(f"{stage}: {problem}")
        self.stage, self.problem = stage, problem


@dataclass
class Output:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype
    device: torch.device
    nbytes: int


@dataclass
class StageResult:
    name: str
    description: str
    outputs: list[Output]
    peak: int  # bytes: the most the stage had allocated at once, its outputs included
    kept: int  # bytes of its outputs
    graph: str | None  # the engine's CUDA graph that captures the stage on a GPU
    kernels: Counter = field(default_factory=Counter)


@dataclass
class CheckResult:
    dtype: torch.dtype
    batch: int
    weights: dict[str, int]  # module -> bytes of its parameters and buffers
    stages: dict[str, StageResult]
    stream_context: int  # bytes of one stream's start noise and context windows


def allocated(nbytes: int) -> int:
    """Bytes the CUDA caching allocator takes for a tensor of nbytes."""
    return -(-nbytes // BLOCK_BYTES) * BLOCK_BYTES


def module_bytes(module: torch.nn.Module) -> int:
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes()
                for t in list(module.parameters()) + list(module.buffers())}
    return sum(allocated(n) for n in storages.values())


def _where(exc: BaseException) -> str:
    """The innermost frame of the engine's own code (vasa_engine/ or kernels/) in the exception's traceback."""
    frames = [f for f in traceback.extract_tb(exc.__traceback__)
              if f.filename.startswith((_PACKAGE + os.sep, _KERNELS + os.sep)) and os.sep + "tracing" + os.sep
              not in f.filename]
    if not frames:
        return ""
    f = frames[-1]
    return f" (at {os.path.relpath(f.filename, os.path.dirname(_PACKAGE))}:{f.lineno})"


def describe(exc: BaseException) -> str:
    """One line for an exception raised inside a traced stage."""
    name = type(exc).__name__
    message = (str(exc).strip().splitlines() or [""])[0]
    if name == "DataDependentOutputException":
        message = (f"a device value is read on the host ({message}: .item(), float(), bool(), .tolist() or a Python "
                   "branch on a tensor), which syncs the device and cannot be captured in a CUDA graph")
    elif name == "DynamicOutputShapeException":
        message = f"an operator whose output shape depends on the values ({message}), which cannot be captured"
    elif "not linked with support for cuda" in message or "not compiled with CUDA" in message:
        message = f"a CUDA runtime call that the trace cannot make without a device ({message})"
    else:
        message = f"{name}: {message}"
    return message + _where(exc)


def _outputs(outputs: dict) -> list[Output]:
    return [Output(name, tuple(t.shape), t.dtype, t.device, allocated(t.untyped_storage().nbytes()))
            for name, t in outputs.items() if isinstance(t, torch.Tensor)]


def _verify(stage: Stage, outputs: list[Output], kernels: Counter, dtype: torch.dtype) -> None:
    for missing in sorted(expected_kernels(stage) - set(kernels)):
        raise GpuCheckError(stage.name, f"the {missing} kernel did not run: it declined its arguments and the "
                                        "PyTorch reference ran instead")
    for out in outputs:
        want = stage.dtypes.get(out.name)
        want = dtype if want == MODEL_DTYPE else want
        if out.device != DEVICE:
            raise GpuCheckError(stage.name, f"output {out.name} is on {out.device}, not on {DEVICE}")
        if want is not None and out.dtype != want:
            raise GpuCheckError(stage.name, f"output {out.name} is {out.dtype}, expected {want}")


def run_check(batch: int = 8, dtype: torch.dtype = torch.float16, settings=None, only=()) -> CheckResult:
    """Trace every stage at full size (frames in batches of `batch`, in `dtype`), or only the stages named in `only`
    and those they need; settings: the StreamSettings of the audio chunk. GpuCheckError on the first problem."""
    from torch._subclasses.fake_tensor import FakeTensorMode

    from ..backend import triton_available

    if not triton_available():
        raise GpuCheckError("kernels", "Triton is not installed, so the kernels the engine runs on CUDA cannot be "
                                       "traced")
    mode = FakeTensorMode(allow_non_fake_inputs=True)
    try:
        models: Models = build_models(mode, dtype)
    except Exception as exc:  # noqa: BLE001 - any failure to build is reported as one line
        raise GpuCheckError("models", describe(exc)) from exc
    weights = {name: module_bytes(module) for name, module in models.modules().items()}
    watch = DeviceWatch()
    results, before = {}, {}
    with guard_free_bindings(), runtime_set_aside(), mode, watch, torch.no_grad():
        for stage in wanted(stages(models, batch, settings), only):
            base = watch.reset_peak()
            watch.kernel_calls.clear()
            try:
                out = stage.run(before)
            except GpuCheckError:
                raise
            except Exception as exc:  # noqa: BLE001 - whatever a stage raises is its problem, named in one line
                raise GpuCheckError(stage.name, describe(exc)) from exc
            outputs = _outputs(out)
            _verify(stage, outputs, watch.kernel_calls, dtype)
            results[stage.name] = StageResult(stage.name, stage.description, outputs, watch.peak - base,
                                              watch.live - base, stage.graph, Counter(watch.kernel_calls))
            before[stage.name] = out
    return CheckResult(dtype, batch, weights, results, stream_context_bytes(models, allocated))
