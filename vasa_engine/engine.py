"""The library's entry point: `Engine` holds the models on a device and the stages every entry point runs.

Data flows one way through the stages, each owned once by the engine and shared by offline generation, `render`,
every streaming session, the bench and the export:

    preparation (avatar.py)  portrait -> Avatar
    audio (audio_features)   speech -> 25 fps features, per window
    motion (generation.py)   features -> normalized motion, windows chained, guidance branches, graphs
    driving (driving.py)     normalized motion -> driving parameters (Motion), every control applied
    frames (frames.py)       Motion -> 512x512 uint8 frames, the renderer's graphs

Offline generation runs each stage once over the whole clip; a stream (vasa_engine.streaming) runs them chunk by
chunk. Loading the weights is vasa_engine.loading's.
"""

from __future__ import annotations

import os
from dataclasses import replace
import time
from typing import Iterator

import numpy as np
import torch

from .avatar import Avatar, prepare_avatar
from .backend import check as check_backend
from .backend import use as use_backend
from .config import RendererConfig
from .controls import Controls, check_for_model
from .driving import Driving, Motion
from .errors import InputError
from .frames import FrameRenderer
from .graphs import GraphCache
from .io.audio import DEFAULT_MAX_SECONDS
from .loading import MotionStack, WeightSet, WeightsArg
from .models.motion_generator import MotionGeneratorConfig
from .runtime import device_context, device_name, resolve_device, resolve_dtype, to_channels_last

__all__ = ["AUDIO_WINDOWS_PER_BATCH", "Avatar", "AudioStage", "Engine", "Motion", "MotionStack"]

AUDIO_WINDOWS_PER_BATCH = 8  # 4 s windows through the audio encoder at once
COMPILE_MODES = ("default", "max-autotune", "dynamo-only")


class AudioStage:
    """Speech windows -> 25 fps features, under the engine's backend (vasa_engine.audio_features has the maths)."""

    def __init__(self, module: torch.nn.Module, device: torch.device, dtype: torch.dtype, backend: str):
        self.module, self.device, self.dtype, self.backend = module, device, dtype, backend

    @torch.no_grad()
    def window_features(self, windows: torch.Tensor) -> torch.Tensor:
        """(B, 640 L) 16 kHz windows (JoyVASA-padded, see audio_features) -> (B, L, d) features."""
        with use_backend(self.backend), device_context(self.device):
            return self.module.window_features(windows.to(self.device, self.dtype))

    def clip_features(self, samples: torch.Tensor, window_frames: int) -> tuple[torch.Tensor, int]:
        """A whole clip (S,) -> features of every window (W, L, d), windows batched, and the clip's frame count."""
        from .audio_features import clip_windows

        windows, clip_frames = clip_windows(samples[None], window_frames)
        feats = [self.window_features(chunk) for chunk in windows[0].split(AUDIO_WINDOWS_PER_BATCH)]
        return torch.cat(feats), clip_frames


