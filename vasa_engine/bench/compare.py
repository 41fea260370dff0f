"""Two bench reports side by side, as a regression gate: every figure's ratio (current / baseline, per unit), and
the verdict.

A figure of the engine regresses when it is slower beyond what run-to-run noise explains. Each figure carries the
times of its repeats and of the machine probe timed beside each repeat (`probe_ms`: a fixed workload that depends on
nothing in the engine, so it slows down only when the machine does). The ratios are taken per unit of work and
divided by the probe's ratio (the same code on a machine half as fast takes twice as long), and the figure
regresses when both its median ratio and its fastest-repeat ratio (the repeat least disturbed by other work) exceed

    1 + allowance,   allowance = floor + sqrt(s_b^2 + s_c^2 + q_b^2 + q_c^2)

where s = (p80 - p20) / median of the figure's repeats in the baseline (b) and the current report (c), and q the
same of its probe times: the `--threshold` floor in percent, plus the measured 20%-80% spreads, independent noises
added in quadrature. The other implementations' ratios are
shown, never gated. The current report fails too when it records a correctness
failure (the engine's outputs outside their bound against eager float32), or, on CUDA, a native operation of the
engine that ran the PyTorch reference. Reports of different devices, modes, dtypes or sizes are not comparable.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from .figures import is_measured
from .implementations import IMPLEMENTATIONS
from .provenance import REPO, slug

DEFAULT_THRESHOLD_PCT = 10.0
BASELINES = REPO / "benches" / "baselines"
GATED = "engine"


class ReportError(Exception):
    """A report that cannot be read, or two that cannot be compared; the message is one line."""


@dataclass
class Row:
    figure: str
    impl: str
    baseline_ms: float | None
    current_ms: float | None
    ratio: float | None = None  # current / baseline, medians per unit
    machine: float | None = None  # current / baseline, medians of the machine probe (1: the machine as fast)
    normalized: float | None = None  # ratio / machine
    min_normalized: float | None = None  # the same of the fastest repeats (and the fastest probes)
    allowance: float | None = None  # the slow-down allowed, as a fraction
    verdict: str = ""  # "ok", "faster", "SLOWER", "not compared: ...", "shown"


@dataclass
class Comparison:
    rows: list[Row] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures


def load_report(path: str | Path) -> dict:
    """A bench report from a JSON file, or ReportError naming what is wrong with it."""
    path = Path(path)
    try:
        report = json.loads(path.read_text())
    except FileNotFoundError:
        raise ReportError(f"no such report: {path}") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ReportError(f"cannot read {path}: {str(exc).splitlines()[0]}") from None
    if not isinstance(report, dict) or not str(report.get("schema", "")).startswith("vasa-engine-bench/"):
        raise ReportError(f"{path} is not a vasa-engine bench report (no vasa-engine-bench schema)")
    for key in ("device", "mode", "sizes", "settings", "figures"):
        if not isinstance(report.get(key), dict if key != "mode" else str):
            raise ReportError(f"{path}: the report has no {key}")
    return report


def baseline_name(report: dict) -> str:
    """The file name of the baseline for a report's device and mode: `<device>-<mode>[-quick].json`."""
    device = report["device"]
    name = "cpu" if device.get("type") != "cuda" else slug(device.get("cuda_name") or device.get("name", ""))
    return f"{name}-{report['mode']}{'-quick' if report.get('quick') else ''}.json"


def find_baseline(folder: str | Path, current: dict) -> Path:
    path = Path(folder) / baseline_name(current)
    if not path.is_file():
        raise ReportError(f"no baseline for this device and mode: {path} (benches/baselines/README.md says how to "
                          "make one)")
    return path


def check_compatible(baseline: dict, current: dict) -> None:
    """ReportError when the two reports measure different things: schema, device, mode, dtypes or module sizes."""
    checks = (("schema", lambda r: r.get("schema")), ("device", lambda r: r["device"].get("name")),
              ("mode", lambda r: f"{r['mode']}{' quick' if r.get('quick') else ''}"),
              ("dtypes", lambda r: r["settings"].get("dtypes")),
              ("sizes", lambda r: (r["sizes"].get("configs"), r["sizes"].get("renderer_output"))))
    for what, get in checks:
        if get(baseline) != get(current):
            shown = (get(baseline), get(current)) if what != "sizes" else ("one set of configs", "another")
            raise ReportError(f"incompatible reports: different {what} ({shown[0]} in the baseline, {shown[1]} in "
                              "the current report)")


