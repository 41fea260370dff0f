"""Measurement core of `vasa-engine bench`: the same modules and weights, four implementations, every stage.

Implementations (one process, the same seeded or loaded weights):

- "eager fp32", "eager bf16": the PyTorch reference (`backend="reference"`), float32 and bfloat16;
- "torch.compile": `torch.compile` of the same modules' forward (the audio encoder's window forward, the
  denoising transformer, the renderer's warp + decode), mode "max-autotune" on CUDA and the default mode on a CPU,
  static shapes; the first call of each shape (trace + compile) is timed apart and never inside a timed region;
- "engine": the engine as shipped (`backend="auto"`: Triton kernels on CUDA where registered, and its CUDA graphs:
  the renderer's per-frame path per batch size, the whole sampler loop of a window). The other three run without
  the engine's CUDA graphs (torch.compile's max-autotune has its own). Each implementation has graph caches of its
  own. A later runtime replaces a stage's callable with `register_engine_stage`.

Stages and their units: the audio encoder per second of audio; the motion generator per window at 1, 5 and 10
steps (DPM-Solver++(2M), every guidance branch in one batched forward, as `generation.GuidedDenoiser` runs it);
the renderer per frame (driving keypoints with eye/lip retargeting and stitching, warp, decode, uint8 frames on
the device) at each batch size of a scan; end to end (audio samples -> uint8 frames on the host, the
`Engine.generate` path) in frames per second; streaming latency where `vasa_engine.streaming` exists.

Every figure in the report is either measured (times in ms: min, median, p80 of the repeats) or
`{"measured": false, "reason": "..."}`. Work per unit is counted on the meta device: FLOPs with
`torch.utils.flop_counter.FlopCounterMode`, bytes with `count_work`'s formula (see there).

The stage builders (`audio_encoder_stage`, `motion_generator_stage`, `renderer_stage`, `end_to_end_stage`) return
zero-argument callables doing one unit of work; `benches/test_bench_stages.py` times the very same callables.
"""

from __future__ import annotations

import copy
import datetime as _dt
import importlib.util
import json
import math
import os
import platform
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from contextlib import contextmanager
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Callable

import torch

from .backend import use as use_backend

SCHEMA = "vasa-engine-bench/1"
IMPLEMENTATIONS = ("eager fp32", "eager bf16", "torch.compile", "engine")
IMPL_KEYS = {"eager-fp32": "eager fp32", "eager-bf16": "eager bf16", "compile": "torch.compile", "engine": "engine"}
STEPS = (1, 5, 10)
SAMPLE_RATE = 16000
FPS = 25
ENGINE_ON_CPU = "engine = reference on CPU: Triton kernels and CUDA graphs need a CUDA device"
NO_STREAMING = "not measured: streaming not available in this version"

StageFn = Callable[[], Any]


# ------------------------------------------------------------------------------------------------ sizes


@dataclass(frozen=True)
class Sizes:
    """What a mode measures, and how often."""

    mode: str
    renderer: str  # "full" | "tiny"
    audio: str  # "full" | "reduced" | "tiny"
    motion: str  # "full" | "reduced" | "tiny"
    audio_windows: int  # windows (4 s each at the default config) per audio-encoder call
    batches: tuple[int, ...]
    steps: tuple[int, ...]
    e2e_seconds: float
    warmup: int
    repeats: int
    e2e_repeats: int
    repeat_seconds: float  # stop repeating a measurement once its repeats took this long (1 repeat at least)
    compile_mode: str  # "max-autotune" | "default" | "dynamo-only" (torch.compile with backend="eager")
    quick: bool = False
    compile_all: bool = True  # False: torch.compile only on the first shape of each stage, no end to end
    stream_seconds: float = 4.0  # speech pushed in real time for the streaming latency
    stream_counts: tuple[int, ...] = (1, 2)  # concurrent streams tried, in order, until one count falls behind


MODES = {
    "gpu": Sizes("gpu", "full", "full", "full", audio_windows=8, batches=(1, 2, 4, 8, 16, 32), steps=STEPS,
                 e2e_seconds=10.0, warmup=3, repeats=20, e2e_repeats=3, repeat_seconds=10.0,
                 compile_mode="max-autotune", stream_seconds=10.0, stream_counts=(1, 2, 4, 8, 12, 16)),
    "cpu": Sizes("cpu", "tiny", "reduced", "reduced", audio_windows=1, batches=(1, 2, 4, 8), steps=STEPS,
                 e2e_seconds=1.0, warmup=1, repeats=3, e2e_repeats=1, repeat_seconds=4.0, compile_mode="default",
                 stream_seconds=2.0),
    "smoke": Sizes("smoke", "tiny", "tiny", "tiny", audio_windows=1, batches=(1, 2), steps=STEPS, e2e_seconds=0.12,
                   warmup=0, repeats=1, e2e_repeats=1, repeat_seconds=1.0, compile_mode="dynamo-only",
                   stream_seconds=0.5),
}
QUICK_GPU = dict(batches=(1, 8, 32), e2e_seconds=8.0, warmup=2, repeats=10, e2e_repeats=2, repeat_seconds=3.0,
                 quick=True, stream_seconds=6.0, stream_counts=(1, 4, 8))


def sizes_for(mode: str, device: torch.device, *, quick: bool = False, full_size: bool = False,
              batches: tuple[int, ...] | None = None, steps: tuple[int, ...] | None = None) -> Sizes:
    """The sizes of `mode` ("auto": gpu on CUDA, cpu otherwise), with the command's overrides applied."""
    if mode == "auto":
        mode = "gpu" if device.type == "cuda" else "cpu"
    sizes = MODES[mode]
    if quick and mode == "gpu":
        sizes = replace(sizes, **QUICK_GPU)
    elif quick:
        sizes = replace(sizes, quick=True, repeats=min(sizes.repeats, 2))
    if full_size:
        sizes = replace(sizes, renderer="full", audio="full", motion="full")
    if device.type != "cuda" and sizes.compile_mode == "max-autotune":
        sizes = replace(sizes, compile_mode="default")  # max-autotune only on a GPU
    if batches:
        sizes = replace(sizes, batches=tuple(batches))
    if steps:
        sizes = replace(sizes, steps=tuple(steps))
    return sizes


def renderer_config(size: str):
    from .config import RendererConfig

    return RendererConfig() if size == "full" else RendererConfig.tiny()


def audio_config(size: str):
    from .models.audio_encoder import AudioEncoderConfig

    if size == "full":
        return AudioEncoderConfig()  # HuBERT base
    if size == "reduced":
        return AudioEncoderConfig(hidden_size=256, num_hidden_layers=4, num_attention_heads=4, intermediate_size=1024,
                                  conv_dim=(128,) * 7, num_conv_pos_embeddings=32, num_conv_pos_embedding_groups=8)
    return AudioEncoderConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=4, intermediate_size=64,
                              conv_dim=(16,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)


def motion_config(size: str):
    from .models.motion_generator import MotionGeneratorConfig

    if size == "full":
        return MotionGeneratorConfig()  # VASA-1 size: 8 layers, width 512, 8 heads, windows of 100 + 25 frames
    if size == "reduced":
        return MotionGeneratorConfig(feature_dim=256, n_layers=4, n_heads=4)
    return MotionGeneratorConfig(feature_dim=32, n_layers=2, n_heads=4, n_motions=20, n_prev_motions=5, emotion_dim=4)


SIZE_WORDS = {
    "renderer": {"full": "full size (LivePortrait's default config, 512x512 output)",
                 "tiny": "RendererConfig.tiny() (every layer type, reduced widths, 128x128 output): the full-size "
                         "renderer costs about 10 s per frame on a 2-core CPU"},
    "audio": {"full": "HuBERT base (12 layers, width 768)",
              "reduced": "HuBERT layout reduced to 4 layers, width 256, conv width 128",
              "tiny": "HuBERT layout reduced to 2 layers, width 32 (smoke sizes)"},
    "motion": {"full": "VASA-1 size (8 layers, width 512, 8 heads, windows of 100 frames + 25 of context)",
               "reduced": "4 layers, width 256, 4 heads, windows of 100 frames + 25 of context",
               "tiny": "2 layers, width 32, windows of 20 frames + 5 of context (smoke sizes)"},
}


# ------------------------------------------------------------------------------------------------ figures


def not_measured(reason: str) -> dict:
    return {"measured": False, "reason": reason}


