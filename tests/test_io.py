"""Tests for vasa_engine.io: portrait loading, resizing, tensor conversion and MP4 writing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFile

from vasa_engine.errors import InputError, VasaError
from vasa_engine.io import (
    SYNTHETIC_COMMENT,
    VideoWriter,
    center_square,
    load_image,
    load_portrait,
    read_video_frames,
    read_video_info,
    resize,
    to_tensor,
)

ASTRONAUT = Path(__file__).resolve().parents[1] / "vasa_engine" / "assets" / "astronaut.png"

def _needs_av():
    return pytest.importorskip("av")


def _rgb(h=96, w=80, seed=0):
    rng = np.random.default_rng(seed)
    # smooth content (gradients plus mild noise) so lossy codecs keep it close
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 255 / max(w - 1, 1), y * 255 / max(h - 1, 1), (x + y) * 255 / max(h + w - 2, 1)], -1)
    return np.clip(base + rng.normal(0, 4, base.shape), 0, 255).astype(np.uint8)


def _assert_one_line_input_error(excinfo, *needles):
    err = excinfo.value
    assert isinstance(err, InputError) and isinstance(err, VasaError)
    msg = str(err)
    assert msg and "\n" not in msg and "\r" not in msg, repr(msg)
    for needle in needles:
        assert needle in msg, f"{needle!r} not in {msg!r}"
    return msg


# ---------------------------------------------------------------------------------------------------
# load_image: good inputs


@pytest.mark.parametrize("ext,fmt,tol", [("png", "PNG", 0), ("jpg", "JPEG", 12), ("webp", "WEBP", 0)])
def test_load_rgb_formats(tmp_path, ext, fmt, tol):
    img = _rgb()
    path = tmp_path / f"face.{ext}"
    kwargs = {"quality": 95} if fmt == "JPEG" else ({"lossless": True} if fmt == "WEBP" else {})
    Image.fromarray(img).save(path, format=fmt, **kwargs)
    out = load_image(path)
    assert out.dtype == np.uint8 and out.shape == (96, 80, 3) and out.flags.c_contiguous
    assert np.abs(out.astype(int) - img).mean() <= tol + 0.5
    # str paths work as well as Path
    assert np.array_equal(load_image(str(path)), out)


def test_load_rgba_composited_over_white(tmp_path):
    rgba = np.zeros((70, 70, 4), np.uint8)
    rgba[..., 0] = 200
    rgba[:35, :, 3] = 255  # top half opaque red-ish
    rgba[35:, :, 3] = 0  # bottom half fully transparent
    path = tmp_path / "a.png"
    Image.fromarray(rgba, "RGBA").save(path)
    out = load_image(path)
    assert out.shape == (70, 70, 3)
    assert (out[:35] == [200, 0, 0]).all()
    assert (out[35:] == 255).all()
    # half transparency blends half way to white
    rgba[..., 3] = 128
    arr_out = load_image(rgba)
    assert np.allclose(arr_out[0, 0], [200 * 128 / 255 + 255 * 127 / 255, 255 * 127 / 255, 255 * 127 / 255], atol=1)


def test_load_grayscale_la_palette(tmp_path):
    gray = _rgb()[..., 0]
    Image.fromarray(gray, "L").save(tmp_path / "g.png")
    out = load_image(tmp_path / "g.png")
    assert out.shape == (96, 80, 3)
    assert np.array_equal(out[..., 0], gray) and np.array_equal(out[..., 1], gray) and np.array_equal(out[..., 2], gray)

    la = np.stack([gray, np.zeros_like(gray)], -1)
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    assert (load_image(tmp_path / "la.png") == 255).all()  # fully transparent -> white

    pal = Image.fromarray(_rgb()).convert("P", palette=Image.Palette.ADAPTIVE, colors=16)
    pal.save(tmp_path / "p.png")
    out = load_image(tmp_path / "p.png")
    assert out.shape == (96, 80, 3) and out.dtype == np.uint8
    assert np.array_equal(out, np.asarray(pal.convert("RGB")))


def test_load_16bit_grayscale(tmp_path):
    a16 = (np.arange(96 * 80, dtype=np.uint32).reshape(96, 80) * 8).astype(np.uint16)
    path = tmp_path / "g16.png"
    Image.fromarray(a16).save(path)
    out = load_image(path)
    assert out.shape == (96, 80, 3) and out.dtype == np.uint8
    expected = np.rint(a16 / 257.0).astype(np.uint8)
    assert np.array_equal(out[..., 0], expected)
    assert out.max() > 200  # scaled, not clipped or truncated to the low byte


def test_exif_orientation_applied(tmp_path):
    img = _rgb(64, 100)
    pil = Image.fromarray(img)
    exif = pil.getexif()
    exif[0x0112] = 6  # rotate 90 CW on display
    path = tmp_path / "rot.jpg"
    pil.save(path, exif=exif.tobytes(), quality=95)
    out = load_image(path)
    assert out.shape == (100, 64, 3)


def test_load_pil_and_arrays():
    img = _rgb()
    assert np.array_equal(load_image(Image.fromarray(img)), img)
    assert np.array_equal(load_image(img), img)
    out = load_image(img.astype(np.float32) / 255.0)
    assert np.array_equal(out, img)
    g = img[..., 0]
    assert load_image(g).shape == (96, 80, 3)
    assert load_image(g[..., None]).shape == (96, 80, 3)
    # the result does not alias the caller's array
    out = load_image(img)
    out[0, 0] = 0
    assert not np.shares_memory(out, img)


def test_bundled_astronaut():
    assert ASTRONAUT.is_file()
    img = load_image(ASTRONAUT)
    assert img.shape == (512, 512, 3) and img.dtype == np.uint8
    assert 40 < img.mean() < 220 and img.std() > 20
    face = load_portrait(ASTRONAUT, 256)
    assert face.shape == (256, 256, 3) and face.dtype == np.uint8


def test_load_truncated_flag_left_as_found(tmp_path):
    img = _rgb()
    path = tmp_path / "x.png"
    Image.fromarray(img).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    old = ImageFile.LOAD_TRUNCATED_IMAGES
    ImageFile.LOAD_TRUNCATED_IMAGES = True  # someone else turned it on: loading must still fail
    try:
        with pytest.raises(InputError):
            load_image(path)
        assert ImageFile.LOAD_TRUNCATED_IMAGES is True
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = old


# ---------------------------------------------------------------------------------------------------
# load_image: bad inputs


def test_missing_file(tmp_path):
    p = tmp_path / "nope.png"
    with pytest.raises(InputError) as ei:
        load_image(p)
    _assert_one_line_input_error(ei, "image not found", str(p))


def test_directory(tmp_path):
    with pytest.raises(InputError) as ei:
        load_image(tmp_path)
    _assert_one_line_input_error(ei, "directory", str(tmp_path))


def test_not_an_image(tmp_path):
    p = tmp_path / "notes.png"
    p.write_text("this is\nnot an image\n" * 20)
    with pytest.raises(InputError) as ei:
        load_image(p)
    _assert_one_line_input_error(ei, "not an image", str(p))
    empty = tmp_path / "empty.jpg"
    empty.write_bytes(b"")
    with pytest.raises(InputError) as ei:
        load_image(empty)
    _assert_one_line_input_error(ei, str(empty))


@pytest.mark.parametrize("ext,fmt", [("png", "PNG"), ("jpg", "JPEG"), ("webp", "WEBP")])
def test_truncated(tmp_path, ext, fmt):
    p = tmp_path / f"cut.{ext}"
    Image.fromarray(_rgb(200, 200, seed=3)).save(p, format=fmt)
    data = p.read_bytes()
    p.write_bytes(data[: len(data) // 2])
    with pytest.raises(InputError) as ei:
        load_image(p)
    _assert_one_line_input_error(ei, "truncated or corrupt", str(p))


def test_too_small(tmp_path):
    p = tmp_path / "tiny.png"
    Image.fromarray(_rgb(48, 100)).save(p)
    with pytest.raises(InputError) as ei:
        load_image(p)
    _assert_one_line_input_error(ei, "image too small: 100x48", "64x64", str(p))
    with pytest.raises(InputError) as ei:
        load_image(np.zeros((63, 63, 3), np.uint8))
    _assert_one_line_input_error(ei, "image too small")


@pytest.mark.parametrize("fmt,ext", [("GIF", "gif"), ("BMP", "bmp"), ("TIFF", "tif")])
def test_unsupported_format(tmp_path, fmt, ext):
    p = tmp_path / f"x.{ext}"
    Image.fromarray(_rgb()).save(p, format=fmt)
    with pytest.raises(InputError) as ei:
        load_image(p)
    _assert_one_line_input_error(ei, f"unsupported image format {fmt}", str(p))


@pytest.mark.parametrize(
    "arr,needle",
    [
        (np.zeros((80, 80, 2), np.uint8), "shape"),
        (np.zeros((80, 80, 3, 1), np.uint8), "shape"),
        (np.zeros((80,), np.uint8), "shape"),
        (np.zeros((80, 80, 3), np.uint16), "dtype"),
        (np.zeros((80, 80, 3), np.int64), "dtype"),
        (np.zeros((80, 80, 3), bool), "dtype"),
        (np.full((80, 80, 3), np.nan, np.float32), "NaN"),
        (np.full((80, 80, 3), np.inf, np.float64), "Inf"),
        (np.full((80, 80, 3), 2.0, np.float32), "[0, 1]"),
        (np.full((80, 80, 3), -0.5, np.float32), "[0, 1]"),
    ],
)
def test_bad_arrays(arr, needle):
    with pytest.raises(InputError) as ei:
        load_image(arr)
    _assert_one_line_input_error(ei, needle)


def test_bad_source_type():
    with pytest.raises(InputError) as ei:
        load_image(12345)
    _assert_one_line_input_error(ei, "int")


# ---------------------------------------------------------------------------------------------------
# center_square / resize / to_tensor


def test_center_square():
    img = _rgb(100, 60)
    sq = center_square(img)
    assert sq.shape == (60, 60, 3)
    assert np.array_equal(sq, img[20:80])
    wide = _rgb(50, 91)
    sq = center_square(wide)
    assert sq.shape == (50, 50, 3) and np.array_equal(sq, wide[:, 20:70])
    square = _rgb(64, 64)
    assert np.array_equal(center_square(square), square)


@pytest.mark.parametrize("src,dst", [((512, 512), 256), ((300, 200), 256), ((64, 64), 256), ((97, 301), 128)])
def test_resize_shapes_and_range(src, dst):
    img = _rgb(*src)
    out = resize(img, dst)
    assert out.shape == (dst, dst, 3) and out.dtype == np.uint8
    assert abs(float(out.mean()) - float(img.mean())) < 6


@pytest.mark.parametrize("src,dst", [(512, 256), (300, 256), (64, 256), (100, 100)])
def test_resize_constant_stays_constant(src, dst):
    img = np.empty((src, src, 3), np.uint8)
    img[...] = (17, 128, 250)
    out = resize(img, dst)
    assert out.shape == (dst, dst, 3)
    assert (out == (17, 128, 250)).all()
    assert (resize(np.zeros((src, src, 3), np.uint8), dst) == 0).all()
    assert (resize(np.full((src, src, 3), 255, np.uint8), dst) == 255).all()


def test_resize_down_is_area_average():
    img = np.zeros((4, 4, 3), np.uint8)
    img[::2, ::2] = 200
    out = resize(img, 2)
    assert (out == 50).all()


def test_resize_rejects_bad_input():
    with pytest.raises(ValueError):
        resize(np.zeros((8, 8), np.uint8), 4)
    with pytest.raises(ValueError):
        resize(np.zeros((8, 8, 3), np.float32), 4)
    with pytest.raises(ValueError):
        resize(np.zeros((8, 8, 3), np.uint8), 0)


def test_to_tensor():
    import torch

    img = _rgb(70, 90)
    t = to_tensor(img)
    assert t.shape == (1, 3, 70, 90) and t.dtype == torch.float32 and t.is_contiguous()
    assert 0.0 <= float(t.min()) and float(t.max()) <= 1.0
    assert float(t[0, 1, 5, 7]) == pytest.approx(img[5, 7, 1] / 255.0, abs=1e-6)
    back = (t[0].permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    assert np.array_equal(back, img)
    with pytest.raises(ValueError):
        to_tensor(img.astype(np.float32))


# ---------------------------------------------------------------------------------------------------
# video


def _frames(n=10, h=64, w=64):
    t = np.arange(n)[:, None, None, None]
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([x * 4, y * 4, (x + y) * 2], -1)[None]
    return ((base + t * 9) % 256).astype(np.uint8)


def test_video_round_trip(tmp_path):
    _needs_av()
    out = tmp_path / "clip.mp4"
    frames = _frames()
    with VideoWriter(out, fps=25) as w:
        w.write(frames[:4])
        w.write(frames[4:])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]
    info = read_video_info(out)
    assert info["frames"] == 10
    assert info["fps"] == 25
    assert (info["width"], info["height"]) == (64, 64)
    assert info["duration"] == pytest.approx(0.4, abs=0.05)
    assert info["has_audio"] is False
    assert info["codec"] == "h264" and info["pix_fmt"] == "yuv420p"
    assert info["metadata"].get("comment") == SYNTHETIC_COMMENT
    assert "title" in info["metadata"] and "description" in info["metadata"]
    back = read_video_frames(out)
    assert back.shape == (10, 64, 64, 3)
    assert np.abs(back.astype(int) - frames.astype(int)).mean() < 6


def test_video_accepts_torch_and_single_frames(tmp_path):
    _needs_av()
    import torch

    out = tmp_path / "t.mp4"
    frames = _frames(4, 32, 48)
    with VideoWriter(out) as w:
        w.write(torch.from_numpy(frames[:2]))
        w.write(frames[2])
        w.write(torch.from_numpy(frames[3]))
        w.write(np.zeros((0, 32, 48, 3), np.uint8))  # nothing
    info = read_video_info(out)
    assert (info["frames"], info["width"], info["height"]) == (4, 48, 32)


def test_video_exception_leaves_nothing(tmp_path):
    _needs_av()
    out = tmp_path / "clip.mp4"
    with pytest.raises(RuntimeError, match="boom"):
        with VideoWriter(out) as w:
            w.write(_frames(3))
            assert w.temp_path is not None and w.temp_path.exists()
            assert w.temp_path.name.startswith(".") and w.temp_path.name.endswith(".mp4.part")
            raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_video_exception_keeps_previous_file(tmp_path):
    _needs_av()
    out = tmp_path / "clip.mp4"
    out.write_bytes(b"previous")
    with pytest.raises(KeyboardInterrupt):
        with VideoWriter(out) as w:
            w.write(_frames(2))
            raise KeyboardInterrupt
    assert out.read_bytes() == b"previous"
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]


def test_video_no_frames_leaves_nothing(tmp_path):
    out = tmp_path / "empty.mp4"
    with VideoWriter(out) as w:
        pass
    assert w.close() is None
    assert list(tmp_path.iterdir()) == []


def test_video_missing_folder(tmp_path):
    missing = tmp_path / "no" / "such"
    with pytest.raises(InputError) as ei:
        VideoWriter(missing / "x.mp4")
    _assert_one_line_input_error(ei, "output folder does not exist", str(missing))
    assert list(tmp_path.iterdir()) == []


def test_video_bad_suffix_and_folder_is_file(tmp_path):
    with pytest.raises(InputError) as ei:
        VideoWriter(tmp_path / "x.avi")
    _assert_one_line_input_error(ei, ".mp4")
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(InputError) as ei:
        VideoWriter(f / "x.mp4")
    _assert_one_line_input_error(ei, "not a directory")
    d = tmp_path / "dir.mp4"
    d.mkdir()
    with pytest.raises(InputError) as ei:
        VideoWriter(d)
    _assert_one_line_input_error(ei, "directory")


_IS_ROOT = os.name == "posix" and hasattr(os, "geteuid") and os.geteuid() == 0


@pytest.mark.skipif(os.name != "posix" or _IS_ROOT, reason="root can write anywhere")
def test_video_unwritable_folder(tmp_path):
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        with pytest.raises(InputError) as ei:
            VideoWriter(ro / "x.mp4")
        _assert_one_line_input_error(ei, "not writable", str(ro))
    finally:
        ro.chmod(0o755)


def test_video_unwritable_folder_reported(tmp_path, monkeypatch):
    real_access = os.access

    def fake_access(path, mode, *a, **k):
        if Path(path) == tmp_path and mode & os.W_OK:
            return False
        return real_access(path, mode, *a, **k)

    monkeypatch.setattr(os, "access", fake_access)
    with pytest.raises(InputError) as ei:
        VideoWriter(tmp_path / "x.mp4")
    _assert_one_line_input_error(ei, "not writable", str(tmp_path))
    assert list(tmp_path.iterdir()) == []


def test_video_odd_size(tmp_path):
    out = tmp_path / "odd.mp4"
    with pytest.raises(InputError) as ei:
        with VideoWriter(out) as w:
            w.write(np.zeros((2, 63, 64, 3), np.uint8))
    _assert_one_line_input_error(ei, "64x63", "even")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize(
    "frames,needle",
    [
        (np.zeros((2, 64, 64, 3), np.float32), "uint8"),
        (np.zeros((2, 64, 64, 4), np.uint8), "shape"),
        (np.zeros((64, 64), np.uint8), "shape"),
        ([1, 2, 3], "list"),
    ],
)
def test_video_bad_frames(tmp_path, frames, needle):
    with pytest.raises(InputError) as ei:
        with VideoWriter(tmp_path / "bad.mp4") as w:
            w.write(frames)
    _assert_one_line_input_error(ei, needle)
    assert list(tmp_path.iterdir()) == []


def test_video_size_change(tmp_path):
    _needs_av()
    with pytest.raises(InputError) as ei:
        with VideoWriter(tmp_path / "x.mp4") as w:
            w.write(_frames(2, 64, 64))
            w.write(_frames(2, 32, 32))
    _assert_one_line_input_error(ei, "64x64", "32x32")
    assert list(tmp_path.iterdir()) == []


def test_video_bad_arguments(tmp_path):
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", fps=0)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", crf=99)
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", audio=(np.zeros(100, np.float32), 12345))
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", audio=(np.zeros((2, 100), np.float32), 16000))
    with pytest.raises(InputError):
        VideoWriter(tmp_path / "x.mp4", audio=(np.full(100, np.nan, np.float32), 16000))
    assert list(tmp_path.iterdir()) == []


def test_video_custom_metadata(tmp_path):
    _needs_av()
    out = tmp_path / "m.mp4"
    with VideoWriter(out, metadata={"artist": "tester", "comment": "demo run", "vasa_seed": "7"}) as w:
        w.write(_frames(2))
    meta = read_video_info(out)["metadata"]
    assert meta["comment"].startswith(SYNTHETIC_COMMENT) and "demo run" in meta["comment"]
    assert meta["artist"] == "tester"
    assert meta["vasa_seed"] == "7"  # non-standard key kept (use_metadata_tags)


def test_video_with_audio(tmp_path):
    _needs_av()
    out = tmp_path / "av.mp4"
    sr = 16000
    n_frames = 10
    t = np.arange(int(sr * n_frames / 25)) / sr
    samples = (0.3 * np.sin(2 * np.pi * 220 * t)).astype(np.float32)
    with VideoWriter(out, fps=25, audio=(samples, sr)) as w:
        for i in range(n_frames):
            w.write(_frames(1))
    info = read_video_info(out)
    assert info["frames"] == n_frames and info["has_audio"] is True
    assert info["audio_codec"] == "aac" and info["audio_sample_rate"] == sr and info["audio_channels"] == 1
    assert info["duration"] == pytest.approx(0.4, abs=0.07)
    assert info["metadata"]["comment"] == SYNTHETIC_COMMENT

    import av

    with av.open(str(out)) as c:
        assert len(c.streams.video) == 1 and len(c.streams.audio) == 1
        a = c.streams.audio[0]
        assert a.start_time is not None and float(a.start_time * a.time_base) == pytest.approx(0.0, abs=1e-3)
        decoded = np.concatenate([f.to_ndarray().reshape(-1) for f in c.decode(audio=0)])
    # the whole track is there (AAC pads to whole 1024-sample frames) and carries the tone
    assert len(samples) <= len(decoded) <= len(samples) + 2048
    assert 0.1 < float(np.sqrt(np.mean(decoded[: len(samples)] ** 2))) < 0.35


def test_read_video_info_errors(tmp_path):
    with pytest.raises(InputError) as ei:
        read_video_info(tmp_path / "none.mp4")
    _assert_one_line_input_error(ei, "video not found")
    _needs_av()
    junk = tmp_path / "junk.mp4"
    junk.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(InputError) as ei:
        read_video_info(junk)
    _assert_one_line_input_error(ei, str(junk))


def test_video_module_does_not_import_av():
    code = (
        "import sys; import vasa_engine.io.video, vasa_engine.io; "
        "assert 'av' not in sys.modules, 'av imported'; print('ok')"
    )
    root = Path(__file__).resolve().parents[1]
    res = subprocess.run([sys.executable, "-c", code], cwd=root, capture_output=True, text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "ok"
