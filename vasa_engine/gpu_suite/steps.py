"""The suite's steps besides pytest's, and the two plans.

- build: the native extension in place (CMake + pybind11 + nvcc), then a fresh process checks that
  vasa_engine._C_cuda imports and has code for this device (`--skip-build`: the check alone, step "extension");
- engine-check: the full-size engine against eager PyTorch for a few frames (vasa_engine.gpu_suite.engine_check);
- bench-quick, bench-full: `vasa-engine bench --mode gpu` in a process of its own, its report written into the
  output folder after every figure, so a step stopped at its limit still leaves what it measured. Every stage is
  measured, dubbing's per-frame source encoding (face crop, appearance and motion extractors) among them, right
  after the renderer; the step's line gives the engine's source encoding in ms per frame.

first-contact: build, gpu-tests, engine-check (no torch.compile at all). full: those, then bench-quick (no
torch.compile: the engine against eager PyTorch), kernel-benches, bench-full (torch.compile max-autotune included,
within what is left of the budget).
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

from .procs import check_exit, conclude, gpu_env, python, run_logged
from .pytests import describe_kernels, describe_tests, gpu_tests, kernel_benches
from .runner import Step, StepContext, StepTimedOut, log_tail

MODES = ("first-contact", "full")
BUDGETS = {"first-contact": 225.0, "full": 450.0}  # seconds: under 4 and 8 minutes with the start-up around them
LIMITS = {"build": 80.0, "extension": 30.0, "gpu-tests": 100.0, "engine-check": 90.0, "bench-quick": 80.0,
          "kernel-benches": 60.0, "bench-full": 240.0}
BENCH_MARGIN_S = 25.0  # the bench's own budget ends this long before the step's limit: writing up, shutting down
BUILD_WARNING = "WARNING: vasa_engine native extension:"  # how setup.py says it left (part of) the build out


def _scratch(name: str) -> Path:
    return Path(tempfile.mkdtemp(prefix="vasa-gpu-suite-")) / name


def _probe(ctx: StepContext, limit_s: float) -> dict:
    """vasa_engine.native as a fresh process sees it, on the CUDA device."""
    path = _scratch("extension.json")
    code = ("import json, sys, torch; from vasa_engine import native; info = native.extension_info(); "
            "ok, why = native.cuda_status(torch.device('cuda')) if torch.cuda.is_available() "
            "else (False, 'no CUDA device'); "
            "info.update(runs_on_device=ok, device_reason=why, on_device=native.implementation('cuda') "
            "if torch.cuda.is_available() else None); "
            "open(sys.argv[1], 'w').write(json.dumps(info, default=str))")
    exit_code = run_logged(python("-c", code, str(path)), ctx.log, limit_s)
    check_exit(exit_code, "the extension check", ctx.log)
    return json.loads(path.read_text())


def build(skip: bool = False):
    """The step that builds the extension (unless `skip`) and fails unless _C and _C_cuda load and _C_cuda has
    code for this device."""

    def run(ctx: StepContext) -> dict:
        limit = ctx.limit_s
        if not skip:
            env = gpu_env(CMAKE_BUILD_PARALLEL_LEVEL=str(os.cpu_count() or 4))
            code = run_logged(python("setup.py", "build_ext", "--inplace"), ctx.log, max(10.0, limit - 20), env)
            check_exit(code, "the native build", ctx.log)
            limit = 20.0
        # setup.py leaves a failed or skipped native build out with a warning and exits 0: keep what it said
        said = [line.strip() for line in log_tail(ctx.log, 400) if BUILD_WARNING in line]
        info = _probe(ctx, limit)
        details = {"extension": {k: info.get(k) for k in ("built", "reason", "cuda_built", "cuda_reason",
                                                           "cuda_archs", "cuda_compiler", "on_device",
                                                           "device_reason")}, "build_warnings": said}
        why = f" ({said[0]})" if said else ""
        problems = ([f"vasa_engine._C is not available: {info.get('reason')}{why}"] if not info.get("built") else
                    [f"the native extension is not built for CUDA: {info.get('cuda_reason')}{why}"]
                    if not info.get("cuda_built") else
                    [f"vasa_engine._C_cuda cannot run here: {info.get('device_reason')}"]
                    if not info.get("runs_on_device") else [])
        return conclude(details, problems, 0, "the extension check", ctx.log,
                        f"_C and _C_cuda ({', '.join(info.get('cuda_archs') or [])}) load and run on this device")

    return run


def engine_check(frames: int = 8):
    def run(ctx: StepContext) -> dict:
        path = _scratch("engine-check.json")
        code = run_logged(python("-m", "vasa_engine.gpu_suite.engine_check", "--json", str(path), "--frames",
                                 str(frames)), ctx.log, ctx.limit_s)
        if not path.is_file():
            check_exit(code or 1, "the engine check", ctx.log)
        details = json.loads(path.read_text())
        failures = details["failures"]
        ups = details.get("speedups", {}).get("renderer", {})
        return conclude(details, [f"{len(failures)} check(s) failed; first: {f}" for f in failures[:1]], code,
                        "the engine check", ctx.log, "every stage within its bound against eager float32; renderer "
                        + ", ".join(f"{k} {v:.2f}x" for k, v in ups.items()))

    return run


def describe_engine(details: dict) -> str:
    from .engine_check import describe

    return describe(details) if "timings" in details else ""


def bench(tag: str, quick: bool, compile_too: bool):
    """The step that runs `vasa-engine bench --mode gpu` into `bench-<tag>.json` of the output folder."""

    def run(ctx: StepContext) -> dict:
        path = ctx.out / f"bench-{tag}.json"
        cmd = python("-m", "vasa_engine.cli", "bench", "--mode", "gpu", "--time-budget",
                     f"{max(15.0, ctx.limit_s - BENCH_MARGIN_S):.0f}", "--json", str(path), "--markdown",
                     str(_scratch(f"bench-{tag}.md")), "--no-plot")
        cmd += (["--quick"] if quick else []) + ([] if compile_too else ["--skip", "compile"])
        try:
            code = run_logged(cmd, ctx.log, ctx.limit_s)
        except StepTimedOut as exc:
            exc.details = _bench_details(path)
            raise
        if not path.is_file():
            check_exit(code or 1, "the bench", ctx.log)
        details = _bench_details(path)
        problems = details["failures"] + [f"the report is incomplete: {p}" for p in details["problems"][:1]]
        return conclude(details, problems, code, "the bench", ctx.log,
                        f"{path.name}: {details['measured']} figures measured, {details['not_measured']} not; "
                        f"engine source encoding (dubbing): {details['source_encoding']}")

    return run


def _bench_details(path: Path) -> dict:
    from ..bench import figure_paths, is_measured, to_markdown, validate_report
    from ..bench.compare import report_failures

    if not path.is_file():
        return {"report": None}
    report = json.loads(path.read_text())
    try:
        markdown = to_markdown(report)
    except (KeyError, TypeError) as exc:  # a partial report may lack a whole group
        markdown = f"(the report has no markdown yet: {type(exc).__name__} {exc})"
    figures = [fig for _, fig in figure_paths(report)]
    measured = sum(is_measured(fig) for fig in figures)
    encoding = report.get("figures", {}).get("source_encoding", {}).get("engine")
    return {"report": path.name, "partial": bool(report.get("partial")), "problems": validate_report(report)[:10],
            "failures": report_failures(report), "measured": measured, "not_measured": len(figures) - measured,
            "source_encoding": (f"{encoding['ms_per_unit']:.3g} ms per frame, batch {encoding['batch']}"
                                if is_measured(encoding) else (encoding or {}).get("reason", "not reached")),
            "not_measured_reasons": report.get("not_measured", [])[:20], "markdown": markdown}


def describe_bench(details: dict) -> str:
    return details.get("markdown", "")


def plan(mode: str, *, skip_build: bool = False, kernel_dtype: str = "float16") -> list[Step]:
    """The steps of `mode`, each with its own time limit."""
    name = "extension" if skip_build else "build"
    steps = [Step(name, LIMITS[name], build(skip_build)),
             Step("gpu-tests", LIMITS["gpu-tests"], gpu_tests(), describe_tests),
             Step("engine-check", LIMITS["engine-check"], engine_check(), describe_engine)]
    if mode == "full":
        steps += [Step("bench-quick", LIMITS["bench-quick"], bench("quick", True, False), describe_bench),
                  Step("kernel-benches", LIMITS["kernel-benches"], kernel_benches(kernel_dtype), describe_kernels),
                  Step("bench-full", LIMITS["bench-full"], bench("full", False, True), describe_bench)]
    return steps
