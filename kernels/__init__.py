"""Triton kernels of the engine, imported as vasa_engine.kernels.

Importing this package imports every kernel module in it (when Triton is installed); each registers its
operations with `vasa_engine.ops.register_kernel`, beside the PyTorch reference it must match, and launches its
Triton kernels through one PyTorch library operator, `vasa_engine::<operation>` (`_library.py`), so that they trace
under fake tensors and compose with torch.compile.
"""

from __future__ import annotations

import importlib
import pkgutil


def triton_available() -> tuple[bool, str | None]:
    """(True, version) when triton imports, else (False, None). Imports triton only when called."""
    try:
        import triton
    except Exception:  # noqa: BLE001 - ImportError, or a broken install failing at import time
        return False, None
    return True, str(getattr(triton, "__version__", "unknown"))


def _import_kernel_modules() -> list[str]:
    # Run from a source checkout, the repository root can be on sys.path, and then `import kernels` (which other
    # libraries try, for Hugging Face's package of that name) finds this folder: imported under any name but
    # vasa_engine.kernels it stays inert, so no kernel is registered twice.
    if __name__ != "vasa_engine.kernels" or not triton_available()[0]:
        return []
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")]
    for name in names:
        importlib.import_module(f"{__name__}.{name}")
    return names


KERNEL_MODULES = _import_kernel_modules()
