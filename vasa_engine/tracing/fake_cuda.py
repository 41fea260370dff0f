"""Fake tensors on device "cuda" in a process that has no CUDA (a CPU-only build of PyTorch included).

`torch._subclasses.fake_tensor.FakeTensorMode` already makes tensors on "cuda:0" that hold a shape, a dtype, strides
and a device but no memory, and runs every operator's meta implementation on them (a device given as "cuda" with no
index asks the driver for the current device, so the trace names "cuda:0"). What stops a CUDA path from running on
them without a GPU is a handful of Python bindings of `torch.Tensor` that open a CUDA device guard before they
dispatch: indexing, `contiguous`, `copy_`, `~`, `new_tensor`. While `guard_free_bindings()` is entered, those
methods route fake CUDA tensors to the same ATen operators through the dispatcher, which needs no device guard:

    x[index]          -> select / slice / unsqueeze, then aten.index for tensor indices (torch's own order)
    x[index] = value  -> the same view, then aten.copy_ / aten.fill_ / aten.index_put_
    x.contiguous(f)   -> x itself, or aten.clone(x, memory_format=f)

`fake_module` turns a module built on the meta device (with its dtypes and memory formats already set) into one
whose parameters and buffers are fake tensors on the device, with the same shapes, strides and dtypes.
`runtime_set_aside` sets aside, for the trace, what runs on the device but is not traced.
"""

from __future__ import annotations

import contextlib

import torch
from torch._subclasses.fake_tensor import is_fake

DEVICE = torch.device("cuda", 0)
aten = torch.ops.aten


def _consumes(item) -> int:
    """Dimensions of the indexed tensor an index item takes."""
    if item is None or item is Ellipsis or isinstance(item, bool):
        return 0
    if isinstance(item, torch.Tensor) and item.dtype in (torch.bool, torch.uint8):
        return item.dim()
    return 1


def _view(x: torch.Tensor, index) -> tuple[torch.Tensor, list | None]:
    """x indexed by the basic items of `index` (ints, slices, None, Ellipsis, Python bools) and the tensor items
    left for aten.index, one entry per dimension of the view (None where the dimension is taken whole)."""
    items = index if isinstance(index, tuple) else (index,)
    out, dim, advanced = x, 0, []
    for item in items:
        if item is Ellipsis:
            skip = x.dim() - sum(_consumes(i) for i in items)
            advanced += [None] * skip
            dim += skip
        elif item is None or isinstance(item, bool):
            out = aten.unsqueeze.default(out, dim)
            if item is False:
                out = aten.slice.Tensor(out, dim, 0, 0)
            advanced.append(None)
            dim += 1
        elif isinstance(item, int):
            out = aten.select.int(out, dim, item)
        elif isinstance(item, slice):
            out = aten.slice.Tensor(out, dim, item.start, item.stop, 1 if item.step is None else item.step)
            advanced.append(None)
            dim += 1
        else:
            tensor = item if isinstance(item, torch.Tensor) else torch.tensor(item)
            advanced.append(tensor)
            dim += _consumes(tensor)
    if all(a is None for a in advanced):
        return out, None
    while advanced[-1] is None:
        advanced.pop()
    return out, advanced


def getitem(x: torch.Tensor, index) -> torch.Tensor:
    out, tensors = _view(x, index)
    return out if tensors is None else aten.index.Tensor(out, tensors)


def setitem(x: torch.Tensor, index, value) -> None:
    out, tensors = _view(x, index)
    if tensors is not None:
        if not isinstance(value, torch.Tensor):
            value = torch.full((), value, dtype=x.dtype, device=x.device)
        aten.index_put_.default(out, tensors, value)
    elif isinstance(value, torch.Tensor):
        aten.copy_.default(out, value)
    else:
        aten.fill_.Scalar(out, value)


def _contiguous(x: torch.Tensor, memory_format=torch.contiguous_format) -> torch.Tensor:
    return x if x.is_contiguous(memory_format=memory_format) else aten.clone.default(x, memory_format=memory_format)


_REROUTED = {
    "__getitem__": getitem,
    "__setitem__": setitem,
    "contiguous": _contiguous,
    "__invert__": lambda x: aten.bitwise_not.default(x),
    "copy_": lambda x, src, non_blocking=False: aten.copy_.default(x, src, non_blocking),
    "new_tensor": lambda x, data, dtype=None, device=None, requires_grad=False: torch.tensor(
        data, dtype=dtype or x.dtype, device=device or x.device),
}


def _diverted(name: str, original):
    rerouted = _REROUTED[name]

    def method(self, *args, **kwargs):
        if self.device.type == "cuda" and is_fake(self):
            return rerouted(self, *args, **kwargs)
        return original(self, *args, **kwargs)

    method.__name__ = name
    return method


@contextlib.contextmanager
def guard_free_bindings():
    """While it is entered, the torch.Tensor methods that open a CUDA device guard (see the module's docstring) take
    the guard-free route for fake tensors on "cuda" (PyTorch's own fake implementations call some of them too);
    every other tensor takes the usual one. The methods are restored on exit."""
    own = {name: torch.Tensor.__dict__.get(name) for name in _REROUTED}
    for name in _REROUTED:
        setattr(torch.Tensor, name, _diverted(name, getattr(torch.Tensor, name)))
    try:
        yield
    finally:
        for name, value in own.items():
            if value is None:
                delattr(torch.Tensor, name)
            else:
                setattr(torch.Tensor, name, value)


def fake_module(module: torch.nn.Module, mode, device: torch.device = DEVICE) -> torch.nn.Module:
    """Replace every parameter and buffer of `module` (built on the meta device, or anywhere) by a fake tensor of
    `mode` on `device` with the same shape, strides and dtype. Returns the module."""
    def fake(t: torch.Tensor) -> torch.Tensor:
        with mode:
            return torch.empty_strided(t.shape, t.stride(), dtype=t.dtype, device=device)

    for sub in module.modules():
        for name, p in list(sub._parameters.items()):
            if p is not None:
                sub._parameters[name] = torch.nn.Parameter(fake(p), requires_grad=False)
        for name, b in list(sub._buffers.items()):
            if b is not None:
                sub._buffers[name] = fake(b)
    return module


class _CurrentDevice(contextlib.nullcontext):
    """Stands for torch.cuda.device(...) in a trace: selecting the current device is a runtime call, not traced."""

    def __init__(self, device=None):
        super().__init__()


@contextlib.contextmanager
def runtime_set_aside():
    """What runs on the device but is not traced, set aside for the trace: the CUDA runtime calls that select the
    current device (torch.cuda.device) or wait for it (torch.cuda.synchronize), and the native extension's CUDA
    launches (`native.cuda_status` answers that they cannot run). Those launches take raw device pointers, which fake
    tensors do not have, so the native wrappers run their PyTorch references: the same inputs, the same output shapes
    and dtypes, and the wrappers' own checks of shapes and dtypes still run."""
    import warnings
    from unittest import mock

    from .. import native

    with mock.patch.object(native, "cuda_status", lambda device: (False, "set aside by the trace")), \
            mock.patch.object(torch.cuda, "device", _CurrentDevice), \
            mock.patch.object(torch.cuda, "synchronize", lambda device=None: None), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="vasa_engine.native", category=RuntimeWarning)
        yield
