"""`vasa-engine compare`: the regression gate over two bench reports (vasa_engine.bench.compare).

The reports are real ones: tests/data/bench-smoke-cpu-{1,2,3}.json are three runs of `vasa-engine bench --mode
smoke` on an unchanged tree (tests/data/README.md says how they were made); slower, broken or foreign reports are
made from them by changing only what each test is about.
"""

import copy
import itertools
import json
import subprocess
import sys
from pathlib import Path

import pytest

from vasa_engine.bench import compare
from vasa_engine.bench.compare import ReportError, compare_reports, load_report

DATA = Path(__file__).resolve().parent / "data"
REPO = DATA.parent.parent
RUNS = [DATA / f"bench-smoke-cpu-{i}.json" for i in (1, 2, 3)]


@pytest.fixture(scope="module")
def runs() -> list[dict]:
    return [load_report(path) for path in RUNS]


def scaled(report: dict, factor: float, impl: str = "engine", probe: float = 1.0) -> dict:
    """A copy of `report` with every timed figure of `impl` `factor` times slower (its probe times `probe` times)."""
    out = copy.deepcopy(report)
    for _, name, fig in compare._timed_figures(out):
        if name == impl and fig.get("measured") and "ms" in fig:
            fig["ms"] = {k: v * factor for k, v in fig["ms"].items()}
            if "probe_ms" in fig:
                fig["probe_ms"] = {k: v * probe for k, v in fig["probe_ms"].items()}
    return out


def test_the_data_is_three_smoke_runs_of_one_tree(runs):
    assert {r["mode"] for r in runs} == {"smoke"} and len({r["commit"] for r in runs}) == 1
    assert len({r["date"] for r in runs}) == 3 and all(r["correctness"]["ok"] for r in runs)
    assert all("probe_ms" in r["figures"]["audio_encoder"]["engine"] for r in runs)


@pytest.mark.parametrize("index", range(3))
def test_a_report_against_itself_passes(runs, index):
    result = compare_reports(runs[index], runs[index])
    assert result.ok, result.failures
    engine_rows = [r for r in result.rows if r.impl == "engine" and r.normalized is not None]
    assert engine_rows and all(r.ratio == 1.0 and r.verdict == "ok" for r in engine_rows)


@pytest.mark.parametrize("index", range(3))
def test_engine_timings_one_and_a_half_times_slower_fail(runs, index):
    result = compare_reports(runs[index], scaled(runs[index], 1.5))
    assert not result.ok
    slower = [r for r in result.rows if r.verdict == "SLOWER"]
    assert slower and all(r.impl == "engine" and r.normalized == pytest.approx(1.5) for r in slower)
    assert any("1.50x the baseline's time" in f for f in result.failures)


def test_other_implementations_are_shown_not_gated(runs):
    result = compare_reports(runs[0], scaled(runs[0], 3.0, impl="eager fp32"))
    assert result.ok
    assert {r.verdict for r in result.rows if r.impl == "eager fp32" and r.ratio} == {"shown"}


def test_a_uniformly_slower_machine_is_not_a_regression(runs):
    """Every figure and its probe twice as slow: the same code on a machine half as fast."""
    result = compare_reports(runs[0], scaled(runs[0], 2.0, probe=2.0))
    assert result.ok, result.failures
    assert all(r.normalized == pytest.approx(1.0) for r in result.rows if r.impl == "engine" and r.normalized)


@pytest.mark.parametrize("baseline, current", list(itertools.permutations(range(3), 2)))
def test_no_alarm_across_repeated_smoke_runs(runs, baseline, current):
    result = compare_reports(runs[baseline], runs[current])
    assert result.ok, result.failures


def test_a_correctness_failure_fails(runs):
    broken = copy.deepcopy(runs[0])
    broken["correctness"]["stages"]["renderer"].update(ok=False, rel_err=0.3)
    broken["correctness"]["ok"] = False
    result = compare_reports(runs[0], broken)
    assert result.failures == ["correctness: the engine's renderer against eager fp32: relative error 0.3 > bound "
                               "0.002"]


def test_a_failed_engine_figure_fails(runs):
    current = copy.deepcopy(runs[0])
    current["figures"]["motion_generator"]["10"]["engine"] = {"measured": False, "reason": "failed: RuntimeError: x"}
    failures = compare_reports(runs[0], current).failures
    assert failures == ["motion_generator.10 (engine) FAILED: failed: RuntimeError: x"]


