"""The Engine API on the reduced config: prepare once, render batches of absolute driving parameters."""

import json
import logging

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import rel_err
from vasa_engine import CheckpointError, Engine, InputError, Motion
from vasa_engine.config import RendererConfig
from vasa_engine.motion_script import scripted_motion


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
