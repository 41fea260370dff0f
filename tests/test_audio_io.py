"""Audio loading: files in every common format and sample arrays, all to 16 kHz mono float32."""

import math
import os
import subprocess
import sys
import wave
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
import torch

from vasa_engine.errors import InputError
from vasa_engine.io import audio as audio_mod
from vasa_engine.io.audio import (
    DEFAULT_MAX_SECONDS,
    SAMPLE_RATE,
    audio_duration,
    load_audio,
    write_wav,
)

av = pytest.importorskip("av")

REPO = Path(__file__).resolve().parents[1]
SPEECH = REPO / "vasa_engine" / "assets" / "speech.wav"


# ----------------------------------------------------------------------------------------------------
# helpers


def has_encoder(name: str) -> bool:
    try:
        av.codec.Codec(name, "w")
    except Exception:
        return False
    return True


def tone(freq, rate, n, amp=0.5, phase=0.0):
    t = np.arange(n) / rate
    return amp * np.sin(2 * np.pi * freq * t + phase)


def encode(path, container_format, codec, channels, rate, layout):
    """Encode float samples ``channels`` (C, N) in [-1, 1] with a PyAV encoder into ``path``."""
    with av.open(str(path), mode="w", format=container_format) as container:
        stream = container.add_stream(codec, rate=rate, layout=layout)
        cc = stream.codec_context
        if codec == "vorbis":  # FFmpeg's own Vorbis encoder is marked experimental
            cc.options = {"strict": "experimental"}
        cc.open()
        frame_size = cc.frame_size or 1024
        resampler = av.AudioResampler(
            format=cc.format.name, layout=layout, rate=rate, frame_size=cc.frame_size or None
        )
        data = np.asarray(channels, dtype=np.float32)
        frames = []
        for start in range(0, data.shape[1], frame_size):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(data[:, start : start + frame_size]), format="fltp", layout=layout
            )
            frame.sample_rate = rate
            frame.pts = start
            frame.time_base = Fraction(1, rate)
            frames += resampler.resample(frame)
        frames += resampler.resample(None)
        for frame in frames:
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode(None):
            container.mux(packet)
    return Path(path)


def dominant_freq(y, rate=SAMPLE_RATE):
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    spectrum[0] = 0.0
    return np.argmax(spectrum) * rate / len(y)


def middle(y, fraction=0.25):
    k = int(len(y) * fraction)
    return y[k : len(y) - k]


def rms(y):
    return float(np.sqrt(np.mean(np.square(y, dtype=np.float64))))


def expected_len(n, rate):
    return int(math.floor(Fraction(n * SAMPLE_RATE, rate) + Fraction(1, 2)))


def check_one_line(excinfo, *parts):
    message = str(excinfo.value)
    assert "\n" not in message and "\r" not in message, message
    for part in parts:
        assert str(part) in message, (part, message)
    return message


def write_raw_wav(path, rate, channels, pcm_bytes, width=2):
    with wave.open(str(path), "wb") as w:
        w.setnchannels(channels)
        w.setsampwidth(width)
        w.setframerate(rate)
        w.writeframes(pcm_bytes)
    return Path(path)


# ----------------------------------------------------------------------------------------------------
# files, one per codec
#
# Length tolerance, in output samples at 16 kHz: the decoded length may exceed the encoded length by up to
# ``frames`` codec frames of ``frame`` input samples (plus 2 samples of rounding), and fall short by at most
# 2 samples. Where it comes from:
#   * PCM WAV, FLAC: lossless and sample exact: frames = 0.
#   * MP3 (libmp3lame): the encoder delay and end padding are stored in the LAME/Xing header and FFmpeg's
#     decoder trims them, so output is exact in practice; without that header a decoder adds up to one
#     1152-sample frame of delay and one of padding: frames = 2.
#   * AAC in M4A: the MP4 edit list removes the 1024-sample priming, but the last 1024-sample frame is
#     decoded whole, so up to one frame of zero padding remains at the end: frames = 1.
#   * AAC in ADTS (.aac): no edit list, so the 1024-sample priming is kept too: frames = 2.
#   * Vorbis in Ogg: the last page's granule position trims the end to within a block: frames = 1 (of 2048).
#   * Opus in Ogg: the header's pre-skip removes the priming and the granule position trims the end, so
#     output is exact in practice; allow one 960-sample frame: frames = 1.

