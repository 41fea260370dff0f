"""The stage callables: each builder returns a zero-argument callable doing one unit of work on an engine, through
its public API. `vasa-engine bench` and `benches/test_bench_stages.py` time the very same callables."""

from __future__ import annotations

from dataclasses import replace
from typing import Callable

import torch

from ..io.audio import SAMPLE_RATE
from .timing import StageFn


def _no_grad(fn: Callable) -> StageFn:
    def run():
        with torch.no_grad():  # as Engine's own calls (inference_mode would make torch.compile guard apart)
            return fn()

    return run


def audio_encoder_stage(engine, windows: torch.Tensor) -> StageFn:
    """One audio-encoder call on raw 16 kHz windows (B, 640 L) -> features (B, L, d), under the engine's backend."""
    x = windows.to(engine.device, engine.dtype)
    audio = engine.audio_stage
    return _no_grad(lambda: audio.window_features(x))


def motion_generator_stage(engine, features: torch.Tensor, steps: int, controls=None) -> StageFn:
    """One window of motion (DPM-Solver++(2M) at `steps`, every guidance branch in one forward) from features
    (1, L, d) of the window, through the engine's sampler (its CUDA graph where it has one) under its backend."""
    from ..backend import use as use_backend
    from ..generation import Controls

    controls = replace(controls or Controls(), steps=steps)
    feats = features.to(engine.device, engine.dtype)
    sampler = engine.motion_sampler

    def run():
        with use_backend(engine.backend):
            return sampler.sample_windows(feats, controls)

    return _no_grad(run)


def renderer_stage(engine, avatar, motion) -> StageFn:
    """One batch of frames: driving keypoints (eye and lip retargeting, stitching), warp, decode, uint8 (B, 3, S, S)
    on the device (the device-to-host copy belongs to the end-to-end figure): `Engine.render_on_device`, so the
    engine's renderer graphs where it has them, else eager."""
    m = motion.to(engine.device)
    return _no_grad(lambda: engine.render_on_device(avatar, m).permute(0, 3, 1, 2))


def source_encoding_stage(engine, avatar, frames: int, batch_size: int | None = None) -> StageFn:
    """Dubbing's per-frame source encoding (`vasa_engine.dubbing.sources.encode_frames`) of `frames` video frames:
    each frame's face crop cut from the frame at its crop matrix and resized for the networks, then the appearance
    and motion extractors on batch_size crops at once (default: the engine's batch size, as the dub), under the
    engine's backend. The frames are the avatar's photo, each cut at its crop moved by a quarter pixel more than the
    last (a tracked crop, never the detected one, whose crop the dub would reuse)."""
    from ..dubbing.sources import encode_frames

    photos = [avatar.photo] * frames
    alignments = [avatar.alignment] * frames
    matrices = []
    for k in range(frames):
        m = avatar.alignment.image_to_crop.copy()
        m[:, 2] += 0.25 * (k + 1)
        matrices.append(m)

    def run():
        return encode_frames(engine.renderer, engine.face_aligner, photos, alignments, matrices, device=engine.device,
                             backend=engine.backend, batch_size=batch_size or engine.batch_size)

    return _no_grad(run)


def end_to_end_stage(engine, avatar, samples, controls=None, batch_size: int | None = None) -> StageFn:
    """Speech samples (16 kHz) -> uint8 frames on the host through `Engine.generate` (audio encoder, motion
    generator, renderer at `batch_size`, by default the engine's)."""
    batch = batch_size or engine.batch_size

    def run():
        return engine.generate(avatar, samples, controls, sample_rate=SAMPLE_RATE, max_seconds=None, batch_size=batch)

    return run


def bundled_speech():
    """The bundled speech (a 16 kHz mono 16-bit WAV) as float32 samples, read with the standard library's `wave`, so
    the bench needs no PyAV (GPU machines often have none); another format goes through `load_audio`."""
    import wave

    import numpy as np

    from ..cli import sample_speech
    from ..io.audio import load_audio

    path = sample_speech()
    with wave.open(str(path)) as w:
        if w.getframerate() != SAMPLE_RATE or w.getsampwidth() != 2:
            return load_audio(path)
        channels = w.getnchannels()
        pcm = np.frombuffer(w.readframes(w.getnframes()), dtype="<i2").reshape(-1, channels)
    return (pcm.astype(np.float32) / 32768.0).mean(axis=1, dtype=np.float32)


def speech_clip(seconds: float):
    """The bundled speech at 16 kHz, repeated or cut to `seconds` (float32 numpy samples)."""
    import numpy as np

    speech = bundled_speech()
    n = int(round(seconds * SAMPLE_RATE))
    reps = -(-n // len(speech))
    return np.tile(speech, reps)[:n].astype(np.float32)
