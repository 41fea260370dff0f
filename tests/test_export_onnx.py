"""ONNX export: onnxruntime reproduces every exported graph, the spectral norms are folded, bad input is refused.

Error bound: relative error (||onnx - torch|| / ||torch||, per output) at most 1e-4 in float32. The two runtimes
compute the same arithmetic in different orders (convolution algorithms, fused reductions in the normalizations,
the softmax and the trilinear weights). That gives a few 1e-7 on the motion generator, the keypoints and the
feature volume, a few 1e-6 on the head angles (3 * E[bin] - 97.5 cancels digits) and on the reduced renderer,
and about 3e-5 on the full-size renderer with random weights (whose unconverged spectral norms make large
effective weights); 1e-4 leaves room for other CPUs' kernels, while a real mismatch (a wrong attribute, a
transposed weight, a dropped op) gives errors of order 1.
"""

from __future__ import annotations

import os

import pytest
import torch

pytest.importorskip("onnx")
pytest.importorskip("onnxscript")
pytest.importorskip("onnxruntime")

from conftest import rel_err, tiny_motion_config  # noqa: E402
from vasa_engine import export as ex  # noqa: E402
from vasa_engine.cli import main  # noqa: E402
from vasa_engine.engine import Engine  # noqa: E402
from vasa_engine.models.motion_generator import MotionGenerator  # noqa: E402
from vasa_engine.models.spade import SpectralNormConv2d  # noqa: E402

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def engine(tiny_full_weights):
    return Engine(tiny_full_weights, device="cpu", dtype="float32")


@pytest.fixture(scope="module")
def exported(engine, tmp_path_factory):
    """Every target exported once (dynamic batch, traced at batch 2)."""
    folder = tmp_path_factory.mktemp("onnx")
    return folder, {what: ex.export(engine, what, folder / f"{what}.onnx") for what in ex.TARGETS}


@pytest.mark.parametrize("what", ex.TARGETS)
def test_onnxruntime_reproduces_pytorch(engine, exported, what):
    _, infos = exported
    graph = ex.build_graph(engine, what)
    for batch in (1, 3):  # both differ from the traced batch: the batch axis is dynamic
        errors = ex.compare_onnx(infos[what].path, graph, batch=batch, seed=10 + batch)
        print(f"{what} batch {batch}: " + ", ".join(f"{k} {v:.2e}" for k, v in errors.items()))
        assert set(errors) == set(graph.output_names)
        assert all(err <= TOLERANCE for err in errors.values()), errors


def test_graph_inputs_outputs(engine, exported):
    folder, infos = exported
    cfg = engine.config
    renderer = infos["renderer"]
    assert [i[0] for i in renderer.inputs] == ["feature_3d", "kp_source", "kp_driving"]
    assert all(shape.startswith("(batch,") for _, _, shape in renderer.inputs)
    side = cfg.output_size
    assert renderer.outputs == [("image", "float", f"(batch,3,{side},{side})")]
    motion = infos["motion"]
    names = [i[0] for i in motion.inputs]
    assert names[:5] == ["x_t", "audio", "prev_motion", "prev_audio", "step"]
    assert ("step", "int64", "(batch)") in motion.inputs
    assert {"gaze", "gaze_present", "distance", "emotion_present"} <= set(names)
    assert infos["source"].outputs[-1][0] == "x_s"
    assert all(info.opset == ex.DEFAULT_OPSET for info in infos.values())
    # Written atomically: the four files and nothing else (no temporary or external-data files).
    assert sorted(os.listdir(folder)) == sorted(f"{w}.onnx" for w in ex.TARGETS)
    assert all(info.size_bytes == info.path.stat().st_size for info in infos.values())


def test_renderer_uses_5d_gridsample_and_folded_weights(exported):
    import onnx

    _, infos = exported
    model = onnx.load(infos["renderer"].path)
    ops = {n.op_type for n in model.graph.node}
    assert "GridSample" in ops
    names = [init.name for init in model.graph.initializer]
    assert not [n for n in names if "weight_orig" in n or "weight_u" in n or "weight_v" in n]
    # Every convolution's weight is a stored constant: nothing computes sigma at run time.
    constants = set(names) | {out for n in model.graph.node if n.op_type == "Constant" for out in n.output}
    convs = [n for n in model.graph.node if n.op_type == "Conv"]
    assert convs and all(n.input[1] in constants for n in convs)


