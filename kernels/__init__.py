"""Triton kernels of the engine, imported as vasa_engine.kernels."""

from __future__ import annotations


def triton_available() -> tuple[bool, str | None]:
    """(True, version) when triton imports, else (False, None). Imports triton only when called."""
    try:
        import triton
    except Exception:  # noqa: BLE001 - ImportError, or a broken install failing at import time
        return False, None
    return True, str(getattr(triton, "__version__", "unknown"))
