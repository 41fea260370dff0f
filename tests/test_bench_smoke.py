"""`vasa-engine bench` in its smoke mode: it runs without PyAV (as on a GPU machine), and its report carries every
figure (measured or with a reason), the engine's correctness against eager float32, and which implementation of
the native operations ran.

Speed is never asserted: the smoke mode's sizes are the smallest and every figure is timed a few times.
"""

import json
import os
import subprocess
import sys

import pytest

from vasa_engine import bench

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_cli(*args, timeout=300):
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.run([sys.executable, "-m", "vasa_engine.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env=env, cwd=REPO_ROOT)


# the command with PyAV unimportable, as on the GPU machines: the speech the bench streams is read without it
WITHOUT_PYAV = "import sys; sys.modules['av'] = None; from vasa_engine.cli import main; sys.exit(main(sys.argv[1:]))"


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    json_path, md_path, png_path = out / "smoke.json", out / "smoke.md", out / "smoke.png"
    # In a separate process: torch.compile's settings stay out of the rest of the suite.
    proc = subprocess.run([sys.executable, "-c", WITHOUT_PYAV, "bench", "--mode", "smoke", "--device", "cpu", "--json",
                           str(json_path), "--markdown", str(md_path), "--plot", str(png_path)], capture_output=True,
                          text=True, timeout=300, env={**os.environ, "PYTHONUNBUFFERED": "1"}, cwd=REPO_ROOT)
    return proc, json_path, md_path, png_path


def test_smoke_writes_json_and_markdown(smoke_run):
    proc, json_path, md_path, _ = smoke_run
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json_path.is_file() and md_path.is_file()
    markdown = md_path.read_text()
    assert "| figure | eager fp32 | eager bf16 | torch.compile | engine |" in markdown
    assert markdown.strip() in proc.stdout  # the table is printed last
    assert not list(json_path.parent.glob(".*"))  # no temporary file left behind


def md_text(smoke_run) -> str:
    return smoke_run[2].read_text()


def test_smoke_report_carries_every_figure(smoke_run):
    proc, json_path, _, _ = smoke_run
    report = json.loads(json_path.read_text())
    assert bench.validate_report(report) == []
    assert report["schema"] == bench.SCHEMA and report["mode"] == "smoke"
    assert report["device"]["type"] == "cpu" and report["device"]["name"]
    assert report["versions"]["torch"] and "triton" in report["versions"]
    assert report["commit"]
    assert report["command"].startswith("vasa-engine bench --mode smoke")
    assert set(report["settings"]["dtypes"]) == set(bench.IMPLEMENTATIONS)
    assert report["settings"]["batches"] == [1, 2] and report["settings"]["steps"] == [1, 5, 10]
    figures = report["figures"]
    for impl in bench.IMPLEMENTATIONS:
        for group in (figures["audio_encoder"], figures["renderer_batch_1"], figures["renderer_best_batch"],
                      figures["source_encoding"], figures["end_to_end"], figures["streaming"],
                      *figures["motion_generator"].values()):
            fig = group[impl]
            assert fig["measured"] in (True, False)
            if not fig["measured"]:
                assert fig["reason"].strip()
    # The float32 paths run on every CPU: they are measured, with counted work and ratios.
    for impl in ("eager fp32", "engine"):
        for fig in (figures["audio_encoder"][impl], figures["motion_generator"]["10"][impl],
                    figures["renderer_batch_1"][impl], figures["source_encoding"][impl], figures["end_to_end"][impl]):
            assert fig["measured"], fig
            assert fig["ms"]["min"] <= fig["ms"]["median"] <= fig["ms"]["p80"]
            assert fig["flops_per_unit"] > 0 and fig["bytes_per_unit"] > 0
            assert "vs eager fp32" in fig["speedup"] or impl == "eager fp32"
    assert figures["end_to_end"]["engine"]["fps"] > 0 and figures["streaming"]["engine"]["measured"]
    for fig in (figures["audio_encoder"]["engine"], figures["renderer_batch_1"]["eager fp32"]):
        assert fig["repeats"] > 1 and fig["ms"]["min"] <= fig["ms"]["p20"] <= fig["ms"]["median"]
        assert fig["probe_ms"]["median"] > 0  # the machine probe timed beside the figure
    assert report["partial"] is False
    concurrent = figures["streaming"]["engine"]["concurrent"]
    assert concurrent["counts"]["1"]["measured"] and concurrent["counts"]["1"]["streams"] == 1
    assert concurrent["max_streams"] in (0, 1, 2) and "| concurrent real-time streams |" in md_text(smoke_run)
    batched = concurrent["counts"]["1"]["scheduler"]  # the same count through the device scheduler, same run
    assert batched["measured"] and batched["batched"] and batched["streams"] == 1, batched
    assert batched["aggregate_fps"] > 0 and batched["per_stream_fps"] > 0 and batched["missed_deadlines"] >= 0
    assert concurrent["max_streams_scheduler"] in (0, 1, 2)
    assert "| 1 streams, per-session threads vs device scheduler |" in md_text(smoke_run)
    assert report["engine_note"] == bench.ENGINE_ON_CPU
    assert report["sizes"]["reduced"] is True
    assert report["device"]["threads"] == 1 and "1 threads" in report["device"]["name"]  # smoke: one thread


def test_smoke_report_measures_dubbings_source_encoding(smoke_run):
    """Dubbing's per-frame source encoding is a stage of its own: ms per frame of 8 frames encoded in batches of
    the dub's default size (1 on a CPU), eager and engine side by side, in the JSON, the markdown, the comparison
    and the GPU suite's summary."""
    from vasa_engine.bench.compare import compare_reports
    from vasa_engine.bench.runner import SOURCE_FRAMES
    from vasa_engine.gpu_suite.steps import _bench_details

    _, json_path, _, _ = smoke_run
    report = json.loads(json_path.read_text())
    figures = report["figures"]["source_encoding"]
    for impl in ("eager fp32", "engine"):
        fig = figures[impl]
        assert fig["unit"] == "frame" and fig["batch"] == 1 and fig["units_per_call"] == SOURCE_FRAMES == 8
        assert fig["ms_per_unit"] == pytest.approx(fig["ms"]["median"] / SOURCE_FRAMES)
        assert 0 < report["work"]["float32"]["source_encoding"]["flops_per_unit"] == fig["flops_per_unit"]
    assert figures["engine"]["speedup"]["vs eager fp32"] > 0
    assert not figures["torch.compile"]["measured"] and "not the extractors" in figures["torch.compile"]["reason"]
    markdown = md_text(smoke_run)
    row = next(line for line in markdown.splitlines() if line.startswith("| source encoding (dubbing), ms per frame |"))
    assert row.count("(b1)") == 3 and row.count("n/m") == 1  # eager fp32, eager bf16, engine; not torch.compile
    assert "| source encoding (per frame) |" in markdown
    rows = compare_reports(report, report).rows
    assert [r.verdict for r in rows if r.figure == "source_encoding" and r.impl == "engine"] == ["ok"]
    summary = _bench_details(json_path)["source_encoding"]
    assert summary == f"{figures['engine']['ms_per_unit']:.3g} ms per frame, batch 1"


def test_smoke_report_records_correctness_and_the_native_implementations(smoke_run):
    _, json_path, _, _ = smoke_run
    report = json.loads(json_path.read_text())
    check = report["correctness"]
    assert check["ok"] is True and check["reference"] == "eager fp32" and check["dtype"] == "float32"
    # on a CPU the engine is the reference: its outputs equal eager float32's exactly
    assert {s: r["rel_err"] for s, r in check["stages"].items()} == {"audio_encoder": 0.0, "motion_generator": 0.0,
                                                                    "renderer": 0.0}
    from vasa_engine import native

    expected = native.implementation("cpu")
    for impl in bench.IMPLEMENTATIONS:
        assert report["native_ops"][impl] == {"sampler_step": [expected], "driving_keypoints": [expected]}
    assert report["native"]["on_device"] == expected and report["native"]["cuda_fallbacks"] == {}
    assert report["device"]["tf32"] == {"matmul": False, "cudnn": False}  # the command turns TF32 off
    assert report["device"]["fp32_peak"].startswith("non-tensor FP32 peak")
    markdown = md_text(smoke_run)
    assert "Correctness, the engine (float32) against eager fp32" in markdown
    assert "| engine | " + expected + " | " + expected + " |" in markdown

def test_smoke_plot(smoke_run):
    _, json_path, _, png_path = smoke_run
    report = json.loads(json_path.read_text())
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert report["plot"]["measured"] is False and "matplotlib" in report["plot"]["reason"]
        assert not png_path.exists()
        return
    assert report["plot"] == str(png_path)
    assert png_path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_validate_report_flags_a_figure_without_reason():
    report = {"figures": {"audio_encoder": {"engine": {"measured": False}}}}
    problems = bench.validate_report(report)
    assert "audio_encoder.engine: not measured and no reason" in problems
    assert any(p.startswith("missing commit") for p in problems)
    assert any(p == "renderer_batch_1.engine: missing" for p in problems)


@pytest.mark.parametrize("args, words", [
    (["--mode", "gpu", "--device", "cpu"], "needs a CUDA device"),
    (["--steps", "3", "--device", "cpu"], "--steps must be among 1, 5, 10"),
    (["--json", "/nonexistent-folder/x.json", "--device", "cpu"], "output folder does not exist"),
    (["--dtype", "float16", "--device", "cpu"], "float16 is not supported on the CPU"),
])
def test_bad_options_are_one_line_errors(args, words):
    proc = run_cli("bench", *args, timeout=120)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and words in lines[0], proc.stderr


def test_stats_and_default_names():
    stats = bench.summarize([3.0, 1.0, 2.0, 4.0, 5.0])
    assert stats == {"min": 1.0, "p20": 1.8, "median": 3.0, "p80": 4.2}
    import torch

    assert bench.default_stem(torch.device("cpu"), "cpu", "2026-01-02") == "cpu-2026-01-02"
    assert bench.default_stem(torch.device("cpu"), "smoke", "2026-01-02") == "cpu-smoke-2026-01-02"


@pytest.mark.slow
def test_stage_benchmarks_run_in_smoke_mode():
    """pytest-benchmark's stage benchmarks, each body once and untimed (--benchmark-disable), at smoke sizes."""
    env = {**os.environ, "VASA_BENCH_MODE": "smoke"}
    proc = subprocess.run([sys.executable, "-m", "pytest", "benches/test_bench_stages.py", "--benchmark-disable",
                           "-q", "-p", "no:cacheprovider", "-k", "engine"], capture_output=True, text=True,
                          timeout=600, env=env, cwd=REPO_ROOT)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert " passed" in proc.stdout


def _implementations(device):
    from vasa_engine.runtime import resolve_dtype

    sizes = bench.sizes_for("smoke", device)
    dtype = resolve_dtype("auto", device)  # the engine's own: float16 on CUDA, float32 on a CPU
    engines = bench.build_engines(sizes, device, dtype)
    return bench.build_implementations(engines, dtype, "dynamo-only"), sizes


def test_implementations_are_variants_with_their_own_graph_caches():
    """Each implementation is an engine variant on the same loaded modules, with its own backend and graph caches:
    sharing them, the eager columns would replay the engine's kernels (or the engine the reference's)."""
    import torch

    impls, _ = _implementations(torch.device("cpu"))
    assert set(impls) == set(bench.IMPLEMENTATIONS) and all(impl.error is None for impl in impls.values())
    engines = [impl.engine for impl in impls.values()]
    assert len({id(e) for e in engines}) == len(engines)
    assert len({id(e.render_graphs) for e in engines}) == len(engines)
    assert len({id(e.sampler_graphs) for e in engines}) == len(engines)
    assert impls["eager fp32"].engine.backend == impls["torch.compile"].engine.backend == "reference"
    assert impls["engine"].engine.backend == "auto"
    assert impls["eager fp32"].dtype == torch.float32 and impls["eager bf16"].dtype == torch.bfloat16
    # the engine and its eager float32 column share the loaded modules: no copy of the weights
    assert impls["engine"].engine.motion_stack.generator is impls["eager fp32"].engine.motion_stack.generator
    for impl in impls.values():
        assert not impl.engine.cuda_graphs  # a CPU


@pytest.mark.gpu
@pytest.mark.skipif(not __import__("torch").cuda.is_available(), reason="needs a CUDA device")
def test_engine_stages_replay_graphs_and_match_eager():
    """The bench's engine column (float16, kernels, graphs) against its eager float32 column, each stage within the
    float16 bound, with the renderer and the sampler loop replayed from graphs."""
    import torch

    from vasa_engine.bench.correctness import check_engine

    impls, sizes = _implementations(torch.device("cuda"))
    engine, eager = impls["engine"], impls["eager fp32"]
    assert engine.dtype == torch.float16 and impls["torch.compile"].dtype == torch.float16
    assert engine.engine.render_graphs.enabled and not eager.engine.render_graphs.enabled
    for impl in (engine, eager):
        impl.avatar = impl.engine.prepare(REPO_ROOT + "/vasa_engine/assets/astronaut.png")
    cfgs = {"renderer": eager.engine.config, "audio": eager.engine.motion_stack.audio.audio_encoder.cfg,
            "motion": eager.engine.motion_stack.generator.cfg}
    check = check_engine(engine.engine, engine.avatar, eager.engine, eager.avatar, cfgs, steps=5, batch=2)
    assert check["ok"], check["stages"]
    assert engine.engine.render_graphs.calls and not engine.engine.render_graphs.failed
    assert engine.engine.sampler_graphs.calls and not engine.engine.sampler_graphs.failed
    assert not eager.engine.render_graphs.calls


def test_on_cuda_the_engine_and_compile_columns_run_the_engines_dtype(monkeypatch):
    """The bench's "auto" dtype is the engine's (float16 on CUDA); checked up to building the engines, with the
    CUDA device's name and peak stubbed."""
    import torch

    from vasa_engine import runtime
    from vasa_engine.bench import run

    built = {}

    class Built(Exception):
        pass

    def capture(sizes, device, dtype, weights=None, seed=0, bf16=True):
        built.update(device=device, dtype=dtype, bf16=bf16)
        raise Built

    monkeypatch.setattr(runtime, "resolve_device", lambda device: torch.device("cuda"))
    monkeypatch.setattr(runtime, "device_name", lambda device: "Stub GPU")
    monkeypatch.setattr(run, "device_peak", lambda device: bench.not_measured("stub"))
    monkeypatch.setattr(run, "build_engines", capture)
    with pytest.raises(Built):
        bench.run_bench(bench.Options(mode="gpu"))
    assert built == {"device": torch.device("cuda"), "dtype": torch.float16, "bf16": True}


@pytest.mark.parametrize("drift,lag,keeps_up", [(30.0, 5.0, True), (450.0, 5.0, False), (30.0, 400.0, False)])
def test_concurrent_streams_rule(monkeypatch, drift, lag, keeps_up):
    """A count keeps up unless some stream's latency grows by a chunk or its pushes fall a chunk behind."""
    calls = []

    def fake_stream_once(engine, avatar, samples, push_ms=40, **settings):
        calls.append(push_ms)
        worst = len(calls) == 2  # the second stream is the slow one
        return {"p50_ms": 100.0, "p95_ms": 150.0, "max_ms": 160.0, "compute_p95_ms": 90.0, "fps": 24.0,
                "frames": 25, "chunk_ms": 200, "lookahead_ms": 80, "steps": 5,
                "latency_drift_ms": drift if worst else 0.0, "push_lag_ms": lag if worst else 0.0}

    monkeypatch.setattr(bench.streams, "stream_once", fake_stream_once)
    out = bench.stream_concurrently(None, None, None, 3)
    assert len(calls) == 3 and out["streams"] == 3 and out["keeps_up"] is keeps_up
    assert out["frames"] == 75 and out["latency_drift_ms"] == drift and out["push_lag_ms"] == lag
    assert out["per_stream_fps"] == 24.0 and out["aggregate_fps"] > 0 and out["batched"] is False


def test_the_report_is_written_after_every_figure():
    """A run stopped part-way (a time limit, Ctrl-C) leaves what it measured: the report reaches its checkpoint
    after the correctness check and after every figure, marked partial until the run ends."""
    import torch

    seen = []
    before = torch.get_num_threads()
    report = bench.run_bench(bench.Options(mode="smoke", device="cpu", skip=("compile", "eager-bf16", "engine"),
                                           batches=(1,), steps=(1,),
                                           checkpoint=lambda r: seen.append(json.loads(bench.to_json(r)))))
    assert torch.get_num_threads() == before  # the smoke mode's one thread is given back
    assert seen[0]["partial"] is True and seen[0]["figures"] == {}
    assert seen[0]["correctness"] == {"measured": False, "reason": "not checked: engine skipped (--skip)"}
    measured = [sum(bench.is_measured(f) for _, f in bench.figure_paths(r)) for r in seen]
    assert measured == sorted(measured) and len(set(measured)) >= 4  # one more figure at a time
    assert all(r["partial"] for r in seen) and report["partial"] is False
    assert "**Partial report" in bench.to_markdown(seen[1])  # a partial report still reads as a table
    assert measured[-1] == sum(bench.is_measured(f) for _, f in bench.figure_paths(report))
