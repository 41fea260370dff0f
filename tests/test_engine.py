"""The Engine API on the reduced config: prepare once, render batches of absolute driving parameters; the attention
kernel at the engine's real shapes and head size."""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import INTERPRET, rel_err
from vasa_engine import CheckpointError, Engine, InputError, Motion, backend, ops
from vasa_engine.config import RendererConfig
from vasa_engine.controls import Controls
from vasa_engine.kernel_shapes import attention_cases, audio_tokens, distinct
from vasa_engine.models.audio_encoder import AudioEncoderConfig
from vasa_engine.models.motion_generator import MotionGeneratorConfig
from vasa_engine.motion_script import scripted_motion

CUDA = torch.cuda.is_available()


@pytest.fixture(scope="module")
def avatar(tiny_engine, sample_image):
    return tiny_engine.prepare(sample_image)


def test_prepare(tiny_engine, avatar):
    cfg = tiny_engine.config
    assert avatar.image.shape == (cfg.input_size, cfg.input_size, 3) and avatar.image.dtype == np.uint8
    a = cfg.appearance_feature_extractor
    side = cfg.input_size // 2**a.num_down_blocks
    assert avatar.source.feature_3d.shape == (1, a.reshape_channel, a.reshape_depth, side, side)
    assert avatar.source.x_s.shape == (1, 21, 3)
    assert torch.isfinite(avatar.source.x_s).all()


def test_rest_motion_reproduces_the_source_keypoints(tiny_engine, avatar):
    m = avatar.rest_motion(3)
    x_d = tiny_engine.renderer.driving_keypoints(avatar.source, m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale,
                                                 stitching=False)
    assert rel_err(x_d, avatar.source.x_s.expand(3, -1, -1)) < 1e-6


def test_render_frames(tiny_engine, avatar):
    motion = scripted_motion(avatar, 5)
    frames = tiny_engine.render(avatar, motion)
    s = tiny_engine.output_size
    assert frames.shape == (5, s, s, 3) and frames.dtype == np.uint8
    assert frames.std() > 0
    # the head turns: the frames are not all the same
    assert np.abs(frames[0].astype(int) - frames[2]).mean() > 0.5
    batched = tiny_engine.render(avatar, motion, batch_size=4)
    assert np.abs(batched.astype(int) - frames).max() <= 1


def test_eye_and_lip_openness_move_the_keypoints(tiny_engine, avatar):
    m = avatar.rest_motion(2)
    base = tiny_engine.renderer.driving_keypoints(avatar.source, m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale)
    for field in ("eye", "lip"):
        kwargs = {f"{field}_ratio": torch.tensor([0.0, 0.5]),
                  f"source_{field}_ratio": getattr(avatar, f"{field}_ratio")}
        moved = tiny_engine.renderer.driving_keypoints(avatar.source, m.pitch, m.yaw, m.roll, m.exp, m.t,
                                                       m.scale, **kwargs)
        assert (moved - base).abs().max() > 1e-4
        assert (moved[0] - moved[1]).abs().max() > 1e-5


def test_landmarks_give_the_source_ratios(tiny_engine, sample_image):
    lm = np.random.default_rng(0).uniform(100, 400, size=(203, 2)).astype(np.float32)
    lm[0], lm[12], lm[6], lm[18] = (100, 200), (140, 200), (120, 190), (120, 202)  # left eye 40 wide, 12 open
    avatar = tiny_engine.prepare(sample_image, landmarks=lm)
    assert avatar.eye_ratio[0, 0].item() == pytest.approx(12 / 40, rel=1e-5)
    with pytest.raises(InputError, match="landmarks"):
        tiny_engine.prepare(sample_image, landmarks=lm[:100])


@pytest.mark.parametrize("change, match", [
    (dict(yaw=torch.zeros(4)), "yaw has shape"),
    (dict(exp=torch.zeros(3, 20, 3)), "20 keypoints"),
    (dict(t=torch.zeros(3, 2)), "t has shape"),
    (dict(pitch=torch.tensor([0.0, float("nan"), 0.0])), "NaN"),
    (dict(eye=torch.zeros(2)), "eye has shape"),
])
def test_bad_motion(tiny_engine, avatar, change, match):
    fields = {k: getattr(avatar.rest_motion(3), k) for k in ("pitch", "yaw", "roll", "exp", "t", "scale")}
    fields.update(change)
    with pytest.raises(InputError, match=match):
        tiny_engine.render(avatar, Motion(**fields))


def test_random_weights_warn_in_one_line(caplog):
    with caplog.at_level(logging.WARNING, logger="vasa_engine"):
        Engine(None, device="cpu", config=RendererConfig.tiny())
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 1 and "random weights" in lines[0] and "not look like a face" in lines[0]


def test_weights_with_a_missing_tensor(tmp_path, tiny_weights):
    tensors = load_file(str(tiny_weights))
    del tensors["renderer.spade_generator.fc.weight"]
    bad = tmp_path / "bad.safetensors"
    save_file(tensors, str(bad))
    bad.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="missing: fc.weight"):
        Engine(bad, device="cpu")


def test_weights_config_problems(tmp_path, tiny_weights):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(tiny_weights.read_bytes())
    with pytest.raises(CheckpointError, match="config not found"):
        Engine(bad, device="cpu")
    bad.with_suffix(".json").write_text("{not json")
    with pytest.raises(CheckpointError, match="not valid JSON"):
        Engine(bad, device="cpu")
    bad.with_suffix(".json").write_text(json.dumps({"format": "something else"}))
    with pytest.raises(CheckpointError, match="not a vasa-engine weights config"):
        Engine(bad, device="cpu")
    with pytest.raises(InputError, match="weights file not found"):
        Engine(tmp_path / "none.safetensors", device="cpu")