def is_measured(figure: Any) -> bool:
    return isinstance(figure, dict) and figure.get("measured") is True


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_call(fn: StageFn, device: torch.device, *, warmup: int = 1, repeats: int = 3,
              repeat_seconds: float | None = None) -> dict:
    """Warm-up calls, then up to `repeats` timed calls (fewer once `repeat_seconds` are spent; one at least).

    CUDA: CUDA events around each call, synchronized; CPU: time.perf_counter. Returns min / median / p80 in ms.
    """
    for _ in range(warmup):
        fn()
    _sync(device)
    times = []
    for _ in range(max(1, repeats)):
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end))
        else:
            t0 = time.perf_counter()
            fn()
            times.append((time.perf_counter() - t0) * 1000.0)
        if repeat_seconds is not None and sum(times) / 1000.0 >= repeat_seconds:
            break
    return {"measured": True, "ms": summarize(times), "repeats": len(times), "warmup": warmup}


def summarize(times_ms: list[float]) -> dict:
    s = sorted(times_ms)

    def quantile(q):
        pos = q * (len(s) - 1)
        lo, hi = math.floor(pos), math.ceil(pos)
        return s[lo] + (s[hi] - s[lo]) * (pos - lo)

    return {"min": s[0], "median": quantile(0.5), "p80": quantile(0.8)}


def _error_reason(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}".strip().rstrip(":")[:300]


# ------------------------------------------------------------------------------------------------ stages


def _no_grad(fn: Callable) -> Callable:
    def run():
        with torch.no_grad():  # as Engine's own calls (inference_mode would make torch.compile guard apart)
            return fn()

    return run


def audio_encoder_stage(engine, windows: torch.Tensor) -> StageFn:
    """One audio-encoder call on raw 16 kHz windows (B, 640 L): -> features (B, L, d), as Engine.generate_motion."""
    audio = engine.motion_stack.audio
    x = windows.to(engine.device, engine.dtype)

    def run():
        with use_backend(engine.backend):
            return audio.window_features(x)

    return _no_grad(run)


def motion_generator_stage(engine, features: torch.Tensor, steps: int, controls=None) -> StageFn:
    """One window of motion (DPM-Solver++(2M) at `steps`, every guidance branch in one forward) from features
    (1, L, d) of the window."""
    from .generation import Controls, generate_windows

    generator = engine.motion_stack.generator
    controls = replace(controls or Controls(), steps=steps)
    feats = features.to(engine.device, engine.dtype)

    graphs = engine.sampler_graphs if engine.sampler_graphs.enabled else None

    def run():
        with use_backend(engine.backend):
            return generate_windows(generator, feats, controls, graphs=graphs)

    return _no_grad(run)


def renderer_stage(engine, avatar, motion) -> StageFn:
    """One batch of frames: driving keypoints (eye and lip retargeting, stitching), warp, decode, uint8 (B, 3, S, S)
    on the device (the device-to-host copy belongs to the end-to-end figure): `Engine.render_on_device`, so the
    engine's renderer graphs where it has them, else eager."""
    m = motion.to(engine.device)

    def run():
        return engine.render_on_device(avatar, m).permute(0, 3, 1, 2)

    return _no_grad(run)


def end_to_end_stage(engine, avatar, samples, controls=None) -> StageFn:
    """Speech samples (16 kHz) -> uint8 frames on the host through `Engine.generate` (audio encoder, motion
    generator, renderer at the engine's batch size)."""

    def run():
        return engine.generate(avatar, samples, controls, sample_rate=SAMPLE_RATE, max_seconds=None)

    return run


# A later runtime replaces the engine's callable of a stage: builder(engine, stage, default, inputs) -> StageFn.
# `default` is the stage's eager callable (capture it in a CUDA graph, or ignore it); `inputs` holds what it was
# built from (e.g. {"batch": 8} for the renderer, {"steps": 10} for the motion generator). Stages: "audio_encoder",
# "motion_generator", "renderer", "end_to_end".
EngineStageBuilder = Callable[[Any, str, StageFn, dict], StageFn]
_ENGINE_STAGE_BUILDERS: dict[str, EngineStageBuilder] = {}


def register_engine_stage(stage: str):
    """Decorator: the engine implementation runs `builder(engine, stage, default, inputs)` for this stage."""

    def decorate(builder: EngineStageBuilder) -> EngineStageBuilder:
        _ENGINE_STAGE_BUILDERS[stage] = builder
        return builder

    return decorate


def engine_stage_builders() -> dict[str, EngineStageBuilder]:
    return dict(_ENGINE_STAGE_BUILDERS)


# ------------------------------------------------------------------------------------------------ implementations


class _ModuleView:
    """A module seen through some replaced attributes (a compiled forward); everything else is the module's."""

    def __init__(self, base, **overrides):
        self.__dict__["_base"] = base
        self.__dict__.update(overrides)

    def __getattr__(self, name):
        return getattr(self.__dict__["_base"], name)


@dataclass
class Implementation:
    name: str
    engine: Any  # an Engine (or a copy of one with compiled modules)
    avatar: Any = None
    note: str = ""
    error: str | None = None  # set when the implementation cannot run at all
    compile_seconds: dict = field(default_factory=dict)  # shape label -> first-call seconds (compile included)

    @property
    def dtype(self) -> torch.dtype:
        return self.engine.dtype

    def stage(self, stage: str, default: StageFn, inputs: dict) -> StageFn:
        if self.name == "engine" and stage in _ENGINE_STAGE_BUILDERS:
            return _ENGINE_STAGE_BUILDERS[stage](self.engine, stage, default, inputs)
        return default


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


def compiled_engine(engine, mode: str):
    """A copy of `engine` (same modules, same weights) whose audio encoder, denoising transformer and renderer
    warp + decode run through torch.compile, on the PyTorch reference ops."""
    from .engine import MotionStack

    _raise_recompile_limit()
    view = copy.copy(engine)
    view.backend = "reference"
    view.set_cuda_graphs(False)  # max-autotune captures its own
    stack = engine.motion_stack
    audio = _ModuleView(stack.audio, window_features=compile_callable(stack.audio.window_features, mode))
    generator = _ModuleView(stack.generator, denoising_net=compile_callable(stack.generator.denoising_net, mode))
    view._motion_stack = MotionStack(audio, generator, stack.template)
    view.renderer = _ModuleView(engine.renderer, warp_decode=compile_callable(engine.renderer.warp_decode, mode))
    return view


def build_engines(sizes: Sizes, device: torch.device, dtype: torch.dtype, weights=None, seed: int = 0,
                  bf16: bool = True) -> dict:
    """Engines of the same weights per dtype: float32, bfloat16 (unless `bf16` is False) and `dtype` (the compiled
    and engine dtype)."""
    from .engine import Engine

    kw = dict(seed=seed, config=renderer_config(sizes.renderer), motion_config=motion_config(sizes.motion),
              audio_config=audio_config(sizes.audio))
    engines = {}
    for dt in dict.fromkeys([torch.float32] + ([torch.bfloat16] if bf16 else []) + [dtype]):
        engine = Engine(weights, device=str(device), dtype=str(dt).replace("torch.", ""), **kw)
        engine.motion_stack  # build it now
        engines[dt] = engine
    return engines


def build_implementations(engines: dict, dtype: torch.dtype, compile_mode: str, skip=()) -> dict[str, Implementation]:
    impls = {}
    device = engines[torch.float32].device
    for name in IMPLEMENTATIONS:
        if name in skip:
            continue
        if name in ("eager fp32", "eager bf16"):
            dt = torch.float32 if name == "eager fp32" else torch.bfloat16
            e = copy.copy(engines[dt])
            e.backend = "reference"
            e.set_cuda_graphs(False)
            impls[name] = Implementation(name, e, note=f"PyTorch reference, {str(dt).replace('torch.', '')}")
        elif name == "torch.compile":
            words = {"dynamo-only": "torch.compile with backend='eager' (dynamo tracing only; smoke mode)",
                     "default": "torch.compile, default mode", "max-autotune": "torch.compile, mode max-autotune"}
            shapes = "static shapes" if compile_mode == "max-autotune" else "default shape handling"
            note = f"{words[compile_mode]}, {shapes}, {str(dtype).replace('torch.', '')}"
            try:
                impls[name] = Implementation(name, compiled_engine(engines[dtype], compile_mode), note=note)
            except Exception as exc:  # torch.compile unavailable on this install
                impls[name] = Implementation(name, engines[dtype], note=note, error=_error_reason(exc))
        else:
            e = copy.copy(engines[dtype])
            e.backend = "auto"
            e.set_cuda_graphs(True)  # graph caches of its own
            note = f"backend auto, {str(dtype).replace('torch.', '')}"
            if device.type == "cuda":
                note += ", CUDA graphs"
            else:
                note += f"; {ENGINE_ON_CPU}"
            hooks = sorted(_ENGINE_STAGE_BUILDERS)
            if hooks:
                note += f"; stage runtimes: {', '.join(hooks)}"
            impls[name] = Implementation(name, e, note=note)
    return impls


