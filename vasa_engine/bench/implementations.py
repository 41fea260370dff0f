"""The four implementations the bench sets side by side, on the same loaded modules and weights:

- "eager fp32", "eager bf16": the PyTorch reference (`backend="reference"`, no CUDA graphs), float32 and bfloat16;
- "torch.compile": the engine's torch.compile variant (the audio encoder's window features, the denoising
  transformer, the renderer's warp + decode), on the reference ops, without the engine's CUDA graphs;
- "engine": the engine as shipped (`backend="auto"`, its CUDA graphs).

torch.compile and the engine run at the engine's dtype (float16 on CUDA, float32 on a CPU), as the engine does by
default and as the kernel benchmarks measure.

Each is an `Engine.variant` (or, for another dtype, an Engine built from the same weights), so each has stage
objects and CUDA-graph caches of its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from .figures import dtype_name, error_reason
from .sizes import Sizes, audio_config, motion_config, renderer_config

IMPLEMENTATIONS = ("eager fp32", "eager bf16", "torch.compile", "engine")
IMPL_KEYS = {"eager-fp32": "eager fp32", "eager-bf16": "eager bf16", "compile": "torch.compile", "engine": "engine"}
ENGINE_ON_CPU = "engine = reference on CPU: Triton kernels and CUDA graphs need a CUDA device"
COMPILE_WORDS = {"dynamo-only": "torch.compile with backend='eager' (dynamo tracing only; smoke mode)",
                 "default": "torch.compile, default mode", "max-autotune": "torch.compile, mode max-autotune"}


@dataclass
class Implementation:
    name: str
    engine: Any  # an Engine
    avatar: Any = None
    note: str = ""
    error: str | None = None  # set when the implementation cannot run at all
    compile_seconds: dict = field(default_factory=dict)  # shape label -> first-call seconds (compile included)

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype


def build_engines(sizes: Sizes, device: torch.device, dtype: torch.dtype, weights=None, seed: int = 0,
                  bf16: bool = True) -> dict:
    """Engines of the same weights per dtype: float32, bfloat16 (unless `bf16` is False) and `dtype` (the compiled
    and engine dtype)."""
    from ..engine import Engine

    kw = dict(seed=seed, config=renderer_config(sizes.renderer), motion_config=motion_config(sizes.motion),
              audio_config=audio_config(sizes.audio))
    engines = {}
    for dt in dict.fromkeys([torch.float32] + ([torch.bfloat16] if bf16 else []) + [dtype]):
        engine = Engine(weights, device=str(device), dtype=dtype_name(dt), **kw)
        engine.motion_stack  # build it now
        engines[dt] = engine
    return engines


def build_implementations(engines: dict, dtype: torch.dtype, compile_mode: str, skip=()) -> dict[str, Implementation]:
    """The implementations not in `skip`, as variants of `engines` (dtype -> Engine, from `build_engines`)."""
    impls = {}
    for name in IMPLEMENTATIONS:
        if name in skip:
            continue
        if name in ("eager fp32", "eager bf16"):
            dt = torch.float32 if name == "eager fp32" else torch.bfloat16
            impls[name] = Implementation(name, engines[dt].variant(backend="reference", cuda_graphs=False),
                                         note=f"PyTorch reference, {dtype_name(dt)}")
        elif name == "torch.compile":
            impls[name] = _compiled(engines[dtype], compile_mode)
        else:
            engine = engines[dtype].variant(backend="auto", cuda_graphs=True)
            note = f"backend auto, {dtype_name(dtype)}"
            note += ", CUDA graphs" if engine.device.type == "cuda" else f"; {ENGINE_ON_CPU}"
            impls[name] = Implementation(name, engine, note=note)
    return impls


def _compiled(engine, mode: str) -> Implementation:
    shapes = "static shapes" if mode == "max-autotune" else "default shape handling"
    note = f"{COMPILE_WORDS[mode]}, {shapes}, {dtype_name(engine.dtype)}"
    try:
        return Implementation("torch.compile", engine.variant(compile_mode=mode), note=note)
    except Exception as exc:  # torch.compile unavailable on this install
        return Implementation("torch.compile", engine, note=note, error=error_reason(exc))
