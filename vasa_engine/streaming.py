"""Streaming: speech chunks in, 25 fps frames out, with bounded latency.

`Engine.stream(avatar, controls, **settings)` returns a `StreamSession`::

    with engine.stream(avatar, chunk_ms=200, lookahead_ms=80) as session:
        for pcm in microphone_chunks():           # any length, any rate (fixed per utterance), mono or (n, ch)
            show(session.push(pcm, 48000))        # the frames that are ready now (a list of StreamFrame)
        show(session.flush())                     # end of the utterance: the rest
    print(session.report())                       # latency p50 / p95 / max, with chunk size and look-ahead

Time line. Everything runs in JoyVASA's padded clip coordinates: each utterance starts with 1280 zero samples
(two lead-in frames), and padded frame j (640 samples at 16 kHz) shows original audio frame i = j - 2, exactly as
offline generation (`Engine.generate_motion`) lays out a clip. The lead-in frames are generated, used as context
and as the reference of the relative driving parameters, and never returned. An utterance of S samples yields
max(1, round(S / 640)) frames once flushed, the offline count.

Audio features for new audio only. The audio encoder (HuBERT / wav2vec2, bidirectional) runs per chunk on a span
of `past_ms` of audio before the new frames, the new frames, and `lookahead_ms` after them, padded as JoyVASA pads
a window (`AudioFeatureEncoder.window_features`); only the 25 fps features of the new frames (and of the look-ahead
frames, see below) are kept. Offline, each 4 s window is encoded on its own, so the offline features themselves
have edges; the streamed features differ from them most at the newest frames, whose right context is the
look-ahead only. tests/test_streaming.py measures the difference against the offline features; the default past
(1000 ms) is where a longer past stops helping on the reduced encoder (numbers in that test's docstring).

Motion per chunk. A frame is ready when its audio and its look-ahead have arrived. Every `chunk_ms` of ready frames
(n frames) the generator runs one window placed so that the new frames sit right after the context: Lp context
frames (the last committed motion and its audio features; while fewer than Lp frames exist, the learned start
context fills the slots before frame 0, as it does for a first window offline), then L frames whose audio features
are the new frames' and the look-ahead frames' (the audio heard so far) followed by the model's null audio feature
(`null_audio_feat`: what "no audio" means to this model) for the future not heard yet. The window is sampled with a
few-step sampler (DPM-Solver++(2M), 5 steps unless the controls say otherwise), and only the n new frames are
committed: they become the next window's context, so
consecutive chunks join the way consecutive offline windows do. Every window commits exactly n frames (the last
one of a flushed utterance fewer), whatever the sizes of the pushes. Start noise: the first window uses offline's
(`controls.seed`); each later window draws its own from (seed, its first frame), so the result depends on the
audio and the seed only, never on timing. Offline reuses one noise for every window; streaming cannot, because
its windows overlap: re-using it makes every chunk's new frames follow the same noise rows, and with an exact
Gaussian-process predictor the streamed motion then collapses to a nearly repeating pattern (99th percentile of
the frame-to-frame jump 0.19 against 0.45 offline), and a noise rolled along with the window (frame j always on
row j mod L) is rougher than offline (largest jump 0.81 against 0.60 at 40 ms chunks); a fresh draw per window
makes each chunk an exact conditional sample: the largest jump is 0.60 / 0.61 / 0.51 at 200 / 120 / 40 ms chunks
(offline 0.60, a maximum over 70,000 jumps that moves by a few percent with the seed), the 99th percentile 0.55,
and joins between chunks jump no more than frames inside chunks (tests/test_streaming.py, with a control without
context whose largest jump is 2.35). On
CUDA the sampler loop is captured in a CUDA graph (static buffers, replayed per chunk; eager fallback if capture
fails).

Driving parameters. Generated motion is de-normalized with the motion template and turned into the portrait's
driving parameters incrementally (`IncrementalDriving`): the same causal moving average of pose, scale and
translation, relative to the utterance's first generated frame, as `generation.relative_driving` offline.

Renderer. On CUDA the per-frame path (keypoints, blink offset, stitching, warp, decode) is captured per block size
as a graph of the session's own, and the frames of a chunk are rendered on a dedicated stream (an event orders it
after the motion)
and copied to pinned memory, and the next chunk's features and motion are launched on the compute stream before
the worker waits for that render, so rendering chunk k overlaps sampling chunk k+1. On the CPU the same code runs
sequentially.

Threads and back-pressure. One worker thread per session does the compute. `push` validates and resamples the
chunk in the caller's thread (so a bad chunk raises there and changes nothing), queues it, and returns the frames
finished so far. Audio accepted but not yet turned into frames is bounded by `max_pending_ms`: beyond it `push`
blocks until the worker catches up (with `block=False` it raises `StreamBusy` instead); finished frames not yet
taken are bounded by `max_ready_frames` (the worker waits for the consumer). A push that blocks with `collect=True`
keeps taking finished frames while it waits, so a single thread never deadlocks. One producer thread (`push`,
`flush`, `interrupt` with `collect=False`) and one consumer thread (`get`, `frames`, `poll`) may share a session:
one lock (a condition variable) guards the queues and counters. `apush`, `aflush`, `aget`, `aframes` and
`async with` are the asyncio forms; they run the blocking calls in the loop's default executor.

Idle frames and interruptions. With `idle=True` the session keeps a 25 fps clock from its creation: when the
worker has nothing to compute and the frames produced fall more than `idle_slack_ms` behind the clock, it produces
frames of the face at rest (the portrait's own pose and expression) with a blink every `blink_period_s` (the eye
retargeting ratio dipping to closed, as `motion_script` does), so a real-time consumer never stalls; an utterance
whose audio stops for `end_after_ms` is finished as if flushed. `interrupt()` (or `push(..., new_utterance=True)`)
drops the audio and unreturned frames of the current utterance; the next audio starts a new utterance. Every change
between utterances and idle frames is cross-faded over `crossfade_frames` frames (raised cosine, from the last
frame shown), so the motion joins smoothly.

Latency. Each speech frame records when its own audio reached the engine (the push holding its last sample), when
the audio it depends on, look-ahead included, had arrived (or the utterance was flushed), when its chunk's compute
started and finished, and when it was returned. `StreamFrame.latency_s` = returned - own audio in, split into
`lookahead_s` (waiting for the look-ahead: algorithmic) and `compute_s` (chunking, queueing, compute, hand-out).
`LatencyReport` gives p50 / p95 / max of each, always with the chunk size and look-ahead used, and the sustained
frame rate.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections import deque
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, AsyncIterator, Callable, Iterator

import numpy as np
import torch

from .audio_features import JOYVASA_CLIP_PAD, SAMPLE_RATE, SAMPLES_PER_VIDEO_FRAME
from .backend import use as use_backend
from .errors import InputError, VasaError
from .generation import (LEAD_IN_FRAMES, Controls, check_controls, euler_from_rotation, model_conditions,
                         sample_window, start_noise)
from .graphs import GraphCache
from .io.audio import MAX_CHANNELS, samples_to_float32
from .models.keypoints import rotation_matrix
from .models.retarget import apply_stitching, retarget_delta

log = logging.getLogger("vasa_engine")

FPS = 25
FRAME_MS = 1000 // FPS  # 40
LIP_KEYPOINTS = (6, 12, 14, 17, 19, 20)
MAX_RATE = 1_000_000
PARAM_KEYS = ("pitch", "yaw", "roll", "exp", "t", "scale")
DEFAULT_STREAM_STEPS = 5


class StreamBusy(VasaError):
    """push(block=False) (or one with a timeout) found more unprocessed audio queued than `max_pending_ms`."""


class StreamClosed(InputError):
    """A call on a session that has been closed."""


# --------------------------------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class StreamSettings:
    """What a stream can be tuned with (all keyword arguments of `Engine.stream`).

    chunk_ms: audio per generator window (multiple of 40, 40 .. 40 L); lookahead_ms: future audio a frame waits
    for (multiple of 40, 0 .. 1000); past_ms: audio before the new frames the encoder sees (0 .. 10000).
    max_pending_ms: accepted audio not yet turned into frames before push blocks (at least chunk + look-ahead + 40).
    max_ready_frames: finished frames not yet taken before the worker waits. render: False returns motion only.
    idle: keep a 25 fps clock and fill gaps with idle frames; idle_slack_ms: how far behind the clock before idle
    frames start (default chunk + look-ahead + 200 ms); end_after_ms: with idle, finish an utterance whose audio
    stopped this long ago (None: never). blink_period_s: idle blink period. crossfade_frames: frames of the
    cross-fade between utterances and idle frames. cuda_graphs: capture the sampler loop and the renderer on CUDA.
    batch_size: frames rendered per batch (default: the engine's). denoiser_factory: replaces the guided
    transformer, called as (window, audio (1, L, d), prev_motion (1, c, M) or None, prev_audio (1, c, d) or None)
    with the c <= Lp real context frames (tests plug exact predictors of known distributions in here).
    """

    chunk_ms: int = 200
    lookahead_ms: int = 80
    past_ms: int = 1000
    max_pending_ms: int = 2000
    max_ready_frames: int = 100
    render: bool = True
    idle: bool = False
    idle_slack_ms: int | None = None
    end_after_ms: int | None = 600
    blink_period_s: float = 4.0
    crossfade_frames: int = 6
    cuda_graphs: bool = True
    batch_size: int | None = None
    denoiser_factory: Callable | None = None

    def check(self, window_frames: int) -> None:
        def whole_frames(name: str, value, low: int, high: int) -> None:
            if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value % FRAME_MS:
                raise InputError(f"{name} must be a whole number of {FRAME_MS} ms video frames, got {value!r}")
            if not low <= value <= high:
                raise InputError(f"{name} must lie in [{low}, {high}] ms, got {value}")

        whole_frames("chunk_ms", self.chunk_ms, FRAME_MS, FRAME_MS * window_frames)
        whole_frames("lookahead_ms", self.lookahead_ms, 0, 1000)
        if isinstance(self.past_ms, bool) or not isinstance(self.past_ms, (int, np.integer)) \
                or not 0 <= self.past_ms <= 10000:
            raise InputError(f"past_ms must be an integer in [0, 10000], got {self.past_ms!r}")
        low = self.chunk_ms + self.lookahead_ms + FRAME_MS
        if not isinstance(self.max_pending_ms, (int, float)) or not low <= self.max_pending_ms <= 600_000:
            raise InputError(f"max_pending_ms must lie in [{low}, 600000] (at least chunk + look-ahead + one frame), "
                             f"got {self.max_pending_ms!r}")
        if not isinstance(self.max_ready_frames, int) or self.max_ready_frames < 1:
            raise InputError(f"max_ready_frames must be a positive integer, got {self.max_ready_frames!r}")
        if not isinstance(self.crossfade_frames, int) or not 0 <= self.crossfade_frames <= 100:
            raise InputError(f"crossfade_frames must be an integer in [0, 100], got {self.crossfade_frames!r}")
        if not (isinstance(self.blink_period_s, (int, float)) and 1.0 <= self.blink_period_s <= 60.0):
            raise InputError(f"blink_period_s must lie in [1, 60], got {self.blink_period_s!r}")
        for name in ("idle_slack_ms", "end_after_ms"):
            value = getattr(self, name)
            if value is not None and not (isinstance(value, (int, float)) and 0 <= value <= 60_000):
                raise InputError(f"{name} must be None or lie in [0, 60000] ms, got {value!r}")
        if self.batch_size is not None and (not isinstance(self.batch_size, int) or self.batch_size < 1):
            raise InputError(f"batch_size must be a positive integer, got {self.batch_size!r}")

    @property
    def chunk_frames(self) -> int:
        return self.chunk_ms // FRAME_MS

    @property
    def lookahead_frames(self) -> int:
        return self.lookahead_ms // FRAME_MS

    @property
    def past_frames(self) -> int:
        return -(-self.past_ms // FRAME_MS)


# --------------------------------------------------------------------------------------------------- frames


@dataclass
class StreamFrame:
    """One output frame.

    index: position in the session's output (0, 1, ...). kind: "speech" or "idle". utterance: the utterance it
    belongs to (idle frames: the last one). frame: index within the utterance (speech frames; frame i shows the
    utterance's audio at 40 i ms). image: uint8 (S, S, 3), None when the session does not render. audio: the 640
    samples at 16 kHz it shows (zeros for idle frames). driving: its driving parameters (pitch, yaw, roll (1,),
    exp (1, K, 3), t (1, 3), scale (1, 1), eye (1,) or None). generated: the generator's normalized motion (M,)
    (speech frames). Times (time.perf_counter seconds): audio_in: its own audio had reached the engine; ready:
    its look-ahead had too (or the utterance was flushed); started / finished: its chunk's compute; returned.
    """

    index: int
    kind: str
    utterance: int
    frame: int | None
    image: np.ndarray | None
    audio: np.ndarray
    driving: dict[str, torch.Tensor]
    generated: torch.Tensor | None = None
    audio_in: float | None = None
    ready: float | None = None
    started: float | None = None
    finished: float | None = None
    returned: float | None = None

    @property
    def latency_s(self) -> float | None:
        """From its audio reaching the engine to the frame being returned (speech frames)."""
        if self.audio_in is None or self.returned is None:
            return None
        return self.returned - self.audio_in

    @property
    def lookahead_s(self) -> float | None:
        """Of the latency, the wait for the look-ahead audio (algorithmic)."""
        if self.audio_in is None or self.ready is None:
            return None
        return max(0.0, self.ready - self.audio_in)

    @property
    def compute_s(self) -> float | None:
        """Of the latency, everything after the audio it depends on was in: chunking, queueing, compute, hand-out."""
        if self.ready is None or self.returned is None:
            return None
        return max(0.0, self.returned - max(self.ready, self.audio_in))


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": math.nan, "p95": math.nan, "max": math.nan}
    a = np.asarray(values, dtype=np.float64)
    return {"p50": float(np.percentile(a, 50)), "p95": float(np.percentile(a, 95)), "max": float(a.max())}


@dataclass
class LatencyReport:
    """Latency of the speech frames returned so far (seconds), with the settings it was measured under."""

    chunk_ms: int
    lookahead_ms: int
    past_ms: int
    steps: int
    frames: int
    speech_frames: int
    idle_frames: int
    total: dict[str, float]
    lookahead: dict[str, float]
    compute: dict[str, float]
    fps: float  # frames returned / seconds from the first audio in to the last frame returned

    def summary(self) -> str:
        def ms(d):
            return f"p50 {d['p50'] * 1000:.0f} ms, p95 {d['p95'] * 1000:.0f} ms, max {d['max'] * 1000:.0f} ms"

        return (f"latency (chunk {self.chunk_ms} ms, look-ahead {self.lookahead_ms} ms, past {self.past_ms} ms, "
                f"{self.steps} steps; {self.speech_frames} speech frames): {ms(self.total)}\n"
                f"  look-ahead (algorithmic): {ms(self.lookahead)}\n"
                f"  compute (chunking, queueing, compute, hand-out): {ms(self.compute)}\n"
                f"sustained: {self.fps:.2f} fps ({self.frames} frames, {self.idle_frames} idle)")

    def to_dict(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}


# --------------------------------------------------------------------------------------------------- audio input


def check_chunk(pcm, sample_rate) -> tuple[np.ndarray, int]:
    """A pushed chunk -> mono float32 samples and its rate; InputError naming what is wrong."""
    if isinstance(sample_rate, bool) or not isinstance(sample_rate, (int, np.integer)) or not \
            0 < int(sample_rate) <= MAX_RATE:
        raise InputError(f"sample_rate must be a positive integer of at most {MAX_RATE} Hz, got {sample_rate!r}")
    if isinstance(pcm, torch.Tensor):
        pcm = pcm.detach().cpu()
        pcm = (pcm.float() if pcm.dtype == torch.bfloat16 else pcm).numpy()
    if not isinstance(pcm, np.ndarray):
        raise InputError(f"audio chunk must be a numpy array or torch tensor, got {type(pcm).__name__}")
    if pcm.ndim not in (1, 2):
        raise InputError(f"audio chunk must be 1-D (samples,) or 2-D (samples, channels), got shape {pcm.shape}")
    if pcm.ndim == 2 and not 1 <= pcm.shape[1] <= MAX_CHANNELS:
        raise InputError(f"audio chunk of shape {pcm.shape} is not (samples, channels) with 1 to {MAX_CHANNELS} "
                         "channels")
    x = samples_to_float32(pcm, "audio chunk")
    if x.ndim == 2:
        x = x[:, 0] if x.shape[1] == 1 else x.mean(axis=1, dtype=np.float64).astype(np.float32)
    return np.ascontiguousarray(x, dtype=np.float32), int(sample_rate)


class _Resampler:
    """Any rate -> 16 kHz mono float32, chunk by chunk, with libswresample's state kept between chunks."""

    def __init__(self, rate: int):
        self.rate = rate
        self._resampler = None
        self._pts = 0

    def push(self, x: np.ndarray) -> np.ndarray:
        if self.rate == SAMPLE_RATE or x.size == 0:
            return x
        import av

        if self._resampler is None:
            self._resampler = av.AudioResampler(format="flt", layout="mono", rate=SAMPLE_RATE)
        frame = av.AudioFrame.from_ndarray(x[None, :], format="flt", layout="mono")
        frame.sample_rate = self.rate
        frame.pts = self._pts
        frame.time_base = Fraction(1, self.rate)
        self._pts += x.shape[0]
        return self._collect(self._resampler.resample(frame))

    def flush(self) -> np.ndarray:
        if self._resampler is None:
            return np.zeros(0, np.float32)
        out = self._collect(self._resampler.resample(None))
        self._resampler = None
        return out

    @staticmethod
    def _collect(frames) -> np.ndarray:
        parts = [f.to_ndarray().reshape(-1) for f in frames]
        return np.concatenate(parts).astype(np.float32, copy=False) if parts else np.zeros(0, np.float32)


# --------------------------------------------------------------------------------------------------- audio features


class StreamingAudioEncoder:
    """25 fps audio features of new frames only, from a bounded span: `past` frames before them, the new frames,
    `lookahead` frames after; the span is padded as JoyVASA pads a window (`AudioFeatureEncoder.window_features`)."""

    def __init__(self, audio_module, past_frames: int, lookahead_frames: int, device: torch.device,
                 dtype: torch.dtype):
        self.module, self.past, self.lookahead = audio_module, past_frames, lookahead_frames
        self.device, self.dtype = device, dtype

    def span(self, first: int, stop: int) -> tuple[int, int]:
        """Frames [s0, s1) the encoder sees for new frames [first, stop)."""
        return max(0, first - self.past), stop + self.lookahead

    def features(self, samples: np.ndarray, span_start: int, first: int, stop: int) -> torch.Tensor:
        """samples: the span's audio (640 (s1 - s0) samples, starting at frame span_start) -> features (1, n, d)
        of frames [first, stop + lookahead) (the new frames, then the look-ahead frames)."""
        x = torch.from_numpy(samples).to(self.device, self.dtype)[None]
        feats = self.module.window_features(x)
        return feats[:, first - span_start : stop + self.lookahead - span_start]


# --------------------------------------------------------------------------------------------------- window sampler


class WindowSampler:
    """One generator window per chunk: context (the committed frames, the start context before frame 0), the
    window's audio (heard frames, then the null feature), sampled from the session's start noise."""

    def __init__(self, model, controls: Controls, conditions: dict, device: torch.device,
                 denoiser_factory: Callable | None = None, cuda_graphs: bool = False):
        self.model, self.controls, self.conditions = model, controls, conditions
        self.cfg = model.cfg
        self.device = device
        self.factory = denoiser_factory
        self.schedule = model.diffusion_sched.schedule()
        self.x_T = start_noise(self.cfg, controls.seed).to(device=device, dtype=torch.float32)
        self.ddpm_gen = torch.Generator(device="cpu").manual_seed(controls.seed + 1)
        self.windows = 0
        # one captured sampler loop per session (ddpm draws its step noise on the host: eager)
        self._graphs = GraphCache("streaming sampler", enabled=(cuda_graphs and device.type == "cuda"
                                                                and denoiser_factory is None
                                                                and controls.sampler != "ddpm"))

    @property
    def use_graph(self) -> bool:
        """Whether windows run as a captured CUDA graph (on, and its capture has not failed)."""
        return self._graphs.enabled and "window" not in self._graphs.failed

    def window_audio(self, heard: torch.Tensor) -> torch.Tensor:
        """(1, h, d) features of the frames heard -> (1, L, d): them, then the null audio feature."""
        L = self.cfg.n_motions
        heard = heard[:, :L]
        null = self.model.null_audio_feat.to(heard.dtype).expand(1, L - heard.shape[1], -1)
        return torch.cat([heard, null], dim=1)

    def full_context(self, motion: torch.Tensor | None, audio: torch.Tensor | None):
        """Real context frames (1, c, .) -> (1, Lp, .): the start context's last Lp - c slots before them."""
        lp = self.cfg.n_prev_motions
        start_m, start_a = self.model.start_motion_feat, self.model.start_audio_feat
        c = 0 if motion is None else motion.shape[1]
        if c >= lp:
            return motion[:, -lp:], audio[:, -lp:]
        if c == 0:
            return start_m, start_a
        return (torch.cat([start_m[:, c:].to(motion.dtype), motion], dim=1),
                torch.cat([start_a[:, c:].to(audio.dtype), audio], dim=1))

    def noise(self, first: int) -> torch.Tensor:
        """The start noise of the window whose first frame is padded frame `first`: offline's for the first window,
        then noise drawn from (seed, first), so every window is a fresh conditional draw given its context and the
        result depends on the audio and the seed only, not on timing."""
        if first == 0:
            return self.x_T
        gen = torch.Generator(device="cpu").manual_seed((self.controls.seed * 1_000_003 + first) % (1 << 62) + 1)
        return torch.randn(self.x_T.shape, generator=gen).to(self.x_T.device)

    def sample(self, heard: torch.Tensor, ctx_motion: torch.Tensor | None, ctx_audio: torch.Tensor | None,
               first: int = 0) -> torch.Tensor:
        """-> normalized motion (1, L, M), fp32, of the window starting at padded frame `first`."""
        audio = self.window_audio(heard)
        x_T = self.noise(first)
        w = self.windows
        self.windows += 1
        if self.factory is not None:
            x0_fn = self.factory(w, audio, ctx_motion, ctx_audio)
            return sample_window(self.model, audio, None, None, self.controls, x_T, x0_fn=x0_fn,
                                 ddpm_generator=self.ddpm_gen, schedule=self.schedule)
        prev_m, prev_a = self.full_context(ctx_motion, ctx_audio)
        if self.use_graph:
            return self._graphs.run("window", self._window, [audio, prev_m, prev_a, x_T], copy=True)
        return sample_window(self.model, audio, prev_m, prev_a, self.controls, x_T,
                             conditions=self.conditions, ddpm_generator=self.ddpm_gen, schedule=self.schedule)

    def _window(self, audio, prev_m, prev_a, x_T) -> torch.Tensor:
        return sample_window(self.model, audio, prev_m, prev_a, self.controls, x_T, conditions=self.conditions,
                             schedule=self.schedule)

    def release(self) -> None:
        self._graphs.clear()


# --------------------------------------------------------------------------------------------------- driving


class IncrementalDriving:
    """`generation.relative_driving` frame block by frame block: the causal moving average of pose, scale and
    translation carried over, everything relative to the first frame seen."""

    def __init__(self, source, smoothing: float):
        self.keep = float(smoothing)
        self.src = source
        self.rot_s = rotation_matrix(source.pitch, source.yaw, source.roll)
        self.last: torch.Tensor | None = None  # smoothed pose of the previous frame (7,)
        self.ref: dict[str, torch.Tensor] | None = None

    def __call__(self, params: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        pose = torch.cat([params["scale"], params["t"], params["pitch"][:, None], params["yaw"][:, None],
                          params["roll"][:, None]], dim=1)
        out = pose.clone()
        keep = self.keep
        prev = self.last
        for i in range(pose.shape[0]):
            if prev is not None and keep > 0:
                out[i] = (1 - keep) * pose[i] + keep * prev
            prev = out[i]
        self.last = prev.clone()
        scale, t = out[:, 0:1], out[:, 1:4]
        rot = rotation_matrix(out[:, 4], out[:, 5], out[:, 6])
        exp = params["exp"]
        if self.ref is None:
            self.ref = {"rot": rot[:1].clone(), "exp": exp[:1].clone(), "scale": scale[:1].clone(),
                        "t": t[:1].clone()}
        ref, src = self.ref, self.src
        rot_new = rot @ ref["rot"].transpose(1, 2) @ self.rot_s.to(rot)
        exp_new = src.exp.to(exp) + (exp - ref["exp"])
        lips = list(LIP_KEYPOINTS)
        exp_new[:, lips] = exp[:, lips]
        scale_new = src.scale.to(scale) * scale / ref["scale"]
        t_new = src.t.to(t) + (t - ref["t"])
        t_new[:, 2] = 0
        pitch, yaw, roll = euler_from_rotation(rot_new)
        return {"pitch": pitch, "yaw": yaw, "roll": roll, "exp": exp_new, "t": t_new, "scale": scale_new}


def _bump(x: torch.Tensor) -> torch.Tensor:
    """Raised cosine: 1 at x = 0, 0 at |x| >= 0.5."""
    return 0.5 * (1 + torch.cos(2 * math.pi * x.clamp(-0.5, 0.5)))


# --------------------------------------------------------------------------------------------------- the session


class _Utterance:
    """The worker's state for one utterance (padded clip coordinates, see the module docstring)."""

    def __init__(self, uid: int, session: "StreamSession"):
        self.uid = uid
        self.buf = np.zeros(JOYVASA_CLIP_PAD[0], np.float32)  # padded samples from buf_start on
        self.buf_start = 0
        self.padded = JOYVASA_CLIP_PAD[0]  # padded samples received (lead-in zeros included)
        self.arrivals: deque[tuple[int, float]] = deque()  # (padded end sample, time it arrived)
        self.committed = 0  # padded frames generated
        self.ended: float | None = None  # time of the flush
        self.total: int | None = None  # padded frames of a flushed utterance
        self.motion: torch.Tensor | None = None  # (1, <= Lp, M) last committed motion
        self.feats: torch.Tensor | None = None  # (1, <= Lp, d) their audio features
        self.driving = IncrementalDriving(session._source, session.controls.smoothing)
        self.last_audio = time.perf_counter()
        self.settled = 0  # received samples no longer counted as pending

    def append(self, x: np.ndarray, t: float) -> None:
        if x.size:
            self.buf = np.concatenate([self.buf, x])
            self.padded += x.size
            self.arrivals.append((self.padded, t))
            self.last_audio = t

    def end(self, t: float) -> None:
        if self.ended is None:
            self.ended = t
            received = self.padded - JOYVASA_CLIP_PAD[0]
            self.total = LEAD_IN_FRAMES + max(1, round(received / SAMPLES_PER_VIDEO_FRAME)) if received else 0

    @property
    def received(self) -> int:
        return self.padded - JOYVASA_CLIP_PAD[0]

    def ready_frames(self, lookahead: int) -> int:
        if self.total is not None:
            return self.total
        return max(0, self.padded // SAMPLES_PER_VIDEO_FRAME - lookahead)

    def samples(self, start: int, stop: int) -> np.ndarray:
        """Padded samples [start, stop), zeros beyond what was received."""
        out = np.zeros(stop - start, np.float32)
        lo, hi = max(start, self.buf_start), min(stop, self.buf_start + self.buf.size)
        if hi > lo:
            out[lo - start : hi - start] = self.buf[lo - self.buf_start : hi - self.buf_start]
        return out

    def arrival(self, sample: int) -> float | None:
        """When padded sample `sample` arrived (None: not received)."""
        for end, t in self.arrivals:
            if sample < end:
                return t
        return None

    def trim(self, keep_from_sample: int) -> None:
        cut = keep_from_sample - self.buf_start
        if cut > 0:
            self.buf = self.buf[cut:]
            self.buf_start = keep_from_sample
        while len(self.arrivals) > 1 and self.arrivals[0][0] <= keep_from_sample:
            self.arrivals.popleft()


class StreamSession:
    """Audio chunks in, frames out. Create with `Engine.stream(avatar, controls, **settings)` (settings: see
    `StreamSettings`); see the module docstring for the design. Close it (or use it as a context manager)."""

    def __init__(self, engine, avatar, controls: Controls | None = None, **settings):
        unknown = set(settings) - set(StreamSettings.__dataclass_fields__)
        if unknown:
            raise InputError(f"unknown stream setting(s): {', '.join(sorted(unknown))}")
        self.engine = engine
        self.avatar = avatar
        self.controls = controls if controls is not None else Controls(steps=DEFAULT_STREAM_STEPS)
        stack = engine.motion_stack
        cfg = stack.generator.cfg
        check_controls(self.controls, cfg, cfg.emotion_dim)
        self.settings = StreamSettings(**settings)
        self.settings.check(cfg.n_motions)
        self._stack = stack
        self._cfg = cfg
        self.device = engine.device
        self._source = _source_on(avatar.source, self.device)
        s = self.settings
        self._encoder = StreamingAudioEncoder(stack.audio, s.past_frames, s.lookahead_frames, self.device,
                                              engine.dtype)
        self._sampler = WindowSampler(stack.generator, self.controls,
                                      model_conditions(self.controls, cfg, self.device), self.device,
                                      s.denoiser_factory, s.cuda_graphs)
        self._batch = s.batch_size or engine.batch_size
        cuda = self.device.type == "cuda"
        self._render_stream = torch.cuda.Stream(self.device) if cuda and s.render else None
        # the per-frame renderer path, captured per block size (the session's own graphs and buffers)
        self._render_graphs = GraphCache("streaming renderer", enabled=cuda and s.render and s.cuda_graphs)
        self._rest = {k: getattr(self._source, k).float() for k in PARAM_KEYS}
        self._eye_open = float(self.controls.eye_openness if self.controls.eye_openness is not None
                               else avatar.eye_ratio.float().mean())

        self._cond = threading.Condition()
        self._events: deque = deque()  # ("audio", uid, samples16k, t) | ("end", uid, t)
        self._out: deque[StreamFrame] = deque()
        self._uid = 0  # utterance new pushes belong to
        self._rate: int | None = None
        self._resampler: _Resampler | None = None
        self._pending = 0  # samples accepted but not yet turned into frames (or dropped)
        self._queued_ends = 0
        self._done_uid = -1  # every utterance up to this one is finished (or dropped)
        self._dropped: set[int] = set()  # interrupted utterances
        self._last_taken: dict[str, torch.Tensor] | None = None  # driving of the last frame returned
        self._busy = False  # the worker is between taking events and publishing their frames
        self._closed = False
        self._error: BaseException | None = None
        self._emitted = 0  # frames produced (index of the next)
        self._returned: deque[StreamFrame] = deque(maxlen=100_000)  # returned frames' timing (no images)
        self._first_audio: float | None = None
        self._last_returned: float | None = None
        self._t0 = time.perf_counter()

        # worker-only state
        self._utt: _Utterance | None = None
        self._last_shown: dict[str, torch.Tensor] | None = None
        self._last_kind: tuple[str, int] | None = None
        self._fade_from: dict[str, torch.Tensor] | None = None
        self._fade_pos = 0
        self._inflight: tuple | None = None
        self._worker = threading.Thread(target=self._run, name="vasa-stream", daemon=True)
        self._worker.start()

    # ------------------------------------------------------------------------------------------ producer side

    def push(self, pcm, sample_rate: int, *, new_utterance: bool = False, block: bool = True,
             timeout: float | None = None, collect: bool = True) -> list[StreamFrame]:
        """Queue a chunk of speech (1-D samples or (samples, channels); int16, int32 or float) and return the
        frames finished so far (collect=False: return none, leave them to a consumer thread).

        The sample rate is fixed for an utterance (a new utterance may change it). Blocks while more than
        `max_pending_ms` of accepted audio waits to be turned into frames; block=False raises StreamBusy instead
        (and so does a push still blocked after `timeout` seconds); nothing is queued then."""
        self._check_open()
        x, rate = check_chunk(pcm, sample_rate)
        t_in = time.perf_counter()
        with self._cond:
            self._check_open()
            if new_utterance:
                self._interrupt_locked()
            if self._rate is not None and rate != self._rate:
                raise InputError(f"sample rate changed from {self._rate} Hz to {rate} Hz mid-utterance; push with "
                                 "new_utterance=True (or call interrupt()) to change it")
            resampler = self._resampler if self._rate is not None else _Resampler(rate)
        x16 = resampler.push(x)
        frames: list[StreamFrame] = []
        limit = self.settings.max_pending_ms * SAMPLE_RATE // 1000
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while True:
                self._raise_if_failed()
                self._check_open()
                if self._pending == 0 or self._pending + x16.size <= limit:
                    break
                if collect:
                    frames += self._take_locked()
                left = None if deadline is None else deadline - time.perf_counter()
                if not block or (left is not None and left <= 0):
                    raise StreamBusy(f"the stream holds {self._pending / SAMPLE_RATE * 1000:.0f} ms of audio not yet "
                                     f"turned into frames (max_pending_ms {self.settings.max_pending_ms}); push "
                                     "again later")
                self._cond.wait(0.05 if left is None else min(0.05, left))
            if self._rate is None:
                self._rate, self._resampler = rate, resampler
            if x16.size:
                if self._first_audio is None:
                    self._first_audio = t_in
                self._events.append(("audio", self._uid, x16, t_in))
                self._pending += x16.size
                self._cond.notify_all()
            if collect:
                frames += self._take_locked()
        return frames

    def flush(self, timeout: float | None = None, *, collect: bool = True) -> list[StreamFrame]:
        """End the current utterance (its audio is padded with silence, as offline), wait until all its frames
        are finished and return every frame not taken yet (collect=False: just wait)."""
        self._check_open()
        with self._cond:
            self._check_open()
            tail = self._resampler.flush() if self._resampler is not None else np.zeros(0, np.float32)
            t = time.perf_counter()
            if tail.size:
                self._events.append(("audio", self._uid, tail, t))
                self._pending += tail.size
            self._events.append(("end", self._uid, t))
            self._queued_ends += 1
            target = self._uid
            self._rate, self._resampler = None, None
            self._uid += 1
            self._cond.notify_all()
        return self._wait_done(target, timeout, collect)

    def interrupt(self) -> None:
        """Drop the current utterance: its queued audio and its frames not taken yet. The next push starts a new
        utterance, cross-faded from the last frame shown."""
        self._check_open()
        with self._cond:
            self._interrupt_locked()

    def _interrupt_locked(self) -> None:
        uid = self._uid
        kept = deque()
        for ev in self._events:
            if ev[1] == uid and ev[0] == "audio":
                self._pending -= ev[2].size
            else:
                kept.append(ev)
        self._events = kept
        self._out = deque(f for f in self._out if not (f.kind == "speech" and f.utterance == uid))
        self._dropped.add(uid)
        self._events.append(("drop", uid, time.perf_counter()))
        self._rate, self._resampler = None, None
        self._uid += 1
        self._cond.notify_all()

    # ------------------------------------------------------------------------------------------ consumer side

    def get(self, timeout: float | None = None) -> StreamFrame | None:
        """The next frame, waiting up to `timeout` seconds (None: until one comes or the session closes);
        None when none came."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while True:
                self._raise_if_failed()
                if self._out:
                    return self._take_locked(1)[0]
                if self._closed:
                    return None
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    return None
                self._cond.wait(0.1 if left is None else min(0.1, left))

    def poll(self) -> list[StreamFrame]:
        """Every frame finished so far, without waiting."""
        with self._cond:
            self._raise_if_failed()
            return self._take_locked()

    def frames(self, timeout: float | None = None) -> Iterator[StreamFrame]:
        """Frames as they come, until the session closes (or none comes for `timeout` seconds)."""
        while True:
            frame = self.get(timeout)
            if frame is None:
                return
            yield frame

    def wait_idle(self, timeout: float | None = None) -> bool:
        """Wait until every queued chunk is turned into frames as far as the audio allows; True if it did."""
        deadline = None if timeout is None else time.perf_counter() + timeout
        with self._cond:
            while self._events or self._busy:
                self._raise_if_failed()
                left = None if deadline is None else deadline - time.perf_counter()
                if self._closed or (left is not None and left <= 0):
                    return False
                self._cond.wait(0.05 if left is None else min(0.05, left))
        return True

    # ------------------------------------------------------------------------------------------ lifecycle

    def close(self, timeout: float = 30.0) -> None:
        """Stop the worker, drop what is queued, free the buffers. Idempotent."""
        with self._cond:
            already = self._closed
            self._closed = True
            self._events.clear()
            self._out.clear()
            self._pending = 0
            self._cond.notify_all()
        if self._worker.is_alive() and threading.current_thread() is not self._worker:
            self._worker.join(timeout)
        if already:
            return
        self._sampler.release()
        self._render_graphs.clear()
        self._utt = None
        self._inflight = None
        self._last_shown = self._fade_from = None
        self._render_stream = None
        self._resampler = None
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    @property
    def closed(self) -> bool:
        return self._closed

    def __enter__(self) -> "StreamSession":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    # asyncio forms: the blocking calls run in the loop's default executor

    async def __aenter__(self) -> "StreamSession":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    async def apush(self, pcm, sample_rate: int, **kw) -> list[StreamFrame]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.push(pcm, sample_rate, **kw))

    async def aflush(self, timeout: float | None = None, **kw) -> list[StreamFrame]:
        return await asyncio.get_running_loop().run_in_executor(None, lambda: self.flush(timeout, **kw))

    async def aget(self, timeout: float | None = None) -> StreamFrame | None:
        return await asyncio.get_running_loop().run_in_executor(None, self.get, timeout)

    async def aclose(self) -> None:
        await asyncio.get_running_loop().run_in_executor(None, self.close)

    async def aframes(self, timeout: float | None = None) -> AsyncIterator[StreamFrame]:
        """Frames as they come, until the session closes (or none comes for `timeout` seconds)."""
        while True:
            frame = await self.aget(timeout if timeout is not None else 0.5)
            if frame is None:
                if self._closed or timeout is not None:
                    return
                continue
            yield frame

    # ------------------------------------------------------------------------------------------ reporting

    def report(self) -> LatencyReport:
        """Latency and frame rate of the frames returned so far, with the chunk size and look-ahead."""
        with self._cond:
            frames = list(self._returned)
            first, last = self._first_audio, self._last_returned
        speech = [f for f in frames if f.kind == "speech" and f.latency_s is not None]
        span = (last - first) if first is not None and last is not None and last > first else math.nan
        s = self.settings
        steps = self._cfg.n_diff_steps if self.controls.sampler == "ddpm" else self.controls.steps
        return LatencyReport(
            chunk_ms=s.chunk_ms, lookahead_ms=s.lookahead_ms, past_ms=s.past_ms, steps=steps, frames=len(frames),
            speech_frames=len(speech), idle_frames=sum(f.kind == "idle" for f in frames),
            total=_percentiles([f.latency_s for f in speech]),
            lookahead=_percentiles([f.lookahead_s for f in speech]),
            compute=_percentiles([f.compute_s for f in speech]),
            fps=len(frames) / span if span == span and span > 0 else math.nan)

    # ------------------------------------------------------------------------------------------ internals

    def _check_open(self) -> None:
        if self._closed:
            self._raise_if_failed()
            raise StreamClosed("the stream session is closed")

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            err = self._error
            if isinstance(err, VasaError):
                raise type(err)(str(err))
            raise RuntimeError(f"the stream session failed: {type(err).__name__}: {err}") from err

    def _take_locked(self, limit: int | None = None) -> list[StreamFrame]:
        now = time.perf_counter()
        out = []
        while self._out and (limit is None or len(out) < limit):
            f = self._out.popleft()
            f.returned = now
            out.append(f)
            self._last_taken = f.driving
            self._returned.append(StreamFrame(f.index, f.kind, f.utterance, f.frame, None, np.zeros(0, np.float32),
                                              {}, None, f.audio_in, f.ready, f.started, f.finished, f.returned))
        if out:
            self._last_returned = now
            self._cond.notify_all()
        return out

    def _wait_done(self, uid: int, timeout: float | None, collect: bool) -> list[StreamFrame]:
        deadline = None if timeout is None else time.perf_counter() + timeout
        frames: list[StreamFrame] = []
        with self._cond:
            while self._done_uid < uid or self._busy:
                self._raise_if_failed()
                self._check_open()
                if collect:
                    frames += self._take_locked()
                left = None if deadline is None else deadline - time.perf_counter()
                if left is not None and left <= 0:
                    raise StreamBusy(f"the stream did not finish within {timeout} s")
                self._cond.wait(0.05 if left is None else min(0.05, left))
            self._raise_if_failed()
            if collect:
                frames += self._take_locked()
        return frames

    # ------------------------------------------------------------------------------------------ the worker

    def _run(self) -> None:
        try:
            with torch.no_grad(), use_backend(self.engine.backend):
                while True:
                    with self._cond:
                        while True:
                            if self._closed:
                                return
                            events = list(self._events)
                            self._events.clear()
                            if events:
                                self._busy = True
                                break
                            if self._computable() and len(self._out) < self.settings.max_ready_frames:
                                self._busy = True
                                break
                            wait = self._idle_due()
                            if wait == 0.0 and len(self._out) < self.settings.max_ready_frames:
                                self._busy = True
                                break
                            self._cond.wait(0.1 if wait is None else min(0.1, max(wait, 0.005)))
                    try:
                        for ev in events:
                            self._handle(ev)
                        self._work()
                    finally:
                        with self._cond:
                            self._busy = False
                            self._cond.notify_all()
        except BaseException as exc:  # surfaced to the caller by the next call
            log.debug("stream worker failed", exc_info=True)
            with self._cond:
                self._error = exc
                self._closed = True
                self._events.clear()
                self._cond.notify_all()

    def _handle(self, ev) -> None:
        kind, uid, t = ev[0], ev[1], ev[-1]
        utt = self._utt
        if kind == "drop":
            self._flush_inflight()
            if utt is not None and utt.uid == uid:
                self._finish(utt)
            with self._cond:
                self._out = deque(f for f in self._out if not (f.kind == "speech" and f.utterance == uid))
                self._done_uid = max(self._done_uid, uid)
                last = self._last_taken
            if last is not None:  # what follows fades from the last frame the caller got, not from dropped ones
                self._last_shown = {k: last[k].to(self.device) for k in PARAM_KEYS}
            return
        if utt is None or utt.uid != uid:
            if utt is not None and utt.uid > uid:
                return  # stale
            self._utt = utt = _Utterance(uid, self)
        if kind == "audio":
            utt.append(ev[2], t)
        elif kind == "end":
            utt.end(t)
            with self._cond:
                self._queued_ends -= 1

    def _computable(self) -> bool:
        utt = self._utt
        if utt is None:
            return False
        ready = utt.ready_frames(self.settings.lookahead_frames)
        if utt.total is not None:
            return ready > utt.committed
        return ready - utt.committed >= self.settings.chunk_frames

    def _idle_due(self) -> float | None:
        """With idle frames on: 0 when an idle frame (or an utterance end) is due now, else seconds until one is;
        None without idle frames."""
        s = self.settings
        if not s.idle:
            return None
        now = time.perf_counter()
        utt = self._utt
        if utt is not None and utt.total is None and s.end_after_ms is not None:
            left = utt.last_audio + s.end_after_ms / 1000 - now
            if left <= 0:
                return 0.0
        slack = s.idle_slack_ms if s.idle_slack_ms is not None else s.chunk_ms + s.lookahead_ms + 200
        due_time = self._t0 + self._emitted / FPS + slack / 1000
        return max(0.0, due_time - now)

    def _work(self) -> None:
        s = self.settings
        while True:
            with self._cond:
                if self._closed:
                    return
                room = s.max_ready_frames - len(self._out)
            if room <= 0:
                break
            if self._computable():
                self._speech_chunk()
                continue
            utt = self._utt
            if utt is not None and utt.total is not None and utt.committed >= utt.total:
                self._finish(utt)
                continue
            if s.idle and self._idle_due() == 0.0:
                if utt is not None and utt.total is None and s.end_after_ms is not None \
                        and time.perf_counter() - utt.last_audio >= s.end_after_ms / 1000:
                    utt.end(time.perf_counter())
                    continue
                self._flush_inflight()
                self._idle_frames(min(room, 4))
                continue
            break
        self._flush_inflight()

    # ---------------------------------------------------------------- one chunk of speech

    def _speech_chunk(self) -> None:
        s, utt, cfg = self.settings, self._utt, self._cfg
        started = time.perf_counter()
        first = utt.committed
        ready = utt.ready_frames(s.lookahead_frames)
        n = min(s.chunk_frames, ready - first)
        stop = first + n
        s0, s1 = self._encoder.span(first, stop)
        samples = utt.samples(s0 * SAMPLES_PER_VIDEO_FRAME, s1 * SAMPLES_PER_VIDEO_FRAME)
        heard = self._encoder.features(samples, s0, first, stop)  # (1, n + A, d)
        motion = self._sampler.sample(heard, utt.motion, utt.feats, first)[:, :n].float()  # (1, n, M)
        lp = cfg.n_prev_motions
        new_feats = heard[:, :n]
        utt.motion = (motion if utt.motion is None else torch.cat([utt.motion, motion], dim=1))[:, -lp:]
        utt.feats = (new_feats if utt.feats is None else torch.cat([utt.feats, new_feats], dim=1))[:, -lp:]
        utt.committed = stop
        params = self._stack.template.denormalize(motion[0])
        driving = utt.driving(params)
        keep = [j for j in range(first, stop) if j >= LEAD_IN_FRAMES]
        generated = motion[0].detach().cpu()
        meta = []
        for j in keep:
            i = j - LEAD_IN_FRAMES
            own_end = min((j + 1) * SAMPLES_PER_VIDEO_FRAME, utt.padded) - 1
            need = (j + 1 + s.lookahead_frames) * SAMPLES_PER_VIDEO_FRAME - 1
            audio_in = utt.arrival(own_end) if utt.received else utt.ended
            ready_t = utt.arrival(need) if need < utt.padded else utt.ended
            if ready_t is None:  # frame computable without its look-ahead: only once the utterance ended
                ready_t = utt.ended
            audio_in = audio_in if audio_in is not None else ready_t
            meta.append({"kind": "speech", "utterance": utt.uid, "frame": i, "audio_in": audio_in,
                         "ready": max(ready_t, audio_in), "started": started,
                         "audio": utt.samples(j * SAMPLES_PER_VIDEO_FRAME, (j + 1) * SAMPLES_PER_VIDEO_FRAME),
                         "generated": generated[j - first]})
        utt.trim(max(0, first + n - s.past_frames) * SAMPLES_PER_VIDEO_FRAME)
        # audio of committed frames is no longer pending (all of it once the utterance is complete)
        complete = utt.total is not None and stop >= utt.total
        self._settle(utt, utt.received if complete else (stop - LEAD_IN_FRAMES) * SAMPLES_PER_VIDEO_FRAME)
        if not keep:
            return
        idx = torch.tensor([j - first for j in keep], device=driving["pitch"].device)
        d = {k: v[idx] for k, v in driving.items()}
        d = self._apply_controls(d)
        self._emit(d, meta, blink=None, uid=utt.uid)

    def _settle(self, utt: _Utterance, upto: int) -> None:
        upto = min(utt.received, max(0, upto))
        if upto > utt.settled:
            with self._cond:
                self._pending = max(0, self._pending - (upto - utt.settled))
                self._cond.notify_all()
            utt.settled = upto

    def _finish(self, utt: _Utterance) -> None:
        """The utterance is complete or dropped: publish what is in flight, release its pending audio."""
        self._flush_inflight()
        self._settle(utt, utt.received)
        if self._utt is utt:
            self._utt = None
        with self._cond:
            self._done_uid = max(self._done_uid, utt.uid)
            self._cond.notify_all()

    def _apply_controls(self, d: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        c, cfg = self.controls, self._cfg
        d = dict(d)
        d["pitch"] = d["pitch"] + c.head_pitch
        d["yaw"] = d["yaw"] + c.head_yaw
        d["roll"] = d["roll"] + c.head_roll
        if c.distance is not None and not cfg.distance:
            d["scale"] = d["scale"] / c.distance
        return d

    # ---------------------------------------------------------------- idle frames

    def _idle_frames(self, count: int) -> None:
        n = count
        index0 = self._emitted
        d = {k: v.expand(n, *v.shape[1:]).clone() for k, v in self._rest.items()}
        d = self._apply_controls(d)
        period = self.settings.blink_period_s * FPS
        phase = (torch.arange(index0, index0 + n, dtype=torch.float32) % period) / FPS  # seconds into the period
        blink = _bump((phase - 0.6 * self.settings.blink_period_s) / 0.3)  # a 0.3 s blink, 60% into each period
        now = time.perf_counter()
        uid = self._last_kind[1] if self._last_kind is not None else -1
        meta = [{"kind": "idle", "utterance": uid, "frame": None, "audio_in": None, "ready": None, "started": now,
                 "audio": np.zeros(SAMPLES_PER_VIDEO_FRAME, np.float32), "generated": None} for _ in range(n)]
        self._emit(d, meta, blink=blink.to(self.device), uid=uid)

    # ---------------------------------------------------------------- cross-fade, render, publish

    def _crossfade(self, d: dict[str, torch.Tensor], kind: tuple[str, int]) -> dict[str, torch.Tensor]:
        k = self.settings.crossfade_frames
        if self._last_kind is not None and kind != self._last_kind and self._last_shown is not None and k:
            self._fade_from, self._fade_pos = self._last_shown, 0
        self._last_kind = kind
        n = d["pitch"].shape[0]
        if self._fade_from is not None and self._fade_pos < k:
            pos = torch.arange(self._fade_pos + 1, self._fade_pos + 1 + n, dtype=torch.float32, device=self.device)
            w = (0.5 - 0.5 * torch.cos(math.pi * (pos / (k + 1)).clamp(max=1.0)))
            w = torch.where(pos > k, torch.ones_like(w), w)
            out = {}
            for key, v in d.items():
                shape = (n,) + (1,) * (v.dim() - 1)
                out[key] = self._fade_from[key].to(v) * (1 - w.view(shape)) + v * w.view(shape)
            d = out
            self._fade_pos += n
            if self._fade_pos >= k:
                self._fade_from = None
        self._last_shown = {key: v[-1:].clone() for key, v in d.items()}
        return d

    def _emit(self, d: dict[str, torch.Tensor], meta: list[dict], blink: torch.Tensor | None, uid: int) -> None:
        kind = (meta[0]["kind"], uid)
        d = self._crossfade({k: v.float() for k, v in d.items()}, kind)
        c = self.controls
        n = d["pitch"].shape[0]
        eye = None if c.eye_openness is None else torch.full((n,), float(c.eye_openness), device=self.device)
        lip = None if c.lip_openness is None else torch.full((n,), float(c.lip_openness), device=self.device)
        images = None
        done_event = None
        if self.settings.render:
            images, done_event = self._render(d, eye, lip, blink)
        host = {k: v.detach().cpu() for k, v in d.items()}
        if blink is not None:
            host["eye"] = (self._eye_open * (1 - blink)).cpu()
        elif eye is not None:
            host["eye"] = eye.cpu()
        frames = []
        for i, m in enumerate(meta):
            driving = {k: v[i : i + 1] for k, v in host.items()}
            frames.append(StreamFrame(index=-1, kind=m["kind"], utterance=m["utterance"], frame=m["frame"],
                                      image=None, audio=m["audio"], driving=driving, generated=m["generated"],
                                      audio_in=m["audio_in"], ready=m["ready"], started=m["started"]))
        self._flush_inflight()
        self._inflight = (frames, images, done_event)
        if self.device.type != "cuda":
            self._flush_inflight()

    def _frames(self, pitch, yaw, roll, exp, t, scale, eye, lip, blink):
        """A block of frames' driving parameters (eye, lip and blink each optional) -> uint8 frames (B, H, W, 3) on
        the device: the per-frame renderer path, captured per block size on CUDA."""
        avatar, src, renderer = self.avatar, self._source, self.engine.renderer
        x_d = renderer.driving_keypoints(src, pitch, yaw, roll, exp, t, scale, eye_ratio=eye, lip_ratio=lip,
                                         source_eye_ratio=avatar.eye_ratio, source_lip_ratio=avatar.lip_ratio,
                                         stitching=False)
        b = x_d.shape[0]
        x_s = src.x_s.expand(b, -1, -1)
        if blink is not None:
            # a blink is the eye MLP's offset towards the dipped ratio minus its offset at the open ratio,
            # so frames with no blink are the rest pose exactly
            src_eye = avatar.eye_ratio.float().expand(b, 2)
            open_ratio = torch.full((b, 1), self._eye_open, device=self.device)
            target = open_ratio * (1 - blink.view(b, 1))
            mlp = renderer.retarget_eye
            x_d = x_d + (retarget_delta(mlp, x_s, torch.cat([src_eye, target], 1))
                         - retarget_delta(mlp, x_s, torch.cat([src_eye, open_ratio], 1)))
        if self.controls.stitching:
            x_d = apply_stitching(renderer.stitching, x_s, x_d)
        mult = self.controls.driving_multiplier
        if mult != 1.0:
            x_d = x_s + (x_d - x_s) * mult
        image = renderer.warp_decode(src.feature_3d, src.x_s, x_d)
        return (image.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)

    def _render(self, d, eye, lip, blink):
        """Launch the renderer for a block of frames; returns (uint8 frames tensor on the host, done event)."""
        stream = self._render_stream
        motion_done = None
        if stream is not None:
            motion_done = torch.cuda.Event()
            motion_done.record(torch.cuda.current_stream(self.device))
        out = []
        ctx = torch.cuda.stream(stream) if stream is not None else _nullcontext()
        with ctx:
            if stream is not None:
                stream.wait_event(motion_done)
                for v in list(d.values()) + [x for x in (eye, lip, blink) if x is not None]:
                    v.record_stream(stream)
            n = d["pitch"].shape[0]
            graphed = self._render_graphs.enabled
            for a in range(0, n, self._batch):
                sl = slice(a, a + self._batch)
                ratios = [None if eye is None else eye[sl], None if lip is None else lip[sl]]
                # a captured graph cannot look at the values: there the blink offset is always computed (it is
                # exactly 0 for frames without a blink); eagerly it is skipped for blocks without one
                ratios.append(blink[sl] if blink is not None and (graphed or bool((blink[sl] > 0).any())) else None)
                inputs = [d[k][sl] for k in PARAM_KEYS] + ratios
                key = (inputs[0].shape[0],) + tuple(r is not None for r in ratios)
                frames = self._render_graphs.run(key, self._frames, inputs, copy=stream is None)
                if stream is not None:
                    host = torch.empty(frames.shape, dtype=torch.uint8, pin_memory=True)
                    host.copy_(frames, non_blocking=True)  # on the render stream, before the next replay
                    out.append(host)
                else:
                    out.append(frames)
            done = None
            if stream is not None:
                done = torch.cuda.Event()
                done.record(stream)
        return out, done

    def _flush_inflight(self) -> None:
        """Wait for the block being rendered and publish its frames."""
        if self._inflight is None:
            return
        frames, images, done = self._inflight
        self._inflight = None
        if done is not None:
            done.synchronize()
        if images is not None:
            arr = torch.cat(images).numpy() if images else None
            for i, f in enumerate(frames):
                f.image = arr[i].copy()
        finished = time.perf_counter()
        with self._cond:
            for f in frames:
                if f.kind == "speech" and f.utterance in self._dropped:
                    continue  # interrupted while rendering
                f.finished = finished
                f.index = self._emitted
                self._emitted += 1
                self._out.append(f)
            self._cond.notify_all()


class _nullcontext:
    def __enter__(self):
        return None

    def __exit__(self, *exc):
        return False


def _source_on(source, device):
    from dataclasses import fields

    return type(source)(**{f.name: getattr(source, f.name).to(device) for f in fields(source)})
