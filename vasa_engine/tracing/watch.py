"""A TorchDispatchMode over fake tensors: the live device bytes of every allocation (and their peak), and the
device and dtype contracts that the operators' meta implementations leave to the real kernels.

Memory. Each new device storage an operator returns (not one of its inputs': a view, or an output written in place)
is counted from its allocation until it is freed (a weak reference to the storage, whose Python object lives exactly
as long as the storage itself), rounded up to the 512-byte blocks of PyTorch's CUDA caching allocator. `peak` is the
most bytes live at once since the last `reset_peak`.

Contracts. A CUDA kernel refuses what a meta implementation lets through:

- tensors of one operator on two devices (convolutions, for one, do not check it on fake tensors); a 0-dim CPU
  tensor is a scalar and may go with any device, and copies and indexing take their inputs from anywhere;
- matrix products and convolutions whose floating operands differ in dtype (cuBLAS and cuDNN take one dtype).

Either raises `ContractError` naming the operator and the tensors.

Kernels. `kernel_calls` counts the calls of the engine's library operators (`vasa_engine::<op>`, one per kernel
launch wrapper: vasa_engine.kernels), so a trace shows which operations ran their kernels and which fell back to the
reference.
"""

from __future__ import annotations

import weakref
from collections import Counter

import torch
from torch._subclasses.fake_tensor import is_fake
from torch.utils._python_dispatch import TorchDispatchMode, _disable_current_modes
from torch.utils._pytree import tree_leaves

BLOCK_BYTES = 512  # the CUDA caching allocator's rounding
KERNEL_NAMESPACE = "vasa_engine"  # kernels/_library.py's NAMESPACE (that package may not be importable)
aten = torch.ops.aten

# Operators that move or gather data between devices by design.
_CROSS_DEVICE = {aten._to_copy.default, aten.copy_.default, aten.index.Tensor, aten.index_put_.default,
                 aten._index_put_impl_.default, aten.lift_fresh.default, aten.lift_fresh_copy.default}
# Operators whose CUDA kernels take one floating dtype for all their operands.
_ONE_DTYPE = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default, aten.mv.default,
              aten.addmv.default, aten.dot.default, aten.convolution.default, aten._convolution.default}


class ContractError(RuntimeError):
    """An operator called with tensors its CUDA kernel refuses."""


def _describe(t: torch.Tensor) -> str:
    return f"{str(t.dtype).replace('torch.', '')}{tuple(t.shape)} on {t.device}"


def check_contract(func, tensors: list[torch.Tensor]) -> None:
    """Raise ContractError if `func` may not take `tensors` together on a CUDA device (see the module's docstring)."""
    if func not in _CROSS_DEVICE:
        placed = [t for t in tensors if not (t.device.type == "cpu" and t.dim() == 0)]
        if len({t.device for t in placed}) > 1:
            raise ContractError(f"{func} got tensors on different devices: "
                                f"{', '.join(_describe(t) for t in placed)}")
    if func in _ONE_DTYPE:
        floats = [t for t in tensors if t.is_floating_point()]
        if len({t.dtype for t in floats}) > 1:
            raise ContractError(f"{func} got operands of different dtypes: {', '.join(_describe(t) for t in floats)}")


def host_only(tensors: list[torch.Tensor], kwargs: dict) -> bool:
    """Whether an operator works on real CPU tensors only (host work: the sampler's step plans, noise drawn on the
    CPU, constants), which runs for real: its values can be read, as the engine reads them."""
    if any(t.device.type != "cpu" or is_fake(t) for t in tensors):
        return False
    device = kwargs.get("device")
    return device is None or torch.device(device).type == "cpu"


class DeviceWatch(TorchDispatchMode):
    """Counts the live bytes of the device's tensors and checks each operator's contract (see the module's
    docstring). Enter it inside the FakeTensorMode, so that it sees every operator first: operators on real CPU
    tensors only (`host_only`) it runs for real, everything else goes on to the fake tensors."""

    def __init__(self):
        super().__init__()
        self.live = 0
        self.peak = 0
        self._sizes: dict[int, tuple[int, weakref.ref]] = {}
        self.kernel_calls: Counter[str] = Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if getattr(func, "namespace", None) == KERNEL_NAMESPACE:
            self.kernel_calls[func.overloadpacket.__name__] += 1
        tensors = [t for t in tree_leaves((args, kwargs)) if isinstance(t, torch.Tensor)]
        check_contract(func, tensors)
        if host_only(tensors, kwargs):
            with _disable_current_modes():
                return func(*args, **kwargs)
        out = func(*args, **kwargs)
        inputs = {t.untyped_storage()._cdata for t in tensors}  # outputs on these are views or written in place
        for t in tree_leaves(out):
            if isinstance(t, torch.Tensor) and t.untyped_storage()._cdata not in inputs:
                self._track(t)
        return out

    def _track(self, t: torch.Tensor) -> None:
        storage = t.untyped_storage()
        key = storage._cdata
        if key in self._sizes or t.device.type != "cuda":
            return
        size = -(-storage.nbytes() // BLOCK_BYTES) * BLOCK_BYTES
        self._sizes[key] = (size, weakref.ref(storage, lambda _, key=key: self._free(key)))
        self.live += size
        self.peak = max(self.peak, self.live)

    def _free(self, key: int) -> None:
        size, _ = self._sizes.pop(key, (0, None))
        self.live -= size

    def reset_peak(self) -> int:
        """Start a new peak from the bytes live now; returns them."""
        self.peak = self.live
        return self.live


def _register_hop_rules() -> None:
    """The Triton launch operators (torch.library.wrap_triton) reach this mode inside a trace: let them through to
    the fake tensors' own rule (a launch allocates nothing; `kernels._library.launch` checked its devices)."""
    try:
        from torch._higher_order_ops.triton_kernel_wrap import (triton_kernel_wrapper_functional,
                                                                triton_kernel_wrapper_mutation)
    except ImportError:
        return
    for hop in (triton_kernel_wrapper_mutation, triton_kernel_wrapper_functional):
        if DeviceWatch not in hop.python_key_table:
            hop.py_impl(DeviceWatch)(lambda mode, *, _hop=hop, **kwargs: _hop(**kwargs))


_register_hop_rules()