# ------------------------------------------------------------------------------------------------ work counting


class _ByteCounter:
    """Counts bytes moved, on the meta device, by one formula:

    bytes = weights (every parameter and buffer an operation reads, once per call, i.e. once per batch)
          + activations: the tensor inputs and outputs of each major operation (convolutions, matrix products,
            grid_sample, attention, normalizations, up-sampling, pooling), each read or written once.

    Element-wise operations are assumed fused into their neighbours (the lower bound a fused engine aims at);
    `unfused` also counts every other non-view operation's inputs and outputs (what plain eager PyTorch moves).
    """

    MAJOR = ("convolution", "mm", "addmm", "bmm", "baddbmm", "linear", "grid_sampler", "attention", "norm",
             "upsample", "pool")

    def __init__(self, weights):
        from torch.utils._python_dispatch import TorchDispatchMode

        counter = self
        self.weight_ids = {id(w) for w in weights}
        self._keep = list(weights)
        self.weights_seen: dict[int, int] = {}
        self.activations = 0
        self.unfused = 0

        class Mode(TorchDispatchMode):
            def __torch_dispatch__(self, func, types, args=(), kwargs=None):
                out = func(*args, **(kwargs or {}))
                counter._count(func, args, kwargs or {}, out)
                return out

        self.mode = Mode()

    @staticmethod
    def _tensors(tree):
        from torch.utils._pytree import tree_flatten

        return [t for t in tree_flatten(tree)[0] if isinstance(t, torch.Tensor)]

    def _count(self, func, args, kwargs, out):
        ins, outs = self._tensors((args, kwargs)), self._tensors(out)
        is_view = any(r.alias_info is not None for r in func._schema.returns)
        if is_view:  # a view of a weight is a weight (linear's transposed weight, a sliced projection)
            if any(id(t) in self.weight_ids for t in ins):
                for t in outs:
                    self.weight_ids.add(id(t))
                    self._keep.append(t)
            return
        name = func.__name__ if hasattr(func, "__name__") else str(func)
        major = any(k in name for k in self.MAJOR)
        act = 0
        for t in ins:
            nbytes = t.numel() * t.element_size()
            if id(t) in self.weight_ids:
                self.weights_seen[id(t)] = nbytes
            else:
                act += nbytes
        act += sum(t.numel() * t.element_size() for t in outs)
        self.unfused += act
        if major:
            self.activations += act

    @property
    def weight_bytes(self) -> int:
        return sum(self.weights_seen.values())


def count_work(fn: Callable, modules) -> dict:
    """FLOPs and bytes of one call of `fn` (on meta tensors) through `modules`' weights."""
    from torch.utils.flop_counter import FlopCounterMode

    weights = [t for m in modules for t in list(m.parameters()) + list(m.buffers())]
    counter = _ByteCounter(weights)
    flops = FlopCounterMode(display=False)
    with flops, counter.mode:  # grad mode on: FlopCounterMode's module tracker hooks need it
        fn()
    w = counter.weight_bytes
    return {"flops": int(flops.get_total_flops()), "weight_bytes": w, "activation_bytes": counter.activations,
            "bytes": w + counter.activations, "bytes_unfused": w + counter.unfused}


def work_per_unit(sizes: Sizes, cfgs: dict, dtype: torch.dtype, branches: int) -> dict:
    """Counted work of each stage at `dtype`, per its unit. Modules are built on the meta device (no weights)."""
    from .audio_features import AudioFeatureEncoder
    from .models.motion_generator import MotionGenerator
    from .models.renderer import FaceRenderer

    out: dict[str, Any] = {}
    rcfg, acfg, mcfg = cfgs["renderer"], cfgs["audio"], cfgs["motion"]
    with torch.device("meta"):
        renderer = FaceRenderer(rcfg).set_image_dtype(dtype)
        image = torch.empty(1, 3, rcfg.input_size, rcfg.input_size, dtype=dtype)
        feature = renderer.appearance_feature_extractor(image)
        kp = torch.empty(1, rcfg.motion_extractor.num_kp, 3)
        w = count_work(lambda: renderer.warp_decode(feature, kp, kp), [renderer.warping_module,
                                                                      renderer.spade_generator])
        out["renderer"] = {"unit": "frame", "flops_per_unit": w["flops"], "weight_bytes_per_batch": w["weight_bytes"],
                           "activation_bytes_per_unit": w["activation_bytes"],
                           "bytes_per_unit_at_batch_1": w["bytes"],
                           "bytes_unfused_per_unit_at_batch_1": w["bytes_unfused"],
                           "counted": "warping module + SPADE decoder at batch 1 (the keypoint MLPs are negligible)"}

        audio = AudioFeatureEncoder(acfg, mcfg.feature_dim).to(dtype)
        window_samples = mcfg.n_motions * SAMPLE_RATE // FPS
        seconds = window_samples / SAMPLE_RATE
        x = torch.empty(1, window_samples, dtype=dtype)
        w = count_work(lambda: audio.window_features(x), [audio])
        out["audio_encoder"] = {"unit": "second of audio", "flops_per_unit": w["flops"] / seconds,
                                "bytes_per_unit": w["bytes"] / seconds,
                                "bytes_unfused_per_unit": w["bytes_unfused"] / seconds,
                                "counted": f"one {seconds:g} s window, divided by {seconds:g}"}

        gen = MotionGenerator(mcfg)
        net = gen.denoising_net.to(dtype)
        n, lp, md, d = branches, mcfg.n_prev_motions, mcfg.motion_dim, mcfg.feature_dim
        args = (torch.empty(n, mcfg.n_motions, md, dtype=dtype), torch.empty(n, mcfg.n_motions, d, dtype=dtype),
                torch.empty(n, lp, md, dtype=dtype), torch.empty(n, lp, d, dtype=dtype),
                torch.zeros(n, dtype=torch.long))
        w = count_work(lambda: net(*args), [net])
        out["motion_generator"] = {"unit": "window", "flops_per_step": w["flops"], "bytes_per_step": w["bytes"],
                                   "bytes_unfused_per_step": w["bytes_unfused"], "frames_per_window": mcfg.n_motions,
                                   "counted": f"one denoiser forward of {branches} guidance branches per step "
                                              "(DPM-Solver++(2M): one forward per step)"}
    return out


def _work_for(stage: str, work: dict, units: float, batch: int = 1, steps: int = 1) -> tuple[float, float]:
    """(FLOPs, bytes) per call of `stage` doing `units` units."""
    if stage == "renderer":
        r = work["renderer"]
        return r["flops_per_unit"] * units, r["weight_bytes_per_batch"] * units / batch + r[
            "activation_bytes_per_unit"] * units
    if stage == "audio_encoder":
        a = work["audio_encoder"]
        return a["flops_per_unit"] * units, a["bytes_per_unit"] * units
    m = work["motion_generator"]
    return m["flops_per_step"] * steps * units, m["bytes_per_step"] * steps * units


# ------------------------------------------------------------------------------------------------ device peaks

