"""The engine's outputs against the eager float32 reference, stage by stage, on the same weights and inputs: the
relative error of each stage's output and whether it is within the bound of the engine's dtype.

The bench records this beside its timings (`report["correctness"]`), the GPU suite's engine check runs it at full
size, and `vasa-engine compare` fails a report that records a stage outside its bound. A speed-up that changes the
answer is a regression like a slow-down.
"""

from __future__ import annotations

import math

import torch

from ..io.audio import SAMPLE_RATE
from .figures import dtype_name, error_reason, not_measured
from .sizes import FPS
from .stages import audio_encoder_stage, motion_generator_stage, renderer_stage

# Relative error (L2 norm of the difference over the reference's) allowed against float32 eager, per dtype of the
# engine: float32 leaves room for kernels' summation orders and uint8 rounding flips of the frames; half precisions
# for their 11-bit (float16) or 8-bit (bfloat16) mantissas carried through every layer.
BOUNDS = {"float32": 2e-3, "float16": 2e-2, "bfloat16": 6e-2}
REFERENCE_IMPL = "eager fp32"
STAGES = ("audio_encoder", "motion_generator", "renderer")


def audio_windows(cfgs: dict, windows: int) -> torch.Tensor:
    """Raw 16 kHz windows (windows, samples per window) of the motion generator's window length, seeded."""
    samples = cfgs["motion"].n_motions * SAMPLE_RATE // FPS
    return 0.1 * torch.randn(windows, samples, generator=torch.Generator().manual_seed(1))


def motion_features(cfgs: dict) -> torch.Tensor:
    """Audio features (1, L, d) of one window, seeded."""
    mcfg = cfgs["motion"]
    return torch.randn(1, mcfg.n_motions, mcfg.feature_dim, generator=torch.Generator().manual_seed(2))


def relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    """||out - ref|| / ||ref|| in float64 (inf when `out` holds a NaN or infinity, or the shapes differ)."""
    out, ref = out.detach().double().cpu(), ref.detach().double().cpu()
    if out.shape != ref.shape or not torch.isfinite(out).all():
        return math.inf
    denom = ref.norm().item()
    diff = (out - ref).norm().item()
    return diff / denom if denom > 0 else diff


def stage_outputs(engine, avatar, motion, windows: torch.Tensor, features: torch.Tensor, steps: int) -> dict:
    """Each stage's output on `engine`: audio features of `windows`, a window of motion from `features` at `steps`,
    frames of `motion` for `avatar`; a stage that raises gives its exception instead."""
    calls = {"audio_encoder": audio_encoder_stage(engine, windows),
             "motion_generator": motion_generator_stage(engine, features, steps),
             "renderer": renderer_stage(engine, avatar, motion)}
    out = {}
    for stage, fn in calls.items():
        try:
            out[stage] = fn().float().clone()
        except Exception as exc:  # a stage that cannot run is a finding, reported per stage
            out[stage] = exc
    return out


def compare_outputs(engine_out: dict, reference_out: dict, dtype: torch.dtype) -> dict:
    """Per stage: the relative error of the engine's output against the reference's and whether it is within the
    bound of `dtype`; "ok" over every stage."""
    bound = BOUNDS[dtype_name(dtype)]
    stages = {}
    for stage in STAGES:
        got, ref = engine_out.get(stage), reference_out.get(stage)
        if isinstance(ref, Exception) or ref is None:
            stages[stage] = not_measured(f"the reference failed: {error_reason(ref)}" if ref is not None
                                         else "the reference did not run")
        elif isinstance(got, Exception) or got is None:
            stages[stage] = {"measured": True, "ok": False, "rel_err": math.inf, "bound": bound,
                             "error": error_reason(got) if got is not None else "did not run"}
        else:
            err = relative_error(got, ref)
            stages[stage] = {"measured": True, "ok": err <= bound, "rel_err": err, "bound": bound}
    checked = [s for s in stages.values() if s.get("measured")]
    return {"measured": True, "reference": REFERENCE_IMPL, "dtype": dtype_name(dtype),
            "ok": all(s["ok"] for s in checked) if checked else None, "stages": stages,
            "rule": "relative error (L2) of each stage's output against eager float32 within the bound of the "
                    "engine's dtype " + ", ".join(f"{k} {v:g}" for k, v in BOUNDS.items())}


def check_engine(engine, engine_avatar, reference, reference_avatar, cfgs: dict, *, steps: int = 10,
                 batch: int = 2, windows: int = 1) -> dict:
    """The engine's three stages against `reference` (an eager float32 engine of the same weights), on the same
    inputs: `windows` audio windows, one motion window at `steps`, `batch` frames of the scripted motion made from
    the reference's avatar."""
    from ..motion_script import scripted_motion

    audio, features = audio_windows(cfgs, windows), motion_features(cfgs)
    motion = scripted_motion(reference_avatar, batch)
    reference_out = stage_outputs(reference, reference_avatar, motion, audio, features, steps)
    engine_out = stage_outputs(engine, engine_avatar, motion, audio, features, steps)
    return compare_outputs(engine_out, reference_out, engine.dtype)
