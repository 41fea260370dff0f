"""Every frame of the video as a source: scene cuts, the face aligned per frame, and the crops encoded in batches
(the appearance and motion extractors run on several crops at once)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from ..avatar import DEFAULT_SOURCE_EYE_RATIO, DEFAULT_SOURCE_LIP_RATIO, Avatar
from ..backend import use as use_backend
from ..errors import InputError
from ..models.keypoints import eye_ratios, lip_ratio
from ..models.renderer import FaceRenderer, SourceState

THUMBNAIL = 32  # side of the grey thumbnails compared for scene cuts
CUT_THRESHOLD = 0.15  # mean absolute thumbnail difference, as a fraction of full scale, that marks a cut


def thumbnail(image: np.ndarray, side: int = THUMBNAIL) -> np.ndarray:
    """uint8 (H, W, 3) -> float (side, side) grey in [0, 1], by area averaging over a side x side grid."""
    grey = image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32) / 255.0
    h, w = grey.shape
    rows = np.linspace(0, h, side + 1).astype(int)
    cols = np.linspace(0, w, side + 1).astype(int)
    return np.add.reduceat(np.add.reduceat(grey, rows[:-1], axis=0), cols[:-1], axis=1) / np.outer(
        np.diff(rows), np.diff(cols))


def scene_cuts(frames: list[np.ndarray], threshold: float = CUT_THRESHOLD) -> list[int]:
    """Indices i where a new shot starts (frame i differs from frame i - 1 by more than threshold, mean absolute
    difference of grey thumbnails), or where the frame size changes."""
    cuts, previous = [], None
    for i, frame in enumerate(frames):
        current = thumbnail(frame)
        if previous is not None and (frame.shape != frames[i - 1].shape
                                     or float(np.abs(current - previous).mean()) > threshold):
            cuts.append(i)
        previous = current
    return cuts


def align_frames(aligner, frames: list[np.ndarray], indices: list[int], name: str) -> dict:
    """The face (vasa_engine.faces.Alignment) of each frame in indices, or None where none is found. Each frame is
    detected afresh, so a new shot (after a cut) gets its own face. InputError when none of them has a face."""
    alignments = {}
    for i in indices:
        try:
            alignments[i] = aligner.align(frames[i], name=name)
        except InputError:
            alignments[i] = None
    if not any(a is not None for a in alignments.values()):
        raise InputError(f"no face found in any frame of the video that the speech covers: {name}")
    return alignments


def _source_ratios(alignments: list) -> tuple[torch.Tensor, torch.Tensor]:
    """(n, 2) eye and (n, 1) lip openness of each frame's face: from its 203 landmarks when known, else open eyes
    and a closed mouth (as for a portrait)."""
    eye = torch.full((len(alignments), 2), DEFAULT_SOURCE_EYE_RATIO)
    lip = torch.full((len(alignments), 1), DEFAULT_SOURCE_LIP_RATIO)
    for i, a in enumerate(alignments):
        if a.landmarks203 is not None:
            lm = torch.as_tensor(np.asarray(a.landmarks203, dtype=np.float32))[None]
            eye[i], lip[i] = eye_ratios(lm)[0], lip_ratio(lm)[0]
    return eye, lip


@torch.no_grad()
def encode_frames(renderer: FaceRenderer, frames: list[np.ndarray], alignments: list, *, device: torch.device,
                  backend: str, batch_size: int = 8) -> list[Avatar]:
    """Each frame's face crop -> an Avatar (its feature volume and keypoint parameters), the extractors run on
    batch_size crops at once. frames and alignments correspond; every alignment is a face."""
    from ..io.image import resize, to_tensor

    size = renderer.cfg.input_size
    images = [resize(a.crop, size) for a in alignments]
    eye, lip = _source_ratios(alignments)
    avatars: list[Avatar] = []
    for start in range(0, len(images), batch_size):
        chunk = images[start : start + batch_size]
        batch = torch.cat([to_tensor(image) for image in chunk]).to(device)
        with use_backend(backend):
            state = renderer.encode_source(batch)
        for k in range(len(chunk)):
            i = start + k
            one = SourceState(**{f.name: getattr(state, f.name)[k : k + 1] for f in fields(state)})
            avatars.append(Avatar(chunk[k], one, eye[i : i + 1].to(device), lip[i : i + 1].to(device),
                                  photo=frames[i], alignment=alignments[i]))
    return avatars


def source_parameters(avatars: list[Avatar]) -> dict[str, torch.Tensor]:
    """The frames' own pose, expression, translation and scale, stacked: pitch, yaw, roll (n,), exp (n, K, 3),
    t (n, 3), scale (n, 1), on the CPU."""
    return {k: torch.cat([getattr(a.source, k).float().cpu() for a in avatars])
            for k in ("pitch", "yaw", "roll", "exp", "t", "scale")}
