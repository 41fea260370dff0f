"""torch.compile of an engine's heavy modules: the baseline `Engine.variant(compile_mode=...)` builds."""

from __future__ import annotations

from typing import Callable

import torch

from .loading import MotionStack


class CompiledView:
    """A module seen through some replaced attributes (compiled methods); everything else is the module's own."""

    def __init__(self, base, **overrides):
        self.__dict__["_base"] = base
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self.__dict__["_base"], name)


def _raise_recompile_limit(limit: int = 64) -> None:
    """One static-shape graph per batch size: allow more than dynamo's default of 8 per function."""
    cfg = torch._dynamo.config
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(cfg, name) and getattr(cfg, name) < limit:
            setattr(cfg, name, limit)


def compile_callable(fn: Callable, mode: str) -> Callable:
    """max-autotune (GPU): static shapes, one graph tuned per shape, the baseline's best case. default (CPU) and
    dynamo-only: torch's own defaults (a second batch size recompiles once with a dynamic batch dimension; batch 1
    keeps its own graph)."""
    if mode == "dynamo-only":
        return torch.compile(fn, backend="eager")
    if mode == "default":
        return torch.compile(fn)
    return torch.compile(fn, mode=mode, dynamic=False)


def compiled_modules(renderer, stack: MotionStack, mode: str):
    """(renderer, motion stack) whose renderer warp + decode, audio window features and denoising transformer run
    through torch.compile in `mode`; the same modules and weights underneath."""
    _raise_recompile_limit()
    audio = CompiledView(stack.audio, window_features=compile_callable(stack.audio.window_features, mode))
    generator = CompiledView(stack.generator, denoising_net=compile_callable(stack.generator.denoising_net, mode))
    view = CompiledView(renderer, warp_decode=compile_callable(renderer.warp_decode, mode))
    return view, MotionStack(audio, generator, stack.template)
