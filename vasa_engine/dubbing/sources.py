"""Every frame of the video as a source: scene cuts, the face aligned per frame, and the face crops (at the tracked
crop of vasa_engine.dubbing.tracking) cut and encoded in batches (the appearance and motion extractors run on several
crops at once)."""

from __future__ import annotations

from dataclasses import fields

import numpy as np
import torch

from ..avatar import DEFAULT_SOURCE_EYE_RATIO, DEFAULT_SOURCE_LIP_RATIO, Avatar
from ..backend import use as use_backend
from ..errors import InputError
from ..faces.alignment import Alignment
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


def tracked_alignment(aligner, frame: np.ndarray, detected: Alignment, image_to_crop: np.ndarray) -> Alignment:
    """The frame's face crop at `image_to_crop` (its tracked crop) in place of the detected one: the crop cut from the
    frame as the aligner cuts it, the detected landmarks carried into it."""
    from ..faces.geometry import apply_affine, invert_affine, warp_affine

    m = np.asarray(image_to_crop, np.float64)
    if np.array_equal(m, detected.image_to_crop):
        return detected
    crop = warp_affine(frame, m, aligner.crop_spec.size, device=aligner.device, padding=aligner.padding)
    points = detected.image_landmarks
    return Alignment(crop=crop.cpu().numpy(), image_to_crop=m, crop_to_image=invert_affine(m),
                     landmarks=None if points is None else apply_affine(m, points), image_landmarks=points,
                     box=detected.box, image_shape=detected.image_shape, method=detected.method,
                     warnings=list(detected.warnings))


@torch.no_grad()
def encode_frames(renderer: FaceRenderer, aligner, frames: list[np.ndarray], alignments: list, matrices: list, *,
                  device: torch.device, backend: str, batch_size: int) -> list[Avatar]:
    """Each frame's face cut at its crop matrix (`tracked_alignment`) -> an Avatar (its feature volume and keypoint
    parameters), the extractors run on batch_size crops at once. frames, alignments (each a detected face) and
    matrices correspond."""
    from ..io.image import resize, to_tensor

    size = renderer.cfg.input_size
    avatars: list[Avatar] = []
    for start in range(0, len(frames), batch_size):
        stop = min(start + batch_size, len(frames))
        faces = [tracked_alignment(aligner, frames[i], alignments[i], matrices[i]) for i in range(start, stop)]
        images = [resize(a.crop, size) for a in faces]
        eye, lip = _source_ratios(faces)
        batch = torch.cat([to_tensor(image) for image in images]).to(device)
        with use_backend(backend):
            state = renderer.encode_source(batch)
        for k, face in enumerate(faces):
            one = SourceState(**{f.name: getattr(state, f.name)[k : k + 1] for f in fields(state)})
            avatars.append(Avatar(images[k], one, eye[k : k + 1].to(device), lip[k : k + 1].to(device),
                                  photo=frames[start + k], alignment=face))
    return avatars


def source_parameters(avatars: list[Avatar]) -> dict[str, torch.Tensor]:
    """The frames' own pose, expression, translation and scale, stacked: pitch, yaw, roll (n,), exp (n, K, 3),
    t (n, 3), scale (n, 1), on the CPU."""
    return {k: torch.cat([getattr(a.source, k).float().cpu() for a in avatars])
            for k in ("pitch", "yaw", "roll", "exp", "t", "scale")}
