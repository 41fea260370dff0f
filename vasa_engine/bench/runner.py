"""Fills the report's figures, stage by stage, for every implementation: what blocks a measurement (--skip, an
implementation that cannot run, the time budget), the first call of torch.compile timed apart, each timed
figure's units, counted work and percent of peak, and which implementation of the native operations (sampler step,
keypoint transform) each implementation's calls ran. The engine's outputs are checked against eager float32 first
(`correctness`), and the report so far is handed to `checkpoint` after each figure and each stage."""

from __future__ import annotations

import time

import torch

from .. import native
from ..io.audio import SAMPLE_RATE
from .correctness import REFERENCE_IMPL, audio_windows, check_engine, motion_features
from .figures import dtype_name, error_reason, is_measured, not_measured
from .implementations import IMPLEMENTATIONS, Implementation
from .sizes import FPS, STEPS
from .stages import (audio_encoder_stage, end_to_end_stage, motion_generator_stage, renderer_stage,
                     source_encoding_stage, speech_clip)
from .streams import stream_concurrently, stream_once
from .timing import PROBE_SIZES, StageFn, machine_probe, sync, time_call
from .work import attach_work, work_for

SKIPPED = "skipped (--skip)"
SOURCE_FRAMES = 8  # video frames a call of the source-encoding figure encodes
NOT_COMPILED = ("not measured: the torch.compile variant compiles the audio encoder, the denoiser and the renderer's "
                "warp + decode, not the extractors, so its source encoding is eager PyTorch")
CONCURRENT_RULE = ("a count keeps up when, for every stream, the median latency of its last quarter of frames "
                   "exceeds its first quarter's by less than one chunk, and no push ran a chunk or more behind "
                   "the real-time schedule (back-pressure): no backlog builds")