def test_folded_spectral_norm_matches_module(engine):
    decoder = engine.renderer.spade_generator
    folded = ex.fold_spectral_norm(decoder)
    assert any(isinstance(m, SpectralNormConv2d) for m in decoder.modules())
    assert not any(isinstance(m, SpectralNormConv2d) for m in folded.modules())
    ch = decoder.fc.in_channels
    side = engine.config.input_size // 4
    x = torch.randn(2, ch, side, side, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        assert torch.equal(folded(x), decoder(x))  # the same weights bit for bit, so the same outputs


def test_graphs_compute_what_the_engine_computes(engine):
    """The exported modules are the engine's per-frame and per-portrait paths, output for output."""
    from vasa_engine.models.renderer import SourceState

    renderer = engine.renderer
    with torch.no_grad():
        image = torch.rand(1, 3, engine.config.input_size, engine.config.input_size,
                           generator=torch.Generator().manual_seed(2))
        src = renderer.encode_source(image)
        got = dict(zip(ex.SourceGraph.output_names, ex.build_graph(engine, "source")(image)))
        for name in SourceState.__dataclass_fields__:  # copies reduce in other orders: the parity bound, 1e-5
            assert rel_err(got[name].reshape(getattr(src, name).shape), getattr(src, name)) <= 1e-5, name
        pitch, yaw, roll = src.pitch + 5, src.yaw - 3, src.roll + 1
        exp, t, scale = src.exp + 0.01, src.t + 0.02, src.scale * 1.05
        x_d = renderer.driving_keypoints(src, pitch, yaw, roll, exp, t, scale, driving_multiplier=1.1)
        kp = ex.build_graph(engine, "keypoints")(src.kp, src.x_s, pitch, yaw, roll, exp, t, scale,
                                                 torch.tensor([1.1]))
        assert rel_err(kp, x_d) <= 1e-5
        frame = ex.build_graph(engine, "renderer")(src.feature_3d, src.x_s, x_d)
        assert rel_err(frame, renderer.warp_decode(src.feature_3d, src.x_s, x_d)) <= 1e-5


@pytest.mark.parametrize("batch", [None, 4])
def test_audio_only_denoiser_dynamic_and_fixed_batch(tmp_path, batch):
    """A denoiser conditioned on audio alone (JoyVASA's layout: no gaze, distance or emotion input), exported
    with a dynamic batch axis and with a fixed batch."""
    torch.manual_seed(6)
    graph = ex.MotionGraph(MotionGenerator(tiny_motion_config(gaze=False, distance=False, emotion_dim=0)))
    info = ex.export_graph(graph, tmp_path / "motion.onnx", batch=batch)
    assert [i[0] for i in info.inputs] == ["x_t", "audio", "prev_motion", "prev_audio", "step"]
    assert info.outputs == [("x0", "float", f"({batch or 'batch'},25,70)")]
    for n in [batch] if batch else [1, 5]:
        errors = ex.compare_onnx(info.path, graph, batch=n)
        print(f"motion, audio only, batch {n}: x0 {errors['x0']:.2e}")
        assert errors["x0"] <= TOLERANCE


def run_cli(argv: list[str]) -> int:
    try:
        return main(argv)
    except SystemExit as exc:  # argparse's own errors
        return exc.code


@pytest.mark.parametrize("argv, needle", [
    (["--what", "faces"], "invalid choice: 'faces'"),
    (["--what", "renderer", "-o", "{missing}"], "does not exist"),
    (["--what", "renderer", "-o", "{file}"], "is not a folder"),
    (["--opset", "17"], "--opset 17 is outside"),
])
def test_cli_bad_input(tmp_path, capsys, argv, needle):
    (tmp_path / "file.onnx").write_bytes(b"")
    argv = [a.format(missing=tmp_path / "missing", file=tmp_path / "file.onnx") for a in argv]
    if "-o" not in argv:
        argv += ["-o", str(tmp_path)]
    code = run_cli(["export-onnx", *argv])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and err.count("\n") == 1, err
    assert sorted(os.listdir(tmp_path)) == ["file.onnx"]
