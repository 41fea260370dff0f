"""`vasa-engine gpu-suite`: everything that needs an NVIDIA GPU, in one command, on a machine with no network.

1. builds the native extension in place (CMake + pybind11 + nvcc, no download);
2. runs every GPU-marked test (graph replay equals eager, kernels equal their references on the device, the CUDA
   sampler step equals the PyTorch one, ...);
3. runs the benchmark (quick mode first, so a short run still gives the key figures), then the kernel
   benchmarks of benches/ (every Triton kernel against its PyTorch reference and PyTorch's own op, at the engine's
   CUDA dtype), then the full benchmark while the time budget lasts;
4. writes `<device>-<date>-suite.json` and `.md` (with the kernel table, the bench's own JSON and markdown, and
   pytest-benchmark's JSON of the kernel benchmarks) into --out, and prints the summary table last.

It uses only what a stock CUDA PyTorch image has (torch, triton, pybind11, cmake, nvcc, pytest); media
libraries are imported lazily and the tests it runs do not need them.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
DEFAULT_BUDGET_S = 7 * 60  # the whole suite must end inside 8 minutes on a fresh machine


def add_parser(sub) -> None:
    from ..cli import float_in

    p = sub.add_parser("gpu-suite", help="on a GPU machine: build, run the GPU-marked tests and the benchmark, "
                                         "write JSON + markdown into --out")
    p.add_argument("--out", default=str(REPO / "benches" / "results"), help="output folder (default: benches/results)")
    p.add_argument("--budget", type=float_in(60, 3600), default=DEFAULT_BUDGET_S,
                   help=f"seconds for the whole suite (default {DEFAULT_BUDGET_S}); later steps shrink to fit")
    p.add_argument("--quick", action="store_true", help="the quick benchmark only")
    p.add_argument("--skip-build", action="store_true", help="use the extension as it is")
    p.add_argument("--commit", default=None, help="commit to record (default: git rev-parse, else unknown)")
    p.set_defaults(func=run)


def _device_slug(name: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", name.lower()).strip("-") or "unknown-device"


def _step(results: dict, name: str, fn):
    t0 = time.perf_counter()
    print(f"== {name}", flush=True)
    try:
        out = fn()
        results[name] = {"ok": True, **(out or {})}
    except Exception as exc:  # noqa: BLE001 - a step that breaks is a finding: record it, go on
        results[name] = {"ok": False, "error": str(exc).strip().splitlines()[0] if str(exc).strip() else repr(exc)}
    results[name]["seconds"] = round(time.perf_counter() - t0, 1)
    print(f"== {name}: {'ok' if results[name]['ok'] else 'FAILED'} in {results[name]['seconds']} s", flush=True)


def _build() -> dict:
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace"], cwd=REPO, capture_output=True,
                          text=True, timeout=600)
    tail = (proc.stdout + proc.stderr)[-2000:]
    if proc.returncode != 0:
        raise RuntimeError(f"native build failed: {tail.strip().splitlines()[-1] if tail.strip() else proc.returncode}")
    from .. import native

    info = native.extension_info()
    if not info.get("cuda_built"):
        raise RuntimeError(f"the CUDA extension was not built: {info.get('cuda_reason')}")
    return {"extension": {k: v for k, v in info.items() if isinstance(v, (str, bool, list, type(None)))}}


def _tests(out: Path, timeout: float) -> dict:
    junit = out / "gpu-tests.xml"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    cmd = [sys.executable, "-m", "pytest", "-m", "gpu", "-q", "-rfEs", "-p", "no:cacheprovider", "--tb=line",
           f"--junitxml={junit}", "tests"]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        text, code = proc.stdout + proc.stderr, proc.returncode
    except subprocess.TimeoutExpired as exc:
        partial = exc.stdout or ""
        text = partial.decode(errors="replace") if isinstance(partial, bytes) else partial
        text, code = text + f"\ntimed out after {timeout:.0f} s", -1
    (out / "gpu-tests.log").write_text(text)
    counts = {k: int(v) for v, k in re.findall(r"(\d+) (passed|failed|skipped|error|errors|deselected)", text)}
    failures = [line for line in text.splitlines() if line.startswith(("FAILED", "ERROR"))]
    print(text[-3000:], flush=True)
    if code not in (0, 5) or failures:
        raise RuntimeError(f"{counts.get('failed', 0)} failed, {counts.get('errors', counts.get('error', 0))} errors "
                           f"(see gpu-tests.log): {failures[0] if failures else 'exit code ' + str(code)}")
    return {"counts": counts}


def _bench(out: Path, quick: bool, budget: float, commit: str, stem: str) -> dict:
    from .. import bench

    options = bench.Options(mode="gpu", quick=quick, time_budget=budget, command=" ".join(sys.argv))
    report = bench.run_bench(options)
    if commit:
        report.setdefault("meta", {})["commit"] = commit
    problems = bench.validate_report(report)
    tag = "quick" if quick else "full"
    bench.write_atomic(out / f"{stem}-bench-{tag}.json", json.dumps(report, indent=2, default=str) + "\n")
    bench.write_atomic(out / f"{stem}-bench-{tag}.md", bench.to_markdown(report))
    return {"report": f"{stem}-bench-{tag}.json", "problems": problems, "markdown": bench.to_markdown(report)}


def _kernel_benches(out: Path, stem: str, timeout: float, dtype: str) -> dict:
    from .. import ops

    path = out / f"{stem}-kernels.json"
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    env["VASA_KERNEL_BENCH_DTYPES"] = dtype
    cmd = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "--benchmark-only",
           f"--benchmark-json={path}", "--tb=line", *(str(REPO / "benches" / name) for name in ops.kernel_benches())]
    try:
        proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=timeout, env=env)
        text = proc.stdout + proc.stderr
    except subprocess.TimeoutExpired:
        text = f"timed out after {timeout:.0f} s"
    (out / "kernel-benches.log").write_text(text)
    results = path.read_text() if path.is_file() else ""
    if not results.strip():  # pytest-benchmark leaves an empty file when every case skipped
        path.unlink(missing_ok=True)
        summary = [line for line in text.splitlines() if re.search(r"\d+ (passed|failed|skipped|errors?)\b", line)]
        last = summary[-1].strip(" =") if summary else (text.strip().splitlines() or ["no output"])[-1]
        raise RuntimeError(f"the kernel benchmarks wrote no results ({last}; see kernel-benches.log)")
    markdown = kernel_table(json.loads(results))
    cases = markdown.count("\n") - 2
    return {"report": path.name, "note": f"{cases} cases in {path.name}", "kernel_markdown": markdown}


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


def run(args) -> int:
    import torch

    from ..errors import InputError

    out = Path(args.out)
    if not out.is_dir():
        raise InputError(f"output folder does not exist: {out}")
    if not torch.cuda.is_available():
        raise InputError("gpu-suite needs a CUDA device; none is available here")
    start = time.perf_counter()
    name = torch.cuda.get_device_name()
    stem = f"{_device_slug(name)}-{dt.date.today().isoformat()}"
    commit = args.commit or os.environ.get("VASA_COMMIT") or ""
    results: dict = {"device": name, "capability": "sm_%d%d" % torch.cuda.get_device_capability(),
                     "torch": torch.__version__, "cuda": torch.version.cuda, "date": dt.datetime.now().isoformat(),
                     "commit": commit or "unknown", "steps": {}}
    try:
        import triton

        results["triton"] = triton.__version__
    except ImportError:
        results["triton"] = None
    steps = results["steps"]

    def left() -> float:
        return args.budget - (time.perf_counter() - start)

    if not args.skip_build:
        _step(steps, "build", _build)
    _step(steps, "gpu tests", lambda: _tests(out, timeout=max(60.0, min(240.0, left() * 0.5))))
    # the quick bench leaves about two minutes for the kernel benchmarks
    _step(steps, "bench quick", lambda: _bench(out, True, max(30.0, left() - 140), commit, stem))
    from ..runtime import resolve_dtype

    kernel_dtype = str(resolve_dtype("auto", torch.device("cuda"))).removeprefix("torch.")
    _step(steps, "kernel benches", lambda: _kernel_benches(out, stem, max(60.0, min(150.0, left() - 30)), kernel_dtype))
    if not args.quick and left() > 90:
        _step(steps, "bench full", lambda: _bench(out, False, left() - 20, commit, stem))
    results["seconds"] = round(time.perf_counter() - start, 1)

    summary = [f"# GPU suite: {name} ({results['capability']}), {results['date'][:10]}, commit {results['commit']}",
               "", f"torch {results['torch']}, CUDA {results['cuda']}, triton {results['triton']}; "
               f"{results['seconds']} s in all", "", "| step | result | seconds | notes |", "| --- | --- | --- | --- |"]
    for step, r in steps.items():
        if "counts" in r:
            counts = ", ".join(f"{v} {k}" for k, v in r["counts"].items())
        else:
            counts = "; ".join(r.get("problems", [])[:2]) or r.get("report", "")
        note = r.get("error") or r.get("note") or counts
        summary.append(f"| {step} | {'ok' if r['ok'] else 'FAILED'} | {r['seconds']} | {note} |")
    bench_md = next((r["markdown"] for key in ("bench full", "bench quick") if (r := steps.get(key, {})).get("markdown")),
                    None)
    kernel_md = steps.get("kernel benches", {}).get("kernel_markdown")
    text = "\n".join(summary) + "\n" + (f"\n## Kernels\n\n{kernel_md}" if kernel_md else "") + (
        f"\n{bench_md}\n" if bench_md else "")
    for r in steps.values():
        r.pop("markdown", None)
        r.pop("kernel_markdown", None)
    from ..bench import write_atomic

    write_atomic(out / f"{stem}-suite.json", json.dumps(results, indent=2, default=str) + "\n")
    write_atomic(out / f"{stem}-suite.md", text)
    print(text)
    return 0 if all(r["ok"] for r in steps.values()) else 1