def test_truncated_weights(tmp_path, tiny_weights):
    bad = tmp_path / "w.safetensors"
    bad.write_bytes(tiny_weights.read_bytes()[:1000])
    bad.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    with pytest.raises(CheckpointError, match="cannot read safetensors"):
        Engine(bad, device="cpu")


def test_device_and_dtype_errors():
    if not torch.cuda.is_available():
        with pytest.raises(InputError, match="no CUDA device"):
            Engine(None, device="cuda", config=RendererConfig.tiny())
    with pytest.raises(InputError, match="unknown dtype"):
        Engine(None, device="cpu", dtype="float8", config=RendererConfig.tiny())


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_half_precision_matches_cpu_float32(tiny_weights, sample_image):
    cpu, gpu = Engine(tiny_weights, device="cpu"), Engine(tiny_weights, device="cuda", dtype="float16")
    a_cpu, a_gpu = cpu.prepare(sample_image), gpu.prepare(sample_image)
    motion = scripted_motion(a_cpu, 4)
    ref = cpu.render(a_cpu, motion).astype(np.float64)
    out = gpu.render(a_gpu, motion).astype(np.float64)
    assert np.linalg.norm(out - ref) / np.linalg.norm(ref) < 0.05


# ------------------------------------------------------------------------------------------------ real head size

# The engine's self-attention shapes, one of each head size, length and masking; one head of one row is enough
# here, since whether the kernel takes a call depends on the head size, dtype and length, not on B or H.
ENGINE_ATTENTION = distinct(attention_cases(), "head_dim", "tokens", "padded")


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16], ids=["fp32", "fp16"])
@pytest.mark.parametrize("case", ENGINE_ATTENTION, ids=lambda c: c.name)
def test_attention_kernel_takes_the_engine_shapes(nan_empty, case, dtype):
    """The attention kernel does not decline (to the reference) any self-attention shape the engine runs: the motion
    transformer at VASA-1's and JoyVASA's widths and the audio encoder, padded clips included."""
    device = "cuda" if CUDA else "cpu"
    if device == "cpu" and not INTERPRET:
        pytest.skip("CPU tensors need TRITON_INTERPRET=1")
    gen = torch.Generator().manual_seed(case.tokens * 1000 + case.head_dim)
    q, k, v = (torch.randn(1, 1, case.tokens, case.head_dim, generator=gen).to(device, dtype) for _ in range(3))
    mask = None
    if case.padded:
        mask = (torch.arange(case.tokens) >= case.tokens * 2 // 3)[None].to(device)  # the last third is padding
    with backend.use("kernels"):
        out = ops.registered_kernels()["attention"](q, k, v, key_padding_mask=mask)
    assert out is not NotImplemented, f"the kernel declines {case.name} ({case.what}) in {dtype}"
    ref = ops.attention_reference(q.double(), k.double(), v.double(), mask)
    assert rel_err(out, ref) < (1e-5 if dtype == torch.float32 else 4e-3)


@pytest.mark.gpu
@pytest.mark.skipif(not CUDA, reason="needs a CUDA device")
def test_real_head_size_engine_uses_the_attention_kernel_in_graphs(monkeypatch, sample_image):
    """A motion generator and an audio encoder with the real head size (64; reduced width and depth) run the
    attention kernel, in the sampler's CUDA graphs too, and generate the motion the reference backend generates
    eagerly, within the float16 bound of the other GPU tests."""
    motion_cfg = MotionGeneratorConfig(feature_dim=256, n_heads=4, n_layers=2)
    audio_cfg = AudioEncoderConfig(hidden_size=256, num_hidden_layers=2, num_attention_heads=4, intermediate_size=512,
                                   conv_dim=(64,) * 7, num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
    eng = Engine(None, device="cuda", dtype="float16", config=RendererConfig.tiny(), motion_config=motion_cfg,
                 audio_config=audio_cfg, seed=7)
    reference = eng.variant(backend="reference", cuda_graphs=False)
    kernel = ops.registered_kernels()["attention"]
    taken = []

    def counting(q, k, v, key_padding_mask=None):
        out = kernel(q, k, v, key_padding_mask=key_padding_mask)
        if out is not NotImplemented:
            taken.append((q.shape[-1], q.shape[-2]))
        return out

    monkeypatch.setitem(ops._KERNELS, "attention", counting)
    speech = np.random.default_rng(5).normal(0, 0.1, 16000 * 5).astype(np.float32)  # two windows, chained
    av = eng.prepare(sample_image)
    controls = Controls(steps=5)
    got = eng.generate_motion(av, speech, controls, sample_rate=16000)
    assert (64, motion_cfg.window) in taken and (64, audio_tokens(audio_cfg, motion_cfg)) in taken
    assert eng.sampler_graphs.calls and not eng.sampler_graphs.failed
    taken.clear()
    expected = reference.generate_motion(av, speech, controls, sample_rate=16000)
    assert not taken and not reference.sampler_graphs.calls
    for name in ("exp", "pitch", "yaw", "t", "scale"):
        assert rel_err(getattr(got, name), getattr(expected, name)) < 2e-2, name
