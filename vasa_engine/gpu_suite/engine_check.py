"""The engine's first contact with a GPU: the full-size engine as shipped (the engine's CUDA dtype, Triton kernels,
CUDA graphs, the native CUDA step) against eager PyTorch on the same seeded weights, for a few frames.

Equality: each stage's output (audio features, one motion window, a batch of frames) against eager float32, within
the dtype's bound (vasa_engine.bench.correctness). Speed: each stage timed for the engine and for eager PyTorch at
the same dtype (the Triton kernels, the fused step and the graphs against none of them), and for eager float32.
Also recorded: whether the kernels were active, every graph captured or failed, and which implementation the native
operations ran. No torch.compile here.

Run as `python -m vasa_engine.gpu_suite.engine_check --json PATH` (the suite does, in a process of its own): writes
the result to PATH atomically and exits 1 when a check failed.
"""

from __future__ import annotations

import argparse
import sys

import torch


def _timed(fn, device, repeats: int) -> dict:
    from ..bench.timing import time_call

    try:
        return time_call(fn, device, warmup=2, repeats=repeats)
    except Exception as exc:  # a stage that cannot run: recorded, the check goes on
        from ..bench.figures import error_reason, not_measured

        return not_measured(f"failed: {error_reason(exc)}")


def _stage_timings(impls: dict, cfgs: dict, frames: int, steps: int, repeats: int, device) -> dict:
    """ms per unit of each stage (frame, window, second of audio) for every implementation in `impls`."""
    from .. import native
    from ..bench import audio_encoder_stage, motion_generator_stage, renderer_stage
    from ..bench.correctness import audio_windows, motion_features
    from ..io.audio import SAMPLE_RATE
    from ..motion_script import scripted_motion

    windows, features = audio_windows(cfgs, 1), motion_features(cfgs)
    out: dict = {}
    for name, (engine, avatar) in impls.items():
        native.reset_usage()
        motion = scripted_motion(avatar, frames)
        stages = {"renderer": (renderer_stage(engine, avatar, motion), frames, "frame"),
                  "motion_generator": (motion_generator_stage(engine, features, steps), 1, "window"),
                  "audio_encoder": (audio_encoder_stage(engine, windows), windows.numel() / SAMPLE_RATE,
                                    "second of audio")}
        out[name] = {}
        for stage, (fn, units, unit) in stages.items():
            fig = _timed(fn, device, repeats)
            if fig.get("measured"):
                fig.update(unit=unit, ms_per_unit=fig["ms"]["median"] / units)
            out[name][stage] = fig
        out[name]["native_ops"] = native.usage()
    return out


def run_check(frames: int = 8, steps: int = 10, repeats: int = 5, seed: int = 0, *, device: str = "cuda",
              sizes: str = "gpu") -> dict:
    """The check on `device` at the bench's `sizes` ("gpu": full size; a smaller mode runs the same code quickly,
    which is how it is tested without a GPU)."""
    from .. import backend, native
    from ..bench import build_engines, sizes_for
    from ..bench.correctness import check_engine
    from ..bench.figures import dtype_name
    from ..cli import sample_portrait
    from ..runtime import device_name, resolve_dtype

    device = torch.device(device)
    dtype = resolve_dtype("auto", device)
    engines = build_engines(sizes_for(sizes, device), device, dtype, seed=seed, bf16=False)
    base = engines[torch.float32]
    cfgs = {"renderer": base.config, "audio": base.motion_stack.audio.audio_encoder.cfg,
            "motion": base.motion_stack.generator.cfg}
    engine = engines[dtype].variant(backend="auto", cuda_graphs=True)
    eager_same = engines[dtype].variant(backend="reference", cuda_graphs=False)
    reference = base.variant(backend="reference", cuda_graphs=False)
    avatars = {id(e): e.prepare(sample_portrait()) for e in (engine, eager_same, reference)}
    with backend.use(engine.backend):
        kernels_active = backend.kernels_active(device)
    native.reset_usage()
    correctness = check_engine(engine, avatars[id(engine)], reference, avatars[id(reference)], cfgs, steps=steps,
                               batch=frames)
    name = dtype_name(dtype)
    impls = {"engine": (engine, avatars[id(engine)]), f"eager {name}": (eager_same, avatars[id(eager_same)]),
             "eager float32": (reference, avatars[id(reference)])}
    timings = _stage_timings(impls, cfgs, frames, steps, repeats, device)
    graphs = {"renderer": {"captured": [str(k) for k in engine.render_graphs.calls],
                           "failed": {str(k): v for k, v in engine.render_graphs.failed.items()}},
              "sampler loop": {"captured": [str(k) for k in engine.sampler_graphs.calls],
                               "failed": {str(k): v for k, v in engine.sampler_graphs.failed.items()}}}
    result = {"device": device_name(device), "dtype": name, "frames": frames, "steps": steps, "repeats": repeats,
              "sizes": f"{sizes} mode's, seeded random weights", "kernels_active": kernels_active,
              "correctness": correctness, "timings": timings, "graphs": graphs,
              "native": {"on_device": native.implementation(device), "cuda_fallbacks": native.cuda_fallbacks()},
              "speedups": _speedups(timings, f"eager {name}")}
    result["failures"] = _failures(result)
    return result


