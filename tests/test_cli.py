"""The command line: a scripted render end to end, and bad input ending in one line and exit code 2."""

import os
import subprocess
import sys

import pytest
from safetensors.torch import load_file, save_file

from conftest import REPO

ENV = {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def run(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "vasa_engine.cli", *map(str, args)], capture_output=True,
                          text=True, env=ENV, cwd=cwd, timeout=600)


def test_render_scripted_motion(tmp_path, tiny_weights, sample_image):
    from vasa_engine.io.video import SYNTHETIC_COMMENT, read_video_info

    out = tmp_path / "clip.mp4"
    res = run("render", "--image", sample_image, "--weights", tiny_weights, "--frames", 6, "-o", out)
    assert res.returncode == 0, res.stderr
    assert "rendered 6 frames" in res.stdout and "ms per frame" in res.stdout and "device:" in res.stdout
    info = read_video_info(out)
    assert info["frames"] == 6 and info["fps"] == 25 and info["width"] == 128 and info["codec"] == "h264"
    assert SYNTHETIC_COMMENT in info["metadata"]["comment"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_info():
    res = run("info")
    assert res.returncode == 0, res.stderr
    for expected in ("vasa-engine", "torch", "native extension", "renderer:"):
        assert expected in res.stdout


@pytest.mark.slow
def test_demo_at_full_size(tmp_path):
    """The README's main job at the real model sizes (HuBERT base, the VASA-1-sized motion generator, the
    LivePortrait renderer), cut to two rendered frames."""
    from vasa_engine.io.video import read_video_info

    res = run("demo", "--frames", 2, "-o", tmp_path / "demo.mp4", "--device", "cpu")
    assert res.returncode == 0, res.stderr
    assert "generated 2 frames" in res.stdout and "audio encoder:" in res.stdout
    warnings = res.stderr.strip().splitlines()
    assert len(warnings) == 2 and all(w.startswith("warning: no weights") for w in warnings)
    info = read_video_info(tmp_path / "demo.mp4")
    assert info["frames"] == 2 and info["width"] == 512 and info["has_audio"]


def _bad_images(tmp_path, sample_image):
    from PIL import Image

    (tmp_path / "notes.png").write_text("this is not an image\n")
    data = sample_image.read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    Image.new("RGB", (63, 200), (120, 90, 60)).save(tmp_path / "small.png")
    return {
        "missing": (tmp_path / "nope.png", "image not found"),
        "not an image": (tmp_path / "notes.png", "not an image"),
        "truncated": (tmp_path / "cut.png", "truncated"),
        "too small": (tmp_path / "small.png", "too small: 63x200"),
    }


@pytest.mark.parametrize("case", ["missing", "not an image", "truncated", "too small"])
def test_bad_image(tmp_path, tiny_weights, sample_image, case):
    inputs = tmp_path / "in"
    inputs.mkdir()
    image, message = _bad_images(inputs, sample_image)[case]
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run("render", "--image", image, "--weights", tiny_weights, "--frames", 2, "-o", out_dir / "x.mp4")
    _assert_clean_failure(res, message, out_dir)


def _broken_weights(tmp_path, tiny_weights, change):
    tensors = load_file(str(tiny_weights))
    change(tensors)
    path = tmp_path / "broken.safetensors"
    save_file(tensors, str(path))
    path.with_suffix(".json").write_text(tiny_weights.with_suffix(".json").read_text())
    return path


@pytest.mark.parametrize("case", ["missing", "mis-shaped"])
def test_bad_checkpoint(tmp_path, tiny_weights, sample_image, case):
    import torch

    key = "renderer.warping_module.fourth.weight"
    if case == "missing":
        weights = _broken_weights(tmp_path, tiny_weights, lambda t: t.pop(key))
    else:
        weights = _broken_weights(tmp_path, tiny_weights, lambda t: t.__setitem__(key, torch.zeros(2, 2)))
    out_dir = tmp_path / "out"
    out_dir.mkdir()
    res = run("render", "--image", sample_image, "--weights", weights, "--frames", 2, "-o", out_dir / "x.mp4")
    _assert_clean_failure(res, f"{case}: fourth.weight", out_dir)


def test_output_folder_missing(tmp_path, tiny_weights, sample_image):
    res = run("render", "--image", sample_image, "--weights", tiny_weights, "-o", tmp_path / "no" / "x.mp4")
    _assert_clean_failure(res, "does not exist", tmp_path)


def test_convert_bad_folder(tmp_path):
    res = run("convert", "liveportrait", tmp_path, "-o", tmp_path / "w.safetensors")
    _assert_clean_failure(res, "no LivePortrait checkpoints", tmp_path)


def test_usage_error_is_one_line():
    res = run("render", "--frames", "0")
    assert res.returncode == 2 and len(res.stderr.strip().splitlines()) == 1


def _assert_clean_failure(res, message, folder):
    assert res.returncode == 2, (res.returncode, res.stdout, res.stderr)
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    assert message in lines[0] and "Traceback" not in res.stderr
    assert not [p for p in folder.rglob("*") if p.suffix in (".mp4", ".part", ".json", ".safetensors")
                and p.parent == folder]


def test_gpu_suite_refuses_without_a_gpu_in_one_line(tmp_path):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    res = run("gpu-suite", "--out", tmp_path)
    _assert_clean_failure(res, "needs a CUDA device", tmp_path)


def test_cli_controls_come_from_the_controls_table():
    """Every Controls field is a generate option (the seed an engine option), with the library's default and range:
    what the command line accepts, the library accepts, and the other way round."""
    from dataclasses import fields

    from vasa_engine.cli import CONTROL_HELP, build_parser
    from vasa_engine.controls import RANGES, Controls

    assert set(CONTROL_HELP) | {"seed", "extra"} == {f.name for f in fields(Controls)}
    parser = build_parser()
    args = parser.parse_args(["generate", "--image", "a.png", "--audio", "b.wav", "-o", "c.mp4"])
    from vasa_engine.cli import _controls

    assert _controls(args) == Controls()
    for name, rng in RANGES.items():
        flag = "--" + name.replace("_", "-")
        values = [str(rng.low)] * (2 if name == "gaze" else 1)
        args = parser.parse_args(["generate", "--image", "a", "--audio", "b", "-o", "c", flag, *values])
        _controls(args)  # the lower bound is accepted by both
        too_high = [str(rng.high + 1)] * (2 if name == "gaze" else 1)
        with pytest.raises(SystemExit):
            parser.parse_args(["generate", "--image", "a", "--audio", "b", "-o", "c", flag, *too_high])
