"""Every module against the outputs of the public reference implementations (random weights), per output."""

import json

import pytest
import torch
from safetensors.torch import load_file

from conftest import rel_err, require_parity_dir
from vasa_engine.compat import run_fixture

FIXTURES = [
    "lp_appearance_feature_extractor", "lp_motion_extractor", "lp_warping_module", "lp_spade_generator",
    "lp_render", "lp_retarget_stitching", "lp_retarget_lip", "lp_retarget_eye", "lp_keypoint_math",
    "hubert_model", "joyvasa_audio_feature", "joyvasa_denoiser", "joyvasa_sample_first", "joyvasa_sample_next",
    "glue_joyvasa",
]


def test_every_fixture_is_covered():
    present = {p.stem for p in require_parity_dir().glob("*.safetensors")}
    assert present == set(FIXTURES)


@pytest.mark.parametrize("name", FIXTURES)
def test_fixture(name):
    path = require_parity_dir() / f"{name}.safetensors"
    ref = load_file(str(path))
    expected = {k.removeprefix("outputs."): v for k, v in ref.items() if k.startswith("outputs.")}
    assert set(expected) == set(json.loads(path.with_suffix(".json").read_text())["outputs"])
    torch.manual_seed(0)
    out = run_fixture(path)
    for key, value in expected.items():
        assert key in out, f"{name}: output {key} missing"
        assert out[key].shape == value.shape, f"{name}.{key}: shape {tuple(out[key].shape)} != {tuple(value.shape)}"
        err = rel_err(out[key], value)
        assert err <= 1e-5, f"{name}.{key}: relative error {err:.3e} > 1e-5"


@pytest.mark.parametrize("case", ["inference_py", "stitching", "gradio_ui"])
def test_engine_driving_equals_reference_glue_two_frames_later(case):
    """Engine.generate_motion on the glue fixture's generated motion, template and portrait: the engine's frame k is
    the reference's frame k + 2 (the reference renders the two lead-in frames, which show the padding before the
    speech), within 1e-5, for every frame the engine returns (as many as the audio lasts)."""
    import numpy as np

    from conftest import tiny_audio_config, tiny_motion_config
    from vasa_engine import Avatar, Engine
    from vasa_engine.config import RendererConfig
    from vasa_engine.driving import MotionTemplate
    from vasa_engine.generation import Controls
    from vasa_engine.models.keypoints import source_keypoints
    from vasa_engine.models.renderer import SourceState

    path = require_parity_dir() / "glue_joyvasa.safetensors"
    meta = json.loads(path.with_suffix(".json").read_text())
    cfg, flags = meta["config"], meta["config"]["cases"][case]
    t = load_file(str(path))
    x = {k.removeprefix("inputs."): v for k, v in t.items() if k.startswith("inputs.")}
    engine = Engine(None, device="cpu", config=RendererConfig.tiny(), audio_config=tiny_audio_config(),
                    motion_config=tiny_motion_config(n_motions=cfg["n_motions"], n_prev_motions=cfg["n_prev_motions"]))
    engine.renderer.stitching.load_state_dict({k.removeprefix("weights.stitching."): v for k, v in t.items()
                                               if k.startswith("weights.stitching.")})
    engine.motion_stack.template = MotionTemplate.from_tensors(
        {k.removeprefix("template_"): v for k, v in x.items() if k.startswith("template_")})
    engine.motion_sampler.sample_windows = lambda features, *a, **k: x["motion"][: features.shape[0] * cfg["n_motions"]]
    raw = {n: x[f"source_{n}_logits"] for n in ("pitch", "yaw", "roll")}
    src = source_keypoints(raw | {n: x[f"source_{n}"] for n in ("kp", "exp", "t", "scale")})
    avatar = Avatar(np.zeros((1, 1, 3), np.uint8), SourceState(torch.zeros(0), src.kp, src.pitch, src.yaw, src.roll, src.exp,
                                                            src.t, src.scale, src.x_s),
                    torch.full((1, 2), 0.3), torch.zeros(1, 1))
    controls = Controls(smoothing=1 - cfg["ema_alpha"], stitching=flags["flag_stitching"],
                        driving_multiplier=flags["driving_multiplier"], relative_motion=flags["flag_relative_motion"])
    n = int(x["num_samples"])
    m = engine.generate_motion(avatar, np.zeros(n, np.float32), controls, sample_rate=16000)
    x_d = engine.renderer.driving_keypoints(avatar.source, m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale,
                                            stitching=m.stitching, driving_multiplier=m.driving_multiplier)
    ref = t[f"outputs.{case}.x_d"]
    assert len(m) == round(n / 640) and len(m) + 2 <= ref.shape[0]
    assert rel_err(x_d, ref[2 : 2 + len(m)]) <= 1e-5
