"""The library's entry point: `Engine` owns the models on a device; `Avatar` is a prepared portrait."""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass, fields
from typing import Any, Iterator, Sequence

import numpy as np
import torch

from .config import RendererConfig
from .errors import CheckpointError, InputError
from .generation import Controls, MotionTemplate
from .io.audio import DEFAULT_MAX_SECONDS
from .models.keypoints import eye_ratios, lip_ratio
from .models.motion_generator import MotionGeneratorConfig
from .models.renderer import FaceRenderer, SourceState
from .backend import check as check_backend
from .graphs import GraphCache
from .backend import use as use_backend
from .runtime import device_name, resolve_device, resolve_dtype, to_channels_last
from .weights import RANDOM_WEIGHTS_WARNING, component_state, load_state_checked, load_weights, save_weights, seeded

log = logging.getLogger("vasa_engine")

# Source eye and lip openness assumed when no landmarks are known: open eyes, a closed mouth.
DEFAULT_SOURCE_EYE_RATIO = 0.35
DEFAULT_SOURCE_LIP_RATIO = 0.0
AUDIO_WINDOWS_PER_BATCH = 8  # 4 s windows through the audio encoder at once


@dataclass
class Motion:
    """A batch of N absolute driving parameters in LivePortrait's space.

    pitch, yaw, roll: (N,) degrees. exp: (N, 21, 3) expression offsets. t: (N, 3) translation (z unused).
    scale: (N,) or (N, 1). eye, lip: optional (N,) target openness ratios for the retargeting MLPs (eye: lid
    distance over eye width, about 0 closed to 0.4 wide open; lip: lip distance over mouth width, 0 closed to
    about 0.8 wide open).
    """

    pitch: torch.Tensor
    yaw: torch.Tensor
    roll: torch.Tensor
    exp: torch.Tensor
    t: torch.Tensor
    scale: torch.Tensor
    eye: torch.Tensor | None = None
    lip: torch.Tensor | None = None

    def __post_init__(self):
        for f in fields(self):
            value = getattr(self, f.name)
            if value is None:
                continue
            value = torch.as_tensor(value, dtype=torch.float32)
            if value.dim() == 0:
                value = value.reshape(1)
            setattr(self, f.name, value)
        n = self.pitch.shape[0]
        expected = {"pitch": (n,), "yaw": (n,), "roll": (n,), "t": (n, 3), "eye": (n,), "lip": (n,)}
        self.scale = self.scale.reshape(-1, 1) if self.scale.numel() == n else self.scale
        self.exp = self.exp.reshape(n, -1, 3) if self.exp.numel() % 3 == 0 and self.exp.shape[0] == n else self.exp
        for name, shape in expected.items():
            value = getattr(self, name)
            if value is not None and tuple(value.shape) != shape:
                raise InputError(f"motion field {name} has shape {tuple(value.shape)}, expected {shape}")
        if self.scale.shape != (n, 1):
            raise InputError(f"motion field scale has shape {tuple(self.scale.shape)}, expected ({n},) or ({n}, 1)")
        if self.exp.dim() != 3 or self.exp.shape[0] != n or self.exp.shape[2] != 3:
            raise InputError(f"motion field exp has shape {tuple(self.exp.shape)}, expected ({n}, K, 3)")
        for f in fields(self):
            value = getattr(self, f.name)
            if value is not None and not torch.isfinite(value).all():
                raise InputError(f"motion field {f.name} contains NaN or Inf")

    def __len__(self) -> int:
        return self.pitch.shape[0]

    def __getitem__(self, index: slice) -> "Motion":
        return Motion(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name)[index]
                         for f in fields(self)})

    def to(self, device: torch.device) -> "Motion":
        return Motion(**{f.name: None if getattr(self, f.name) is None else getattr(self, f.name).to(device)
                         for f in fields(self)})


@dataclass
class MotionStack:
    """What turns speech into motion: audio encoder (with its feature map), motion generator, motion template."""

    audio: torch.nn.Module
    generator: torch.nn.Module
    template: MotionTemplate