FILE_CASES = [
    # id, extension, container format, encoder, rate, layout, codec frame, frames of tolerance
    ("wav-44k-stereo", "wav", "wav", "pcm_s16le", 44100, "stereo", 0, 0),
    ("wav-8k-mono", "wav", "wav", "pcm_s16le", 8000, "mono", 0, 0),
    ("flac-48k-mono", "flac", "flac", "flac", 48000, "mono", 0, 0),
    ("flac-48k-stereo", "flac", "flac", "flac", 48000, "stereo", 0, 0),
    ("mp3-44k-stereo", "mp3", "mp3", "libmp3lame", 44100, "stereo", 1152, 2),
    ("mp3-22k-mono", "mp3", "mp3", "libmp3lame", 22050, "mono", 1152, 2),
    ("m4a-aac-44k-stereo", "m4a", "ipod", "aac", 44100, "stereo", 1024, 1),
    ("adts-aac-22k-mono", "aac", "adts", "aac", 22050, "mono", 1024, 2),
    ("ogg-vorbis-44k-stereo", "ogg", "ogg", "vorbis", 44100, "stereo", 2048, 1),
    ("ogg-libvorbis-44k-stereo", "ogg", "ogg", "libvorbis", 44100, "stereo", 2048, 1),
    ("ogg-opus-48k-stereo", "ogg", "ogg", "libopus", 48000, "stereo", 960, 1),
    ("opus-24k-mono", "opus", "opus", "libopus", 24000, "mono", 480, 1),
]


@pytest.mark.parametrize(
    "ext,fmt,codec,rate,layout,frame,frames", [c[1:] for c in FILE_CASES], ids=[c[0] for c in FILE_CASES]
)
def test_file_decodes_to_16k_mono(tmp_path, ext, fmt, codec, rate, layout, frame, frames):
    if not has_encoder(codec):
        pytest.skip(f"this PyAV build has no {codec} encoder")
    n = int(rate * 1.5) + 17
    nch = 2 if layout == "stereo" else 1
    src = np.stack([tone(440, rate, n, amp=0.5)] * nch)
    path = encode(tmp_path / f"tone.{ext}", fmt, codec, src, rate, layout)

    y = load_audio(path)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and y.ndim == 1
    assert y.flags["C_CONTIGUOUS"]

    extra = len(y) - expected_len(n, rate)
    allowed = math.ceil(frames * frame * SAMPLE_RATE / rate) + 2
    assert -2 <= extra <= allowed, (len(y), expected_len(n, rate), allowed)

    assert abs(dominant_freq(y) - 440.0) < 2.0
    # Identical channels average to the same tone at the same level (an unequal downmix would change it).
    assert rms(middle(y)) == pytest.approx(0.5 / math.sqrt(2), rel=0.1)


@pytest.mark.parametrize(
    "ext,fmt,codec,rate", [("wav", "wav", "pcm_s16le", 44100), ("flac", "flac", "flac", 48000)]
)
def test_stereo_file_becomes_channel_average(tmp_path, ext, fmt, codec, rate):
    n = rate  # 1 s
    left, right = tone(440, rate, n, amp=0.6), tone(1000, rate, n, amp=0.2)
    path = encode(tmp_path / f"lr.{ext}", fmt, codec, np.stack([left, right]), rate, "stereo")
    y = load_audio(path)
    assert len(y) == SAMPLE_RATE
    want = 0.5 * (tone(440, SAMPLE_RATE, SAMPLE_RATE, 0.6) + tone(1000, SAMPLE_RATE, SAMPLE_RATE, 0.2))
    np.testing.assert_allclose(middle(y, 0.1), middle(want, 0.1), atol=3e-3)


def test_multichannel_file_is_averaged(tmp_path):
    rate, n = 48000, 4800
    levels = np.array([0.05, 0.15, 0.25, 0.35, 0.45, 0.55])
    data = levels[:, None] * np.ones((6, n))
    path = encode(tmp_path / "six.flac", "flac", "flac", data, rate, "5.1")
    y = load_audio(path)
    assert len(y) == 1600
    np.testing.assert_allclose(middle(y), levels.mean(), atol=1e-3)


