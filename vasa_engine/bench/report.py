"""The report as a dict: its header (what ran, where, at which sizes), the figures derived from the measured ones
(speed-ups, the list of what was not measured), and its check: every figure measured or given a reason."""

from __future__ import annotations

import datetime as _dt
from typing import Any

import torch

from .figures import dtype_name, is_measured, not_measured
from .implementations import ENGINE_ON_CPU, IMPLEMENTATIONS
from .peaks import fp32_peak_words, tf32_state
from .provenance import git_commit, versions
from .sizes import SIZE_WORDS, STEPS

SCHEMA = "vasa-engine-bench/2"
RATIO_REFERENCES = ("eager fp32", "eager bf16", "torch.compile")


def header(options, sizes, device, peak, cfgs, impls, cache_words) -> dict:
    """The report before any figure: schema, date, commit, command, device, versions, settings, sizes,
    implementations, and an empty "figures"."""
    from ..runtime import device_name

    engine = impls.get("engine")
    rcfg = cfgs["renderer"]

    def sized(kind: str, size: str) -> str:
        return "from weights" if options.weights else SIZE_WORDS[kind][size]

    return {
        "schema": SCHEMA,
        "date": _dt.datetime.now().astimezone().isoformat(timespec="seconds"),
        **git_commit(),
        "command": options.command,
        "mode": sizes.mode,
        "quick": sizes.quick,
        "device": {"type": device.type, "name": device_name(device),
                   "cuda_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
                   "threads": torch.get_num_threads(), "peak": peak, "tf32": tf32_state(),
                   "fp32_peak": fp32_peak_words(peak)},
        "versions": versions(),
        "settings": {
            "dtypes": {name: dtype_name(i.dtype) for name, i in impls.items()},
            "batches": list(sizes.batches), "steps": list(sizes.steps), "sampler": "dpmpp_2m",
            "audio_windows_per_call": sizes.audio_windows, "e2e_seconds_of_audio": sizes.e2e_seconds,
            "warmup": sizes.warmup, "repeats": sizes.repeats, "e2e_repeats": sizes.e2e_repeats,
            "compile_mode": sizes.compile_mode, "compile_cache": cache_words, "time_budget_s": options.time_budget,
            "weights": options.weights or "seeded random (speed does not depend on the weights' values)",
        },
        "sizes": {"renderer": sized("renderer", sizes.renderer),
                  "renderer_output": f"{rcfg.output_size}x{rcfg.output_size}",
                  "audio_encoder": sized("audio", sizes.audio),
                  "motion_generator": sized("motion", sizes.motion),
                  "reduced": sizes.renderer != "full" or sizes.audio != "full" or sizes.motion != "full",
                  "configs": {"renderer": rcfg.to_dict(), "audio_encoder": cfgs["audio"].to_dict(),
                              "motion_generator": cfgs["motion"].to_dict()}},
        "implementations": {name: {"dtype": dtype_name(i.dtype), "note": i.note,
                                   **({"error": i.error} if i.error else {})} for name, i in impls.items()},
        "engine_note": ENGINE_ON_CPU if device.type != "cuda" else (engine.note if engine else "skipped"),
        "figures": {},
    }


def add_ratios(report: dict) -> None:
    """speedup[ref] = median time of `ref` / median time of this implementation, per unit, for every figure."""

    def add(group: dict):
        for name, fig in group.items():
            if not is_measured(fig) or "ms_per_unit" not in fig:
                continue
            fig["speedup"] = {}
            for ref in RATIO_REFERENCES:
                if ref == name:
                    continue
                other = group.get(ref)
                if is_measured(other) and "ms_per_unit" in other:
                    fig["speedup"][f"vs {ref}"] = other["ms_per_unit"] / fig["ms_per_unit"]
                else:
                    fig["speedup"][f"vs {ref}"] = not_measured(f"{ref} not measured")

    figs = report["figures"]
    for group in (figs["audio_encoder"], *figs["motion_generator"].values(), figs["renderer_batch_1"],
                  figs["renderer_best_batch"], figs.get("source_encoding", {}), figs["end_to_end"]):
        add(group)


def not_measured_reasons(tree, path=""):
    """"path: reason" of every figure not measured (derived figures excepted: their inputs say why)."""
    if isinstance(tree, dict):
        if tree.get("measured") is False:
            yield f"{path}: {tree.get('reason')}"
            return
        for k, v in tree.items():
            if k not in ("speedup", "pct_peak_compute", "pct_peak_bandwidth"):
                yield from not_measured_reasons(v, f"{path}.{k}" if path else k)


def figure_paths(report: dict) -> list[tuple[str, Any]]:
    """Every figure the report must carry, with its value (None when missing)."""
    figs = report.get("figures", {})
    out = []
    for name in IMPLEMENTATIONS:
        out.append((f"audio_encoder.{name}", figs.get("audio_encoder", {}).get(name)))
        for s in STEPS:
            out.append((f"motion_generator.{s}.{name}", figs.get("motion_generator", {}).get(str(s), {}).get(name)))
        for group in ("renderer_batch_1", "renderer_best_batch", "source_encoding", "end_to_end", "streaming"):
            out.append((f"{group}.{name}", figs.get(group, {}).get(name)))
    return out


def validate_report(report: dict) -> list[str]:
    """Problems with a report: a missing field, or a figure neither measured nor given a reason."""
    problems = []
    for key in ("schema", "date", "commit", "command", "mode", "device", "versions", "settings", "sizes",
                "implementations", "figures", "compile", "total_seconds", "correctness", "native", "native_ops"):
        if key not in report:
            problems.append(f"missing {key}")
    if report.get("partial"):
        problems.append("partial report: the run stopped before its last stage")
    correctness = report.get("correctness")
    if isinstance(correctness, dict) and correctness.get("measured") is False and not correctness.get("reason"):
        problems.append("correctness: not measured and no reason")
    for key in ("torch", "triton"):
        if key not in report.get("versions", {}):
            problems.append(f"missing versions.{key}")
    for key in ("dtypes", "batches", "steps"):
        if key not in report.get("settings", {}):
            problems.append(f"missing settings.{key}")
    for key in ("peak", "tf32", "fp32_peak"):
        if key not in report.get("device", {}):
            problems.append(f"missing device.{key}")
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