def _timed_figures(report: dict):
    """(figure path, implementation, figure) of every timed figure, in the report's order."""
    figs = report["figures"]
    scan = figs.get("renderer_scan", {})
    batches = sorted({b for runs in scan.values() for b in runs}, key=int)
    groups = [("audio_encoder", figs.get("audio_encoder", {}))]
    groups += [(f"motion_generator.{s}", g) for s, g in figs.get("motion_generator", {}).items()]
    groups += [(f"renderer_scan.{b}", {impl: runs[b] for impl, runs in scan.items() if b in runs}) for b in batches]
    groups += [(name, figs.get(name, {})) for name in ("renderer_best_batch", "source_encoding", "end_to_end")]
    for path, group in groups:
        for impl in IMPLEMENTATIONS:
            if impl in group:
                yield path, impl, group[impl]


def _per_unit(fig: dict, key: str) -> float:
    return fig["ms"][key] / fig.get("units_per_call", 1)


def spread(times: dict | None) -> float:
    """(p80 - p20) / median of a summary of repeats (p20 absent in older reports: the minimum instead)."""
    if not times:
        return 0.0
    low = times.get("p20", times["min"])
    return (times["p80"] - low) / times["median"] if times["median"] > 0 else 0.0


def _probe_ratio(base: dict, cur: dict, key: str) -> float:
    """How much slower the machine was for the current figure than for the baseline's (1 without probe times)."""
    b, c = base.get("probe_ms"), cur.get("probe_ms")
    return c[key] / b[key] if b and c and b[key] > 0 else 1.0


def _compare_figure(path: str, impl: str, base, cur, floor: float) -> Row:
    row = Row(path, impl, _per_unit(base, "median") if _timed(base) else None,
              _per_unit(cur, "median") if _timed(cur) else None)
    if row.baseline_ms is None:
        row.verdict = "not compared: not measured in the baseline"
        return row
    if row.current_ms is None:
        reason = cur.get("reason", "missing") if isinstance(cur, dict) else "missing"
        row.verdict = f"{'FAILED' if reason.startswith('failed') and impl == GATED else 'not compared'}: {reason}"
        return row
    row.ratio = row.current_ms / row.baseline_ms
    row.machine = _probe_ratio(base, cur, "median")
    row.normalized = row.ratio / row.machine
    row.min_normalized = _per_unit(cur, "min") / _per_unit(base, "min") / _probe_ratio(base, cur, "min")
    row.allowance = floor + math.sqrt(sum(spread(f["ms"]) ** 2 + spread(f.get("probe_ms")) ** 2 for f in (base, cur)))
    if impl != GATED:
        row.verdict = "shown"
    elif min(row.normalized, row.min_normalized) > 1 + row.allowance:
        row.verdict = "SLOWER"
    else:
        row.verdict = "faster" if max(row.normalized, row.min_normalized) < 1 else "ok"
    return row


def _timed(fig) -> bool:
    return is_measured(fig) and isinstance(fig.get("ms"), dict) and "median" in fig["ms"]


def compare_reports(baseline: dict, current: dict, threshold_pct: float = DEFAULT_THRESHOLD_PCT) -> Comparison:
    """Every timed figure of both reports, the engine's gated; plus the current report's correctness and native
    implementations. Raises ReportError when the reports are not comparable."""
    check_compatible(baseline, current)
    out = Comparison()
    floor = threshold_pct / 100.0
    base_figs = {(path, impl): fig for path, impl, fig in _timed_figures(baseline)}
    for path, impl, cur in _timed_figures(current):
        if (path, impl) in base_figs:
            row = _compare_figure(path, impl, base_figs[(path, impl)], cur, floor)
            out.rows.append(row)
            if row.verdict == "SLOWER":
                out.failures.append(f"{path} ({impl}) is {row.normalized:.2f}x the baseline's time on a machine as "
                                    f"fast (fastest repeat {row.min_normalized:.2f}x; {row.ratio:.2f}x as measured, "
                                    f"the machine probe {row.machine:.2f}x), beyond the {100 * row.allowance:.0f}% "
                                    "allowed")
            elif row.verdict.startswith("FAILED"):
                out.failures.append(f"{path} ({impl}) {row.verdict}")
    _streaming_row(baseline, current, out)
    _check_correctness(current, out)
    _check_native(current, out)
    if current.get("partial"):
        out.notes.append("the current report is partial: its run stopped before its last stage")
    return out