class Runner:
    """Fills report["figures"]: one entry per implementation for every figure."""

    def __init__(self, budget, device, sizes, impls, order, work, peak, report, checkpoint=None):
        self.budget, self.device, self.sizes, self.impls, self.order = budget, device, sizes, impls, order
        self.work, self.peak, self.report = work, peak, report
        self.figures = report["figures"]
        self.native_ops = report.setdefault("native_ops", {})
        self.checkpoint = checkpoint or (lambda report: None)
        self.probe = machine_probe(device)
        size = PROBE_SIZES.get(device.type, PROBE_SIZES["cpu"])
        report["settings"]["machine_probe"] = (f"{size}x{size} float32 matrix products through tanh, 4 rounds, timed "
                                               "before every repeat (probe_ms of each figure)")

    def run(self, cfgs: dict) -> None:
        for stage in (self.correctness, self.audio_encoder, self.motion_generator, self.renderer,
                      self.source_encoding, self.end_to_end, self.streaming):
            stage(cfgs)
            self.checkpoint(self.report)

    def _native_used(self, impl: Implementation) -> None:
        """Adds what native recorded since the last call to `impl`'s entry of report["native_ops"]."""
        entry = self.native_ops.setdefault(impl.name, {})
        for op, used in native.usage().items():
            entry[op] = sorted(set(entry.get(op, [])) | set(used))
        native.reset_usage()

    def correctness(self, cfgs):
        pair = {"engine": self.impls.get("engine"), REFERENCE_IMPL: self.impls.get(REFERENCE_IMPL)}
        for name, impl in pair.items():
            why = SKIPPED if impl is None else self._blocked(impl, budget=False)
            if why is None and isinstance(impl.avatar, Exception):
                why = f"portrait preparation failed: {error_reason(impl.avatar)}"
            if why:
                self.report["correctness"] = not_measured(f"not checked: {name} {why}")
                return
        engine, reference = pair["engine"], pair[REFERENCE_IMPL]
        self.budget.log(f"correctness: engine against {REFERENCE_IMPL}")
        native.reset_usage()
        try:
            self.report["correctness"] = check_engine(engine.engine, engine.avatar, reference.engine,
                                                      reference.avatar, cfgs, steps=max(self.sizes.steps),
                                                      batch=min(2, max(self.sizes.batches)),
                                                      windows=self.sizes.audio_windows)
        except Exception as exc:
            self.report["correctness"] = not_measured(f"failed: {error_reason(exc)}")
        native.reset_usage()

    def _blocked(self, impl: Implementation, skip_reason: str | None = None, budget: bool = True) -> str | None:
        if impl.name not in self.impls:
            return SKIPPED
        if impl.error:
            return f"cannot run: {impl.error}"
        if skip_reason:
            return skip_reason
        if budget and self.budget.spent():
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
        native.reset_usage()
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
                            repeats=repeats or sizes.repeats, repeat_seconds=sizes.repeat_seconds, probe=self.probe)
        except Exception as exc:
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            return not_measured(f"failed: {error_reason(exc)}")
        finally:
            self._native_used(impl)
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
                self.checkpoint(self.report)  # each figure as soon as it is measured

    @staticmethod
    def _fill_skipped(fig: dict) -> None:
        for name in IMPLEMENTATIONS:
            fig.setdefault(name, not_measured(SKIPPED))

    def audio_encoder(self, cfgs):
        fig = self.figures["audio_encoder"] = {}
        windows = audio_windows(cfgs, self.sizes.audio_windows)
        seconds = windows.numel() / SAMPLE_RATE
        for impl in self._runnable(fig):
            fig[impl.name] = self._measure(impl, "audio encoder", audio_encoder_stage(impl.engine, windows), seconds,
                                           "second of audio", "audio_encoder")
        self._fill_skipped(fig)

    def motion_generator(self, cfgs):
        self.figures["motion_generator"] = {}
        features = motion_features(cfgs)
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

    def renderer(self, cfgs=None):
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
                self.checkpoint(self.report)
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

    def source_encoding(self, cfgs=None):
        """Dubbing's per-frame source encoding, ms per frame: SOURCE_FRAMES frames in batches of the engine's batch
        size (the dub's default)."""
        fig = self.figures["source_encoding"] = {}
        for impl in self._runnable(fig, lambda impl: NOT_COMPILED if impl.name == "torch.compile" else None):
            batch = impl.engine.batch_size
            fn = source_encoding_stage(impl.engine, impl.avatar, SOURCE_FRAMES, batch)
            f = self._measure(impl, f"source encoding, {SOURCE_FRAMES} frames", fn, SOURCE_FRAMES, "frame",
                              "source_encoding", batch=batch, first_call=False)
            if is_measured(f):
                f["batch"] = batch
            fig[impl.name] = f
        self._fill_skipped(fig)

    def end_to_end(self, cfgs=None):
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

    def streaming(self, cfgs=None):
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
        native.reset_usage()
        try:
            warm = speech_clip(min(1.0, self.sizes.stream_seconds))
            stream_once(impl.engine, impl.avatar, warm)  # warm-up: first-call allocations, graph capture
            result = stream_once(impl.engine, impl.avatar, speech_clip(self.sizes.stream_seconds))
            fig["engine"] = {"measured": True, "unit": "latency", **result}
        except Exception as exc:
            fig["engine"] = not_measured(f"failed: {error_reason(exc)}")
            return
        finally:
            self._native_used(impl)
        fig["engine"]["concurrent"] = self._concurrent_streams(impl)

    def _concurrent_streams(self, impl: Implementation) -> dict:
        """Streams run at once on the engine (each pushed in real time by its own thread), at each count of
        `sizes.stream_counts`, both ways in the same run: per-session threads launching their own work, and the
        device scheduler batching every session's work (`batched=True`, under "scheduler"), until both fall
        behind real time; `max_streams` (`max_streams_scheduler`) is the largest count that kept up."""
        speech = speech_clip(self.sizes.stream_seconds)
        levels: dict = {}
        best, alive = {False: 0, True: 0}, {False: True, True: True}
        scheduler = impl.engine.scheduler
        # measured beyond what admission control would let in: how the scheduler behaves under the load itself
        admission, scheduler.admission = scheduler.admission, False
        try:
            stream_once(impl.engine, impl.avatar, speech_clip(min(1.0, self.sizes.stream_seconds)), batched=True)
            self._stream_counts(impl, speech, levels, best, alive)
        finally:
            scheduler.admission = admission
        return {"max_streams": best[False], "max_streams_scheduler": best[True], "counts": levels,
                "rule": CONCURRENT_RULE}

    def _stream_counts(self, impl: Implementation, speech, levels: dict, best: dict, alive: dict) -> None:
        for n in self.sizes.stream_counts:
            why = self._blocked(impl)
            if why:
                levels[str(n)] = not_measured(why)
                break
            self.budget.log(f"{n} concurrent streams ({self.sizes.stream_seconds:g} s of speech each): engine, "
                            "per-session threads and device scheduler")
            # a way that fell behind at a lower count is not run again
            level = (self._streams_level(impl, speech, n, batched=False) if alive[False]
                     else not_measured("fell behind at a lower count"))
            level["scheduler"] = (self._streams_level(impl, speech, n, batched=True) if alive[True]
                                  else not_measured("fell behind at a lower count"))
            levels[str(n)] = level
            for batched, result in ((False, level), (True, level["scheduler"])):
                alive[batched] = alive[batched] and is_measured(result) and result["keeps_up"]
                if alive[batched]:
                    best[batched] = n
            if not any(alive.values()):
                break

    def _streams_level(self, impl: Implementation, speech, n: int, batched: bool) -> dict:
        try:
            return {"measured": True, **stream_concurrently(impl.engine, impl.avatar, speech, n, batched=batched)}
        except Exception as exc:  # out of memory at a high count, or refused by the scheduler's admission
            return not_measured(f"failed: {error_reason(exc)}")
