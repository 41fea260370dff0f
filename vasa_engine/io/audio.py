"""Speech loading: any audio file or sample array in, 16 kHz mono ``float32`` out.

Conventions: audio is a 1-D numpy ``float32`` array of samples at :data:`SAMPLE_RATE` (16 kHz), nominally
in [-1, 1]. Resampling and sample-format conversion use libswresample through PyAV's
``av.AudioResampler``.

PyAV is imported inside the functions that need it, never at module level: importing this module must
work on a machine that has no PyAV installed. Arrays already at 16 kHz are converted without PyAV.
"""

from __future__ import annotations

import math
import os
import secrets
import wave
from fractions import Fraction
from pathlib import Path
from typing import Any, List, Optional, Tuple, Union

import numpy as np

from ..errors import InputError, one_line

__all__ = [
    "SAMPLE_RATE",
    "DEFAULT_MAX_SECONDS",
    "MAX_CHANNELS",
    "load_audio",
    "audio_duration",
    "write_wav",
]

#: Sample rate of everything :func:`load_audio` returns, in Hz.
SAMPLE_RATE = 16000

#: Default upper bound on the length of the input audio, in seconds (the CLI's ``--max-audio-seconds``).
DEFAULT_MAX_SECONDS = 600

#: Most channels a 2-D sample array may have; the axis of this length or shorter is the channel axis.
MAX_CHANNELS = 8

#: Highest input sample rate accepted for arrays, in Hz.
MAX_INPUT_RATE = 1_000_000

# Samples per frame handed to the resampler when converting an array.
_CHUNK = 1 << 16

PathLike = Union[str, "os.PathLike[str]"]
ARRAY_NAME = "<array>"


def load_audio(
    source: Any,
    sample_rate: Optional[int] = None,
    *,
    max_seconds: Optional[float] = DEFAULT_MAX_SECONDS,
) -> np.ndarray:
    """Load speech as a 1-D ``float32`` array of mono samples at 16 kHz.

    ``source`` is one of:

    * a path (``str`` or ``os.PathLike``) to an audio file: WAV, FLAC, MP3, M4A/AAC, OGG (Vorbis or Opus),
      or anything else FFmpeg decodes, including the audio track of a video file. The file's first audio
      stream is used. ``sample_rate`` must be left ``None``: a file carries its own rate.
    * a numpy array or torch tensor (any device) of samples, with ``sample_rate`` (a positive int, in Hz)
      giving its rate. Accepted shapes: 1-D (mono); 2-D as (samples, channels) or (channels, samples),
      where the channel axis is the one of length :data:`MAX_CHANNELS` (8) or less. When both axes are that
      short, the array is read as (samples, channels). Accepted dtypes: ``int16`` (scaled by 1/32768),
      ``int32`` (scaled by 1/2**31), ``float16``, ``float32``, ``float64`` (taken as is).

    Channels are averaged with equal weights into one. Any other rate is resampled to 16 kHz with
    libswresample; the result has ``round(duration * 16000)`` samples, where ``duration`` is the decoded
    input length. Values are not clipped. Silence is valid input.

    ``max_seconds`` bounds the input length (``None``: no bound). For a file the length is checked from the
    container's stated duration before decoding, and again while decoding, so a wrong header cannot get a
    longer file through.

    Raises :class:`~vasa_engine.errors.InputError` with a one-line message naming the problem (and the file,
    for a path) when the file is missing, is a directory, is empty, is not a media file or is corrupt, has
    no audio stream, decodes to no samples, is longer than ``max_seconds``, or contains NaN/Inf; and when an
    array has the wrong rank or dtype, no samples, NaN or Inf samples, or ``sample_rate`` is missing or not
    a positive integer.
    """
    limit = _check_max_seconds(max_seconds)
    if isinstance(source, (str, os.PathLike)):
        if sample_rate is not None:
            raise InputError(
                f"sample_rate is only for array input (a file carries its own rate), got {sample_rate!r} "
                f"for file {_path_name(source)}"
            )
        return _from_path(source, limit)
    array = _to_numpy(source)
    if isinstance(array, np.ndarray):
        if sample_rate is None:
            raise InputError("sample_rate is required when audio is given as an array or tensor")
        rate = _check_rate(sample_rate)
        return _from_array(array, rate, limit)
    raise InputError(
        f"unsupported audio source type {type(source).__name__}: a path, a numpy array or a torch tensor is needed"
    )