def test_audio_track_of_a_video_file(tmp_path):
    from vasa_engine.io.video import VideoWriter

    speech = tone(300, SAMPLE_RATE, SAMPLE_RATE, amp=0.3).astype(np.float32)
    out = tmp_path / "clip.mp4"
    with VideoWriter(out, fps=25, audio=(speech, SAMPLE_RATE), preset="ultrafast") as w:
        w.write(np.zeros((25, 64, 64, 3), dtype=np.uint8))
    y = load_audio(out)
    assert SAMPLE_RATE - 2 <= len(y) <= SAMPLE_RATE + 1024 + 2  # AAC in MP4: one frame of end padding
    assert abs(dominant_freq(y) - 300.0) < 2.0


def test_float_wav_at_16k_is_sample_exact(tmp_path):
    x = tone(440, SAMPLE_RATE, 8000, amp=0.9).astype(np.float32)
    path = encode(tmp_path / "f32.wav", "wav", "pcm_f32le", x[None], SAMPLE_RATE, "mono")
    np.testing.assert_array_equal(load_audio(path), x)


def test_silent_file_is_valid(tmp_path):
    path = write_wav(tmp_path / "silence.wav", np.zeros(22050, dtype=np.float32), 22050)
    y = load_audio(path)
    assert len(y) == SAMPLE_RATE and not y.any()


def test_pathlike_and_str_paths(tmp_path):
    path = write_wav(tmp_path / "a.wav", tone(440, 8000, 800), 8000)
    np.testing.assert_array_equal(load_audio(path), load_audio(str(path)))


def test_colon_in_file_name_is_a_local_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_wav(tmp_path / "concat:a.wav", np.full(800, 0.25), 8000)
    y = load_audio("concat:a.wav")
    assert len(y) == 1600
    np.testing.assert_allclose(middle(y), 0.25, atol=1e-3)


# ----------------------------------------------------------------------------------------------------
# arrays


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000, 11025])
def test_array_resampled_length_and_frequency(rate):
    n = int(rate * 1.3) + 7
    y = load_audio(tone(440, rate, n).astype(np.float32), rate)
    assert y.dtype == np.float32 and y.ndim == 1
    assert len(y) == expected_len(n, rate)
    assert abs(dominant_freq(y) - 440.0) < 2.0
    assert rms(middle(y)) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


def test_array_resampling_matches_analytic_signal():
    rate = 44100
    x = tone(440, rate, rate) + tone(3000, rate, rate, amp=0.2)
    y = load_audio(x, rate)
    want = tone(440, SAMPLE_RATE, SAMPLE_RATE) + tone(3000, SAMPLE_RATE, SAMPLE_RATE, amp=0.2)
    np.testing.assert_allclose(middle(y, 0.05), middle(want, 0.05), atol=2e-3)


@pytest.mark.parametrize("rate", [8000, 22050, 44100])
def test_resampling_keeps_timing(rate):
    n = rate
    k = n // 3 + 5
    x = np.zeros(n, dtype=np.float32)
    x[k] = 1.0
    y = load_audio(x, rate)
    assert abs(int(np.argmax(y)) - k * SAMPLE_RATE / rate) <= 1.0


def test_array_at_16k_is_unchanged():
    x = np.random.default_rng(0).uniform(-1, 1, 4001).astype(np.float32)
    y = load_audio(x, SAMPLE_RATE)
    np.testing.assert_array_equal(y, x)
    assert y is not x


def test_int16_and_int32_scaling():
    x16 = np.array([0, 16384, -16384, 32767, -32768], dtype=np.int16)
    np.testing.assert_allclose(load_audio(x16, SAMPLE_RATE), [0, 0.5, -0.5, 32767 / 32768, -1.0])
    x32 = np.array([0, 1 << 30, -(1 << 31)], dtype=np.int32)
    np.testing.assert_allclose(load_audio(x32, SAMPLE_RATE), [0, 0.5, -1.0])
    rate = 22050
    pcm = np.round(tone(440, rate, rate) * 32767).astype(np.int16)
    y = load_audio(pcm, rate)
    assert len(y) == SAMPLE_RATE
    assert abs(dominant_freq(y) - 440.0) < 2.0
    assert rms(middle(y)) == pytest.approx(0.5 / math.sqrt(2), rel=0.01)


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_float_dtypes(dtype):
    x = tone(440, 8000, 8000).astype(dtype)
    y = load_audio(x, 8000)
    assert y.dtype == np.float32 and len(y) == SAMPLE_RATE
    assert abs(dominant_freq(y) - 440.0) < 2.0


