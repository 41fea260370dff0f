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
                              (Controls(steps=51), "steps must be between 1 and 50")):
        with pytest.raises(InputError, match=message):
            eng.generate_motion(av, sample_speech, controls)
    with pytest.raises(InputError, match="unknown sampler"):
        Controls(sampler="euler")
    # distance without a distance condition is applied at the renderer, as the head's scale
    near = eng.generate_motion(av, sample_speech, Controls(distance=2.0))
    far = eng.generate_motion(av, sample_speech)
    assert torch.allclose(near.scale * 2.0, far.scale)


@pytest.mark.parametrize("controls", [
    Controls(),
    Controls(head_pitch=-7.0, head_yaw=12.0, head_roll=3.0, stitching=True, driving_multiplier=1.4),
    Controls(eye_openness=0.15, lip_openness=0.6, driving_multiplier=0.8, smoothing=0.5),
    Controls(relative_motion=True, stitching=True, driving_multiplier=1.0, distance=1.3),
], ids=["defaults", "pose-stitching-multiplier", "eye-lip", "relative-distance"])
def test_generate_equals_render_of_generate_motion(engine, avatar, controls):
    """generate_motion returns motion that render turns into exactly what generate returns: the motion carries the
    controls' renderer settings."""
    audio = np.random.default_rng(7).normal(0, 0.1, 9000).astype(np.float32)
    frames = engine.generate(avatar, audio, controls, sample_rate=16000)
    motion = engine.generate_motion(avatar, audio, controls, sample_rate=16000)
    assert motion.stitching == controls.stitching and motion.driving_multiplier == controls.driving_multiplier
    assert np.array_equal(engine.render(avatar, motion), frames)
    assert np.array_equal(np.concatenate(list(engine.generate_batches(avatar, motion))), frames)


RANGE_CASES = [("head_yaw", 170.0, r"head yaw must lie in \[-45, 45\] degrees, got 170.0"),
               ("head_pitch", -45.5, r"head pitch must lie in \[-45, 45\] degrees"),
               ("head_roll", float("nan"), "head roll must lie in"),
               ("audio_scale", 11.0, r"audio scale must lie in \[0, 10\], got 11.0"),
               ("gaze_scale", -1.0, "gaze scale must lie in"), ("distance_scale", 99, "distance scale"),
               ("emotion_scale", "2", "emotion scale must lie in"), ("gaze", (0.0, 91.0), r"gaze must lie in \[-90, 90\]"),
               ("gaze", (1.0,), "gaze must be two numbers"), ("distance", 0.1, r"distance must lie in \[0.25, 4\]"),
               ("eye_openness", 1.5, r"eye openness must lie in \[0, 1\]"), ("lip_openness", -0.1, "lip openness"),
               ("smoothing", 1.0, r"smoothing must lie in \[0, 1\)"), ("driving_multiplier", 3.5, "driving multiplier"),
               ("steps", 0, "steps must lie in"), ("steps", 2.5, "steps must be an integer"),
               ("stitching", 1, "stitching must be True or False"), ("emotion", "abc", "emotion must be a sequence")]


@pytest.mark.parametrize("name, value, message", RANGE_CASES, ids=[f"{c[0]}={c[1]}" for c in RANGE_CASES])
def test_out_of_range_controls_are_refused_by_the_library(engine, avatar, name, value, message):
    """Every field's range is checked when Controls is built, and again when the engine uses it (a field changed
    after construction), with one line naming the field, the value and the range."""
    with pytest.raises(InputError, match=message):
        Controls(**{name: value})
    controls = Controls()
    setattr(controls, name, value)
    with pytest.raises(InputError, match=message):
        engine.generate_motion(avatar, np.zeros(1600, np.float32), controls, sample_rate=16000)
    with pytest.raises(InputError, match=message):
        engine.stream(avatar, controls)


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