class Engine:
    """One portrait and speech (or driving motion) in, 512x512 frames out.

    backend: "auto" (Triton kernels on CUDA), "reference" (PyTorch everywhere) or "kernels" (see vasa_engine.backend);
    it applies to this engine's calls only. cuda_graphs: on CUDA, capture the renderer's per-frame path (per batch
    size) and each window's whole sampler loop in CUDA graphs and replay them (eager elsewhere, and after a failed
    capture, whose reason is logged). face_models: the folder of the face detector and landmark models
    (`vasa-engine download` fetches them); without it portraits are centre-cropped.

    weights: an engine weights file (.safetensors with its .json), a list of them (their components are
    merged: e.g. a converted LivePortrait renderer and a converted JoyVASA motion generator), or None. A
    component no file provides runs on seeded random weights, and a warning line says so (a random renderer
    does not draw a face; a random motion generator does not follow the speech).
    device: "auto", "cpu", "cuda", "cuda:N"; the stages work in that device's context (`runtime.device_context`),
    whichever device the calling thread has selected. dtype: "auto" (float16 on CUDA, float32 on the CPU),
    "float32", "float16", "bfloat16". Process-wide CUDA settings (cuDNN autotuning, TF32) are not changed by an
    engine: see `vasa_engine.runtime.configure_cuda`.
    """

    def __init__(self, weights: WeightsArg = None, device: str = "auto", dtype: str = "auto", *, seed: int = 0,
                 config: RendererConfig | None = None, motion_config: MotionGeneratorConfig | None = None,
                 audio_config=None, batch_size: int | None = None, backend: str = "auto",
                 face_models: str | os.PathLike | None = None, cuda_graphs: bool = True):
        self.backend = check_backend(backend)
        self.face_models = face_models  # folder of the face detector and landmark models (vasa_engine.faces)
        self._face_aligner = None
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.seed = seed
        self.weights = WeightSet.read(weights)
        self.renderer = self.weights.renderer(config, seed)
        self.config = self.renderer.cfg
        self.renderer.eval().to(self.device).set_image_dtype(self.dtype)
        if self.device.type == "cuda":
            to_channels_last(self.renderer)
        self.batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        self._motion_config = motion_config
        self._audio_config = audio_config  # AudioEncoderConfig for random weights (default: HuBERT base)
        self._motion_stack: MotionStack | None = None
        self._stages(cuda_graphs)
        if self.weights.has("motion_generator") or self.weights.has("audio"):
            self.motion_stack  # load and check the given weights now, not at the first generate

    @property
    def backend(self) -> str:
        return self._backend

    @backend.setter
    def backend(self, name: str) -> None:
        """Another backend takes new stages (no graph captured under one backend is replayed under another)."""
        self._backend = check_backend(name)
        if "frame_renderer" in self.__dict__:
            self._stages(self.cuda_graphs)

    def set_cuda_graphs(self, enabled: bool) -> None:
        """Capture and replay CUDA graphs (on CUDA only) or run eagerly; either way the stages start afresh, with no
        captured graph."""
        self._stages(enabled)

    def _stages(self, cuda_graphs: bool) -> None:
        self.cuda_graphs = bool(cuda_graphs) and self.device.type == "cuda"
        self.frame_renderer = FrameRenderer(self.renderer, self.device, self.backend, self.cuda_graphs)
        self._sampler_graphs = GraphCache("sampler loop", enabled=self.cuda_graphs)
        self._audio_stage = self._motion_sampler = None
        self._scheduler = None

    @property
    def scheduler(self):
        """The device scheduler (vasa_engine.scheduler.DeviceScheduler) of this engine's batched streams, created on
        first use."""
        from .scheduler import DeviceScheduler

        return DeviceScheduler.of(self)

    def variant(self, *, backend: str | None = None, cuda_graphs: bool | None = None,
                compile_mode: str | None = None) -> "Engine":
        """An engine sharing this one's models and weights (nothing copied or reloaded) with stages and CUDA graphs
        of its own, under another backend or graph setting. compile_mode ("default", "max-autotune" or
        "dynamo-only"): the audio encoder's window features, the denoising transformer and the renderer's warp +
        decode run through torch.compile, on the reference backend, without graphs of the engine's own."""
        out = object.__new__(Engine)
        out.__dict__.update(self.__dict__)
        out._backend = check_backend(backend if backend is not None else self.backend)
        graphs = self.cuda_graphs if cuda_graphs is None else cuda_graphs
        if compile_mode is not None:
            from .compiled import compiled_modules

            if compile_mode not in COMPILE_MODES:
                raise InputError(f"unknown compile mode {compile_mode!r} (use {', '.join(COMPILE_MODES)})")
            out._backend, graphs = "reference", False
            out.renderer, out._motion_stack = compiled_modules(self.renderer, self.motion_stack, compile_mode)
        out._stages(graphs)
        return out

    @property
    def random_components(self) -> list[str]:
        return self.weights.random_components

    @property
    def random_weights(self) -> bool:
        return "renderer" in self.random_components

    @property
    def weights_paths(self) -> list[str]:
        return self.weights.paths

    @property
    def motion_stack(self) -> MotionStack:
        """The audio encoder, motion generator and motion template, built on first use."""
        if self._motion_stack is None:
            self._motion_stack = self.weights.motion_stack(self._motion_config, self._audio_config, self.seed,
                                                           self.device, self.dtype)
        return self._motion_stack

    @property
    def audio_stage(self) -> AudioStage:
        if self._audio_stage is None:
            self._audio_stage = AudioStage(self.motion_stack.audio, self.device, self.dtype, self.backend)
        return self._audio_stage

    @property
    def motion_sampler(self):
        """The motion-sampling stage (vasa_engine.generation.MotionSampler), with this engine's graph cache."""
        if self._motion_sampler is None:
            from .generation import MotionSampler

            self._motion_sampler = MotionSampler(self.motion_stack.generator, self._sampler_graphs, self.backend)
        return self._motion_sampler

    @property
    def sampler_graphs(self) -> GraphCache:
        return self._sampler_graphs

    @property
    def render_graphs(self) -> GraphCache:
        return self.frame_renderer.graphs

    def save(self, path: str | os.PathLike) -> None:
        """Write every built component (and its config) in the engine format, e.g. to keep a seeded random set."""
        self.weights.save(path, self.renderer, self._motion_stack)

    @property
    def device_name(self) -> str:
        return device_name(self.device)

    @property
    def output_size(self) -> int:
        return self.config.output_size

    @property
    def face_aligner(self):
        """Face detection and alignment (vasa_engine.faces) with the models in `face_models`, or the centre-crop
        fallback when there are none (its `fallback_reason` says why)."""
        if self._face_aligner is None:
            from .faces import FaceAligner

            self._face_aligner = FaceAligner.from_folder(self.face_models, device=self.device)
        return self._face_aligner

    def prepare(self, image, landmarks: np.ndarray | None = None, *, align: bool = True) -> Avatar:
        """Portrait (path, PIL image or array) -> Avatar: the face detected, aligned and cropped as LivePortrait
        crops it (with the face models; without them, or with align=False, the largest centred square), resized
        for the networks. landmarks: optional 203, 106 or 5 points in the photo's pixels; they replace the
        detector, and 203 points also give the source eye and lip openness for the retargeting MLPs (otherwise
        open eyes and a closed mouth are assumed). The alignment's warnings go to the log."""
        from .faces import FaceAligner

        aligner = self.face_aligner if align else FaceAligner(device=self.device)
        with device_context(self.device):
            return prepare_avatar(self.renderer, aligner, image, landmarks, device=self.device, backend=self.backend)

    # ----------------------------------------------------------------------------------------- frames

    def render_batches(self, avatar: Avatar, motion: Motion, batch_size: int | None = None, *,
                       stitching: bool | None = None, driving_multiplier: float | None = None,
                       paste_back: bool = False) -> Iterator[np.ndarray]:
        """Yield uint8 (n, S, S, 3) frames batch by batch, so long clips never sit in memory at once. The motion's
        own renderer settings apply unless stitching / driving_multiplier are given. paste_back: frames at the
        photo's size (cut to even sides, as H.264 needs), the animated face blended back in."""
        if not isinstance(motion, Motion):
            raise InputError(f"motion must be a vasa_engine.Motion, got {type(motion).__name__}")
        k = self.config.motion_extractor.num_kp
        if motion.exp.shape[1] != k:
            raise InputError(f"motion field exp has {motion.exp.shape[1]} keypoints, the renderer has {k}")
        if stitching is not None:
            motion = replace(motion, stitching=stitching)
        if driving_multiplier is not None:
            motion = replace(motion, driving_multiplier=driving_multiplier)
        step = batch_size or self.batch_size
        for start in range(0, len(motion), step):
            frames = self.render_on_device(avatar, motion[start : start + step])
            if paste_back:
                frames = self._paste_back(avatar, frames)
            yield frames.cpu().numpy()

    def render_on_device(self, avatar: Avatar, motion: Motion) -> torch.Tensor:
        """One batch: motion of B frames -> uint8 (B, S, S, 3) frames on the engine's device (the frame stage)."""
        with device_context(self.device):
            return self.frame_renderer.render(avatar, motion)

    def _paste_back(self, avatar: Avatar, frames: torch.Tensor) -> torch.Tensor:
        from .faces import paste_back

        if avatar.photo is None or avatar.alignment is None:
            raise InputError("paste-back needs an avatar prepared from a photo (Engine.prepare)")
        out = paste_back(avatar.photo, frames, avatar.alignment, device=self.device)
        return out[:, : out.shape[1] // 2 * 2, : out.shape[2] // 2 * 2]

    def render(self, avatar: Avatar, motion: Motion, batch_size: int | None = None, **options) -> np.ndarray:
        """Motion of N frames -> uint8 frames (N, S, S, 3), S = 512 at the default config."""
        batches = list(self.render_batches(avatar, motion, batch_size, **options))
        s = self.output_size
        return np.concatenate(batches) if batches else np.zeros((0, s, s, 3), np.uint8)

    # ----------------------------------------------------------------------------------------- speech to video

    def check_controls(self, controls: Controls) -> None:
        """Refuse, with one line, controls out of range or that the loaded motion generator cannot honour."""
        check_for_model(controls, self.motion_stack.generator.cfg)

    def driving(self, avatar: Avatar, controls: Controls) -> Driving:
        """A new driving stage for one utterance of generated motion on this avatar."""
        return Driving(avatar.source, self.motion_stack.template, controls,
                       distance_is_condition=self.motion_stack.generator.cfg.distance)

    @torch.no_grad()
    def generate_motion(self, avatar: Avatar, audio, controls: Controls | None = None, *,
                        sample_rate: int | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                        timings: dict | None = None, progress=None) -> Motion:
        """Speech -> the portrait's driving parameters, one frame per 40 ms of audio (no rendering); `render` turns
        them into exactly the frames `generate` returns.

        audio: a file path (WAV, FLAC, MP3, M4A/AAC, OGG) or an array of samples with `sample_rate`.
        timings, when given, receives seconds spent per stage ("audio encoder", "motion generator").
        """
        from .generation import clip_motion, model_conditions
        from .io.audio import load_audio

        controls = controls or Controls()
        self.check_controls(controls)
        cfg = self.motion_stack.generator.cfg
        samples = torch.from_numpy(load_audio(audio, sample_rate, max_seconds=max_seconds))
        timings = {} if timings is None else timings

        with device_context(self.device):
            t0 = time.perf_counter()
            features, clip_frames = self.audio_stage.clip_features(samples, cfg.n_motions)
            self._sync()
            timings["audio encoder"] = time.perf_counter() - t0

            t0 = time.perf_counter()
            conditions = model_conditions(controls, cfg, self.device)
            motion = self.motion_sampler.sample_windows(features, controls, conditions, progress=progress)
            motion = motion[:clip_frames]
            self._sync()
            timings["motion generator"] = time.perf_counter() - t0
            return clip_motion(self.driving(avatar, controls)(motion.cpu()), samples.numel())

    def generate_batches(self, avatar: Avatar, motion: Motion, controls: Controls | None = None,
                         batch_size: int | None = None, paste_back: bool = False) -> Iterator[np.ndarray]:
        """Render generated motion batch by batch, with the renderer settings of `controls` if given, else its own."""
        settings = {} if controls is None else {"stitching": controls.stitching,
                                                "driving_multiplier": controls.driving_multiplier}
        return self.render_batches(avatar, motion, batch_size, paste_back=paste_back, **settings)

    def generate(self, avatar: Avatar, audio, controls: Controls | None = None, *, sample_rate: int | None = None,
                 max_seconds: float | None = DEFAULT_MAX_SECONDS, paste_back: bool = False,
                 batch_size: int | None = None) -> np.ndarray:
        """Speech -> uint8 frames (N, S, S, 3) at 25 fps, N = the audio's duration in frames (the photo's size with
        paste_back): `render(avatar, generate_motion(avatar, audio, controls))`."""
        motion = self.generate_motion(avatar, audio, controls, sample_rate=sample_rate, max_seconds=max_seconds)
        return np.concatenate(list(self.render_batches(avatar, motion, batch_size, paste_back=paste_back)))

    def dub(self, video, audio, controls: Controls | None = None, *, mode: str = "lips", on_long: str = "error",
            strength: float = 1.0, fade_frames: int = 6, **options):
        """Lip-sync an existing video to new speech: every frame re-rendered from its own face crop with its own
        head pose, the expression from motion generated for the speech (mode "lips": the lip keypoints only;
        "expression": the whole generated change), strength (0..1) blending from the frame's own expression, the
        face pasted back at full resolution. on_long: "error" or "loop" (speech longer than the video);
        fade_frames: the cross-fade back to the original after the speech. video: a path or a
        vasa_engine.dubbing.SourceVideo. Other options (max_frames, sample_rate, max_seconds, encode_batch, render_batch,
        smoothing): vasa_engine.dubbing.dub. Returns a DubResult: frames at the source's size and frame rate, the
        speech, the per-frame driving parameters and crops, and a DubReport."""
        from .dubbing import dub

        return dub(self, video, audio, controls, mode=mode, on_long=on_long, strength=strength,
                   fade_frames=fade_frames, **options)

    def stream(self, avatar: Avatar, controls: Controls | None = None, **settings):
        """A streaming session: speech chunks in (`push`), frames out as they are ready, bounded latency. Settings
        (chunk_ms, lookahead_ms, past_ms, idle, ...) and the design: vasa_engine.streaming. Close it when done.
        batched=True hands its motion windows and frames to the engine's `scheduler`, batched with every other
        batched session's (vasa_engine.scheduler)."""
        from .streaming import StreamSession

        return StreamSession(self, avatar, controls, **settings)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