# Dense peaks (no sparsity). TFLOP/s per dtype; bandwidth in TB/s. fp32: the non-tensor-core rate; tf32: tensor cores.
DEVICE_PEAKS = (
    {"match": ("H200",), "device": "NVIDIA H200 SXM", "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
     "bandwidth": 4.8, "source": "NVIDIA H200 Tensor Core GPU datasheet (H200 SXM; dense = half the sparse figures)"},
    {"match": ("H100", "PCIE"), "device": "NVIDIA H100 PCIe", "fp32": 51.0, "tf32": 378.0, "bf16": 756.0,
     "fp16": 756.0, "bandwidth": 2.0, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 PCIe)"},
    {"match": ("H100", "NVL"), "device": "NVIDIA H100 NVL", "fp32": 60.0, "tf32": 417.5, "bf16": 835.5,
     "fp16": 835.5, "bandwidth": 3.9, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 NVL)"},
    {"match": ("H100",), "device": "NVIDIA H100 SXM5", "fp32": 67.0, "tf32": 494.7, "bf16": 989.4, "fp16": 989.4,
     "bandwidth": 3.35, "source": "NVIDIA H100 Tensor Core GPU datasheet (H100 SXM)"},
    {"match": ("A100", "80GB"), "device": "NVIDIA A100 SXM 80GB", "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
     "fp16": 312.0, "bandwidth": 2.039, "source": "NVIDIA A100 Tensor Core GPU datasheet (A100 80GB SXM)"},
    {"match": ("A100",), "device": "NVIDIA A100 SXM 40GB", "fp32": 19.5, "tf32": 156.0, "bf16": 312.0,
     "fp16": 312.0, "bandwidth": 1.555, "source": "NVIDIA A100 Tensor Core GPU datasheet (A100 40GB SXM)"},
    {"match": ("RTX 4090",), "device": "NVIDIA GeForce RTX 4090", "fp32": 82.6, "tf32": 82.6, "bf16": 165.2,
     "fp16": 165.2, "bandwidth": 1.008,
     "source": "NVIDIA Ada Lovelace GPU architecture whitepaper (GeForce RTX 4090; tensor figures with FP32 "
               "accumulate, dense)"},
)


def device_peak(device: torch.device) -> dict:
    """The device's peak table row (matched on torch.cuda.get_device_name), or a CPU estimate, or a reason."""
    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        upper = name.upper()
        for row in DEVICE_PEAKS:
            if all(m.upper() in upper for m in row["match"]):
                return {"measured": True, "estimate": False, "name": name,
                        **{k: v for k, v in row.items() if k != "match"}}
        return not_measured(f"no peak figures for {name!r} in vasa_engine.bench.DEVICE_PEAKS")
    return _cpu_peak_estimate()


def _cpu_peak_estimate() -> dict:
    flags, mhz = set(), None
    try:
        text = Path("/proc/cpuinfo").read_text()
        m = re.search(r"^flags\s*:\s*(.*)$", text, re.M)
        flags = set(m.group(1).split()) if m else set()
        m = re.search(r"^cpu MHz\s*:\s*([\d.]+)", text, re.M)
        mhz = float(m.group(1)) if m else None
    except OSError:
        pass
    if not mhz or "fma" not in flags:
        return not_measured("unknown peak: no published figures for CPUs, and /proc/cpuinfo gives no clock or FMA")
    per_cycle = 64 if "avx512f" in flags else 32 if "avx2" in flags else 16  # fp32 FLOPs: 2 FMA units x lanes x 2
    threads = torch.get_num_threads()
    fp32 = threads * mhz * 1e6 * per_cycle / 1e12
    return {"measured": True, "estimate": True, "name": platform.processor() or platform.machine(), "fp32": fp32,
            "tf32": None, "bf16": None, "fp16": None, "bandwidth": None,
            "source": f"estimate, not a published figure: {threads} threads x {mhz:.0f} MHz x {per_cycle} fp32 "
                      "FLOP/cycle (2 FMA units); bf16 and memory bandwidth unknown"}


def _compute_peak(peak: dict, dtype: torch.dtype) -> tuple[float | None, str]:
    if dtype == torch.float32:
        tf32 = torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32
        key = "tf32" if tf32 and peak.get("tf32") else "fp32"
    else:
        key = {torch.bfloat16: "bf16", torch.float16: "fp16"}.get(dtype, "fp32")
    return peak.get(key), key


def _attach_work(fig: dict, flops: float, nbytes: float, units: float, peak: dict, dtype: torch.dtype) -> None:
    seconds = fig["ms"]["median"] / 1000.0
    fig["flops_per_unit"] = flops / units
    fig["bytes_per_unit"] = nbytes / units
    fig["tflops_per_s"] = flops / seconds / 1e12
    fig["gbytes_per_s"] = nbytes / seconds / 1e9
    if not is_measured(peak):
        fig["pct_peak_compute"] = fig["pct_peak_bandwidth"] = not_measured(peak["reason"])
        return
    tflops, key = _compute_peak(peak, dtype)
    label = " (of an estimated peak)" if peak.get("estimate") else ""
    fig["pct_peak_compute"] = (100 * fig["tflops_per_s"] / tflops if tflops else
                               not_measured(f"no {key} peak for this device"))
    fig["peak_used"] = f"{key}{label}"
    bw = peak.get("bandwidth")
    fig["pct_peak_bandwidth"] = (100 * fig["gbytes_per_s"] / (bw * 1000) if bw else
                                 not_measured("unknown peak memory bandwidth for this device"))


# ------------------------------------------------------------------------------------------------ the run


@dataclass
class Options:
    mode: str = "auto"
    device: str = "auto"
    dtype: str = "auto"  # compiled and engine dtype: bfloat16 on CUDA, float32 on a CPU
    quick: bool = False
    full_size: bool = False
    batches: tuple[int, ...] | None = None
    steps: tuple[int, ...] | None = None
    skip: tuple[str, ...] = ()
    weights: list | None = None
    seed: int = 0
    time_budget: float | None = None
    fresh_compile_cache: bool = True
    command: str = ""


class Budget:
    def __init__(self, seconds: float | None):
        self.start = time.perf_counter()
        self.seconds = seconds

    @property
    def elapsed(self) -> float:
        return time.perf_counter() - self.start

    def spent(self) -> bool:
        return self.seconds is not None and self.elapsed >= self.seconds

    def reason(self) -> str:
        return f"skipped: the time budget of {self.seconds:g} s was spent"


def _log(budget: Budget, message: str) -> None:
    print(f"[{budget.elapsed:6.1f} s] {message}", file=sys.stderr, flush=True)