def _speedups(timings: dict, baseline: str) -> dict:
    """Per stage: the eager same-dtype time over the engine's, and eager float32's over the engine's."""
    out = {}
    engine = timings.get("engine", {})
    for stage, fig in engine.items():
        if not isinstance(fig, dict) or not fig.get("measured"):
            continue
        out[stage] = {}
        for other in (baseline, "eager float32"):
            ref = timings.get(other, {}).get(stage, {})
            if ref.get("measured"):
                out[stage][f"vs {other}"] = ref["ms_per_unit"] / fig["ms_per_unit"]
    return out


def _failures(result: dict) -> list[str]:
    failures = []
    if not result["kernels_active"]:
        failures.append("the Triton kernels are not active on this device (backend auto)")
    check = result["correctness"]
    for stage, r in check["stages"].items():
        if r.get("measured") and not r["ok"]:
            failures.append(f"{stage}: " + (r.get("error") or f"relative error {r['rel_err']:.3g} against eager "
                                                                f"float32 > bound {r['bound']:g}"))
        elif not r.get("measured"):
            failures.append(f"{stage}: not checked ({r.get('reason')})")
    for what, g in result["graphs"].items():
        if g["failed"]:
            failures.append(f"CUDA graph capture of the {what} failed: {next(iter(g['failed'].values()))}")
        elif not g["captured"]:
            failures.append(f"no CUDA graph of the {what} was captured")
    for op, why in result["native"]["cuda_fallbacks"].items():
        failures.append(f"{op} ran the PyTorch reference: {why}")
    for stage, fig in result["timings"]["engine"].items():
        if isinstance(fig, dict) and fig.get("measured") is False:
            failures.append(f"engine {stage}: {fig['reason']}")
    return failures


def describe(details: dict) -> str:
    """The engine check's result as markdown: correctness, then ms per unit and speed-ups per stage."""
    check, timings = details.get("correctness", {}), details.get("timings", {})
    lines = [f"{details.get('device')}, {details.get('dtype')}, {details.get('frames')} frames, "
             f"{details.get('steps')} sampler steps; kernels active: {details.get('kernels_active')}; native step: "
             f"{details.get('native', {}).get('on_device')}", "",
             "| stage | rel. error vs eager fp32 | bound | " + " | ".join(f"{n} ms/unit" for n in timings)
             + " | engine speed-up |", "|" + " --- |" * (4 + len(timings))]
    for stage in ("audio_encoder", "motion_generator", "renderer"):
        r = check.get("stages", {}).get(stage, {})
        err = f"{r['rel_err']:.3g}" if r.get("measured") else "n/m"
        times = [f"{t[stage]['ms_per_unit']:.4g}" if t.get(stage, {}).get("measured") else "n/m"
                 for t in timings.values()]
        ups = ", ".join(f"{k} {v:.2f}x" for k, v in details.get("speedups", {}).get(stage, {}).items())
        lines.append(f"| {stage} | {err} | {r.get('bound', '')} | " + " | ".join(times) + f" | {ups} |")
    if details.get("failures"):
        lines += ["", "Failures:", ""] + [f"- {f}" for f in details["failures"]]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from ..bench import to_json, write_atomic

    p = argparse.ArgumentParser(prog="python -m vasa_engine.gpu_suite.engine_check", description=__doc__)
    p.add_argument("--json", required=True, help="where to write the result")
    p.add_argument("--frames", type=int, default=8)
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--repeats", type=int, default=5)
    args = p.parse_args(argv)
    if not torch.cuda.is_available():
        print("engine_check: no CUDA device", file=sys.stderr)
        return 2
    from ..runtime import configure_cuda

    configure_cuda()
    result = run_check(args.frames, args.steps, args.repeats)
    write_atomic(args.json, to_json(result))
    for failure in result["failures"]:
        print(f"FAILED: {failure}", file=sys.stderr)
    return 1 if result["failures"] else 0


if __name__ == "__main__":
    sys.exit(main())
