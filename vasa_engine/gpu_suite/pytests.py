"""The suite's pytest steps: the GPU-marked tests (in parallel with pytest-xdist where it is installed) and the
kernel benchmarks of benches/.

On a GPU machine a skipped GPU-marked test means something is missing (the CUDA extension, a kernel module, the
device itself), so any skip fails the step: a test's own skip, or a whole module skipped at collection when its
source has GPU-marked tests. Modules with no GPU test that skip at collection (PyAV absent, say) are listed and
ignored, and so are tests whose skip says they need more CUDA devices than the machine has ("needs two CUDA
devices" on a one-GPU machine): those are listed as not applicable here.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import tempfile
import xml.etree.ElementTree as ET
from pathlib import Path

from .procs import REPO, check_exit, conclude, gpu_env, python, run_logged
from .runner import StepContext, StepFailed, StepTimedOut

GPU_MARKERS = ("pytest.mark.gpu", "KERNEL_DEVICES")  # KERNEL_DEVICES (tests/helpers.py) holds a gpu-marked param
MAX_WORKERS = 8
_COUNTS = {"two": 2, "three": 3, "four": 4, "eight": 8}
_MORE_DEVICES = re.compile(r"needs (\d+|two|three|four|eight) (?:CUDA )?(?:devices|GPUs)", re.IGNORECASE)


def needs_more_devices(reason: str, devices: int) -> bool:
    """Whether a skip's reason says the test needs more CUDA devices than `devices`."""
    m = _MORE_DEVICES.search(reason)
    if not m:
        return False
    word = m.group(1).lower()
    return int(_COUNTS.get(word, word)) > devices