def git_commit(folder: Path | None = None) -> dict:
    folder = folder or Path(__file__).resolve().parent.parent
    try:
        sha = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=folder, capture_output=True, text=True,
                             timeout=10)
        if sha.returncode != 0:
            return {"commit": "unknown", "dirty": None}
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=folder,
                                capture_output=True, text=True, timeout=10)
        return {"commit": sha.stdout.strip(), "dirty": bool(status.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": "unknown", "dirty": None}


def device_slug(device: torch.device) -> str:
    if device.type != "cuda":
        return "cpu"
    return re.sub(r"[^a-z0-9]+", "-", torch.cuda.get_device_name(device).lower()).strip("-")


def _versions() -> dict:
    from . import __version__

    out = {"vasa_engine": __version__, "python": sys.version.split()[0], "torch": torch.__version__,
           "cuda": torch.version.cuda}
    try:
        import triton

        out["triton"] = triton.__version__
    except ImportError:
        out["triton"] = None
    return out


@contextmanager
def _compile_cache(fresh: bool):
    """A fresh, temporary inductor cache (so compile times are cold ones) unless the caller set one."""
    if not fresh or "TORCHINDUCTOR_CACHE_DIR" in os.environ:
        yield os.environ.get("TORCHINDUCTOR_CACHE_DIR", "default (persistent)")
        return
    folder = tempfile.mkdtemp(prefix="vasa-bench-inductor-")
    os.environ["TORCHINDUCTOR_CACHE_DIR"] = folder
    try:
        yield "fresh temporary cache (cold compiles)"
    finally:
        os.environ.pop("TORCHINDUCTOR_CACHE_DIR", None)
        shutil.rmtree(folder, ignore_errors=True)


def speech_clip(seconds: float) -> "Any":
    """The bundled speech at 16 kHz, repeated or cut to `seconds`."""
    import numpy as np

    from .cli import sample_speech
    from .io.audio import load_audio

    speech = load_audio(sample_speech())
    n = int(round(seconds * SAMPLE_RATE))
    reps = -(-n // len(speech))
    return np.tile(speech, reps)[:n].astype(np.float32)


def run_bench(options: Options) -> dict:
    """Measure every figure; returns the report (see the module docstring and benches/README.md)."""
    from .runtime import device_name, resolve_device, resolve_dtype

    budget = Budget(options.time_budget)
    device = resolve_device(options.device)
    sizes = sizes_for(options.mode, device, quick=options.quick, full_size=options.full_size,
                      batches=options.batches, steps=options.steps)
    if options.dtype == "auto":
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    else:
        dtype = resolve_dtype(options.dtype, device)
    skip = tuple(IMPL_KEYS.get(s, s) for s in options.skip)
    peak = device_peak(device)
    _log(budget, f"bench mode {sizes.mode} on {device_name(device)}: building the modules")
    torch.manual_seed(options.seed)
    with _compile_cache(options.fresh_compile_cache) as cache_words:
        engines = build_engines(sizes, device, dtype, options.weights, options.seed)
        base = engines[torch.float32]
        stack = base.motion_stack
        cfgs = {"renderer": base.config, "audio": stack.audio.audio_encoder.cfg, "motion": stack.generator.cfg}
        impls = build_implementations(engines, dtype, sizes.compile_mode, skip)
        order = list(impls)
        if sizes.quick:  # the key figures first: the engine, then its baselines
            order = [n for n in ("engine", "torch.compile", "eager bf16", "eager fp32") if n in impls]
        for impl in impls.values():
            if impl.error is None:
                try:
                    impl.avatar = impl.engine.prepare(_portrait())
                except Exception as exc:
                    impl.avatar = exc
        report = _skeleton(options, sizes, device, dtype, peak, cfgs, impls, cache_words)
        branches = _branches()
        report["settings"]["guidance_branches"] = branches
        try:
            work = {str(dt).replace("torch.", ""): work_per_unit(sizes, cfgs, dt, branches)
                    for dt in dict.fromkeys([torch.float32, torch.bfloat16, dtype])}
            report["work"] = work
        except Exception as exc:
            work = None
            report["work"] = not_measured(f"counting failed: {_error_reason(exc)}")
        _log(budget, "work counted; measuring")

        runner = _Runner(budget, device, sizes, impls, order, work, peak, report)
        runner.audio_encoder(cfgs)
        runner.motion_generator(cfgs)
        runner.renderer()
        runner.end_to_end()
        runner.streaming()
    _add_ratios(report)
    report["compile"] = {"mode": sizes.compile_mode, "cache": cache_words,
                         "first_call_seconds": impls["torch.compile"].compile_seconds if "torch.compile" in impls
                         else not_measured("torch.compile skipped (--skip)"),
                         "note": "first call of each shape: trace + compile + one run; never inside a timed region"}
    report["not_measured"] = sorted(set(_reasons(report["figures"])))
    report["total_seconds"] = budget.elapsed
    _log(budget, "done")
    return report


def _portrait():
    from .cli import sample_portrait

    return sample_portrait()


def _branches() -> int:
    from .generation import Controls

    return 1 if Controls().audio_scale == 1.0 else 2  # the default controls: audio guidance only


def _skeleton(options, sizes, device, dtype, peak, cfgs, impls, cache_words) -> dict:
    from .runtime import device_name

    engine = impls.get("engine")
    rcfg = cfgs["renderer"]
    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **git_commit(),
        "command": options.command,
        "mode": sizes.mode,
        "quick": sizes.quick,
        "device": {"type": device.type, "name": device_name(device),
                   "cuda_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "threads": torch.get_num_threads(), "peak": peak},
        "versions": _versions(),
        "settings": {
            "dtypes": {name: str(i.dtype).replace("torch.", "") for name, i in impls.items()},
            "batches": list(sizes.batches), "steps": list(sizes.steps), "sampler": "dpmpp_2m",
            "audio_windows_per_call": sizes.audio_windows, "e2e_seconds_of_audio": sizes.e2e_seconds,
            "warmup": sizes.warmup, "repeats": sizes.repeats, "e2e_repeats": sizes.e2e_repeats,
            "compile_mode": sizes.compile_mode, "compile_cache": cache_words, "time_budget_s": options.time_budget,
            "weights": options.weights or "seeded random (speed does not depend on the weights' values)",
        },
        "sizes": {"renderer": SIZE_WORDS["renderer"].get(sizes.renderer) if not options.weights else "from weights",
                  "renderer_output": f"{rcfg.output_size}x{rcfg.output_size}",
                  "audio_encoder": SIZE_WORDS["audio"][sizes.audio] if not options.weights else "from weights",
                  "motion_generator": SIZE_WORDS["motion"][sizes.motion] if not options.weights else "from weights",
                  "reduced": sizes.renderer != "full" or sizes.audio != "full" or sizes.motion != "full",
                  "configs": {"renderer": rcfg.to_dict(), "audio_encoder": cfgs["audio"].to_dict(),
                              "motion_generator": cfgs["motion"].to_dict()}},
        "implementations": {name: {"dtype": str(i.dtype).replace("torch.", ""), "note": i.note,
                                   **({"error": i.error} if i.error else {})} for name, i in impls.items()},
        "engine_note": ENGINE_ON_CPU if device.type != "cuda" else (engine.note if engine else "skipped"),
        "figures": {},
    }


class _Runner:
    """Fills report["figures"]: one entry per implementation for every figure."""

    def __init__(self, budget, device, sizes, impls, order, work, peak, report):
        self.budget, self.device, self.sizes, self.impls, self.order = budget, device, sizes, impls, order
        self.work, self.peak, self.report = work, peak, report
        self.figures = report["figures"]

    def _all(self, reason: str) -> dict:
        return {name: not_measured(reason) for name in IMPLEMENTATIONS}

    def _blocked(self, impl: Implementation, skip_reason: str | None = None) -> str | None:
        if impl.name not in self.impls:
            return "skipped (--skip)"
        if impl.error:
            return f"cannot run: {impl.error}"
        if skip_reason:
            return skip_reason
        if self.budget.spent():
            return self.budget.reason()
        return None

    def _compile_scope(self, impl: Implementation) -> str | None:
        if impl.name == "torch.compile" and not self.sizes.compile_all:
            return (f"{self.sizes.mode} mode: torch.compile runs one shape per stage and no end-to-end clip "
                    "(each compile takes tens of seconds on a CPU); --mode cpu measures them all")
        return None

    def _measure(self, impl: Implementation, label: str, fn: StageFn, units: float, unit: str, stage: str,
                 *, batch: int = 1, steps: int = 1, repeats: int | None = None, warmup: int | None = None,
                 first_call: bool = True) -> dict:
        _log(self.budget, f"{label}: {impl.name}")
        sizes = self.sizes
        try:
            if impl.name == "torch.compile" and self.device.type == "cuda":
                inner = fn

                def fn():
                    torch.compiler.cudagraph_mark_step_begin()
                    return inner()
            if impl.name == "torch.compile" and first_call:
                t0 = time.perf_counter()
                fn()
                _sync(self.device)
                first = time.perf_counter() - t0
                impl.compile_seconds[label] = first
                _log(self.budget, f"  first call (compile included): {first:.1f} s")
            fig = time_call(fn, self.device, warmup=sizes.warmup if warmup is None else warmup,
                            repeats=repeats or sizes.repeats,
                            repeat_seconds=sizes.repeat_seconds)
        except Exception as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return not_measured(f"failed: {_error_reason(exc)}")
        fig["unit"] = unit
        fig["units_per_call"] = units
        fig["ms_per_unit"] = fig["ms"]["median"] / units
        fig["units_per_s"] = units / (fig["ms"]["median"] / 1000.0)
        fig["dtype"] = str(impl.dtype).replace("torch.", "")
        if stage != "end_to_end":
            work = self._work(impl.dtype)
            if work is not None:
                flops, nbytes = _work_for(stage, work, units, batch=batch, steps=steps)
                _attach_work(fig, flops, nbytes, units, self.peak, impl.dtype)
        else:
            work = self._work(impl.dtype)
            if work is not None:
                flops, nbytes = self._e2e_work(work, units, batch)
                _attach_work(fig, flops, nbytes, units, self.peak, impl.dtype)
        return fig

    def _work(self, dtype):
        if self.work is None:
            return None
        return self.work.get(str(dtype).replace("torch.", ""))

    def _e2e_work(self, work: dict, frames: float, batch: int) -> tuple[float, float]:
        r_f, r_b = _work_for("renderer", work, frames, batch=batch)
        a_f, a_b = _work_for("audio_encoder", work, frames / FPS)
        m = work["motion_generator"]
        windows = frames / m["frames_per_window"]
        m_f, m_b = _work_for("motion_generator", work, windows, steps=10)
        return r_f + a_f + m_f, r_b + a_b + m_b

    # ---- stages

    def audio_encoder(self, cfgs):
        fig = self.figures["audio_encoder"] = self._all("not run")
        mcfg = cfgs["motion"]
        window = mcfg.n_motions * SAMPLE_RATE // FPS
        gen = torch.Generator().manual_seed(1)
        windows = 0.1 * torch.randn(self.sizes.audio_windows, window, generator=gen)
        seconds = windows.numel() / SAMPLE_RATE
        for name in self.order:
            impl = self.impls[name]
            why = self._blocked(impl)
            if why:
                fig[name] = not_measured(why)
                continue
            fn = impl.stage("audio_encoder", audio_encoder_stage(impl.engine, windows),
                            {"windows": self.sizes.audio_windows})
            fig[name] = self._measure(impl, "audio encoder", fn, seconds, "second of audio", "audio_encoder")
        for name in IMPLEMENTATIONS:
            if name not in self.impls:
                fig[name] = not_measured("skipped (--skip)")

    def motion_generator(self, cfgs):
        mcfg = cfgs["motion"]
        self.figures["motion_generator"] = {}
        gen = torch.Generator().manual_seed(2)
        features = torch.randn(1, mcfg.n_motions, mcfg.feature_dim, generator=gen)
        warmed: set[str] = set()  # the step counts share their shapes: one warm-up per implementation
        for steps in STEPS:
            fig = self.figures["motion_generator"][str(steps)] = {}
            for name in self.order:
                impl = self.impls[name]
                why = self._blocked(impl, None if steps in self.sizes.steps else
                                    f"not measured: steps {steps} not in --steps")
                if why:
                    fig[name] = not_measured(why)
                    continue
                fn = impl.stage("motion_generator", motion_generator_stage(impl.engine, features, steps),
                                {"steps": steps})
                fig[name] = self._measure(impl, f"motion generator, {steps} steps", fn, 1, "window",
                                          "motion_generator", steps=steps, warmup=0 if name in warmed else None,
                                          first_call=name not in warmed)
                warmed.add(name)
            for name in IMPLEMENTATIONS:
                fig.setdefault(name, not_measured("skipped (--skip)"))

    def renderer(self):
        from .motion_script import scripted_motion

        scan = self.figures["renderer_scan"] = {}
        for name in self.order:
            impl = self.impls[name]
            scan[name] = {}
            if isinstance(impl.avatar, Exception):
                impl.error = impl.error or f"portrait preparation failed: {_error_reason(impl.avatar)}"
            for i, batch in enumerate(self.sizes.batches):
                why = self._blocked(impl, self._compile_scope(impl) if i else None)
                if why:
                    scan[name][str(batch)] = not_measured(why)
                    continue
                motion = scripted_motion(impl.avatar, batch)
                fn = impl.stage("renderer", renderer_stage(impl.engine, impl.avatar, motion), {"batch": batch})
                fig = self._measure(impl, f"renderer, batch {batch}", fn, batch, "frame", "renderer", batch=batch)
                fig["batch"] = batch
                scan[name][str(batch)] = fig
                if not is_measured(fig) and "out of memory" in fig["reason"].lower():
                    for b in self.sizes.batches:
                        if b > batch:
                            scan[name][str(b)] = not_measured(f"not run: batch {batch} ran out of memory")
                    break
        b1 = self.figures["renderer_batch_1"] = {}
        best = self.figures["renderer_best_batch"] = {}
        for name in IMPLEMENTATIONS:
            runs = scan.get(name)
            if runs is None:
                scan[name] = {str(b): not_measured("skipped (--skip)") for b in self.sizes.batches}
                runs = scan[name]
            b1[name] = runs.get("1", not_measured("batch 1 not in --batches"))
            measured = [f for f in runs.values() if is_measured(f)]
            if measured:
                best[name] = min(measured, key=lambda f: f["ms_per_unit"])
            else:
                reasons = {f["reason"] for f in runs.values()}
                best[name] = not_measured("; ".join(sorted(reasons)) or "no batch size measured")

    def end_to_end(self):
        from .generation import Controls

        fig = self.figures["end_to_end"] = {}
        samples = speech_clip(self.sizes.e2e_seconds)
        for name in self.order:
            impl = self.impls[name]
            why = self._blocked(impl, self._compile_scope(impl))
            if why:
                fig[name] = not_measured(why)
                continue
            best = self.figures["renderer_best_batch"].get(name)
            frames = round(len(samples) / (SAMPLE_RATE / FPS))
            batch = min(best["batch"] if is_measured(best) else impl.engine.batch_size, frames)
            engine = copy.copy(impl.engine)
            engine.batch_size = batch
            fn = impl.stage("end_to_end", end_to_end_stage(engine, impl.avatar, samples, Controls()),
                            {"batch": batch, "seconds": self.sizes.e2e_seconds})
            f = self._measure(impl, f"end to end, {frames} frames", fn, frames, "frame", "end_to_end",
                              batch=batch, repeats=self.sizes.e2e_repeats, warmup=min(self.sizes.warmup, 1))
            if is_measured(f):
                f["batch"] = batch
                f["fps"] = f["units_per_s"]
                f["seconds_of_audio"] = self.sizes.e2e_seconds
                f["output"] = self.report["sizes"]["renderer_output"]
                f["work_note"] = "renderer + audio encoder + motion generator at 10 steps, per frame"
            fig[name] = f
        for name in IMPLEMENTATIONS:
            fig.setdefault(name, not_measured("skipped (--skip)"))

    def streaming(self):
        fig = self.figures["streaming"] = {}
        for name in IMPLEMENTATIONS:
            if name != "engine":
                fig[name] = not_measured("streaming is measured for the engine only (Engine.stream is its runtime; "
                                         "the baselines have none)")
        impl = self.impls.get("engine")
        if importlib.util.find_spec("vasa_engine.streaming") is None or not hasattr(impl.engine if impl else None,
                                                                                   "stream"):
            fig["engine"] = not_measured(NO_STREAMING)
            return
        why = self._blocked(impl) if impl is not None else "skipped (--skip)"
        if why:
            fig["engine"] = not_measured(why)
            return
        _log(self.budget, f"streaming latency ({self.sizes.stream_seconds:g} s of speech, pushed in real time): engine")
        try:
            warm = speech_clip(min(1.0, self.sizes.stream_seconds))
            stream_once(impl.engine, impl.avatar, warm)  # warm-up: first-call allocations, graph capture
            result = stream_once(impl.engine, impl.avatar, speech_clip(self.sizes.stream_seconds))
            fig["engine"] = {"measured": True, "unit": "latency", **result}
        except Exception as exc:
            fig["engine"] = not_measured(f"failed: {_error_reason(exc)}")
            return
        fig["engine"]["concurrent"] = self._concurrent_streams(impl)

    def _concurrent_streams(self, impl: Implementation) -> dict:
        """Streams run at once on the engine (each pushed in real time by its own thread), at each count of
        `sizes.stream_counts` until one falls behind real time; `max_streams` is the largest count that kept up."""
        speech = speech_clip(self.sizes.stream_seconds)
        levels, best = {}, 0
        for n in self.sizes.stream_counts:
            why = self._blocked(impl)
            if why:
                levels[str(n)] = not_measured(why)
                break
            _log(self.budget, f"{n} concurrent streams ({self.sizes.stream_seconds:g} s of speech each): engine")
            try:
                levels[str(n)] = {"measured": True, **stream_concurrently(impl.engine, impl.avatar, speech, n)}
            except Exception as exc:  # out of memory at a high count, for instance
                levels[str(n)] = not_measured(f"failed: {_error_reason(exc)}")
                break
            if not levels[str(n)]["keeps_up"]:
                break
            best = n
        return {"max_streams": best, "counts": levels,
                "rule": "a count keeps up when, for every stream, the median latency of its last quarter of frames "
                        "exceeds its first quarter's by less than one chunk, and no push ran a chunk or more behind "
                        "the real-time schedule (back-pressure): no backlog builds"}


def stream_once(engine, avatar, samples, *, push_ms: int = 40, **settings) -> dict:
    """Push speech into `Engine.stream` in real time (`push_ms` per push, paced by the wall clock), flush, and
    return its latency report: p50 / p95 / max in ms (audio in -> frame returned, look-ahead included), with the
    chunk size and look-ahead it was measured under."""
    step = SAMPLE_RATE * push_ms // 1000
    returned = []
    lag = 0.0
    with engine.stream(avatar, **settings) as session:
        t0 = time.perf_counter()
        for i, start in enumerate(range(0, len(samples), step)):
            wait = t0 + i * push_ms / 1000.0 - time.perf_counter()
            if wait > 0:
                time.sleep(wait)
            lag = max(lag, -wait)
            returned += session.push(samples[start : start + step], SAMPLE_RATE)
        returned += session.flush()
        report = session.report().to_dict()
    out = {"p50_ms": report["total"]["p50"] * 1000, "p95_ms": report["total"]["p95"] * 1000,
           "max_ms": report["total"]["max"] * 1000, "frames": len(returned)}
    # Falling behind shows as latency growing through the stream (or, once back-pressure blocks, as pushes late
    # on the real-time schedule): the median latency of the last quarter of the frames minus the first quarter's.
    lat = [f.latency_s for f in returned if f.kind == "speech" and f.latency_s is not None]
    q = len(lat) // 4
    out["latency_drift_ms"] = (statistics.median(lat[-q:]) - statistics.median(lat[:q])) * 1000 if q else math.nan
    out["push_lag_ms"] = lag * 1000
    for part in ("lookahead", "compute"):
        out[f"{part}_p50_ms"] = report[part]["p50"] * 1000
        out[f"{part}_p95_ms"] = report[part]["p95"] * 1000
    out.update({k: report[k] for k in ("chunk_ms", "lookahead_ms", "past_ms", "steps", "fps")})
    out["push_ms"] = push_ms
    return out


def stream_concurrently(engine, avatar, samples, n: int, *, push_ms: int = 40, **settings) -> dict:
    """`n` sessions on one engine at once, each pushed in real time by its own thread (`stream_once`), started
    together. Returns the worst stream's latencies, the lowest sustained fps and whether every stream kept up."""
    import threading

    results: list[dict | None] = [None] * n
    errors: list[BaseException] = []
    start = threading.Barrier(n)

    def run(i: int) -> None:
        try:
            start.wait()
            results[i] = stream_once(engine, avatar, samples, push_ms=push_ms, **settings)
        except BaseException as exc:  # noqa: BLE001 - reported by the caller
            errors.append(exc)
            start.abort()

    threads = [threading.Thread(target=run, args=(i,), name=f"bench-stream-{i}") for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]
    done = [r for r in results if r is not None]
    chunk = done[0]["chunk_ms"]
    keeps_up = all(r["latency_drift_ms"] < chunk and r["push_lag_ms"] < chunk for r in done)
    return {"streams": n, "keeps_up": keeps_up,
            "latency_drift_ms": max(r["latency_drift_ms"] for r in done),
            "push_lag_ms": max(r["push_lag_ms"] for r in done),
            "p50_ms": max(r["p50_ms"] for r in done), "p95_ms": max(r["p95_ms"] for r in done),
            "max_ms": max(r["max_ms"] for r in done), "compute_p95_ms": max(r["compute_p95_ms"] for r in done),
            "min_fps": min(r["fps"] for r in done), "frames": sum(r["frames"] for r in done), "chunk_ms": chunk,
            "lookahead_ms": done[0]["lookahead_ms"], "steps": done[0]["steps"], "push_ms": push_ms}


def _add_ratios(report: dict) -> None:
    """speedup[ref] = median time of `ref` / median time of this implementation, per unit, for every figure."""
    refs = ("eager fp32", "eager bf16", "torch.compile")

    def add(group: dict):
        for name, fig in group.items():
            if not is_measured(fig) or "ms_per_unit" not in fig:
                continue
            fig["speedup"] = {}
            for ref in refs:
                if ref == name:
                    continue
                other = group.get(ref)
                if is_measured(other) and "ms_per_unit" in other:
                    fig["speedup"][f"vs {ref}"] = other["ms_per_unit"] / fig["ms_per_unit"]
                else:
                    fig["speedup"][f"vs {ref}"] = not_measured(f"{ref} not measured")

    figs = report["figures"]
    add(figs["audio_encoder"])
    for group in figs["motion_generator"].values():
        add(group)
    add(figs["renderer_batch_1"])
    add(figs["renderer_best_batch"])
    add(figs["end_to_end"])


def _reasons(tree, path=""):
    if isinstance(tree, dict):
        if tree.get("measured") is False:
            yield f"{path}: {tree.get('reason')}"
            return
        for k, v in tree.items():
            if k not in ("speedup", "pct_peak_compute", "pct_peak_bandwidth"):  # derived: their inputs say why
                yield from _reasons(v, f"{path}.{k}" if path else k)


# ------------------------------------------------------------------------------------------------ checking


def figure_paths(report: dict) -> list[tuple[str, Any]]:
    """Every figure the report must carry, with its value (None when missing)."""
    figs = report.get("figures", {})
    out = []
    for name in IMPLEMENTATIONS:
        out.append((f"audio_encoder.{name}", figs.get("audio_encoder", {}).get(name)))
        for s in STEPS:
            out.append((f"motion_generator.{s}.{name}", figs.get("motion_generator", {}).get(str(s), {}).get(name)))
        out.append((f"renderer_batch_1.{name}", figs.get("renderer_batch_1", {}).get(name)))
        out.append((f"renderer_best_batch.{name}", figs.get("renderer_best_batch", {}).get(name)))
        out.append((f"end_to_end.{name}", figs.get("end_to_end", {}).get(name)))
        out.append((f"streaming.{name}", figs.get("streaming", {}).get(name)))
    return out


def validate_report(report: dict) -> list[str]:
    """Problems with a report: a missing field, or a figure neither measured nor given a reason."""
    problems = []
    for key in ("schema", "date", "commit", "command", "mode", "device", "versions", "settings", "sizes",
                "implementations", "figures", "compile", "total_seconds"):
        if key not in report:
            problems.append(f"missing {key}")
    for key in ("torch", "triton"):
        if key not in report.get("versions", {}):
            problems.append(f"missing versions.{key}")
    for key in ("dtypes", "batches", "steps"):
        if key not in report.get("settings", {}):
            problems.append(f"missing settings.{key}")
    if "peak" not in report.get("device", {}):
        problems.append("missing device.peak")
    for path, fig in figure_paths(report):
        problems += _check_figure(path, fig)
    return problems


def _check_figure(path: str, fig) -> list[str]:
    if not isinstance(fig, dict):
        return [f"{path}: missing"]
    if fig.get("measured") is False:
        return [] if fig.get("reason") else [f"{path}: not measured and no reason"]
    if fig.get("measured") is not True:
        return [f"{path}: neither measured nor given a reason"]
    if path.startswith("streaming."):
        return [] if {"p50_ms", "p95_ms"} <= set(fig) else [f"{path}: no p50_ms / p95_ms"]
    problems = [f"{path}: no {k}" for k in ("ms", "ms_per_unit", "units_per_s", "unit") if k not in fig]
    for k in ("flops_per_unit", "bytes_per_unit", "pct_peak_compute", "pct_peak_bandwidth", "speedup"):
        if k not in fig:
            problems.append(f"{path}: no {k}")
    return problems


# ------------------------------------------------------------------------------------------------ output


def _umask_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


def write_atomic(path: str | os.PathLike, data: str | bytes) -> Path:
    """Write to a temporary file beside `path`, then rename it into place (readers never see a partial file)."""
    path = Path(path)
    mode = "wb" if isinstance(data, bytes) else "w"
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(fd, mode) as f:
            f.write(data)
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def to_json(report: dict) -> str:
    return json.dumps(report, indent=2, default=str) + "\n"


def _fmt(x: float) -> str:
    if x >= 100:
        return f"{x:.0f}"
    if x >= 10:
        return f"{x:.1f}"
    if x >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _cell(fig, what: str = "ms") -> str:
    if not is_measured(fig):
        return "n/m"
    if what == "fps":
        return _fmt(fig["units_per_s"])
    text = _fmt(fig["ms_per_unit"])
    if "batch" in fig and what == "ms_b":
        text += f" (b{fig['batch']})"
    return text


def _ratio_cell(fig, ref: str) -> str:
    if not is_measured(fig):
        return "n/m"
    r = fig.get("speedup", {}).get(f"vs {ref}")
    return f"{r:.2f}x" if isinstance(r, (int, float)) else "n/m"


def to_markdown(report: dict) -> str:
    figs = report["figures"]
    dev = report["device"]
    impls = list(IMPLEMENTATIONS)
    date = report["date"][:10]
    commit = report["commit"] + ("+dirty" if report.get("dirty") else "")
    v = report["versions"]
    s = report["settings"]
    lines = [f"### vasa-engine bench: {dev['name']}, {date}, commit {commit}", "",
             f"`{report['command']}`", "",
             f"mode {report['mode']}{' (quick)' if report.get('quick') else ''}; torch {v['torch']}, triton "
             f"{v['triton']}; dtypes: " + ", ".join(f"{k} {d}" for k, d in s["dtypes"].items())
             + f"; renderer batches {', '.join(map(str, s['batches']))}; steps {', '.join(map(str, s['steps']))}; "
               f"{s['guidance_branches']} guidance branches; total {report['total_seconds']:.0f} s", ""]
    if report["sizes"]["reduced"]:
        sz = report["sizes"]
        lines += [f"Reduced sizes: renderer {sz['renderer']}; audio encoder {sz['audio_encoder']}; motion generator "
                  f"{sz['motion_generator']}.", ""]
    if dev["type"] != "cuda":
        lines += [f"{ENGINE_ON_CPU}.", ""]
    head = "| figure | " + " | ".join(impls) + " |"
    lines += [head, "|" + " --- |" * (len(impls) + 1)]

    def row(label, group, what="ms"):
        lines.append(f"| {label} | " + " | ".join(_cell(group.get(n), what) for n in impls) + " |")

    row("audio encoder, ms per s of audio", figs["audio_encoder"])
    for st in STEPS:
        row(f"motion generator, ms per window, {st} step{'s' if st > 1 else ''}", figs["motion_generator"][str(st)])
    row("renderer, ms per frame, batch 1", figs["renderer_batch_1"])
    row("renderer, ms per frame, best batch", figs["renderer_best_batch"], "ms_b")
    row("renderer, fps, best batch", figs["renderer_best_batch"], "fps")
    out = report["sizes"]["renderer_output"]
    row(f"end to end, fps ({out}, {s['e2e_seconds_of_audio']:g} s of audio)", figs["end_to_end"], "fps")
    stream = figs["streaming"].get("engine", {})
    lat = (f"{_fmt(stream['p50_ms'])} / {_fmt(stream['p95_ms'])}" if is_measured(stream) else "n/m")
    setting = (f" (chunk {stream['chunk_ms']} ms, look-ahead {stream['lookahead_ms']} ms, {stream['steps']} steps)"
               if is_measured(stream) else "")
    lines.append(f"| streaming latency p50 / p95, ms{setting} | " + " | ".join(
        lat if n == "engine" else "n/m" for n in impls) + " |")
    concurrent = stream.get("concurrent") if is_measured(stream) else None
    if concurrent:
        tried = [f"{k}: {'kept up' if v['keeps_up'] else 'fell behind'}, p95 {_fmt(v['p95_ms'])} ms"
                 if is_measured(v) else f"{k}: not measured" for k, v in concurrent["counts"].items()]
        cell = f"{concurrent['max_streams']} ({'; '.join(tried)})"
        lines.append("| concurrent real-time streams | " + " | ".join(
            cell if n == "engine" else "n/m" for n in impls) + " |")

    lines += ["", "Speed-ups (time of the baseline / time of the implementation, same figure):", "",
              "| figure | engine vs eager fp32 | engine vs eager bf16 | engine vs torch.compile | "
              "torch.compile vs eager fp32 | torch.compile vs eager bf16 |", "|" + " --- |" * 6]

    def ratio_row(label, group):
        e, c = group.get("engine"), group.get("torch.compile")
        lines.append(f"| {label} | {_ratio_cell(e, 'eager fp32')} | {_ratio_cell(e, 'eager bf16')} | "
                     f"{_ratio_cell(e, 'torch.compile')} | {_ratio_cell(c, 'eager fp32')} | "
                     f"{_ratio_cell(c, 'eager bf16')} |")

    ratio_row("audio encoder", figs["audio_encoder"])
    for st in STEPS:
        ratio_row(f"motion generator, {st} steps", figs["motion_generator"][str(st)])
    ratio_row("renderer, batch 1", figs["renderer_batch_1"])
    ratio_row("renderer, best batch", figs["renderer_best_batch"])
    ratio_row("end to end", figs["end_to_end"])

    peak = dev["peak"]
    peak_words = (f"{peak.get('device') or peak.get('name')}: {peak['source']}" if is_measured(peak)
                  else peak["reason"])
    lines += ["", f"Work counted per unit, and what the engine reaches (peak: {peak_words}):", "",
              "| figure | GFLOP per unit | MB per unit | engine TFLOP/s | % of peak compute | engine GB/s | "
              "% of peak bandwidth |", "|" + " --- |" * 7]

    def pct(x):
        return f"{x:.1f}%" if isinstance(x, (int, float)) else "n/m"

    def work_row(label, fig):
        if not is_measured(fig) or "flops_per_unit" not in fig:
            lines.append(f"| {label} | n/m | n/m | n/m | n/m | n/m | n/m |")
            return
        lines.append(f"| {label} | {_fmt(fig['flops_per_unit'] / 1e9)} | {_fmt(fig['bytes_per_unit'] / 1e6)} | "
                     f"{fig['tflops_per_s']:.3g} | {pct(fig['pct_peak_compute'])} | {fig['gbytes_per_s']:.3g} | "
                     f"{pct(fig['pct_peak_bandwidth'])} |")

    work_row("audio encoder (per s of audio)", figs["audio_encoder"].get("engine"))
    work_row("motion generator (per window, 10 steps)", figs["motion_generator"]["10"].get("engine"))
    work_row("renderer (per frame, batch 1)", figs["renderer_batch_1"].get("engine"))
    work_row("renderer (per frame, best batch)", figs["renderer_best_batch"].get("engine"))
    work_row("end to end (per frame)", figs["end_to_end"].get("engine"))

    comp = report.get("compile", {})
    firsts = comp.get("first_call_seconds")
    if isinstance(firsts, dict) and firsts and firsts.get("measured") is not False:
        lines += ["", f"torch.compile ({comp['mode']}, {comp['cache']}), first call of each shape (compile "
                      "included, not in any timed figure): "
                  + "; ".join(f"{k} {v:.1f} s" for k, v in firsts.items())]
    notes = report.get("not_measured", [])
    if notes:
        lines += ["", "Not measured (n/m):", ""] + [f"- {n}" for n in _compress(notes)]
    return "\n".join(lines) + "\n"


def _compress(notes: list[str]) -> list[str]:
    """Group the per-figure reasons by reason text."""
    by_reason: dict[str, list[str]] = {}
    for note in notes:
        path, _, reason = note.partition(": ")
        by_reason.setdefault(reason, []).append(path)
    out = []
    for reason, paths in by_reason.items():
        shown = ", ".join(paths[:6]) + (f" and {len(paths) - 6} more" if len(paths) > 6 else "")
        out.append(f"{shown}: {reason}")
    return out


def write_plot(report: dict, path: str | os.PathLike) -> str | None:
    """Frames per second against batch size, one line per implementation (PNG). Returns a reason when skipped."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "matplotlib is not installed: no plot"
    scan = report["figures"].get("renderer_scan", {})
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=110)
    drawn = 0
    for name in IMPLEMENTATIONS:
        points = sorted((int(b), f["units_per_s"]) for b, f in scan.get(name, {}).items() if is_measured(f))
        if points:
            dtype = report["settings"]["dtypes"].get(name, "")
            ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=f"{name} ({dtype})")
            drawn += 1
    if not drawn:
        plt.close(fig)
        return "no renderer figure measured: no plot"
    ax.set_xscale("log", base=2)
    batches = sorted({int(b) for runs in scan.values() for b in runs})
    ax.set_xticks(batches)
    ax.set_xticklabels([str(b) for b in batches])
    ax.minorticks_off()
    ax.set_xlabel("batch size (frames per call)")
    ax.set_ylabel("frames per second (renderer)")
    out = report["sizes"]["renderer_output"]
    ax.set_title(f"renderer {out}, {report['device']['name']}\n{report['date'][:10]}, commit {report['commit']}",
                 fontsize=9)
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".png", dir=path.parent)
    os.close(fd)
    try:
        fig.savefig(tmp, format="png")
        os.chmod(tmp, _umask_mode())
        os.replace(tmp, path)
    finally:
        Path(tmp).unlink(missing_ok=True)
        plt.close(fig)
    return None


def default_results_dir() -> Path:
    repo = Path(__file__).resolve().parent.parent
    folder = repo / "benches" / "results"
    return folder if folder.is_dir() else Path.cwd()


def default_stem(device: torch.device, mode: str, date: str | None = None) -> str:
    date = date or _dt.date.today().isoformat()
    slug = device_slug(device)
    return f"{slug}-smoke-{date}" if mode == "smoke" else f"{slug}-{date}"

