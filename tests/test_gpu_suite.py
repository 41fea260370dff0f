"""The GPU suite's kernel table is built from what the kernel benchmarks record (benches/kernel_bench.py).

The benchmarks themselves need a CUDA device; here the timer and the device peak are replaced by known values, so
the figures each record carries and the table the suite prints can be checked on any machine.
"""

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benches"))

import kernel_bench  # noqa: E402
from vasa_engine.commands.gpu_suite import kernel_table  # noqa: E402


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
    from vasa_engine.commands.gpu_suite import _kernel_benches

    with pytest.raises(RuntimeError, match=r"wrote no results \(\d+ skipped"):
        _kernel_benches(tmp_path, "cpu-test", 300, "float16")
    assert not (tmp_path / "cpu-test-kernels.json").exists()
    assert "skipped" in (tmp_path / "kernel-benches.log").read_text()
