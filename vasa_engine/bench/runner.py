"""Fills the report's figures, stage by stage, for every implementation: what blocks a measurement (--skip, an
implementation that cannot run, the time budget), the first call of torch.compile timed apart, and each timed
figure's units, counted work and percent of peak."""

from __future__ import annotations

import time

import torch

from ..io.audio import SAMPLE_RATE
from .figures import dtype_name, error_reason, is_measured, not_measured
from .implementations import IMPLEMENTATIONS, Implementation
from .sizes import FPS, STEPS
from .stages import (audio_encoder_stage, end_to_end_stage, motion_generator_stage, renderer_stage,
                     speech_clip)
from .streams import stream_concurrently, stream_once
from .timing import StageFn, sync, time_call
from .work import attach_work, work_for

SKIPPED = "skipped (--skip)"
CONCURRENT_RULE = ("a count keeps up when, for every stream, the median latency of its last quarter of frames "
                   "exceeds its first quarter's by less than one chunk, and no push ran a chunk or more behind "
                   "the real-time schedule (back-pressure): no backlog builds")


class Runner:
    """Fills report["figures"]: one entry per implementation for every figure."""

    def __init__(self, budget, device, sizes, impls, order, work, peak, report):
        self.budget, self.device, self.sizes, self.impls, self.order = budget, device, sizes, impls, order
        self.work, self.peak, self.report = work, peak, report
        self.figures = report["figures"]

    def run(self, cfgs: dict) -> None:
        self.audio_encoder(cfgs)
        self.motion_generator(cfgs)
        self.renderer()
        self.end_to_end()
        self.streaming()

    def _blocked(self, impl: Implementation, skip_reason: str | None = None) -> str | None:
        if impl.name not in self.impls:
            return SKIPPED
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
        self.budget.log(f"{label}: {impl.name}")
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
                sync(self.device)
                first = time.perf_counter() - t0
                impl.compile_seconds[label] = first
                self.budget.log(f"  first call (compile included): {first:.1f} s")
            fig = time_call(fn, self.device, warmup=sizes.warmup if warmup is None else warmup,
                            repeats=repeats or sizes.repeats, repeat_seconds=sizes.repeat_seconds)
        except Exception as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return not_measured(f"failed: {error_reason(exc)}")
        fig["unit"] = unit
        fig["units_per_call"] = units
        fig["ms_per_unit"] = fig["ms"]["median"] / units
        fig["units_per_s"] = units / (fig["ms"]["median"] / 1000.0)
        fig["dtype"] = dtype_name(impl.dtype)
        work = self.work.get(dtype_name(impl.dtype)) if self.work is not None else None
        if work is not None:
            flops, nbytes = work_for(stage, work, units, batch=batch, steps=steps)
            attach_work(fig, flops, nbytes, units, self.peak, impl.dtype)
        return fig

    def _runnable(self, fig: dict, skip_reason=lambda impl: None):
        """The implementations to measure, in order; the others get their reason in `fig` (keyed by name)."""
        for name in self.order:
            impl = self.impls[name]
            why = self._blocked(impl, skip_reason(impl))
            if why:
                fig[name] = not_measured(why)
            else:
                yield impl

    @staticmethod
    def _fill_skipped(fig: dict) -> None:
        for name in IMPLEMENTATIONS:
            fig.setdefault(name, not_measured(SKIPPED))

    def audio_encoder(self, cfgs):
        fig = self.figures["audio_encoder"] = {}
        window = cfgs["motion"].n_motions * SAMPLE_RATE // FPS
        windows = 0.1 * torch.randn(self.sizes.audio_windows, window, generator=torch.Generator().manual_seed(1))
        seconds = windows.numel() / SAMPLE_RATE
        for impl in self._runnable(fig):
            fig[impl.name] = self._measure(impl, "audio encoder", audio_encoder_stage(impl.engine, windows), seconds,
                                           "second of audio", "audio_encoder")
        self._fill_skipped(fig)

    def motion_generator(self, cfgs):
        mcfg = cfgs["motion"]
        self.figures["motion_generator"] = {}
        features = torch.randn(1, mcfg.n_motions, mcfg.feature_dim, generator=torch.Generator().manual_seed(2))
        warmed: set[str] = set()  # the step counts share their shapes: one warm-up per implementation
        for steps in STEPS:
            fig = self.figures["motion_generator"][str(steps)] = {}
            outside = None if steps in self.sizes.steps else f"not measured: steps {steps} not in --steps"
            for impl in self._runnable(fig, lambda impl: outside):
                fn = motion_generator_stage(impl.engine, features, steps)
                fig[impl.name] = self._measure(impl, f"motion generator, {steps} steps", fn, 1, "window",
                                               "motion_generator", steps=steps,
                                               warmup=0 if impl.name in warmed else None,
                                               first_call=impl.name not in warmed)
                warmed.add(impl.name)
            self._fill_skipped(fig)

    def renderer(self):
        from ..motion_script import scripted_motion

        scan = self.figures["renderer_scan"] = {}
        for name in self.order:
            impl = self.impls[name]
            scan[name] = {}
            if isinstance(impl.avatar, Exception):
                impl.error = impl.error or f"portrait preparation failed: {error_reason(impl.avatar)}"
            for i, batch in enumerate(self.sizes.batches):
                why = self._blocked(impl, self._compile_scope(impl) if i else None)
                if why:
                    scan[name][str(batch)] = not_measured(why)
                    continue
                fn = renderer_stage(impl.engine, impl.avatar, scripted_motion(impl.avatar, batch))
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
            runs = scan.setdefault(name, {str(b): not_measured(SKIPPED) for b in self.sizes.batches})
            b1[name] = runs.get("1", not_measured("batch 1 not in --batches"))
            measured = [f for f in runs.values() if is_measured(f)]
            if measured:
                best[name] = min(measured, key=lambda f: f["ms_per_unit"])
            else:
                reasons = {f["reason"] for f in runs.values()}
                best[name] = not_measured("; ".join(sorted(reasons)) or "no batch size measured")

    def end_to_end(self):
        from ..generation import Controls

        fig = self.figures["end_to_end"] = {}
        samples = speech_clip(self.sizes.e2e_seconds)
        frames = round(len(samples) / (SAMPLE_RATE / FPS))
        for impl in self._runnable(fig, self._compile_scope):
            best = self.figures["renderer_best_batch"].get(impl.name)
            batch = min(best["batch"] if is_measured(best) else impl.engine.batch_size, frames)
            fn = end_to_end_stage(impl.engine, impl.avatar, samples, Controls(), batch_size=batch)
            f = self._measure(impl, f"end to end, {frames} frames", fn, frames, "frame", "end_to_end",
                              batch=batch, repeats=self.sizes.e2e_repeats, warmup=min(self.sizes.warmup, 1))
            if is_measured(f):
                f["batch"] = batch
                f["fps"] = f["units_per_s"]
                f["seconds_of_audio"] = self.sizes.e2e_seconds
                f["output"] = self.report["sizes"]["renderer_output"]
                f["work_note"] = "renderer + audio encoder + motion generator at 10 steps, per frame"
            fig[impl.name] = f
        self._fill_skipped(fig)

    def streaming(self):
        fig = self.figures["streaming"] = {}
        for name in IMPLEMENTATIONS:
            if name != "engine":
                fig[name] = not_measured("streaming is measured for the engine only (Engine.stream is its runtime; "
                                         "the baselines have none)")
        impl = self.impls.get("engine")
        why = self._blocked(impl) if impl is not None else SKIPPED
        if why:
            fig["engine"] = not_measured(why)
            return
        self.budget.log(f"streaming latency ({self.sizes.stream_seconds:g} s of speech, pushed in real time): engine")
        try:
            warm = speech_clip(min(1.0, self.sizes.stream_seconds))
            stream_once(impl.engine, impl.avatar, warm)  # warm-up: first-call allocations, graph capture
            result = stream_once(impl.engine, impl.avatar, speech_clip(self.sizes.stream_seconds))
            fig["engine"] = {"measured": True, "unit": "latency", **result}
        except Exception as exc:
            fig["engine"] = not_measured(f"failed: {error_reason(exc)}")
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
            self.budget.log(f"{n} concurrent streams ({self.sizes.stream_seconds:g} s of speech each): engine")
            try:
                levels[str(n)] = {"measured": True, **stream_concurrently(impl.engine, impl.avatar, speech, n)}
            except Exception as exc:  # out of memory at a high count, for instance
                levels[str(n)] = not_measured(f"failed: {error_reason(exc)}")
                break
            if not levels[str(n)]["keeps_up"]:
                break
            best = n
        return {"max_streams": best, "counts": levels, "rule": CONCURRENT_RULE}
