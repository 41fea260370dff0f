"""One bench run: resolve the device, sizes and dtype, build the implementations, count the work, check the engine's
outputs against eager float32, measure every figure, then derive the speed-ups and the list of what was not
measured. `Options.checkpoint`, when given, receives the report after each figure (marked `"partial": true`), so a
run stopped part-way still leaves what it measured."""

from __future__ import annotations

import os
import shutil
import tempfile
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch

from .figures import dtype_name, error_reason, not_measured
from .implementations import IMPL_KEYS, build_engines, build_implementations
from .peaks import device_peak
from .report import add_ratios, header, not_measured_reasons
from .runner import Runner
from .sizes import sizes_for
from .timing import Budget
from .work import work_per_unit

QUICK_ORDER = ("engine", "torch.compile", "eager bf16", "eager fp32")  # --quick: the key figures first


@dataclass
class Options:
    mode: str = "auto"
    device: str = "auto"
    dtype: str = "auto"  # compiled and engine dtype: the engine's own (float16 on CUDA, float32 on a CPU)
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
    checkpoint: Callable[[dict], None] | None = None  # receives the report so far after each figure


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


def _guidance_branches() -> int:
    from ..generation import Controls

    return 1 if Controls().audio_scale == 1.0 else 2  # the default controls: audio guidance only


def _prepare_avatars(impls: dict) -> None:
    """Each runnable implementation's avatar of the bundled portrait, or the exception that preparing it raised."""
    from ..cli import sample_portrait

    for impl in impls.values():
        if impl.error is None:
            try:
                impl.avatar = impl.engine.prepare(sample_portrait())
            except Exception as exc:
                impl.avatar = exc


def native_summary(device: torch.device) -> dict:
    """The native extension as this run found it: what its operations run on the device, and every CUDA call that
    fell back to the PyTorch reference, with the reason (report["native_ops"] has each implementation's calls)."""
    from .. import native

    info = native.extension_info()
    return {"on_device": native.implementation(device), "cuda_fallbacks": native.cuda_fallbacks(),
            "built": info["built"], "cuda_built": info["cuda_built"], "cuda_archs": info["cuda_archs"],
            "cuda_reason": info["cuda_reason"]}


@contextmanager
def _cpu_threads(count: int | None, device: torch.device):
    """torch's CPU threads set to `count` for the run (on a CPU device), restored after."""
    before = torch.get_num_threads()
    if count and device.type == "cpu":
        torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def run_bench(options: Options) -> dict:
    """Measure every figure; returns the report (see benches/README.md)."""
    from ..runtime import resolve_device

    device = resolve_device(options.device)
    sizes = sizes_for(options.mode, device, quick=options.quick, full_size=options.full_size,
                      batches=options.batches, steps=options.steps)
    with _cpu_threads(sizes.cpu_threads, device):
        return _run(options, device, sizes)


def _run(options: Options, device: torch.device, sizes) -> dict:
    from ..runtime import device_name, resolve_dtype

    budget = Budget(options.time_budget)
    dtype = resolve_dtype(options.dtype, device)  # "auto": the engine's default dtype on the device
    skip = tuple(IMPL_KEYS.get(s, s) for s in options.skip)
    peak = device_peak(device)
    budget.log(f"bench mode {sizes.mode} on {device_name(device)}: building the modules")
    torch.manual_seed(options.seed)
    with _compile_cache(options.fresh_compile_cache) as cache_words:
        engines = build_engines(sizes, device, dtype, options.weights, options.seed)
        base = engines[torch.float32]
        stack = base.motion_stack
        cfgs = {"renderer": base.config, "audio": stack.audio.audio_encoder.cfg, "motion": stack.generator.cfg}
        impls = build_implementations(engines, dtype, sizes.compile_mode, skip)
        order = [n for n in QUICK_ORDER if n in impls] if sizes.quick else list(impls)
        _prepare_avatars(impls)
        report = header(options, sizes, device, peak, cfgs, impls, cache_words)
        branches = _guidance_branches()
        report["settings"]["guidance_branches"] = branches
        try:
            work = {dtype_name(dt): work_per_unit(cfgs, dt, branches)
                    for dt in dict.fromkeys([torch.float32, torch.bfloat16, dtype])}
            report["work"] = work
        except Exception as exc:
            work = None
            report["work"] = not_measured(f"counting failed: {error_reason(exc)}")
        budget.log("work counted; measuring")
        report["partial"] = True

        def checkpoint(partial: dict) -> None:
            partial["native"] = native_summary(device)
            partial["total_seconds"] = budget.elapsed
            options.checkpoint(partial)

        Runner(budget, device, sizes, impls, order, work, peak, report,
               checkpoint if options.checkpoint is not None else None).run(cfgs)
    report["partial"] = False
    report["native"] = native_summary(device)
    add_ratios(report)
    report["compile"] = {"mode": sizes.compile_mode, "cache": cache_words,
                         "first_call_seconds": impls["torch.compile"].compile_seconds if "torch.compile" in impls
                         else not_measured("torch.compile skipped (--skip)"),
                         "note": "first call of each shape: trace + compile + one run; never inside a timed region"}
    report["not_measured"] = sorted(set(not_measured_reasons(report["figures"])))
    report["total_seconds"] = budget.elapsed
    budget.log("done")
    return report
