"""The library's entry point: `Engine` owns the models on a device; `Avatar` is a prepared portrait."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, fields
from typing import Iterator

import numpy as np
import torch

from .config import RendererConfig
from .errors import CheckpointError, InputError
from .models.keypoints import eye_ratios, lip_ratio
from .models.renderer import FaceRenderer, SourceState
from .runtime import device_name, resolve_device, resolve_dtype
from .weights import RANDOM_WEIGHTS_WARNING, component_state, load_state_checked, load_weights, save_weights, seeded

log = logging.getLogger("vasa_engine")

# Source eye and lip openness assumed when no landmarks are known: open eyes, a closed mouth.
DEFAULT_SOURCE_EYE_RATIO = 0.35
DEFAULT_SOURCE_LIP_RATIO = 0.0


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
class Avatar:
    """A prepared portrait: its network-size image, feature volume and keypoint parameters. Reuse it per frame."""

    image: np.ndarray  # (S, S, 3) uint8, what the networks saw
    source: SourceState
    eye_ratio: torch.Tensor  # (1, 2) source left and right eye openness
    lip_ratio: torch.Tensor  # (1, 1) source mouth openness

    def rest_motion(self, n: int = 1) -> Motion:
        """The portrait's own pose, expression, translation and scale, repeated n times."""
        s = self.source
        return Motion(pitch=s.pitch.cpu().repeat(n), yaw=s.yaw.cpu().repeat(n), roll=s.roll.cpu().repeat(n),
                      exp=s.exp.cpu().repeat(n, 1, 1), t=s.t.cpu().repeat(n, 1), scale=s.scale.cpu().repeat(n, 1))


class Engine:
    """One portrait and driving motion in, 512x512 frames out (audio stages arrive in `generate`).

    weights: path of an engine weights file (.safetensors with its .json), or None for seeded random weights
    (the output then does not look like a face; a warning says so). device: "auto", "cpu", "cuda", "cuda:N".
    dtype: "auto" (float16 on CUDA, float32 on the CPU), "float32", "float16", "bfloat16".
    """

    def __init__(self, weights: str | os.PathLike | None = None, device: str = "auto", dtype: str = "auto", *,
                 seed: int = 0, config: RendererConfig | None = None, batch_size: int | None = None):
        self.device = resolve_device(device)
        self.dtype = resolve_dtype(dtype, self.device)
        self.weights_path = None if weights is None else os.fspath(weights)
        if weights is None:
            self.config = config or RendererConfig()
            with seeded(seed):
                self.renderer = FaceRenderer(self.config)
            log.warning("warning: %s", RANDOM_WEIGHTS_WARNING)
        else:
            tensors, doc = load_weights(weights)
            component = doc["components"].get("renderer")
            if component is None:
                raise CheckpointError(f"weights hold no renderer component: {weights}")
            try:
                self.config = RendererConfig.from_dict(component["config"])
            except (TypeError, ValueError, KeyError) as exc:
                raise CheckpointError(f"renderer config is invalid ({exc}): {weights}") from None
            with torch.device("meta"):
                self.renderer = FaceRenderer(self.config)
            state = component_state(tensors, "renderer")
            for name, module in self.renderer.named_children():
                load_state_checked(module, component_state(state, name), f"{weights}: renderer.{name}", assign=True)
        self.random_weights = weights is None
        self.renderer.eval().to(self.device).set_image_dtype(self.dtype)
        self.batch_size = batch_size or (8 if self.device.type == "cuda" else 1)

    def save(self, path: str | os.PathLike) -> None:
        """Write the engine's weights (and config) in the engine format, e.g. to keep a seeded random set."""
        source = "seeded random weights" if self.random_weights else f"{self.weights_path}"
        tensors = {f"renderer.{k}": v.float() if v.is_floating_point() else v
                   for k, v in self.renderer.state_dict().items()}
        save_weights(path, tensors, {"renderer": {"config": self.config.to_dict(), "source": source}})

    @property
    def device_name(self) -> str:
        return device_name(self.device)

    @property
    def output_size(self) -> int:
        return self.config.output_size

    @torch.no_grad()
    def prepare(self, image, landmarks: np.ndarray | None = None) -> Avatar:
        """Portrait (path, PIL image or array) -> Avatar. Until face alignment exists, the image is centre-cropped
        to a square and resized. landmarks: optional (203, 2) points in the pixels of that square crop, used for
        the source eye and lip openness of the retargeting MLPs (defaults: open eyes, closed mouth)."""
        from .io.image import center_square, load_image, resize, to_tensor

        square = center_square(load_image(image))
        side = square.shape[0]
        net_image = resize(square, self.config.input_size)
        source = self.renderer.encode_source(to_tensor(net_image).to(self.device))
        if landmarks is not None:
            lm = torch.as_tensor(np.asarray(landmarks, dtype=np.float32))
            if lm.shape != (203, 2):
                raise InputError(f"landmarks have shape {tuple(lm.shape)}, expected (203, 2)")
            lm = lm[None] * (self.config.input_size / side)
            eye, lip = eye_ratios(lm), lip_ratio(lm)
        else:
            eye = torch.full((1, 2), DEFAULT_SOURCE_EYE_RATIO)
            lip = torch.full((1, 1), DEFAULT_SOURCE_LIP_RATIO)
        return Avatar(net_image, source, eye.to(self.device), lip.to(self.device))

    @torch.no_grad()
    def render_batches(self, avatar: Avatar, motion: Motion, batch_size: int | None = None, *,
                       stitching: bool = True, driving_multiplier: float = 1.0) -> Iterator[np.ndarray]:
        """Yield uint8 (n, S, S, 3) frames batch by batch, so long clips never sit in memory at once."""
        if not isinstance(motion, Motion):
            raise InputError(f"motion must be a vasa_engine.Motion, got {type(motion).__name__}")
        k = self.config.motion_extractor.num_kp
        if motion.exp.shape[1] != k:
            raise InputError(f"motion field exp has {motion.exp.shape[1]} keypoints, the renderer has {k}")
        step = batch_size or self.batch_size
        src = avatar.source
        for start in range(0, len(motion), step):
            m = motion[start : start + step].to(self.device)
            x_d = self.renderer.driving_keypoints(
                src, m.pitch, m.yaw, m.roll, m.exp, m.t, m.scale, eye_ratio=m.eye, lip_ratio=m.lip,
                source_eye_ratio=avatar.eye_ratio, source_lip_ratio=avatar.lip_ratio, stitching=stitching,
                driving_multiplier=driving_multiplier)
            image = self.renderer.warp_decode(src.feature_3d, src.x_s, x_d)
            # As the reference: clip to [0, 1], scale to 255 and truncate.
            frames = (image.float().clamp(0, 1) * 255).to(torch.uint8).permute(0, 2, 3, 1)
            yield frames.cpu().numpy()

    def render(self, avatar: Avatar, motion: Motion, batch_size: int | None = None, **options) -> np.ndarray:
        """Motion of N frames -> uint8 frames (N, S, S, 3), S = 512 at the default config."""
        batches = list(self.render_batches(avatar, motion, batch_size, **options))
        s = self.output_size
        return np.concatenate(batches) if batches else np.zeros((0, s, s, 3), np.uint8)
