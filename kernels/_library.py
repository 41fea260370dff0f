"""The kernels as PyTorch library operators, so that they trace under fake tensors and compose with torch.compile.

Each kernel module keeps its wrapper, registered for an operation with `vasa_engine.ops.register_kernel`: it checks
the arguments, declines what it does not take (returns NotImplemented, and the reference runs), allocates the
outputs and calls one library operator, `vasa_engine::<name>`, which launches the Triton kernels into those outputs
(they are its mutated arguments). Shapes, dtypes and devices are decided in the wrapper, so a trace on fake tensors
(`vasa-engine gpu-check`) sees exactly what a GPU run allocates.

The operator is a `torch.library.triton_op`: its fake implementation is its own body, run on fake tensors, where
`torch.library.wrap_triton` records each launch instead of running it, and torch.compile sees the kernels
themselves. Under Triton's interpreter (TRITON_INTERPRET=1: the kernels are not JIT functions, and wrap_triton
cannot trace them) the operator is an opaque `torch.library.custom_op` with the same body as its fake
implementation, and a launch on fake tensors does nothing.

`launch` checks the launch contract first: every tensor argument on one device, and that device a CUDA one for a
compiled kernel (an interpreted one runs on CPU tensors).
"""

from __future__ import annotations

from typing import Callable, Iterable

import torch

NAMESPACE = "vasa_engine"


def interpreted(kernel) -> bool:
    """Whether `kernel` runs in Triton's interpreter (decided when it was decorated, by TRITON_INTERPRET)."""
    try:
        from triton.runtime.interpreter import InterpretedFunction
    except ImportError:
        return False
    return isinstance(kernel, InterpretedFunction)


def traced(t: torch.Tensor) -> bool:
    """Whether t is a tensor of a trace (fake, or functional over fake): shape, dtype and device but no memory."""
    from torch._subclasses.fake_tensor import is_fake

    return is_fake(t)


def address(t: torch.Tensor) -> int:
    """The address of t's first element for alignment checks: the real one, or for a traced tensor its byte offset
    into its allocation (allocations are at least 16-byte aligned, which is also what torch.compile assumes)."""
    if traced(t):
        return t.storage_offset() * t.element_size()
    return t.data_ptr()


def _kernel_name(kernel) -> str:
    fn = getattr(kernel, "fn", kernel)
    return getattr(fn, "__name__", type(kernel).__name__)


def launch(kernel, grid: tuple, *args, **kwargs) -> None:
    """kernel[grid](*args, **kwargs), after checking that its tensors share one device (a CUDA device unless the
    kernel is interpreted); traceable through wrap_triton. A launch on a trace's tensors that cannot be traced (an
    interpreted kernel) is skipped: a fake tensor has nothing to compute."""
    tensors = [a for a in list(args) + list(kwargs.values()) if isinstance(a, torch.Tensor)]
    devices = sorted({str(t.device) for t in tensors})
    if len(devices) > 1:
        raise RuntimeError(f"Triton kernel {_kernel_name(kernel)}: its tensors are on several devices "
                           f"({', '.join(devices)})")
    if interpreted(kernel):
        if not any(traced(t) for t in tensors):
            kernel[grid](*args, **kwargs)
        return
    if tensors and tensors[0].device.type != "cuda":
        raise RuntimeError(f"Triton kernel {_kernel_name(kernel)}: its tensors are on {devices[0]}, not on a CUDA "
                           "device (set TRITON_INTERPRET=1 to run the kernels on CPU tensors)")
    torch.library.wrap_triton(kernel)[grid](*args, **kwargs)


def library_op(name: str, mutates_args: Iterable[str]) -> Callable[[Callable], Callable]:
    """Register `fn` as the operator vasa_engine::<name> (see the module's docstring) and return the operator.

    Registering a name twice (a kernel module imported under a second name) returns the operator already there."""
    def decorate(fn: Callable) -> Callable:
        existing = getattr(getattr(torch.ops, NAMESPACE), name, None)
        if existing is not None:
            return existing
        qualified = f"{NAMESPACE}::{name}"
        from vasa_engine.backend import interpreting

        if interpreting():
            op = torch.library.custom_op(qualified, mutates_args=tuple(mutates_args))(fn)
            op.register_fake(fn)
            return op
        return torch.library.triton_op(qualified, mutates_args=tuple(mutates_args))(fn)

    return decorate
