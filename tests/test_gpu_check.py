"""`vasa-engine gpu-check`: the engine's full-size CUDA path traced on fake tensors without a GPU, its memory estimate,
and its one-line failures on device, dtype, host-read and kernel-fallback bugs planted in a copy of a stage; the
grid-sample kernel's 32-bit offset guard; the kernels composed with torch.compile."""

import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO
from helpers import rel_err
from vasa_engine import backend, ops
from vasa_engine.audio_features import AudioFeatureEncoder
from vasa_engine.cli import main
from vasa_engine.config import RendererConfig
from vasa_engine.controls import Controls
from vasa_engine.generation import GuidedDenoiser
from vasa_engine.models.audio_encoder import AudioEncoderConfig
from vasa_engine.models.motion_generator import MotionGeneratorConfig
from vasa_engine.models.renderer import FaceRenderer
from vasa_engine.tracing import stages as st
from vasa_engine.tracing.check import allocated, run_check
from vasa_engine.tracing.report import estimate, format_report

pytest.importorskip("triton")
gs = pytest.importorskip("vasa_engine.kernels.grid_sample")

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def full():
    """Every stage at full size, batch 8, float16 (the kernels run in Triton's interpreter here, as operators whose
    fake implementations skip the launch)."""
    return run_check()


def _run_cli(capsys, *argv):
    rc = main(["gpu-check", *argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_command_passes_at_full_size_and_prints_the_memory_estimate():
    # A plain run without TRITON_INTERPRET, as CI runs it: the kernels are JIT functions, traced through
    # torch.library.wrap_triton.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    proc = subprocess.run([sys.executable, "-m", "vasa_engine.cli", "gpu-check"], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout
    size = RendererConfig().output_size
    for name in st.STAGE_NAMES:
        assert f"  {name} " in out
    assert f"(8, {size}, {size}, 3)" in out and "uint8" in out and "cuda:0" in out
    engine_line = next(line for line in out.splitlines() if line.strip().startswith("one engine"))
    stream_line = next(line for line in out.splitlines() if line.strip().startswith("each additional stream"))
    assert float(engine_line.split()[2]) > float(stream_line.split()[3]) > 0


def test_outputs_have_the_engine_shapes_dtypes_and_device(full):
    cfg, mcfg, acfg = RendererConfig(), MotionGeneratorConfig(), AudioEncoderConfig()
    outputs = {(stage, out.name): out for stage, result in full.stages.items() for out in result.outputs}
    cuda = torch.device("cuda", 0)
    assert all(out.device == cuda for out in outputs.values())
    size = cfg.output_size
    app = cfg.appearance_feature_extractor
    expect = {
        (st.PREPARATION, "feature_3d"): ((1, app.reshape_channel, app.reshape_depth, 64, 64), torch.float16),
        (st.PREPARATION, "x_s"): ((1, cfg.motion_extractor.num_kp, 3), torch.float32),
        (st.PREPARATION, "pitch"): ((1,), torch.float32),
        (st.PREPARATION, "eye_ratio"): ((1, 2), torch.float32),
        (st.AUDIO_WINDOW, "features"): ((8, mcfg.n_motions, mcfg.feature_dim), torch.float16),
        (st.MOTION_WINDOW, "motion"): ((1, mcfg.n_motions, mcfg.motion_dim), torch.float32),
        (st.MOTION_CHAINED, "motion"): ((1, mcfg.n_motions, mcfg.motion_dim), torch.float32),
        (st.FRAMES, "frames"): ((8, size, size, 3), torch.uint8),
    }
    for key, (shape, dtype) in expect.items():
        assert (outputs[key].shape, outputs[key].dtype) == (shape, dtype), key
    # every call of a kernel is counted: one attention and two residual norms per layer and forward
    steps = Controls().steps
    assert full.stages[st.AUDIO_WINDOW].kernels == {"attention": acfg.num_hidden_layers,
                                                    "add_layer_norm": 2 * acfg.num_hidden_layers}
    assert full.stages[st.MOTION_WINDOW].kernels == {"attention": steps * mcfg.n_layers, "add_embeddings": steps,
                                                     "add_layer_norm": 3 * steps * mcfg.n_layers}
    assert set(full.stages[st.FRAMES].kernels) == set(ops.stage_operations()["renderer"])


def test_memory_estimate_adds_up(full):
    with torch.device("meta"):
        renderer = FaceRenderer(RendererConfig()).set_image_dtype(torch.float16)
        audio = AudioFeatureEncoder(AudioEncoderConfig(), MotionGeneratorConfig().feature_dim).half()
    for module, name in ((renderer, "renderer"), (audio, "audio encoder")):
        tensors = list(module.parameters()) + list(module.buffers())
        assert full.weights[name] == sum(allocated(t.numel() * t.element_size()) for t in tensors), name
    memory = estimate(full)
    frames = full.stages[st.FRAMES]
    assert memory.pools["renderer"] == frames.peak > frames.outputs[0].nbytes
    assert memory.engine == sum(memory.weights.values()) + sum(memory.pools.values()) + memory.avatar + memory.eager[1]
    prepared = full.stages[st.PREPARATION]
    assert memory.stream["avatar"] == prepared.kept == sum(out.nbytes for out in prepared.outputs)
    report = format_report(full)
    assert f"{memory.engine / 2**20:.1f}" in report and f"{memory.per_stream / 2**20:.1f}" in report


# ------------------------------------------------------------------------------------------------ planted bugs


def test_names_the_stage_of_a_cpu_tensor_in_the_frame_path(monkeypatch, capsys):
    original = FaceRenderer.warp_decode

    def planted(self, feature_3d, x_s, x_d):
        shift = torch.zeros(x_d.shape[0], 1, 3)  # made on the CPU, inside the CUDA path
        return original(self, feature_3d, x_s, x_d + shift)

    monkeypatch.setattr(FaceRenderer, "warp_decode", planted)
    rc, out, err = _run_cli(capsys, "--only", st.FRAMES)
    assert rc == 1 and out == ""
    assert len(err.strip().splitlines()) == 1
    assert err.startswith(f"vasa-engine gpu-check: {st.FRAMES}: ") and "different devices" in err and "on cpu" in err


def test_names_the_stage_of_a_float32_input_to_a_float16_module(monkeypatch, capsys):
    def planted(self, audio):
        return self.audio_feature_map(self.window_hidden(audio.float()))  # the model is float16 on CUDA

    monkeypatch.setattr(AudioFeatureEncoder, "window_features", planted)
    rc, _, err = _run_cli(capsys, "--only", st.AUDIO_WINDOW)
    assert rc == 1 and len(err.strip().splitlines()) == 1
    assert f": {st.AUDIO_WINDOW}: " in err and "different dtypes" in err and "float32" in err and "float16" in err


def test_names_the_stage_of_a_host_read_in_the_sampler_loop(monkeypatch, capsys):
    original = GuidedDenoiser.branch_outputs

    def planted(self, x_t, t):
        if x_t.abs().max() > 100:  # a Python branch on a device value: a sync, not capturable
            x_t = x_t.clamp(-100, 100)
        return original(self, x_t, t)

    monkeypatch.setattr(GuidedDenoiser, "branch_outputs", planted)
    rc, _, err = _run_cli(capsys, "--only", st.MOTION_WINDOW)
    assert rc == 1 and f": {st.MOTION_WINDOW}: " in err and "read on the host" in err


def test_names_a_kernel_that_fell_back_to_the_reference(monkeypatch, capsys):
    monkeypatch.setattr(gs, "offsets_fit_int32", lambda *shapes: False)
    rc, _, err = _run_cli(capsys, "--only", st.FRAMES)
    assert rc == 1 and f": {st.FRAMES}: the grid_sample_3d kernel did not run" in err


def test_only_traces_the_stages_asked_for_and_those_they_need(capsys):
    rc, out, _ = _run_cli(capsys, "--only", st.AUDIO_CHUNK)
    assert rc == 0 and f"  {st.AUDIO_CHUNK} " in out and f"  {st.PREPARATION} " not in out
    assert "memory: not estimated" in out


# ------------------------------------------------------------------------------------------------ kernels


def test_grid_sample_declines_offsets_past_int32():
    """The kernel's voxel index and per-batch-item volume offsets are 32-bit: one element past 2^31 - 1 must run the
    reference. Checked on the accept function and on meta tensors, so nothing of that size is allocated."""
    limit = 2**31 - 1
    small_grid = (1, 2, 3, 4, 3)
    c = 4
    assert gs.offsets_fit_int32((1, c, 1, 1, limit // c), small_grid, 256)
    assert not gs.offsets_fit_int32((1, c, 1, 1, limit // c + 1), small_grid, 256)
    block = 256
    voxels_ok = (limit + 1) // block * block  # the last program's last index is exactly 2^31 - 1
    assert gs.offsets_fit_int32((1, c, 2, 2, 2), (1, 1, 1, voxels_ok, 3), block)
    assert not gs.offsets_fit_int32((1, c, 2, 2, 2), (1, 1, 1, voxels_ok + 1, 3), block)
    # the engine's largest real shape fits (the dense motion network's warps at batch 8)
    assert gs.offsets_fit_int32((8 * 22, 4, 16, 64, 64), (8 * 22, 16, 64, 64, 3), gs.block_config(4)["BLOCK_V"])

    volume = torch.empty(2, 32, 64, 1024, 1025, dtype=torch.float16, device="meta")  # 2^31 + 2^21 per item
    grid = torch.empty(2, 3, 5, 7, 3, device="meta")
    assert gs.grid_sample_3d(volume, grid) is NotImplemented
    with backend.use("kernels"):
        out = ops.grid_sample_3d(volume, grid)  # the reference, on meta tensors
    assert out.shape == (2, 32, 3, 5, 7) and out.dtype == torch.float16


def _compile_inputs():
    gen = torch.Generator().manual_seed(4)
    x, r = torch.randn(3, 7, 48, generator=gen), torch.randn(3, 7, 48, generator=gen)
    volume = torch.randn(2, 4, 5, 6, 7, generator=gen)
    grid = torch.rand(2, 3, 4, 5, 3, generator=gen) * 2.2 - 1.1
    norm = torch.nn.LayerNorm(48)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5, generator=gen)
        norm.bias.uniform_(-0.5, 0.5, generator=gen)
    return norm, (x, r, volume, grid)


@pytest.mark.skipif(os.environ.get("TRITON_INTERPRET") != "1", reason="CPU kernels need TRITON_INTERPRET=1")
def test_kernels_compose_with_torch_compile():
    norm, args = _compile_inputs()

    def fn(x, r, volume, grid):
        return ops.add_layer_norm(x, r, norm) * 2, ops.grid_sample_3d(volume, grid) + 1

    x, r, volume, grid = args
    want = (ops.add_layer_norm_reference(x, r, norm.weight, norm.bias, norm.eps) * 2,
            ops.grid_sample_3d_reference(volume, grid) + 1)
    for choice, kernels in (("kernels", True), ("auto", False)):
        graphs = []

        def record(gm, example_inputs):
            graphs.append(gm)
            return gm.forward

        torch._dynamo.reset()
        with backend.use(choice), torch.no_grad():
            got = torch.compile(fn, backend=record, fullgraph=True)(*args)
        targets = {str(node.target) for gm in graphs for node in gm.graph.nodes}
        assert {"vasa_engine.add_layer_norm.default", "vasa_engine.grid_sample_3d.default"} <= targets or not kernels
        assert not any(t.startswith("vasa_engine.") for t in targets) or kernels
        for g, w in zip(got, want):
            assert rel_err(g, w) < 1e-5
    torch._dynamo.reset()


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs CUDA")
def test_kernels_compile_with_inductor_on_cuda():
    norm, args = _compile_inputs()
    norm = norm.cuda()
    args = [a.cuda() for a in args]

    def fn(x, r, volume, grid):
        return ops.add_layer_norm(x, r, norm) * 2, ops.grid_sample_3d(volume, grid) + 1

    torch._dynamo.reset()
    with backend.use("kernels"), torch.no_grad():
        eager = fn(*args)
        got = torch.compile(fn, fullgraph=True)(*args)
    for g, e in zip(got, eager):
        assert rel_err(g, e) < 1e-6
    torch._dynamo.reset()