def test_two_channel_layouts_average():
    rate = 44100
    left, right = tone(440, rate, rate, amp=0.6), tone(1000, rate, rate, amp=0.2)
    want = load_audio(0.5 * (left + right), rate)
    samples_first = load_audio(np.stack([left, right], axis=1), rate)  # (S, 2)
    channels_first = load_audio(np.stack([left, right], axis=0), rate)  # (2, S)
    np.testing.assert_allclose(samples_first, want, atol=1e-6)
    np.testing.assert_allclose(channels_first, want, atol=1e-6)
    assert len(want) == SAMPLE_RATE


def test_single_channel_2d_and_small_arrays():
    x = tone(440, SAMPLE_RATE, 1000).astype(np.float32)
    np.testing.assert_array_equal(load_audio(x[:, None], SAMPLE_RATE), x)
    np.testing.assert_array_equal(load_audio(x[None, :], SAMPLE_RATE), x)
    # Both axes short: read as (samples, channels).
    small = np.array([[0.1, 0.3], [0.5, 0.7], [0.2, 0.2]], dtype=np.float32)
    np.testing.assert_allclose(load_audio(small, SAMPLE_RATE), [0.2, 0.6, 0.2])


def test_torch_tensor_input():
    rate = 22050
    x = torch.from_numpy(tone(440, rate, rate).astype(np.float32))
    y = load_audio(x, rate)
    assert isinstance(y, np.ndarray) and y.dtype == np.float32 and len(y) == SAMPLE_RATE
    assert abs(dominant_freq(y) - 440.0) < 2.0
    stereo = torch.stack([x, x])  # (2, S)
    np.testing.assert_allclose(load_audio(stereo, rate), y, atol=1e-6)
    np.testing.assert_allclose(load_audio(x.to(torch.bfloat16), rate), y, atol=1e-2)


def test_silent_array_is_valid():
    y = load_audio(np.zeros(44100, dtype=np.int16), 44100)
    assert len(y) == SAMPLE_RATE and not y.any()


def test_audio_duration():
    assert audio_duration(np.zeros(24000)) == 1.5
    assert audio_duration(np.zeros((44100, 2)), 44100) == 1.0
    assert audio_duration(np.zeros((2, 22050)), 44100) == 0.5
    assert audio_duration(torch.zeros(8000), 8000) == 1.0
    assert audio_duration(load_audio(np.zeros(44100), 44100)) == 1.0


# ----------------------------------------------------------------------------------------------------
# bad files


def test_missing_file(tmp_path):
    path = tmp_path / "nope.wav"
    with pytest.raises(InputError) as e:
        load_audio(path)
    check_one_line(e, "not found", path)


def test_directory(tmp_path):
    with pytest.raises(InputError) as e:
        load_audio(tmp_path)
    check_one_line(e, "directory", tmp_path)


def test_zero_length_file(tmp_path):
    path = tmp_path / "empty.mp3"
    path.write_bytes(b"")
    with pytest.raises(InputError) as e:
        load_audio(path)
    check_one_line(e, "empty", path)


@pytest.mark.parametrize(
    "name,content",
    [
        ("notes.wav", b"these are some notes\nover two lines\n" * 20),
        ("noise.mp3", bytes(np.random.default_rng(1).integers(0, 256, 5000, dtype=np.uint8))),
        ("head.flac", b"fLaC\x00\x00\x00\x22" + b"\x00" * 10),
    ],
)
def test_not_a_media_file(tmp_path, name, content):
    path = tmp_path / name
    path.write_bytes(content)
    with pytest.raises(InputError) as e:
        load_audio(path)
    message = check_one_line(e, path)
    assert "not an audio file" in message or "corrupt" in message or "no samples" in message