def report_failures(report: dict) -> list[str]:
    """What fails a report on its own, without a baseline: a correctness failure, or on CUDA a native operation of
    the engine that ran the PyTorch reference."""
    out = Comparison()
    _check_correctness(report, out)
    _check_native(report, out)
    return out.failures


def _streaming_row(baseline: dict, current: dict, out: Comparison) -> None:
    """The engine's streaming latency p50, shown: it is paced by real time (chunk and look-ahead), so its spread is
    not a repeat spread and it is not gated."""
    base, cur = (r["figures"].get("streaming", {}).get(GATED) for r in (baseline, current))
    if not (is_measured(base) and is_measured(cur)):
        return
    row = Row("streaming latency p50", GATED, base["p50_ms"], cur["p50_ms"], verdict="shown (paced by real time)")
    row.ratio = cur["p50_ms"] / base["p50_ms"] if base["p50_ms"] else None
    out.rows.append(row)


def _check_correctness(current: dict, out: Comparison) -> None:
    check = current.get("correctness")
    if not isinstance(check, dict):
        out.notes.append("the current report records no correctness check")
        return
    if not is_measured(check):
        out.notes.append(f"correctness not checked in the current report: {check.get('reason')}")
        return
    for stage, r in check.get("stages", {}).items():
        if is_measured(r) and not r.get("ok"):
            detail = r.get("error") or f"relative error {r['rel_err']:.3g} > bound {r['bound']:g}"
            out.failures.append(f"correctness: the engine's {stage} against {check.get('reference')}: {detail}")


def _check_native(current: dict, out: Comparison) -> None:
    if current["device"].get("type") != "cuda":
        return
    from .. import native

    for op, used in (current.get("native_ops", {}).get(GATED) or {}).items():
        if native.REFERENCE in used:
            why = (current.get("native") or {}).get("cuda_fallbacks", {}).get(op, "see the report's native section")
            out.failures.append(f"the engine's {op} ran the PyTorch reference on CUDA: {why}")


def _fmt_ms(x: float | None) -> str:
    return "n/m" if x is None else f"{x:.4g}"


def _fmt_ratio(x: float | None) -> str:
    return "" if x is None or math.isnan(x) else f"{x:.2f}x"


def to_table(comparison: Comparison, baseline: dict, current: dict) -> str:
    """The comparison as a markdown table, then the failures and notes."""
    lines = [f"baseline: {baseline['device'].get('name')}, {str(baseline.get('date', '?'))[:10]}, commit "
             f"{baseline.get('commit', '?')}{'+dirty' if baseline.get('dirty') else ''}; current: "
             f"{str(current.get('date', '?'))[:10]}, commit {current.get('commit', '?')}"
             f"{'+dirty' if current.get('dirty') else ''}; mode {current['mode']}", "",
             "| figure | implementation | baseline ms/unit | current ms/unit | ratio | machine | ratio on an equal "
             "machine (fastest repeat) | allowed | result |", "|" + " --- |" * 9]
    for r in comparison.rows:
        allowed = "" if r.allowance is None or r.impl != GATED else f"{1 + r.allowance:.2f}x"
        normalized = "" if r.normalized is None else f"{r.normalized:.2f}x ({r.min_normalized:.2f}x)"
        lines.append(f"| {r.figure} | {r.impl} | {_fmt_ms(r.baseline_ms)} | {_fmt_ms(r.current_ms)} | "
                     f"{_fmt_ratio(r.ratio)} | {_fmt_ratio(r.machine)} | {normalized} | {allowed} | {r.verdict} |")
    lines.append("")
    lines += [f"note: {n}" for n in comparison.notes]
    if comparison.failures:
        lines += [f"REGRESSION: {f}" for f in comparison.failures]
    else:
        lines.append("no regression: every engine figure within its allowance, no correctness failure")
    return "\n".join(lines) + "\n"
