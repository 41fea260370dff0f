"""The GPU suite (vasa_engine.gpu_suite) without a GPU: its steps stubbed where they need one.

- the kernel table is built from what the kernel benchmarks record (benches/kernel_bench.py): the timer and the
  device peak replaced by known values;
- the runner writes each step's file as the step ends and the summary around every step, so a run interrupted,
  timed out or killed at any point leaves the finished steps' files;
- a skipped GPU-marked test fails the suite (real pytest runs on small generated test modules);
- what the suite imports needs neither PyAV nor the network.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

REPO_ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO_ROOT / "benches"))

import kernel_bench  # noqa: E402
from vasa_engine.gpu_suite import Step, StepContext, StepFailed, Suite, read_suite  # noqa: E402
from vasa_engine.gpu_suite.procs import run_logged  # noqa: E402
from vasa_engine.gpu_suite.pytests import gpu_tests, kernel_benches, kernel_table  # noqa: E402


class FakeBenchmark:
    def __init__(self):
        self.extra_info = {}
        self.timed = None

    def pedantic(self, fn, rounds, iterations, warmup_rounds):
        self.timed = fn


@pytest.fixture
def fake_device(monkeypatch):
    medians = {"kernel": 0.5, "reference": 2.0, "torch_sdpa": 0.75}
    calls = {name: (lambda name=name: name) for name in medians}
    lookup = {fn: name for name, fn in calls.items()}
    monkeypatch.setattr(kernel_bench, "time_ms", lambda fn: (medians[lookup[fn]], 0.9 * medians[lookup[fn]],
                                                             1.1 * medians[lookup[fn]]))
    monkeypatch.setattr(kernel_bench, "synced", lambda fn: fn)
    return calls


def test_record_computes_rates_peaks_and_speedups(fake_device, monkeypatch):
    monkeypatch.setattr(kernel_bench, "device_peak", lambda work, dtype: ("Test GPU", 1e15, "test sheet"))
    bench = FakeBenchmark()
    kernel_bench.record(bench, fake_device, work="flops", amount=2e11, dtype=torch.bfloat16, shape="s1")
    info = bench.extra_info
    assert bench.timed is fake_device["kernel"]
    assert info["device"] == "Test GPU" and info["dtype"] == "bfloat16" and info["shape"] == "s1"
    assert info["kernel_tflops"] == pytest.approx(2e11 / 0.5e-3 / 1e12)
    assert info["kernel_pct_peak"] == pytest.approx(100 * 2e11 / 0.5e-3 / 1e15)
    assert info["kernel_speedup_vs_reference"] == pytest.approx(4.0)
    assert info["kernel_speedup_vs_torch_sdpa"] == pytest.approx(1.5)
    assert "kernel_speedup_vs_kernel" not in info

    table = kernel_table({"benchmarks": [{"name": "test_attention[s1-torch.bfloat16]", "extra_info": info},
                                         {"name": "test_other", "extra_info": {}}]})
    rows = table.strip().splitlines()
    assert len(rows) == 3  # header, rule, one case: entries without kernel figures are left out
    assert rows[2].startswith("| attention | s1 | bfloat16 | 0.5000 |")
    assert "reference 4.00x, torch_sdpa 1.50x" in rows[2] and "400.0 TFLOP/s" in rows[2] and "| 40.0 |" in rows[2]


def test_record_without_a_known_peak_says_so(fake_device, monkeypatch):
    monkeypatch.setattr(kernel_bench, "device_peak", lambda work, dtype: ("Other GPU", None, "no peak figures"))
    bench = FakeBenchmark()
    kernel_bench.record(bench, fake_device, work="bytes", amount=1e9, dtype=torch.float32, shape=(1, 2),
                        layout="nchw")
    assert bench.extra_info["kernel_pct_peak"] is None and bench.extra_info["peak_source"] == "no peak figures"
    assert bench.extra_info["kernel_GBps"] == pytest.approx(1e9 / 0.5e-3 / 1e9)
    row = kernel_table({"benchmarks": [{"name": "test_spade[x]", "extra_info": bench.extra_info}]}).splitlines()[2]
    assert "| (1, 2) nchw | float32 |" in row and "2000 GB/s" in row and row.endswith("| n/a |")


def test_record_rejects_an_unknown_work_kind(fake_device):
    with pytest.raises(ValueError, match="work must be"):
        kernel_bench.record(FakeBenchmark(), fake_device, work="joules", amount=1.0, dtype=torch.float32)


def test_dtype_selection(monkeypatch):
    monkeypatch.setenv("VASA_KERNEL_BENCH_DTYPES", "bfloat16")
    assert kernel_bench._dtypes() == [torch.bfloat16]
    monkeypatch.setenv("VASA_KERNEL_BENCH_DTYPES", "")
    assert kernel_bench._dtypes() == [torch.float16, torch.bfloat16, torch.float32]
    monkeypatch.setenv("VASA_KERNEL_BENCH_DTYPES", "int8")
    with pytest.raises(ValueError, match="unknown dtype 'int8'"):
        kernel_bench._dtypes()


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the run where every kernel benchmark skips")
def test_kernel_benches_without_a_gpu_say_why_and_leave_no_empty_report(tmp_path):
    log = tmp_path / "kernel-benches.log"
    with pytest.raises(StepFailed, match=r"wrote no results \(\d+ skipped"):
        kernel_benches("float16")(StepContext(tmp_path, log, 300, "kernel-benches"))
    assert not (tmp_path / "kernels.json").exists()
    assert "skipped" in log.read_text()


# --- the runner: a file per finished step, the summary around every step ------------------------------------------

HEADER = {"device": "Stub GPU", "capability": "sm_90", "torch": torch.__version__, "cuda": None, "triton": None,
          "python": "3", "tf32": "off", "mode": "first-contact", "commit": "test"}


def passing(note: str):
    return lambda ctx: {"note": note, "value": 1}


def test_an_interrupted_suite_keeps_the_finished_steps_files(tmp_path):
    def interrupt(ctx):
        raise KeyboardInterrupt

    never = []
    steps = [Step("build", 60, passing("built")), Step("gpu-tests", 60, passing("12 passed")),
             Step("engine-check", 60, interrupt), Step("bench-quick", 60, lambda ctx: never.append(1))]
    with pytest.raises(KeyboardInterrupt):
        Suite(tmp_path, HEADER, 600, steps).run()
    assert not never  # the suite stops at the interrupt
    for index, name in ((1, "build"), (2, "gpu-tests")):
        record = json.loads((tmp_path / f"{index:02d}-{name}.json").read_text())
        assert record["status"] == "passed" and record["suite"]["device"] == "Stub GPU" and record["details"]["value"]
    assert json.loads((tmp_path / "03-engine-check.json").read_text())["status"] == "interrupted"
    assert not (tmp_path / "04-bench-quick.json").exists()
    suite = read_suite(tmp_path)
    assert suite["status"] == "interrupted" and [r["status"] for r in suite["steps"]] == ["passed", "passed",
                                                                                        "interrupted"]
    summary = (tmp_path / "suite.md").read_text()
    assert "| build | ok |" in summary and "12 passed" in summary and "| engine-check | INTERRUPTED |" in summary
    assert not list(tmp_path.glob(".*"))  # every file written atomically: no temporary left


def test_a_step_that_runs_out_of_time_is_stopped_and_recorded(tmp_path):
    def sleeper(ctx):
        code = run_logged([sys.executable, "-c", "import time; print('working', flush=True); time.sleep(60)"],
                          ctx.log, ctx.limit_s)
        return {"code": code}

    def failing(ctx):
        raise StepFailed("the extension is not built for CUDA: nvcc not found", {"cuda_built": False})

    steps = [Step("engine-check", 1.5, sleeper), Step("build", 60, failing), Step("gpu-tests", 60, passing("ok"))]
    t0 = time.monotonic()
    assert Suite(tmp_path, HEADER, 600, steps).run() is False
    assert time.monotonic() - t0 < 30  # the sleeper's process was killed at its limit
    timed_out = json.loads((tmp_path / "01-engine-check.json").read_text())
    assert timed_out["status"] == "timed out" and "limit of 2 s" in timed_out["message"]
    assert "working" in (tmp_path / "01-engine-check.log").read_text() and timed_out["log_tail"]
    failed = json.loads((tmp_path / "02-build.json").read_text())
    assert failed["status"] == "failed" and "not built for CUDA" in failed["message"]
    assert failed["details"] == {"cuda_built": False}
    assert json.loads((tmp_path / "03-gpu-tests.json").read_text())["status"] == "passed"
    summary = (tmp_path / "suite.md").read_text()
    assert "**FAILED**" in summary and "| engine-check | TIMED OUT |" in summary


def test_steps_past_the_budget_are_not_run(tmp_path):
    now = [0.0]

    def slow(ctx):
        now[0] += 96.0
        return {"limit": ctx.limit_s}

    steps = [Step("build", 150, slow), Step("gpu-tests", 150, slow), Step("engine-check", 100, passing("x"))]
    suite = Suite(tmp_path, HEADER, 200, steps, clock=lambda: now[0])
    assert suite.run() is False
    results = read_suite(tmp_path)["steps"]
    assert [r["status"] for r in results] == ["passed", "passed", "not run"]
    assert [r["limit_s"] for r in results[:2]] == [150, 104]  # a step's limit is cut to what is left of the budget
    assert "budget of 200 s" in (tmp_path / "03-engine-check.json").read_text()


KILLED_RUN = """
import sys, time
from pathlib import Path
from vasa_engine.gpu_suite import Step, Suite
out = Path(sys.argv[1])
steps = [Step("build", 60, lambda ctx: {"note": "built"}), Step("gpu-tests", 60, lambda ctx: time.sleep(120))]
Suite(out, {"device": "Stub GPU"}, 600, steps).run()
"""


def test_a_suite_killed_from_outside_leaves_the_finished_steps_and_names_the_running_one(tmp_path):
    """SIGKILL (a device's command limit) gives the suite no chance to write anything more."""
    proc = subprocess.Popen([sys.executable, "-c", KILLED_RUN, str(tmp_path)], cwd=REPO_ROOT)
    try:
        deadline = time.monotonic() + 60
        while not (tmp_path / "01-build.json").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert json.loads((tmp_path / "01-build.json").read_text())["status"] == "passed"
    suite = read_suite(tmp_path)
    assert suite["status"] == "running" and suite["steps"][-1] == {**suite["steps"][-1], "step": "gpu-tests",
                                                                   "status": "running"}
    assert "| gpu-tests | running |" in (tmp_path / "suite.md").read_text()


# --- a skipped GPU-marked test fails the suite ---------------------------------------------------------------------

GPU_PASS = "import pytest\n\n@pytest.mark.gpu\ndef test_runs():\n    assert 1 + 1 == 2\n"
GPU_SKIP = ("import pytest\n\n@pytest.mark.gpu\ndef test_needs_the_extension():\n"
            "    pytest.skip('vasa_engine._C_cuda is not built')\n")
GPU_MODULE_SKIP = ("import pytest\nkernels = pytest.importorskip('no_such_kernel_module')\n\n@pytest.mark.gpu\n"
                   "def test_kernel():\n    pass\n")
CPU_MODULE_SKIP = "import pytest\nav = pytest.importorskip('no_such_media_module')\n\ndef test_decode():\n    pass\n"


def _tests_dir(tmp_path, **modules) -> Path:
    folder = tmp_path / "tests"
    folder.mkdir()
    for name, text in modules.items():
        (folder / f"test_{name}.py").write_text(text)
    return folder


def _run_gpu_tests(tmp_path, folder) -> dict:
    out = tmp_path / "out"
    out.mkdir()
    Suite(out, HEADER, 600, [Step("gpu-tests", 120, gpu_tests(folder, workers=1, devices=1))]).run()
    return json.loads((out / "01-gpu-tests.json").read_text())


def test_gpu_tests_pass_when_every_gpu_test_runs(tmp_path):
    record = _run_gpu_tests(tmp_path, _tests_dir(tmp_path, runs=GPU_PASS, media=CPU_MODULE_SKIP))
    assert record["status"] == "passed", record
    assert record["details"]["passed"] == 1 and not record["details"]["skipped"]
    assert any("no_such_media_module" in s for s in record["details"]["ignored_collection_skips"])


def test_a_skipped_gpu_test_fails_the_suite(tmp_path):
    record = _run_gpu_tests(tmp_path, _tests_dir(tmp_path, runs=GPU_PASS, native=GPU_SKIP))
    assert record["status"] == "failed"
    assert "1 passed, 0 failed, 1 skipped" in record["message"] and "_C_cuda is not built" in record["message"]
    assert record["details"]["skipped"] == ["test_native.test_needs_the_extension: vasa_engine._C_cuda is not built"]
    assert read_suite(tmp_path / "out")["status"] == "failed"


def test_a_gpu_module_skipped_at_collection_fails_the_suite(tmp_path):
    record = _run_gpu_tests(tmp_path, _tests_dir(tmp_path, runs=GPU_PASS, kernels=GPU_MODULE_SKIP))
    assert record["status"] == "failed" and "no_such_kernel_module" in record["details"]["skipped"][0]


# --- the command and what it imports ----------------------------------------------------------------------------

NO_MEDIA_NO_NETWORK = """
import sys
for name in ("av", "websockets", "huggingface_hub", "requests", "urllib3", "matplotlib"):
    sys.modules[name] = None  # importing any of them now raises ImportError
from vasa_engine.cli import build_parser
import vasa_engine.gpu_suite.engine_check, vasa_engine.gpu_suite.steps, vasa_engine.bench.compare
from vasa_engine import bench
args = build_parser().parse_args(["gpu-suite", "--mode", "full", "--out", "."])
assert args.mode == "full"
clip = bench.speech_clip(0.5)
assert clip.shape == (8000,)
print("ok", float(abs(clip).max()))
"""


def test_the_suite_needs_neither_pyav_nor_the_network():
    """A GPU machine has no PyAV and no network: the suite, its steps and the bench's speech read without them."""
    proc = subprocess.run([sys.executable, "-c", NO_MEDIA_NO_NETWORK], capture_output=True, text=True, timeout=120,
                          cwd=REPO_ROOT, env={**os.environ, "PYTHONPATH": str(REPO_ROOT)})
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert proc.stdout.startswith("ok ") and float(proc.stdout.split()[1]) > 0.01  # speech, not silence


def test_the_engine_check_runs_its_code_on_a_cpu_and_names_what_a_cpu_lacks():
    """The engine check at smoke sizes on the CPU: the engine there is the reference, so every stage equals eager
    float32 exactly, and the check fails for what only a GPU has (kernels, graphs)."""
    from vasa_engine.gpu_suite.engine_check import describe, run_check

    result = run_check(frames=2, steps=1, repeats=1, device="cpu", sizes="smoke")
    check = result["correctness"]
    assert check["ok"] and {s: r["rel_err"] for s, r in check["stages"].items()} == {
        "audio_encoder": 0.0, "motion_generator": 0.0, "renderer": 0.0}
    assert set(result["timings"]) == {"engine", "eager float32"}  # float32 on a CPU: one eager column
    for stages in result["timings"].values():
        assert all(stages[s]["measured"] and stages[s]["ms_per_unit"] > 0 for s in check["stages"])
    assert "the Triton kernels are not active on this device (backend auto)" in result["failures"]
    assert "no CUDA graph of the renderer was captured" in result["failures"]
    assert result["speedups"]["renderer"]["vs eager float32"] > 0
    table = describe(result)
    assert "| renderer | 0 | 0.002 |" in table and "Failures:" in table


MULTI_GPU = ("import pytest\n\n@pytest.mark.gpu\ndef test_second_device():\n"
             "    pytest.skip('needs two CUDA devices')\n")


def test_a_test_needing_more_gpus_than_the_machine_has_is_not_applicable(tmp_path):
    folder = _tests_dir(tmp_path, runs=GPU_PASS, multi=MULTI_GPU)
    out = tmp_path / "out"
    out.mkdir()
    Suite(out, HEADER, 600, [Step("gpu-tests", 120, gpu_tests(folder, workers=1, devices=1))]).run()
    record = json.loads((out / "01-gpu-tests.json").read_text())
    assert record["status"] == "passed", record
    assert record["details"]["not_applicable"] == ["test_multi.test_second_device: needs two CUDA devices"]
    from vasa_engine.gpu_suite.pytests import needs_more_devices

    assert needs_more_devices("needs two CUDA devices", 1) and not needs_more_devices("needs two CUDA devices", 2)
    assert needs_more_devices("needs 4 GPUs", 2) and not needs_more_devices("needs a CUDA device", 0)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks a machine where the CUDA extension cannot run")
def test_an_extension_that_cannot_run_here_fails_its_step(tmp_path):
    """The extension check in a fresh process: without a GPU (or without nvcc at build time) `_C_cuda` cannot run,
    and the step says which."""
    from vasa_engine.gpu_suite.steps import build

    with pytest.raises(StepFailed, match="cannot run here: no CUDA device|not built for CUDA") as failed:
        build(skip=True)(StepContext(tmp_path, tmp_path / "extension.log", 60, "extension"))
    assert failed.value.details["extension"]["built"] is True


def test_the_bench_steps_line_names_the_source_encoding_or_why_not(tmp_path):
    """A bench stopped before dubbing's source encoding (a partial report) says so in the step's summary."""
    from vasa_engine.gpu_suite.steps import _bench_details

    path = tmp_path / "bench-quick.json"
    device = {"type": "cuda", "name": "Stub GPU"}
    path.write_text(json.dumps({"partial": True, "device": device, "figures": {}}))
    assert _bench_details(path)["source_encoding"] == "not reached"
    path.write_text(json.dumps({"partial": True, "device": device, "figures": {"source_encoding": {"engine": {
        "measured": False, "reason": "time budget spent"}}}}))
    details = _bench_details(path)
    assert details["source_encoding"] == "time budget spent" and details["partial"]
