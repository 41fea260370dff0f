"""JoyVASA's checkpoint layout (a torch pickle with training args, a plain-pickle motion template), synthetic and
reduced: conversion, restricted unpickling, and the converted engine generating the same motion."""

import argparse
import os
import pathlib
import pickle

import numpy as np
import pytest
import torch

from conftest import tiny_audio_config, tiny_motion_config
from test_cli import _assert_clean_failure, run
from vasa_engine import CheckpointError, Engine
from vasa_engine.audio_features import AudioFeatureEncoder
from vasa_engine.checkpoints import TEMPLATE_KEYS, convert_joyvasa
from vasa_engine.generation import Controls, MotionTemplate, generate_windows
from vasa_engine.models.motion_generator import MotionGenerator
from vasa_engine.weights import seeded

CFG = tiny_motion_config(gaze=False, distance=False, emotion_dim=0, n_heads=8)  # JoyVASA fixes 8 heads


class _Payload:
    marker: pathlib.Path

    def __reduce__(self):
        return (os.mkdir, (str(self.marker),))


@pytest.fixture(scope="module")
def original():
    with seeded(21):
        generator = MotionGenerator(CFG).eval()
        audio = AudioFeatureEncoder(tiny_audio_config(), CFG.feature_dim).eval()
    return generator, audio


def _write(folder, generator, audio, args_extra=None, template_extra=None):
    state = {**audio.state_dict(), **generator.state_dict()}
    # the released file names the positional conv's weight norm the old way
    for new, old in (("parametrizations.weight.original0", "weight_g"), ("parametrizations.weight.original1",
                                                                        "weight_v")):
        key = f"audio_encoder.encoder.pos_conv_embed.conv.{new}"
        state[key.replace(new, old)] = state.pop(key)
    state["denoising_net.TE.pe"] = state["denoising_net.TE.pe"][:, : CFG.n_diff_steps + 1]  # rebuilt on load
    args = argparse.Namespace(n_motions=CFG.n_motions, n_prev_motions=CFG.n_prev_motions, fps=25,
                              audio_model="hubert_zh", exp_dir=pathlib.PosixPath("/experiments/joyvasa"))
    if args_extra is not None:
        args.extra = args_extra
    checkpoint = folder / "motion_generator_hubert_chinese.pt"
    torch.save({"args": args, "model": state, "iter": 20000}, checkpoint)
    rng = np.random.default_rng(4)
    template = {k: rng.uniform(0.5, 1.0, size=(63,) if "exp" in k else (3,) if k.endswith("_t") else (1,))
                .astype(np.float32) for k in TEMPLATE_KEYS}
    template.update({f"{s}_{k}": rng.normal(size=9 if k == "R" else 1).astype(np.float32)
                     for s in ("mean", "std", "abs_max") for k in ("R", "lip", "eyes")})
    for k in ("scale", "t", "pitch", "yaw", "roll"):
        template[f"max_{k}"] = template[f"min_{k}"] + 1.0
    if template_extra is not None:
        template["extra"] = template_extra
    path = folder / "motion_template.pkl"
    path.write_bytes(pickle.dumps(template))
    return checkpoint, path


def test_conversion_gives_the_same_motion(tmp_path, original, tiny_weights, sample_image, sample_speech):
    generator, audio = original
    checkpoint, template = _write(tmp_path, generator, audio)
    out = convert_joyvasa(checkpoint, template, tmp_path / "joyvasa.safetensors")
    engine = Engine([tiny_weights, out], device="cpu")
    assert engine.random_components == []
    stack = engine.motion_stack
    assert stack.generator.cfg == CFG
    for key, value in generator.state_dict().items():
        assert torch.equal(stack.generator.state_dict()[key], value), key
    for key, value in audio.state_dict().items():
        assert torch.allclose(stack.audio.state_dict()[key], value), key
    feats = torch.randn(2, CFG.n_motions, CFG.feature_dim)
    with torch.no_grad():
        ref = generate_windows(generator, feats, Controls(steps=5))
        new = generate_windows(stack.generator, feats, Controls(steps=5))
    assert torch.equal(ref, new)
    raw = pickle.loads(template.read_bytes())
    assert stack.template.mean_exp.tolist() == pytest.approx(raw["mean_exp"].tolist())
    motion = engine.generate_motion(engine.prepare(sample_image), sample_speech)
    assert torch.isfinite(motion.exp).all()


def test_code_in_the_training_args_is_refused(tmp_path, original):
    _Payload.marker = tmp_path / "ran"
    checkpoint, template = _write(tmp_path, *original, args_extra=_Payload())
    with pytest.raises(CheckpointError, match="objects other than tensors"):
        convert_joyvasa(checkpoint, template, tmp_path / "w.safetensors")
    assert not _Payload.marker.exists()


def test_code_in_the_template_is_refused(tmp_path, original):
    _Payload.marker = tmp_path / "ran"
    checkpoint, template = _write(tmp_path, *original, template_extra=_Payload())
    with pytest.raises(CheckpointError, match="refused global"):
        convert_joyvasa(checkpoint, template, tmp_path / "w.safetensors")
    assert not _Payload.marker.exists()


def test_bad_checkpoints_on_the_command_line(tmp_path, original):
    checkpoint, template = _write(tmp_path, *original)
    data = checkpoint.read_bytes()
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(data[: len(data) // 3])
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run("convert", "joyvasa", "--checkpoint", truncated, "--template", template, "-o", out_dir / "w.safetensors")
    _assert_clean_failure(res, "truncated", out_dir)
    # a LivePortrait file given as the JoyVASA checkpoint: the wrong model
    wrong = tmp_path / "wrong.pt"
    torch.save({"third.conv.weight": torch.zeros(3)}, wrong)
    res = run("convert", "joyvasa", "--checkpoint", wrong, "--template", template, "-o", out_dir / "w.safetensors")
    _assert_clean_failure(res, "not a JoyVASA motion-generator checkpoint", out_dir)
    assert not list(out_dir.iterdir())


def test_template_round_trip_through_the_engine_format(tmp_path, original):
    checkpoint, template = _write(tmp_path, *original)
    out = convert_joyvasa(checkpoint, template, tmp_path / "w.safetensors")
    from vasa_engine.weights import component_state, load_weights

    tensors, doc = load_weights(out)
    t = MotionTemplate.from_tensors(component_state(tensors, "motion_template"))
    raw = pickle.loads(template.read_bytes())
    assert t.minimum[4].item() == pytest.approx(float(raw["min_pitch"][0]))
    assert doc["components"]["motion_generator"]["training_args"]["exp_dir"] == "/experiments/joyvasa"