def test_corrupt_stream(tmp_path):
    rate = 44100
    path = encode(tmp_path / "good.m4a", "ipod", "aac", tone(440, rate, rate)[None], rate, "mono")
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 2000] = bytes(np.random.default_rng(2).integers(0, 256, 2000, dtype=np.uint8))
    bad = tmp_path / "bad.m4a"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError) as e:
        load_audio(bad)
    check_one_line(e, "corrupt", bad)


def test_video_without_audio(tmp_path):
    from vasa_engine.io.video import VideoWriter

    path = tmp_path / "silent_film.mp4"
    with VideoWriter(path, fps=25, preset="ultrafast") as w:
        w.write(np.zeros((3, 64, 64, 3), dtype=np.uint8))
    with pytest.raises(InputError) as e:
        load_audio(path)
    check_one_line(e, "no audio stream", path)


def test_wav_with_no_samples(tmp_path):
    path = write_raw_wav(tmp_path / "hollow.wav", 16000, 1, b"")
    with pytest.raises(InputError) as e:
        load_audio(path)
    check_one_line(e, "no samples", path)


def test_nan_in_float_file(tmp_path):
    x = tone(440, SAMPLE_RATE, 1600).astype(np.float32)
    x[100] = np.nan
    path = encode(tmp_path / "nan.wav", "wav", "pcm_f32le", x[None], SAMPLE_RATE, "mono")
    with pytest.raises(InputError) as e:
        load_audio(path)
    check_one_line(e, "NaN or Inf", path)


def test_too_long_from_header(tmp_path):
    rate = 8000
    path = write_raw_wav(tmp_path / "long.wav", rate, 1, bytes(612 * rate * 2))
    with pytest.raises(InputError) as e:
        load_audio(path)
    message = check_one_line(e)
    assert message == f"audio is 612.0 s long, longer than the 600 s limit (--max-audio-seconds): {path}"
    assert DEFAULT_MAX_SECONDS == 600
    assert len(load_audio(path, max_seconds=None)) == 612 * SAMPLE_RATE
    assert len(load_audio(path, max_seconds=700)) == 612 * SAMPLE_RATE


def test_too_long_small_limit(tmp_path):
    path = write_wav(tmp_path / "two.wav", np.zeros(16000), 8000)
    with pytest.raises(InputError) as e:
        load_audio(path, max_seconds=1.5)
    check_one_line(e, "audio is 2.0 s long", "1.5 s limit", path)
    assert len(load_audio(path, max_seconds=2)) == 2 * SAMPLE_RATE


@pytest.mark.parametrize("stated", [None, 0.5])
def test_too_long_despite_header(tmp_path, monkeypatch, stated):
    """A header that understates the length (or gives none) is caught while decoding."""
    path = encode(tmp_path / "long.flac", "flac", "flac", np.zeros((1, 3 * 8000)), 8000, "mono")
    monkeypatch.setattr(audio_mod, "_stated_duration", lambda container, stream: stated)
    with pytest.raises(InputError) as e:
        load_audio(path, max_seconds=1)
    check_one_line(e, "audio is longer than the 1 s limit (--max-audio-seconds)", path)


# ----------------------------------------------------------------------------------------------------
# bad arrays and arguments


@pytest.mark.parametrize(
    "array,part",
    [
        (np.zeros(100, dtype=np.complex64), "dtype complex64"),
        (np.zeros(100, dtype=bool), "dtype bool"),
        (np.array([0.0, 0.1, None], dtype=object), "dtype object"),
        (np.zeros(100, dtype=np.int8), "dtype int8"),
        (np.zeros(100, dtype=np.int64), "dtype int64"),
        (np.zeros((2, 100, 2), dtype=np.float32), "shape (2, 100, 2)"),
        (np.zeros((), dtype=np.float32), "shape ()"),
        (np.zeros((100, 100), dtype=np.float32), "no channel axis"),
        (np.zeros(0, dtype=np.float32), "no samples"),
        (np.zeros((0, 2), dtype=np.float32), "no samples"),
        (np.array([0.0, np.nan, 0.0], dtype=np.float32), "audio contains NaN or Inf samples"),
        (np.array([0.0, np.inf], dtype=np.float64), "audio contains NaN or Inf samples"),
        (torch.tensor([0.0, float("-inf")]), "audio contains NaN or Inf samples"),
    ],
)
def test_bad_arrays(array, part):
    with pytest.raises(InputError) as e:
        load_audio(array, 16000)
    check_one_line(e, part)


