"""The backend switch: which implementation the operations in `vasa_engine.ops` run.

- "reference": the plain PyTorch reference everywhere.
- "kernels": the engine's Triton kernels wherever one is registered for the operation (on CPU tensors too, which
  only works under TRITON_INTERPRET=1: that is how the kernels are tested without a GPU).
- "auto" (default): kernels on CUDA tensors when Triton is importable, the reference otherwise.

Under torch.compile, "auto" traces the reference (the compiler makes its own kernels), while "kernels" traces the
kernels: each is a PyTorch library operator (vasa_engine.kernels._library), which the compiler takes as it is. The
choice is read when a call is traced, so a compiled function keeps the backend it was traced under.

The choice is a context variable, so each thread (and each Engine, which sets it around its own calls) has its own.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import os

import torch

BACKENDS = ("auto", "reference", "kernels")
_current: contextvars.ContextVar[str] = contextvars.ContextVar("vasa_backend", default="auto")


def check(name: str) -> str:
    if name not in BACKENDS:
        from .errors import InputError

        raise InputError(f"unknown backend {name!r} (use {', '.join(BACKENDS)})")
    return name


def current() -> str:
    return _current.get()


@contextlib.contextmanager
def use(name: str):
    token = _current.set(check(name))
    try:
        yield
    finally:
        _current.reset(token)


@functools.lru_cache(maxsize=None)
def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET") == "1"


def kernels_active(device) -> bool:
    """Whether an operation on tensors of `device` should run the engine's kernel (where one exists)."""
    if torch.compiler.is_compiling():
        return _compiled_kernels()
    choice = _current.get()
    if choice == "reference" or not triton_available():
        return False
    if choice == "kernels":
        return True
    return getattr(device, "type", device) == "cuda" and not interpreting()


@torch.compiler.assume_constant_result
def _compiled_kernels() -> bool:
    """Whether a call that torch.compile traces runs the kernels: under "kernels" only ("auto" traces the reference,
    and the compiler makes its own kernels). Read once, when the call is traced (torch.compile cannot trace a
    ContextVar), so a compiled function keeps the backend it was traced under."""
    return _current.get() == "kernels" and triton_available()
