"""The report as markdown: the figures of every implementation, the speed-ups, the engine's work against the
device's peak, compile times and what was not measured."""

from __future__ import annotations

from .figures import is_measured
from .implementations import ENGINE_ON_CPU, IMPLEMENTATIONS
from .sizes import STEPS


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


def _pct(x) -> str:
    return f"{x:.1f}%" if isinstance(x, (int, float)) else "n/m"


def _engine_only(cell: str) -> str:
    return " | ".join(cell if n == "engine" else "n/m" for n in IMPLEMENTATIONS)


def _with_every_group(report: dict) -> dict:
    """The report with an empty group for every figure a partial report has not reached yet (shown as n/m)."""
    figs = {key: {} for key in ("audio_encoder", "renderer_batch_1", "renderer_best_batch", "source_encoding",
                                "end_to_end", "streaming")}
    figs.update(report.get("figures", {}))
    figs["motion_generator"] = {str(st): {} for st in STEPS} | figs.get("motion_generator", {})
    return {**report, "figures": figs}


def to_markdown(report: dict) -> str:
    report = _with_every_group(report)
    lines = (_heading(report) + _figures(report) + _correctness(report) + _native(report) + _speedups(report["figures"])
             + _work(report))
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


def _heading(report: dict) -> list[str]:
    dev, v, s = report["device"], report["versions"], report["settings"]
    commit = report["commit"] + ("+dirty" if report.get("dirty") else "")
    lines = [f"### vasa-engine bench: {dev['name']}, {report['date'][:10]}, commit {commit}", "",
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
    if "fp32_peak" in dev:
        lines += [f"float32 figures against the {dev['fp32_peak']}.", ""]
    if report.get("partial"):
        lines += ["**Partial report: the run stopped before its last stage.**", ""]
    return lines


def _correctness(report: dict) -> list[str]:
    check = report.get("correctness")
    if not isinstance(check, dict):
        return []
    if not is_measured(check):
        return ["", f"Correctness: {check.get('reason')}."]
    lines = ["", f"Correctness, the engine ({check['dtype']}) against {check['reference']} on the same inputs "
                 f"({'all within bounds' if check['ok'] else 'FAILED'}):", "",
             "| stage | relative error | bound | result |", "| --- | --- | --- | --- |"]
    for stage, r in check["stages"].items():
        if not is_measured(r):
            lines.append(f"| {stage} | n/m | | {r['reason']} |")
        else:
            result = "ok" if r["ok"] else "FAILED" + (f": {r['error']}" if r.get("error") else "")
            lines.append(f"| {stage} | {r['rel_err']:.3g} | {r['bound']:g} | {result} |")
    return lines


def _native(report: dict) -> list[str]:
    ops = {name: entry for name, entry in (report.get("native_ops") or {}).items() if entry}
    if not ops:
        return []
    lines = ["", "Native operations, as each implementation's timed calls ran them:", "",
             "| implementation | sampler step | keypoint transform |", "| --- | --- | --- |"]
    for name, entry in ops.items():
        cells = [" + ".join(entry.get(op, [])) or "not called" for op in ("sampler_step", "driving_keypoints")]
        lines.append(f"| {name} | {cells[0]} | {cells[1]} |")
    fallbacks = (report.get("native") or {}).get("cuda_fallbacks") or {}
    if fallbacks:
        lines += ["", "CUDA calls that ran the PyTorch reference: "
                  + "; ".join(f"{op}: {why}" for op, why in fallbacks.items()) + "."]
    return lines


def _figures(report: dict) -> list[str]:
    figs, s = report["figures"], report["settings"]
    lines = ["| figure | " + " | ".join(IMPLEMENTATIONS) + " |", "|" + " --- |" * (len(IMPLEMENTATIONS) + 1)]

    def row(label, group, what="ms"):
        lines.append(f"| {label} | " + " | ".join(_cell(group.get(n), what) for n in IMPLEMENTATIONS) + " |")

    row("audio encoder, ms per s of audio", figs["audio_encoder"])
    for st in STEPS:
        row(f"motion generator, ms per window, {st} step{'s' if st > 1 else ''}", figs["motion_generator"][str(st)])
    row("renderer, ms per frame, batch 1", figs["renderer_batch_1"])
    row("renderer, ms per frame, best batch", figs["renderer_best_batch"], "ms_b")
    row("renderer, fps, best batch", figs["renderer_best_batch"], "fps")
    row("source encoding (dubbing), ms per frame", figs["source_encoding"], "ms_b")
    out = report["sizes"]["renderer_output"]
    row(f"end to end, fps ({out}, {s['e2e_seconds_of_audio']:g} s of audio)", figs["end_to_end"], "fps")
    stream = figs["streaming"].get("engine", {})
    measured = is_measured(stream)
    lat = f"{_fmt(stream['p50_ms'])} / {_fmt(stream['p95_ms'])}" if measured else "n/m"
    setting = (f" (chunk {stream['chunk_ms']} ms, look-ahead {stream['lookahead_ms']} ms, {stream['steps']} steps)"
               if measured else "")
    lines.append(f"| streaming latency p50 / p95, ms{setting} | {_engine_only(lat)} |")
    concurrent = stream.get("concurrent") if measured else None
    if concurrent:
        tried = [f"{k}: {'kept up' if v['keeps_up'] else 'fell behind'}, p95 {_fmt(v['p95_ms'])} ms"
                 if is_measured(v) else f"{k}: not measured" for k, v in concurrent["counts"].items()]
        cell = f"{concurrent['max_streams']} ({'; '.join(tried)})"
        lines.append(f"| concurrent real-time streams | {_engine_only(cell)} |")
        lines += _concurrent_side_by_side(concurrent)
    return lines


def _concurrent_side_by_side(concurrent: dict) -> list[str]:
    """One row per stream count: per-session threads vs the device scheduler (aggregate fps, per-stream fps,
    latency p50 / p95 / max, frames later than their budget, frames whose window ran with fewer steps)."""
    if "max_streams_scheduler" not in concurrent:
        return []

    def cell(v: dict) -> str:
        if not is_measured(v):
            return "n/m"
        return (f"{_fmt(v['aggregate_fps'])} fps all, {_fmt(v['per_stream_fps'])} a stream, "
                f"{_fmt(v['p50_ms'])} / {_fmt(v['p95_ms'])} / {_fmt(v['max_ms'])} ms, "
                f"{v['missed_deadlines']} late, {v.get('degraded_frames', 0)} with fewer steps")

    best = str(concurrent["max_streams_scheduler"])
    lines = [f"| concurrent real-time streams, device scheduler | {_engine_only(best)} |"]
    for n, level in concurrent["counts"].items():
        both = f"threads: {cell(level)}; scheduler: {cell(level.get('scheduler', {}))}"
        lines.append(f"| {n} streams, per-session threads vs device scheduler | {_engine_only(both)} |")
    return lines


def _speedups(figs: dict) -> list[str]:
    lines = ["", "Speed-ups (time of the baseline / time of the implementation, same figure):", "",
             "| figure | engine vs eager fp32 | engine vs eager bf16 | engine vs torch.compile | "
             "torch.compile vs eager fp32 | torch.compile vs eager bf16 |", "|" + " --- |" * 6]

    def row(label, group):
        e, c = group.get("engine"), group.get("torch.compile")
        lines.append(f"| {label} | {_ratio_cell(e, 'eager fp32')} | {_ratio_cell(e, 'eager bf16')} | "
                     f"{_ratio_cell(e, 'torch.compile')} | {_ratio_cell(c, 'eager fp32')} | "
                     f"{_ratio_cell(c, 'eager bf16')} |")

    row("audio encoder", figs["audio_encoder"])
    for st in STEPS:
        row(f"motion generator, {st} steps", figs["motion_generator"][str(st)])
    row("renderer, batch 1", figs["renderer_batch_1"])
    row("renderer, best batch", figs["renderer_best_batch"])
    row("source encoding (dubbing)", figs["source_encoding"])
    row("end to end", figs["end_to_end"])
    return lines


def _work(report: dict) -> list[str]:
    figs, peak = report["figures"], report["device"]["peak"]
    peak_words = (f"{peak.get('device') or peak.get('name')}: {peak['source']}" if is_measured(peak)
                  else peak["reason"])
    lines = ["", f"Work counted per unit, and what the engine reaches (peak: {peak_words}):", "",
             "| figure | GFLOP per unit | MB per unit | engine TFLOP/s | % of peak compute | engine GB/s | "
             "% of peak bandwidth |", "|" + " --- |" * 7]

    def row(label, fig):
        if not is_measured(fig) or "flops_per_unit" not in fig:
            lines.append(f"| {label} | n/m | n/m | n/m | n/m | n/m | n/m |")
            return
        lines.append(f"| {label} | {_fmt(fig['flops_per_unit'] / 1e9)} | {_fmt(fig['bytes_per_unit'] / 1e6)} | "
                     f"{fig['tflops_per_s']:.3g} | {_pct(fig['pct_peak_compute'])} | {fig['gbytes_per_s']:.3g} | "
                     f"{_pct(fig['pct_peak_bandwidth'])} |")

    row("audio encoder (per s of audio)", figs["audio_encoder"].get("engine"))
    row("motion generator (per window, 10 steps)", figs["motion_generator"]["10"].get("engine"))
    row("renderer (per frame, batch 1)", figs["renderer_batch_1"].get("engine"))
    row("renderer (per frame, best batch)", figs["renderer_best_batch"].get("engine"))
    row("source encoding (per frame)", figs["source_encoding"].get("engine"))
    row("end to end (per frame)", figs["end_to_end"].get("engine"))
    return lines


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