def test_the_engine_falling_back_to_the_reference_on_cuda_fails(runs):
    current = copy.deepcopy(runs[0])
    current["device"]["type"] = "cuda"
    current["native_ops"]["engine"]["sampler_step"] = ["pytorch reference"]
    current["native"]["cuda_fallbacks"] = {"sampler_step": "vasa_engine._C_cuda is not available (ImportError)"}
    baseline = copy.deepcopy(runs[0])
    baseline["device"]["type"] = "cuda"
    failures = compare_reports(baseline, current).failures
    assert failures == ["the engine's sampler_step ran the PyTorch reference on CUDA: vasa_engine._C_cuda is not "
                        "available (ImportError)"]


@pytest.mark.parametrize("change, words", [
    (lambda r: r["device"].update(name="NVIDIA H100 80GB HBM3 (sm_90)"), "different device"),
    (lambda r: r["sizes"]["configs"]["renderer"].update(output_size=256), "different sizes"),
    (lambda r: r["settings"]["dtypes"].update(engine="float16"), "different dtypes"),
    (lambda r: r.update(mode="cpu"), "different mode"),
])
def test_incompatible_reports_are_refused(runs, change, words):
    other = copy.deepcopy(runs[1])
    change(other)
    with pytest.raises(ReportError, match=words):
        compare_reports(runs[0], other)


def test_unreadable_reports_are_refused(tmp_path):
    (tmp_path / "bad.json").write_text("{not json")
    (tmp_path / "other.json").write_text(json.dumps({"schema": "something-else/1"}))
    with pytest.raises(ReportError, match="cannot read"):
        load_report(tmp_path / "bad.json")
    with pytest.raises(ReportError, match="not a vasa-engine bench report"):
        load_report(tmp_path / "other.json")
    with pytest.raises(ReportError, match="no such report"):
        load_report(tmp_path / "missing.json")


def run_compare(*args):
    return subprocess.run([sys.executable, "-m", "vasa_engine.cli", "compare", *map(str, args)], capture_output=True,
                          text=True, timeout=120, cwd=REPO)


def test_command_exit_codes_and_table(tmp_path, runs):
    ok = run_compare(RUNS[0], RUNS[1])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "| audio_encoder | engine |" in ok.stdout and "no regression" in ok.stdout
    slower = tmp_path / "slower.json"
    slower.write_text(json.dumps(scaled(runs[1], 1.5)))
    bad = run_compare(RUNS[1], slower)
    assert bad.returncode == 1 and "SLOWER" in bad.stdout and "REGRESSION:" in bad.stdout
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**runs[1], "mode": "gpu"}))
    refused = run_compare(RUNS[0], other)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "incompatible reports: different mode" in refused.stderr and not refused.stdout
    assert run_compare(RUNS[0], RUNS[1], "--threshold", "-5").returncode == 2


def test_a_folder_of_baselines_gives_the_one_of_the_device_and_mode(tmp_path, runs):
    assert compare.baseline_name(runs[0]) == "cpu-smoke.json"
    cuda = {**runs[0], "device": {**runs[0]["device"], "type": "cuda", "cuda_name": "NVIDIA H100 80GB HBM3"},
            "mode": "gpu", "quick": True}
    assert compare.baseline_name(cuda) == "nvidia-h100-80gb-hbm3-gpu-quick.json"
    with pytest.raises(ReportError, match="no baseline for this device and mode"):
        compare.find_baseline(tmp_path, runs[0])
    (tmp_path / "cpu-smoke.json").write_text(RUNS[2].read_text())
    proc = run_compare(tmp_path, RUNS[0])
    assert proc.returncode == 0 and f"baseline {tmp_path / 'cpu-smoke.json'}" in proc.stdout


def test_the_shipped_cpu_smoke_baseline_is_a_smoke_report():
    baseline = load_report(REPO / "benches" / "baselines" / "cpu-smoke.json")
    assert baseline["mode"] == "smoke" and baseline["device"]["type"] == "cpu" and baseline["commit"]
    assert baseline["correctness"]["ok"] and not baseline["partial"]