def audio_duration(samples: Any, sample_rate: int = SAMPLE_RATE) -> float:
    """Length in seconds of ``samples`` at ``sample_rate``.

    ``samples`` is 1-D, or 2-D with its channel axis chosen as in :func:`load_audio` (the axis of
    :data:`MAX_CHANNELS` or fewer; the second one when both are that short).
    """
    rate = _check_rate(sample_rate)
    a = _to_numpy(samples)
    if not isinstance(a, np.ndarray):
        raise InputError(f"audio samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    if a.ndim == 1:
        n = a.shape[0]
    elif a.ndim == 2:
        n = a.shape[1] if _channels_first(a.shape) else a.shape[0]
    else:
        raise InputError(f"audio array must be 1-D or 2-D, got shape {tuple(a.shape)}")
    return n / rate


def write_wav(path: PathLike, samples: Any, sample_rate: int = SAMPLE_RATE) -> Path:
    """Write samples to a 16-bit PCM WAV file, atomically; returns the path.

    ``samples`` follows the array rules of :func:`load_audio` (1-D mono, or 2-D with up to 8 channels;
    ``int16``, ``int32`` or float). Float values are clipped to [-1, 1] and scaled by 32768 (so ``int16``
    data round-trips exactly). The file is written to a hidden temporary file in the same folder and moved
    over ``path`` in one step (``os.replace``); on failure nothing is left behind.
    """
    rate = _check_rate(sample_rate)
    a = _to_numpy(samples)
    if not isinstance(a, np.ndarray):
        raise InputError(f"audio samples must be a numpy array or torch tensor, got {type(samples).__name__}")
    chans = _to_channels(a, ARRAY_NAME)
    if a.dtype == np.int16:
        pcm = _channel_view(a)
    else:
        scaled = np.rint(np.clip(chans, -1.0, 1.0) * 32768.0)
        pcm = np.clip(scaled, -32768, 32767).astype(np.int16)
    interleaved = np.ascontiguousarray(pcm.T).astype("<i2", copy=False)

    target = Path(_path_name(path))
    if target.is_dir():
        raise InputError(f"output path is a directory: {target}")
    folder = target.parent
    if not folder.is_dir():
        raise InputError(f"output folder does not exist: {folder}")
    tmp = folder / f".{target.stem}.{secrets.token_hex(4)}.wav.part"
    try:
        with wave.open(str(tmp), "wb") as w:
            w.setnchannels(pcm.shape[0])
            w.setsampwidth(2)
            w.setframerate(rate)
            w.writeframes(interleaved.tobytes())
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    except OSError as e:
        _unlink_quietly(tmp)
        reason = e.strerror or type(e).__name__
        raise InputError(f"cannot write WAV file ({reason}): {target}") from None
    except BaseException:
        _unlink_quietly(tmp)
        raise
    return target


# ----------------------------------------------------------------------------------------------------
# internals


def _path_name(path) -> str:
    name = os.fspath(path)
    if isinstance(name, bytes):  # os.PathLike may yield bytes
        name = os.fsdecode(name)
    return name


def _unlink_quietly(path: Path) -> None:
    try:
        os.unlink(path)
    except OSError:
        pass


def _format_seconds(x: float) -> str:
    return f"{x:g}"


def _too_long(seconds: Optional[float], limit: float, name: str) -> InputError:
    if seconds is None:
        head = "audio is longer"
    else:
        head = f"audio is {seconds:.1f} s long, longer"
    return InputError(f"{head} than the {_format_seconds(limit)} s limit (--max-audio-seconds): {name}")


def _check_max_seconds(max_seconds) -> Optional[float]:
    if max_seconds is None:
        return None
    if isinstance(max_seconds, bool) or not isinstance(max_seconds, (int, float, np.integer, np.floating)):
        raise InputError(f"max audio seconds must be a positive number, got {max_seconds!r}")
    value = float(max_seconds)
    if not math.isfinite(value) or value <= 0:
        raise InputError(f"max audio seconds must be a positive number, got {max_seconds!r}")
    return value


def _check_rate(rate) -> int:
    if isinstance(rate, bool) or not isinstance(rate, (int, np.integer)) or int(rate) <= 0:
        raise InputError(f"sample rate must be a positive integer (Hz), got {rate!r}")
    if int(rate) > MAX_INPUT_RATE:
        raise InputError(f"sample rate {int(rate)} Hz is too high (at most {MAX_INPUT_RATE} Hz)")
    return int(rate)


def _to_numpy(x) -> Any:
    if isinstance(x, np.ndarray):
        return x
    if hasattr(x, "detach") and hasattr(x, "cpu") and hasattr(x, "numpy"):  # torch.Tensor, any device
        t = x.detach().cpu()
        if str(getattr(t, "dtype", "")) == "torch.bfloat16":  # numpy has no bfloat16
            t = t.float()
        return t.numpy()
    return x


def _channels_first(shape: Tuple[int, ...]) -> bool:
    """For a 2-D shape: True when it reads as (channels, samples), False for (samples, channels)."""
    rows, cols = shape
    if cols <= MAX_CHANNELS and cols <= rows:
        return False
    return rows <= MAX_CHANNELS


def _channel_view(a: np.ndarray) -> np.ndarray:
    """A 1-D or 2-D array as (channels, samples), without conversion. Shapes are checked by the caller."""
    if a.ndim == 1:
        return a[None, :]
    return a if _channels_first(a.shape) else a.T


def _to_channels(a: np.ndarray, name: str) -> np.ndarray:
    """Check an input array and return it as ``float32`` (channels, samples), scaled to [-1, 1] for ints."""
    where = "" if name == ARRAY_NAME else f": {name}"
    if a.ndim not in (1, 2):
        raise InputError(
            f"audio array must be 1-D (mono) or 2-D (samples, channels) / (channels, samples), "
            f"got shape {tuple(a.shape)}{where}"
        )
    if a.ndim == 2:
        rows, cols = a.shape
        if min(rows, cols) > MAX_CHANNELS:
            raise InputError(
                f"audio array of shape {tuple(a.shape)} has no channel axis of length {MAX_CHANNELS} or less{where}"
            )
        if min(rows, cols) == 0:
            raise InputError(f"audio has no samples (array of shape {tuple(a.shape)}){where}")
    if a.size == 0:
        raise InputError(f"audio has no samples (array of shape {tuple(a.shape)}){where}")

    return _channel_view(samples_to_float32(a, "audio", where))


def samples_to_float32(a: np.ndarray, subject: str, where: str = "") -> np.ndarray:
    """Samples as float32: int16 and int32 scaled to [-1, 1), floats checked finite. InputError naming `subject`
    (and ending with `where`) for NaN or Inf, values beyond float32's range, or another dtype."""
    if a.dtype == np.int16:
        return a.astype(np.float32) / np.float32(32768.0)
    if a.dtype == np.int32:
        return (a.astype(np.float64) / 2147483648.0).astype(np.float32)
    if a.dtype in (np.float16, np.float32, np.float64):
        if not np.isfinite(a).all():
            raise InputError(f"{subject} contains NaN or Inf samples{where}")
        f = a.astype(np.float32)
        if not np.isfinite(f).all():  # float64 values beyond the float32 range
            raise InputError(f"{subject} sample values are too large for float32 (max |x| {np.abs(a).max():.4g})"
                             f"{where}")
        return f
    raise InputError(f"{subject} must be int16, int32, float16, float32 or float64, got dtype {a.dtype}{where}")


def _mono(chans: np.ndarray) -> np.ndarray:
    if chans.shape[0] == 1:
        return np.ascontiguousarray(chans[0], dtype=np.float32)
    return np.ascontiguousarray(chans.mean(axis=0, dtype=np.float64).astype(np.float32))


def _fit_length(x: np.ndarray, n: int) -> np.ndarray:
    """Trim or zero-pad a 1-D array to exactly ``n`` samples (the resampler may be off by one or two)."""
    if x.shape[0] == n:
        return x
    if x.shape[0] > n:
        return np.ascontiguousarray(x[:n])
    out = np.zeros(n, dtype=np.float32)
    out[: x.shape[0]] = x
    return out


def _expected_length(duration: Fraction) -> int:
    return int(math.floor(duration * SAMPLE_RATE + Fraction(1, 2)))


def _from_array(a: np.ndarray, rate: int, limit: Optional[float]) -> np.ndarray:
    chans = _to_channels(a, ARRAY_NAME)
    n = chans.shape[1]
    if limit is not None and n / rate > limit:
        raise _too_long(n / rate, limit, ARRAY_NAME)
    mono = _mono(chans)
    if rate == SAMPLE_RATE:
        return mono
    return _resample_mono(mono, rate)


def _resample_mono(x: np.ndarray, rate: int) -> np.ndarray:
    """Resample 1-D ``float32`` samples from ``rate`` to 16 kHz with libswresample."""
    import av

    resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
    out: List[np.ndarray] = []
    for start in range(0, x.shape[0], _CHUNK):
        chunk = np.ascontiguousarray(x[start : start + _CHUNK])
        frame = av.AudioFrame.from_ndarray(chunk[None, :], format="flt", layout="mono")
        frame.sample_rate = rate
        frame.pts = start
        frame.time_base = Fraction(1, rate)
        for o in resampler.resample(frame):
            out.append(o.to_ndarray().reshape(-1))
    for o in resampler.resample(None):  # flush: the filter's last samples
        out.append(o.to_ndarray().reshape(-1))
    y = np.concatenate(out) if out else np.zeros(0, dtype=np.float32)
    return _fit_length(y.astype(np.float32, copy=False), _expected_length(Fraction(x.shape[0], rate)))


def _stated_duration(container, stream) -> Optional[float]:
    """The audio length the container states before decoding, in seconds (``None`` if it states none)."""
    if stream.duration is not None and stream.time_base is not None and stream.duration > 0:
        return float(stream.duration * stream.time_base)
    if container.duration is not None and container.duration > 0:
        return container.duration / 1_000_000
    return None


class _Decoder:
    """Feeds decoded frames of any format, layout and rate to libswresample and collects 16 kHz planar float.

    Channels stay separate through the resampler and are averaged afterwards, so every channel gets the
    same weight (libswresample's own downmix weights channels unequally). A change of layout or rate inside
    the stream starts a new resampler after flushing the old one.
    """

    def __init__(self) -> None:
        self.key = None
        self.resampler = None
        self.pieces: List[np.ndarray] = []
        self.duration = Fraction(0)  # decoded input length, in seconds
        self.pos = 0

    def push(self, frame) -> None:
        import av

        key = (frame.format.name, frame.layout.name, frame.layout.nb_channels, frame.sample_rate)
        if key != self.key:
            self.flush()
            self.key = key
            self.resampler = av.AudioResampler(format="fltp", layout=frame.layout, rate=SAMPLE_RATE)
            self.pos = 0
        rate = frame.sample_rate
        frame.pts = self.pos
        frame.time_base = Fraction(1, rate)
        self.pos += frame.samples
        self.duration += Fraction(frame.samples, rate)
        for o in self.resampler.resample(frame):
            self._collect(o)

    def flush(self) -> None:
        if self.resampler is not None:
            for o in self.resampler.resample(None):
                self._collect(o)
            self.resampler = None

    def _collect(self, frame) -> None:
        planes = frame.to_ndarray()  # (channels, samples), float32
        self.pieces.append(_mono(planes.reshape(frame.layout.nb_channels, -1)))

    def result(self) -> np.ndarray:
        self.flush()
        y = np.concatenate(self.pieces) if self.pieces else np.zeros(0, dtype=np.float32)
        return _fit_length(y.astype(np.float32, copy=False), _expected_length(self.duration))


def _from_path(path, limit: Optional[float]) -> np.ndarray:
    import av

    name = _path_name(path)
    p = Path(name)
    if not p.exists():
        raise InputError(f"audio file not found: {name}")
    if p.is_dir():
        raise InputError(f"is a directory, not an audio file: {name}")
    try:
        size = p.stat().st_size
    except OSError as e:
        raise InputError(f"audio file not readable ({e.strerror or type(e).__name__}): {name}") from None
    if size == 0 and p.is_file():
        raise InputError(f"audio file is empty (0 bytes): {name}")

    # FFmpeg reads "proto:..." as a protocol (concat:, http:, ...); "file:" makes it open the local file.
    url = f"file:{os.path.abspath(name)}" if ":" in name else name
    try:
        container = av.open(url, mode="r")
    except PermissionError:
        raise InputError(f"audio file not readable (permission denied): {name}") from None
    except (OSError, av.FFmpegError, ValueError, UnicodeDecodeError) as e:
        reason = getattr(e, "strerror", None) or one_line(e)
        raise InputError(f"not an audio file, or corrupt ({one_line(reason)}): {name}") from None

    with container:
        if not container.streams.audio:
            raise InputError(f"no audio stream in file: {name}")
        stream = container.streams.audio[0]
        if limit is not None:
            stated = _stated_duration(container, stream)
            if stated is not None and stated > limit:
                raise _too_long(stated, limit, name)

        decoder = _Decoder()
        try:
            for frame in container.decode(stream):
                if not frame.samples:
                    continue
                decoder.push(frame)
                if limit is not None and decoder.duration > limit:
                    raise _too_long(None, limit, name)
            samples = decoder.result()
        except InputError:
            raise
        except (av.FFmpegError, OSError, ValueError, EOFError) as e:
            reason = getattr(e, "strerror", None) or one_line(e)
            raise InputError(f"corrupt audio ({one_line(reason)}): {name}") from None

    if decoder.duration == 0:
        raise InputError(f"audio decodes to no samples: {name}")
    if not np.isfinite(samples).all():
        raise InputError(f"audio contains NaN or Inf samples: {name}")
    return samples