@dataclass
class Avatar:
    """A prepared portrait: its network-size image, feature volume and keypoint parameters. Reuse it per frame."""

    image: np.ndarray  # (S, S, 3) uint8, what the networks saw
    source: SourceState
    eye_ratio: torch.Tensor  # (1, 2) source left and right eye openness
    lip_ratio: torch.Tensor  # (1, 1) source mouth openness
    photo: np.ndarray | None = None  # the original photo, uint8 (H, W, 3), for paste-back
    alignment: Any = None  # vasa_engine.faces.Alignment: the crop and its affine back into the photo

    def rest_motion(self, n: int = 1) -> Motion:
        """The portrait's own pose, expression, translation and scale, repeated n times."""
        s = self.source
        return Motion(pitch=s.pitch.cpu().repeat(n), yaw=s.yaw.cpu().repeat(n), roll=s.roll.cpu().repeat(n),
                      exp=s.exp.cpu().repeat(n, 1, 1), t=s.t.cpu().repeat(n, 1), scale=s.scale.cpu().repeat(n, 1))


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
    device: "auto", "cpu", "cuda", "cuda:N". dtype: "auto" (float16 on CUDA, float32 on the CPU), "float32",
    "float16", "bfloat16".
    """

    def __init__(self, weights: str | os.PathLike | Sequence[str | os.PathLike] | None = None, device: str = "auto",
                 dtype: str = "auto", *, seed: int = 0, config: RendererConfig | None = None,
                 motion_config: MotionGeneratorConfig | None = None, audio_config=None,
                 batch_size: int | None = None, backend: str = "auto", face_models: str | os.PathLike | None = None,
                 cuda_graphs: bool = True):
        self.backend = check_backend(backend)
        self.face_models = face_models  # folder of the face detector and landmark models (vasa_engine.faces)
        self._face_aligner = None
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.seed = seed
        paths = [] if weights is None else [weights] if isinstance(weights, (str, os.PathLike)) else list(weights)
        self.weights_paths = [os.fspath(p) for p in paths]
        self._tensors: dict[str, torch.Tensor] = {}
        self._components: dict[str, dict] = {}
        for path in self.weights_paths:
            tensors, doc = load_weights(path)
            for name, component in doc["components"].items():
                if name in self._components:
                    raise CheckpointError(f"component {name!r} is in two weights files: "
                                          f"{self._components[name]['path']} and {path}")
                self._components[name] = {**component, "path": path}
            self._tensors.update(tensors)
        self.random_components: list[str] = []

        if "renderer" in self._components:
            comp = self._components["renderer"]
            self.config = self._config(RendererConfig, comp, "renderer")
            with torch.device("meta"):
                self.renderer = FaceRenderer(self.config)
            state = component_state(self._tensors, "renderer")
            for name, module in self.renderer.named_children():
                load_state_checked(module, component_state(state, name), f"{comp['path']}: renderer.{name}",
                                   assign=True)
        else:
            self.config = config or RendererConfig()
            with seeded(seed):
                self.renderer = FaceRenderer(self.config)
            self.random_components.append("renderer")
            log.warning("warning: %s", RANDOM_WEIGHTS_WARNING)
        self.renderer.eval().to(self.device).set_image_dtype(self.dtype)
        if self.device.type == "cuda":
            to_channels_last(self.renderer)
            torch.backends.cudnn.benchmark = True  # fixed shapes per batch size: let cuDNN pick its algorithms
        self.batch_size = batch_size or (8 if self.device.type == "cuda" else 1)
        self.set_cuda_graphs(cuda_graphs)
        self._motion_config = motion_config
        self._audio_config = audio_config  # AudioEncoderConfig for random weights (default: HuBERT base)
        self._motion_stack: MotionStack | None = None
        if "motion_generator" in self._components or "audio" in self._components:
            self.motion_stack  # load and check the given weights now, not at the first generate

    def set_cuda_graphs(self, enabled: bool) -> None:
        """Capture and replay CUDA graphs (on CUDA only) or run eagerly. Starts with no captured graph and no static
        buffers, so a copy of an engine (copy.copy) calling this shares none of the original's."""
        use_graphs = bool(enabled) and self.device.type == "cuda"
        self.sampler_graphs = GraphCache("sampler loop", enabled=use_graphs)
        self.render_graphs = GraphCache("renderer", enabled=use_graphs)
        self._graph_source: dict[str, torch.Tensor] | None = None  # the avatar the renderer graphs read
        self._graph_avatar = None

    @property
    def random_weights(self) -> bool:
        return "renderer" in self.random_components

    @staticmethod
    def _config(cls, component: dict, name: str):
        try:
            return cls.from_dict(component["config"])
        except (TypeError, ValueError, KeyError) as exc:
            raise CheckpointError(f"{name} config is invalid ({exc}): {component.get('path')}") from None

    def _load(self, name: str, module: torch.nn.Module) -> torch.nn.Module:
        load_state_checked(module, component_state(self._tensors, name), f"{self._components[name]['path']}: {name}",
                           assign=True)
        return module

    @property
    def motion_stack(self) -> "MotionStack":
        """The audio encoder, motion generator and motion template, built on first use."""
        if self._motion_stack is None:
            self._motion_stack = self._build_motion_stack()
        return self._motion_stack

    def _build_motion_stack(self) -> "MotionStack":
        from .audio_features import AudioFeatureEncoder
        from .models.audio_encoder import AudioEncoderConfig
        from .models.motion_generator import MotionGenerator

        comps = self._components
        missing = [n for n in ("audio", "motion_generator") if n not in comps]
        if "motion_generator" in comps:
            motion_cfg = self._config(MotionGeneratorConfig, comps["motion_generator"], "motion_generator")
            with torch.device("meta"):
                generator = self._load("motion_generator", MotionGenerator(motion_cfg))
        else:
            motion_cfg = self._motion_config or MotionGeneratorConfig()
            with seeded(self.seed + 1):
                generator = MotionGenerator(motion_cfg)
        if "audio" in comps:
            cfg = comps["audio"].get("config", {})
            audio_cfg = self._config(AudioEncoderConfig, {"config": cfg.get("encoder"), "path": comps["audio"]["path"]},
                                     "audio")
            with torch.device("meta"):
                audio = self._load("audio", AudioFeatureEncoder(audio_cfg, cfg.get("feature_dim")))
        else:
            with seeded(self.seed + 2):
                audio = AudioFeatureEncoder(self._audio_config or AudioEncoderConfig(), motion_cfg.feature_dim)
        if audio.feature_dim != motion_cfg.feature_dim:
            raise CheckpointError(f"audio features are {audio.feature_dim}-d but the motion generator takes "
                                  f"{motion_cfg.feature_dim}-d")
        template_state = component_state(self._tensors, "motion_template")
        template = MotionTemplate.from_tensors(template_state) if template_state else MotionTemplate.neutral()
        if missing:
            self.random_components += missing
            names = {"audio": "audio encoder", "motion_generator": "motion generator"}
            log.warning("warning: no weights for the %s: using seeded random weights, so the motion will not "
                        "follow the speech", " and ".join(names[n] for n in missing))
        schedule = {k: v.float().clone() for k, v in generator.diffusion_sched.named_buffers()}
        for module in (audio, generator):
            module.eval().to(self.device, self.dtype)
        for name, value in schedule.items():  # the schedule stays exact fp32: a half-precision round trip breaks it
            setattr(generator.diffusion_sched, name, value.to(self.device))
        return MotionStack(audio, generator, template)

    def save(self, path: str | os.PathLike) -> None:
        """Write every built component (and its config) in the engine format, e.g. to keep a seeded random set."""
        def source(name):
            return "seeded random weights" if name in self.random_components else self._components[name]["path"]

        def floats(prefix, module):
            return {f"{prefix}.{k}": v.float() if v.is_floating_point() else v for k, v in module.state_dict().items()}

        tensors = floats("renderer", self.renderer)
        components = {"renderer": {"config": self.config.to_dict(), "source": source("renderer")}}
        if self._motion_stack is not None:
            st = self._motion_stack
            tensors.update(floats("audio", st.audio))
            tensors.update(floats("motion_generator", st.generator))
            tensors.update({f"motion_template.{k}": v for k, v in st.template.to_tensors().items()})
            components["audio"] = {"config": {"encoder": st.audio.audio_encoder.cfg.to_dict(),
                                              "feature_dim": st.audio.feature_dim}, "source": source("audio")}
            components["motion_generator"] = {"config": st.generator.cfg.to_dict(),
                                              "source": source("motion_generator")}
            components["motion_template"] = {"source": "template"}
        save_weights(path, tensors, components)

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

    @torch.no_grad()
    def prepare(self, image, landmarks: np.ndarray | None = None, *, align: bool = True) -> Avatar:
        """Portrait (path, PIL image or array) -> Avatar: the face detected, aligned and cropped as LivePortrait
        crops it (with the face models; without them, or with align=False, the largest centred square), resized
        for the networks. landmarks: optional 203, 106 or 5 points in the photo's pixels; they replace the
        detector, and 203 points also give the source eye and lip openness for the retargeting MLPs (otherwise
        open eyes and a closed mouth are assumed). The alignment's warnings go to the log."""
        from .faces import FaceAligner
        from .io.image import load_image, resize, to_tensor

        name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
        photo = load_image(image)
        aligner = self.face_aligner if align else FaceAligner(device=self.device)
        alignment = aligner.align(photo, landmarks, name=name)
        for line in alignment.warnings:
            # the centre-crop fallback is a mode, not a problem: callers report it (the CLI prints it)
            (log.info if line == aligner.fallback_reason else log.warning)("warning: %s", line)
        net_image = resize(alignment.crop, self.config.input_size)
        with use_backend(self.backend):
            source = self.renderer.encode_source(to_tensor(net_image).to(self.device))
        if alignment.landmarks203 is not None:
            lm = torch.as_tensor(np.asarray(alignment.landmarks203, dtype=np.float32))[None]
            eye, lip = eye_ratios(lm), lip_ratio(lm)  # ratios of distances: the crop's scale does not matter
        else:
            eye = torch.full((1, 2), DEFAULT_SOURCE_EYE_RATIO)
            lip = torch.full((1, 1), DEFAULT_SOURCE_LIP_RATIO)
        return Avatar(net_image, source, eye.to(self.device), lip.to(self.device), photo=photo, alignment=alignment)

    @torch.no_grad()
    def render_batches(self, avatar: Avatar, motion: Motion, batch_size: int | None = None, *,
                       stitching: bool = True, driving_multiplier: float = 1.0,
                       paste_back: bool = False) -> Iterator[np.ndarray]:
        """Yield uint8 (n, S, S, 3) frames batch by batch, so long clips never sit in memory at once. paste_back:
        frames at the photo's size (cut to even sides, as H.264 needs), the animated face blended back in."""
        if not isinstance(motion, Motion):
            raise InputError(f"motion must be a vasa_engine.Motion, got {type(motion).__name__}")
        k = self.config.motion_extractor.num_kp
        if motion.exp.shape[1] != k:
            raise InputError(f"motion field exp has {motion.exp.shape[1]} keypoints, the renderer has {k}")
        step = batch_size or self.batch_size
        for start in range(0, len(motion), step):
            frames = self.render_on_device(avatar, motion[start : start + step], stitching=stitching,
                                           driving_multiplier=driving_multiplier)
            if paste_back:
                frames = self._paste_back(avatar, frames)
            yield frames.cpu().numpy()

    @torch.no_grad()
    def render_on_device(self, avatar: Avatar, motion: Motion, *, stitching: bool = True,
                         driving_multiplier: float = 1.0) -> torch.Tensor:
        """One batch: motion of B frames -> uint8 (B, S, S, 3) frames on the engine's device (keypoints with eye and
        lip retargeting and stitching, warp, decode), replayed from the renderer's graph for B on CUDA."""
        m = motion.to(self.device)
        inputs = [m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale, m.eye, m.lip]
        # the backend is part of the key: a graph replays the kernels it was captured with
        key = (len(m), stitching, driving_multiplier, m.eye is not None, m.lip is not None, self.backend)

        def frame_fn(pitch, yaw, roll, exp, t, scale, eye_ratio, lip_ratio):
            with use_backend(self.backend):
                x_d = self.renderer.driving_keypoints(
                    source["state"], pitch, yaw, roll, exp, t, scale, eye_ratio=eye_ratio, lip_ratio=lip_ratio,
                    source_eye_ratio=source["eye"], source_lip_ratio=source["lip"], stitching=stitching,
                    driving_multiplier=driving_multiplier)
                image = self.renderer.warp_decode(source["state"].feature_3d, source["state"].x_s, x_d)
            # As the reference: clip to [0, 1], scale to 255 and truncate.
            return (image.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)

        # the graphs' source buffers and outputs are shared: one thread at a time, from the source's copy until
        # the frames are copied out
        with self.render_graphs.lock:
            source = self._render_source(avatar)
            return self.render_graphs.run(key, frame_fn, inputs, copy=True)

    def _render_source(self, avatar: Avatar) -> dict:
        """The avatar's tensors the per-frame path reads. With CUDA graphs they are copied into buffers of fixed
        address that every captured renderer graph reads, once per change of avatar; otherwise they are the
        avatar's own."""
        own = {"state": avatar.source, "eye": avatar.eye_ratio, "lip": avatar.lip_ratio}
        if not self.render_graphs.enabled:
            return own
        if self._graph_source is None:
            self._graph_source = {"state": SourceState(**{f.name: getattr(avatar.source, f.name).clone()
                                                           for f in fields(avatar.source)}),
                                  "eye": avatar.eye_ratio.clone(), "lip": avatar.lip_ratio.clone()}
        elif self._graph_avatar is not avatar:
            static = self._graph_source
            for f in fields(avatar.source):
                getattr(static["state"], f.name).copy_(getattr(avatar.source, f.name))
            static["eye"].copy_(avatar.eye_ratio)
            static["lip"].copy_(avatar.lip_ratio)
        self._graph_avatar = avatar
        return self._graph_source

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
        """Refuse, with one line, controls the loaded motion generator cannot honour (before any work)."""
        from .generation import check_controls

        cfg = self.motion_stack.generator.cfg
        check_controls(controls, cfg, cfg.emotion_dim)

    @torch.no_grad()
    def generate_motion(self, avatar: Avatar, audio, controls: Controls | None = None, *,
                        sample_rate: int | None = None, max_seconds: float | None = DEFAULT_MAX_SECONDS,
                        timings: dict | None = None, progress=None) -> Motion:
        """Speech -> the portrait's driving parameters, one frame per 40 ms of audio (no rendering).

        audio: a file path (WAV, FLAC, MP3, M4A/AAC, OGG) or an array of samples with `sample_rate`.
        timings, when given, receives seconds spent per stage ("audio encoder", "motion generator").
        """
        from .audio_features import clip_windows
        from .generation import LEAD_IN_FRAMES, generate_windows, model_conditions, output_frames, relative_driving
        from .io.audio import load_audio

        controls = controls or Controls()
        stack = self.motion_stack
        cfg = stack.generator.cfg
        self.check_controls(controls)
        samples = torch.from_numpy(load_audio(audio, sample_rate, max_seconds=max_seconds))
        timings = {} if timings is None else timings

        t0 = time.perf_counter()
        windows, clip_frames = clip_windows(samples[None], cfg.n_motions)
        with use_backend(self.backend):
            features = torch.cat([stack.audio.window_features(chunk.to(self.device, self.dtype))
                                  for chunk in windows[0].split(AUDIO_WINDOWS_PER_BATCH)])
        self._sync()
        timings["audio encoder"] = time.perf_counter() - t0

        t0 = time.perf_counter()
        conditions = model_conditions(controls, cfg, self.device)
        with use_backend(self.backend):
            motion = generate_windows(stack.generator, features, controls, conditions, progress=progress,
                                      graphs=self.sampler_graphs)
        motion = motion[:clip_frames]
        self._sync()
        timings["motion generator"] = time.perf_counter() - t0

        params = stack.template.denormalize(motion.cpu())
        driving = relative_driving(params, _cpu(avatar.source), controls.smoothing)
        keep = slice(LEAD_IN_FRAMES, LEAD_IN_FRAMES + max(1, output_frames(samples.numel())))
        d = {k: v[keep] for k, v in driving.items()}
        n = d["pitch"].shape[0]
        scale = d["scale"] / controls.distance if controls.distance is not None and not cfg.distance else d["scale"]
        eye = None if controls.eye_openness is None else torch.full((n,), float(controls.eye_openness))
        lip = None if controls.lip_openness is None else torch.full((n,), float(controls.lip_openness))
        return Motion(pitch=d["pitch"] + controls.head_pitch, yaw=d["yaw"] + controls.head_yaw,
                      roll=d["roll"] + controls.head_roll, exp=d["exp"], t=d["t"], scale=scale, eye=eye, lip=lip)

    def generate_batches(self, avatar: Avatar, motion: Motion, controls: Controls | None = None,
                         batch_size: int | None = None, paste_back: bool = False) -> Iterator[np.ndarray]:
        """Render generated motion batch by batch with the controls' renderer settings."""
        controls = controls or Controls()
        return self.render_batches(avatar, motion, batch_size, stitching=controls.stitching,
                                   driving_multiplier=controls.driving_multiplier, paste_back=paste_back)

    def generate(self, avatar: Avatar, audio, controls: Controls | None = None, *, sample_rate: int | None = None,
                 max_seconds: float | None = DEFAULT_MAX_SECONDS, paste_back: bool = False) -> np.ndarray:
        """Speech -> uint8 frames (N, S, S, 3) at 25 fps, N = the audio's duration in frames (the photo's size with
        paste_back)."""
        motion = self.generate_motion(avatar, audio, controls, sample_rate=sample_rate, max_seconds=max_seconds)
        batches = list(self.generate_batches(avatar, motion, controls, paste_back=paste_back))
        return np.concatenate(batches)

    def stream(self, avatar: Avatar, controls: Controls | None = None, **settings):
        """A streaming session: speech chunks in (`push`), frames out as they are ready, bounded latency. Settings
        (chunk_ms, lookahead_ms, past_ms, idle, ...) and the design: vasa_engine.streaming. Close it when done."""
        from .streaming import StreamSession

        return StreamSession(self, avatar, controls, **settings)

    def _sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)


def _cpu(source: SourceState) -> SourceState:
    return SourceState(**{f.name: getattr(source, f.name).cpu() for f in fields(source)})
