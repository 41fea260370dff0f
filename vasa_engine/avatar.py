"""The preparation stage: a portrait -> an `Avatar` (the face aligned and cropped, its feature volume and keypoint
parameters computed once, its eye and lip openness), reused for every frame of every clip or stream."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from .backend import use as use_backend
from .driving import Motion
from .models.keypoints import eye_ratios, lip_ratio
from .models.renderer import FaceRenderer, SourceState

log = logging.getLogger("vasa_engine")

# Source eye and lip openness assumed when no landmarks are known: open eyes, a closed mouth.
DEFAULT_SOURCE_EYE_RATIO = 0.35
DEFAULT_SOURCE_LIP_RATIO = 0.0


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


@torch.no_grad()
def prepare_avatar(renderer: FaceRenderer, aligner, image, landmarks: np.ndarray | None, *, device: torch.device,
                   backend: str) -> Avatar:
    """Portrait (path, PIL image or array) -> Avatar, aligned by `aligner` (vasa_engine.faces.FaceAligner), encoded
    by `renderer` on `device` under `backend`. landmarks: optional 203, 106 or 5 points in the photo's pixels."""
    from .io.image import load_image, resize, to_tensor

    name = os.fspath(image) if isinstance(image, (str, os.PathLike)) else None
    photo = load_image(image)
    alignment = aligner.align(photo, landmarks, name=name)
    for line in alignment.warnings:
        # the centre-crop fallback is a mode, not a problem: callers report it (the CLI prints it)
        (log.info if line == aligner.fallback_reason else log.warning)("warning: %s", line)
    net_image = resize(alignment.crop, renderer.cfg.input_size)
    with use_backend(backend):
        source = renderer.encode_source(to_tensor(net_image).to(device))
    if alignment.landmarks203 is not None:
        lm = torch.as_tensor(np.asarray(alignment.landmarks203, dtype=np.float32))[None]
        eye, lip = eye_ratios(lm), lip_ratio(lm)  # ratios of distances: the crop's scale does not matter
    else:
        eye = torch.full((1, 2), DEFAULT_SOURCE_EYE_RATIO)
        lip = torch.full((1, 1), DEFAULT_SOURCE_LIP_RATIO)
    return Avatar(net_image, source, eye.to(device), lip.to(device), photo=photo, alignment=alignment)