def test_array_needs_sample_rate():
    with pytest.raises(InputError) as e:
        load_audio(np.zeros(100, dtype=np.float32))
    check_one_line(e, "sample_rate is required")


@pytest.mark.parametrize("rate", [0, -16000, 16000.0, 16000.5, True, "16000", 10**9])
def test_bad_sample_rate(rate):
    with pytest.raises(InputError) as e:
        load_audio(np.zeros(100, dtype=np.float32), rate)
    check_one_line(e, "sample rate")


def test_sample_rate_with_a_path(tmp_path):
    path = write_wav(tmp_path / "a.wav", np.zeros(100), 16000)
    with pytest.raises(InputError) as e:
        load_audio(path, 16000)
    check_one_line(e, "sample_rate", path)


@pytest.mark.parametrize("limit", [0, -1, float("nan"), float("inf"), "600"])
def test_bad_max_seconds(limit):
    with pytest.raises(InputError) as e:
        load_audio(np.zeros(100, dtype=np.float32), 16000, max_seconds=limit)
    check_one_line(e, "max audio seconds")


def test_array_too_long():
    x = np.zeros(3 * 8000, dtype=np.int16)
    with pytest.raises(InputError) as e:
        load_audio(x, 8000, max_seconds=2)
    check_one_line(e, "audio is 3.0 s long, longer than the 2 s limit (--max-audio-seconds)")
    assert len(load_audio(x, 8000, max_seconds=None)) == 3 * SAMPLE_RATE


def test_unsupported_source_type():
    with pytest.raises(InputError) as e:
        load_audio([0.0, 0.1, 0.2], 16000)
    check_one_line(e, "unsupported audio source type list")


# ----------------------------------------------------------------------------------------------------
# write_wav


def test_write_wav_round_trip(tmp_path):
    x = np.random.default_rng(3).integers(-32768, 32768, 3000).astype(np.int16)
    path = write_wav(tmp_path / "r.wav", x, SAMPLE_RATE)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate(), w.getnframes()) == (1, 2, 16000, 3000)
        back = np.frombuffer(w.readframes(3000), dtype="<i2")
    np.testing.assert_array_equal(back, x)
    np.testing.assert_array_equal(load_audio(path), x.astype(np.float32) / 32768)
    assert [p.name for p in tmp_path.iterdir()] == ["r.wav"]  # no temporary file left


def test_write_wav_float_stereo_and_clipping(tmp_path):
    x = np.array([[0.5, -0.5], [2.0, -2.0], [0.0, 0.25]])  # (samples, channels)
    path = write_wav(tmp_path / "s.wav", x, 8000)
    with wave.open(str(path)) as w:
        assert (w.getnchannels(), w.getframerate(), w.getnframes()) == (2, 8000, 3)
        back = np.frombuffer(w.readframes(3), dtype="<i2").reshape(3, 2)
    np.testing.assert_array_equal(back, [[16384, -16384], [32767, -32768], [0, 8192]])


def test_write_wav_bad_folder(tmp_path):
    with pytest.raises(InputError) as e:
        write_wav(tmp_path / "missing" / "x.wav", np.zeros(10), 16000)
    check_one_line(e, "folder does not exist")


# ----------------------------------------------------------------------------------------------------
# bundled speech and module hygiene


def test_bundled_speech():
    assert SPEECH.stat().st_size < 200_000
    with wave.open(str(SPEECH)) as w:
        assert (w.getnchannels(), w.getsampwidth(), w.getframerate()) == (1, 2, SAMPLE_RATE)
    y = load_audio(SPEECH)
    assert y.dtype == np.float32 and y.ndim == 1
    assert 3.0 <= audio_duration(y) <= 8.0
    assert rms(y) > 0.01


def test_imports_and_arrays_work_without_pyav():
    code = (
        "import sys; sys.modules['av'] = None\n"
        "import numpy as np\n"
        "import vasa_engine.io.audio as a\n"
        "y = a.load_audio(np.ones(160, dtype=np.int16), 16000)\n"
        "assert y.shape == (160,) and y.dtype == np.float32\n"
        "print('ok')\n"
    )
    env = dict(os.environ)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "ok"
