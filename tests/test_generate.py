"""Engine.generate and `vasa-engine generate` on reduced sizes: frames for the audio's length, the MP4's two
streams, controls the model cannot honour, and bad audio ending in one line and exit code 2."""

import numpy as np
import pytest
import torch

from conftest import tiny_audio_config, tiny_motion_config
from test_cli import _assert_clean_failure, run
from vasa_engine import Engine, InputError
from vasa_engine.config import RendererConfig
from vasa_engine.generation import Controls
from vasa_engine.io.audio import write_wav


@pytest.mark.parametrize("seconds", [0.05, 1.0, 1.37, 3.0])
def test_frame_count_follows_the_audio(engine, avatar, seconds):
    samples = np.random.default_rng(0).normal(0, 0.1, int(seconds * 16000)).astype(np.float32)
    motion = engine.generate_motion(avatar, samples, sample_rate=16000)
    assert len(motion) == max(1, round(seconds * 25))
    assert torch.isfinite(motion.exp).all() and torch.isfinite(motion.yaw).all()


def test_silent_audio_is_valid(engine, avatar):
    frames = engine.generate(avatar, np.zeros(16000, np.float32), sample_rate=16000)
    assert frames.shape == (25, engine.output_size, engine.output_size, 3)


def test_seed_and_sampler(engine, avatar, sample_speech):
    a = engine.generate_motion(avatar, sample_speech, Controls(seed=1))
    b = engine.generate_motion(avatar, sample_speech, Controls(seed=1))
    c = engine.generate_motion(avatar, sample_speech, Controls(seed=2))
    assert torch.equal(a.exp, b.exp) and not torch.equal(a.exp, c.exp)
    for sampler, steps in (("ddim", 4), ("ddpm", 10), ("dpmpp_2m", 1)):
        m = engine.generate_motion(avatar, sample_speech, Controls(sampler=sampler, steps=steps))
        assert len(m) == len(a)


def test_renderer_controls(engine, avatar, sample_speech):
    base = engine.generate_motion(avatar, sample_speech)
    moved = engine.generate_motion(avatar, sample_speech, Controls(head_yaw=12.0, eye_openness=0.1,
                                                                     lip_openness=0.5))
    assert torch.allclose(moved.yaw, base.yaw + 12.0)
    assert moved.eye.tolist() == [pytest.approx(0.1)] * len(base) and base.eye is None


@pytest.fixture(scope="module")
def audio_only_weights(tmp_path_factory):
    """A reduced model that conditions on audio alone, as JoyVASA's does."""
    eng = Engine(None, device="cpu", config=RendererConfig.tiny(), audio_config=tiny_audio_config(),
                 motion_config=tiny_motion_config(gaze=False, distance=False, emotion_dim=0))
    eng.motion_stack
    path = tmp_path_factory.mktemp("weights") / "audio_only.safetensors"
    eng.save(path)
    return path


def test_controls_the_model_cannot_honour(audio_only_weights, sample_speech, sample_image):
    eng = Engine(audio_only_weights, device="cpu")
    av = eng.prepare(sample_image)
    for controls, message in ((Controls(gaze=(5.0, 5.0)), "no gaze condition"),
                              (Controls(emotion=[1.0, 0, 0, 0]), "no emotion condition"),
                              (Controls(steps=51), "steps must be between 1 and 50"),
                              (Controls(sampler="euler"), "unknown sampler")):
        with pytest.raises(InputError, match=message):
            eng.generate_motion(av, sample_speech, controls)
    # distance without a distance condition is applied at the renderer, as the head's scale
    near = eng.generate_motion(av, sample_speech, Controls(distance=2.0))
    far = eng.generate_motion(av, sample_speech)
    assert torch.allclose(near.scale * 2.0, far.scale)


def test_nan_audio_array(engine, avatar):
    bad = np.zeros(16000, np.float32)
    bad[100] = np.nan
    with pytest.raises(InputError, match="NaN or Inf"):
        engine.generate_motion(avatar, bad, sample_rate=16000)


def test_generate_cli_writes_video_and_audio(tmp_path, tiny_full_weights, sample_image, sample_speech):
    from vasa_engine.io.audio import load_audio
    from vasa_engine.io.video import SYNTHETIC_COMMENT, read_video_info

    out = tmp_path / "talk.mp4"
    res = run("generate", "--image", sample_image, "--audio", sample_speech, "--weights", tiny_full_weights,
              "-o", out, "--watermark", "--steps", 4)
    assert res.returncode == 0, res.stderr
    for word in ("audio encoder:", "motion generator:", "renderer", "fps end to end"):
        assert word in res.stdout
    info = read_video_info(out)
    assert info["has_audio"] and info["codec"] == "h264" and info["audio_codec"] == "aac"
    assert SYNTHETIC_COMMENT in info["metadata"]["comment"]
    import av

    with av.open(str(out)) as container:
        kinds = sorted(s.type for s in container.streams)
    assert kinds == ["audio", "video"]
    duration = len(load_audio(sample_speech)) / 16000
    assert abs(info["frames"] / 25 - duration) <= 1 / 25
    assert sorted(p.name for p in tmp_path.iterdir()) == ["talk.mp4"]


def test_watermark_marks_the_corner():
    from vasa_engine.io.watermark import Watermark

    frames = np.full((2, 128, 128, 3), 200, np.uint8)
    marked = Watermark().apply(frames)
    assert marked.shape == frames.shape and (marked != frames).any()
    assert (marked[:, :64, :64] == frames[:, :64, :64]).all()  # only the bottom-right corner changes


def _bad_audio_files(folder, sample_image):
    from vasa_engine.io.video import VideoWriter

    (folder / "empty.wav").write_bytes(b"")
    (folder / "corrupt.mp3").write_bytes(b"\x00\x01garbage" * 500)
    with VideoWriter(folder / "silent_video.mp4") as w:
        w.write(np.zeros((3, 64, 64, 3), np.uint8))
    write_wav(folder / "long.wav", np.zeros(3 * 16000, np.float32), 16000)
    return {
        "zero-length": (folder / "empty.wav", []),
        "corrupt": (folder / "corrupt.mp3", []),
        "no audio stream": (folder / "silent_video.mp4", []),
        "too long": (folder / "long.wav", ["--max-audio-seconds", "2"]),
    }


@pytest.mark.parametrize("case", ["zero-length", "corrupt", "no audio stream", "too long"])
def test_bad_audio(tmp_path, tiny_full_weights, sample_image, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    audio, extra = _bad_audio_files(inputs, sample_image)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run("generate", "--image", sample_image, "--audio", audio, "--weights", tiny_full_weights,
              "-o", out_dir / "x.mp4", *extra)
    message = {"zero-length": "audio file is empty", "corrupt": "not an audio file, or corrupt",
               "no audio stream": "no audio stream", "too long": "limit"}[case]
    _assert_clean_failure(res, message, out_dir)
    assert not list(out_dir.iterdir())


def test_unwritable_output(tmp_path, tiny_full_weights, sample_image, sample_speech):
    res = run("generate", "--image", sample_image, "--audio", sample_speech, "--weights", tiny_full_weights,
              "-o", tmp_path / "missing" / "x.mp4")
    _assert_clean_failure(res, "does not exist", tmp_path)


def test_gaze_refused_on_a_model_without_it(tmp_path, audio_only_weights, sample_image, sample_speech):
    res = run("generate", "--image", sample_image, "--audio", sample_speech, "--weights", audio_only_weights,
              "-o", tmp_path / "x.mp4", "--gaze", "10", "5")
    _assert_clean_failure(res, "no gaze condition", tmp_path)