def xdist_workers() -> int:
    """Parallel pytest workers: up to MAX_WORKERS, one where pytest-xdist is missing."""
    if importlib.util.find_spec("xdist") is None:
        return 1
    return max(1, min(MAX_WORKERS, (os.cpu_count() or 2) // 2))


def _module_file(name: str, roots: list[Path]) -> Path | None:
    rel = Path(*name.split(".")).with_suffix(".py")
    return next((root / rel for root in roots if (root / rel).is_file()), None)


def has_gpu_tests(path: Path | None) -> bool:
    """Whether a test module's source has GPU-marked tests (an unknown module is taken to have some)."""
    if path is None:
        return True
    text = path.read_text(errors="replace")
    return any(marker in text for marker in GPU_MARKERS)


def parse_junit(path: Path, roots: list[Path], devices: int = 1) -> dict:
    """pytest's JUnit XML -> counts, failures, the skips that fail the suite, collection skips of modules with no GPU
    test (ignored), and skips of tests that need more than `devices` CUDA devices (not applicable)."""
    root = ET.parse(path).getroot()
    out = {"passed": 0, "failed": [], "skipped": [], "ignored": [], "not_applicable": []}
    for case in root.iter("testcase"):
        name = ".".join(p for p in (case.get("classname"), case.get("name")) if p)
        bad = case.find("failure") if case.find("failure") is not None else case.find("error")
        skip = case.find("skipped")
        if bad is not None:
            out["failed"].append(f"{name}: {(bad.get('message') or '').strip()[:300]}")
        elif skip is not None:
            reason = (skip.get("message") or "").strip()
            if reason == "collection skipped":
                reason = (skip.text or "").strip()
                if not has_gpu_tests(_module_file(case.get("name", ""), roots)):
                    out["ignored"].append(f"{name}: {reason[:200]}")
                    continue
            elif needs_more_devices(reason, devices):
                out["not_applicable"].append(f"{name}: {reason[:200]}")
                continue
            out["skipped"].append(f"{name}: {reason[:300]}")
        else:
            out["passed"] += 1
    return out


def gpu_tests(tests_dir: Path | None = None, workers: int | None = None, devices: int | None = None):
    """The step that runs every GPU-marked test under `tests_dir` (default: the repository's tests/) on a machine
    with `devices` CUDA devices (default: torch's count)."""
    tests_dir = tests_dir or REPO / "tests"

    def run(ctx: StepContext) -> dict:
        import torch

        count = torch.cuda.device_count() if devices is None else devices
        n = xdist_workers() if workers is None else workers
        junit = Path(tempfile.mkdtemp(prefix="vasa-gpu-tests-")) / "junit.xml"
        # the test names in the report are relative to the rootdir: pin it, whatever folder the suite runs from
        cmd = python("-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", "--tb=short",
                     f"--junitxml={junit}", f"--rootdir={tests_dir}")
        if n > 1:
            cmd += ["-n", str(n), "--dist", "loadfile"]
        details = {"workers": n, "parallel": "pytest-xdist" if n > 1 else "serial (pytest-xdist not installed)"}
        try:
            code = run_logged(cmd + [str(tests_dir)], ctx.log, ctx.limit_s)
        except StepTimedOut as exc:
            exc.details = details
            raise
        if not junit.is_file():
            check_exit(code or 1, "pytest", ctx.log)
        found = parse_junit(junit, [tests_dir.parent, tests_dir, REPO], count)
        junit.unlink(missing_ok=True)
        details.update(passed=found["passed"], failed=found["failed"], skipped=found["skipped"],
                       ignored_collection_skips=found["ignored"], not_applicable=found["not_applicable"],
                       devices=count)
        counts = f"{found['passed']} passed, {len(found['failed'])} failed, {len(found['skipped'])} skipped"
        problems = [f"{counts}; first failure: {f}" for f in found["failed"][:1]]
        problems += [f"{counts}: a skip on a GPU machine means something is missing; first: {s}"
                     for s in found["skipped"][:1]]
        problems += [f"no GPU-marked test ran (pytest exit code {code})"] if found["passed"] == 0 else []
        return conclude(details, problems, code, "pytest", ctx.log,
                        f"{counts} ({details['parallel']}, {n} worker{'s' if n > 1 else ''})")

    return run


def describe_tests(details: dict) -> str:
    lines = [f"{details.get('passed', 0)} passed; {details.get('parallel', '')}"]
    for key, title in (("failed", "Failed"), ("skipped", "Skipped (each fails the suite)"),
                       ("not_applicable", f"Need more CUDA devices than the {details.get('devices')} here"),
                       ("ignored_collection_skips", "Modules without GPU tests skipped at collection (ignored)")):
        if details.get(key):
            lines += ["", f"{title}:", ""] + [f"- {item}" for item in details[key][:30]]
    return "\n".join(lines)


def kernel_benches(dtype: str, report_name: str = "kernels.json"):
    """The step that runs the kernel benchmarks of benches/ (every Triton kernel against its PyTorch reference and
    PyTorch's own op) at `dtype`, pytest-benchmark's JSON into the output folder."""
    from .. import ops

    def run(ctx: StepContext) -> dict:
        path = ctx.out / report_name
        cmd = python("-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider", "--benchmark-only",
                     f"--benchmark-json={path}", "--tb=short",
                     *(str(REPO / "benches" / name) for name in ops.kernel_benches()))
        code = run_logged(cmd, ctx.log, ctx.limit_s, gpu_env(VASA_KERNEL_BENCH_DTYPES=dtype))
        text = ctx.log.read_text(errors="replace")
        results = path.read_text() if path.is_file() else ""
        if not results.strip():  # pytest-benchmark leaves an empty file when every case skipped
            path.unlink(missing_ok=True)
            summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
            last = summary[-1].strip(" =") if summary else (text.strip().splitlines() or ["no output"])[-1]
            raise StepFailed(f"the kernel benchmarks wrote no results ({last}; see {ctx.log.name})")
        table = kernel_table(json.loads(results))
        skipped = re.findall(r"(\d+) skipped", text)[-1:]
        details = {"report": path.name, "cases": table.count("\n") - 2, "table": table, "dtype": dtype}
        return conclude(details, [f"{n} kernel benchmark cases skipped (see {ctx.log.name})" for n in skipped], code,
                        "the kernel benchmarks", ctx.log, f"{details['cases']} cases at {dtype} in {path.name}")

    return run


def describe_kernels(details: dict) -> str:
    return details.get("table", "")


def kernel_table(data: dict) -> str:
    """pytest-benchmark's JSON of benches/test_bench_*.py (kernel_bench.record's extra_info) as a markdown table:
    one row a case, the kernel's time, its speed-up over every other implementation, its rate and % of peak."""
    lines = ["| kernel | case | dtype | kernel ms | speed-up of the kernel over | achieved | % of peak |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for entry in data.get("benchmarks", []):
        info = entry.get("extra_info", {})
        if "kernel_ms" not in info:
            continue
        op = entry.get("name", "?").split("[")[0].removeprefix("test_")
        case = str(info.get("shape", "?")) + (f" {info['layout']}" if "layout" in info else "")
        ratios = ", ".join(f"{key.removeprefix('kernel_speedup_vs_')} {value:.2f}x"
                           for key, value in info.items() if key.startswith("kernel_speedup_vs_"))
        rate = (f"{info['kernel_tflops']:.1f} TFLOP/s" if "kernel_tflops" in info
                else f"{info.get('kernel_GBps', float('nan')):.0f} GB/s")
        pct = info.get("kernel_pct_peak")
        lines.append(f"| {op} | {case} | {info.get('dtype', '?')} | {info['kernel_ms']:.4f} | {ratios} | {rate} | "
                     f"{'n/a' if pct is None else f'{pct:.1f}'} |")
    return "\n".join(lines) + "\n"
