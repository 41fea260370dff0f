"""The face crop of every frame, smoothed along face tracks so the pasted face does not jitter.

The face is detected on each frame, and each detection puts its crop (centre, side, roll angle) a little apart
from the last one's even when the face holds still. Here each crop is a point (centre x, centre y, log side,
angle) and the frames are cut into face tracks: runs of consecutive frames with a face, ended by a scene cut, a
frame with no face, or a face that jumps (its centre moves by more than `lost_jump` of the crop side from one frame
to the next, or its side changes by more than that fraction: another face, or a lost one). Along each track:

1. the points are averaged with Gaussian weights over time (sigma `sigma_seconds`), both ways, so the smoothed crop
   does not lag the face; the weights are renormalised at the track's ends and never reach across a track's end;
2. the crop holds still while the smoothed point stays within `hold` of the held one (the centre within `hold`
   times the crop side, the log side and the angle within `hold`), and past that it follows, `hold` behind (a
   dead band). A face that holds still therefore keeps one crop, bit for bit, for the whole track.

A new track starts from its own first detection, nothing carried over from the track before.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class CropSmoothing:
    """How the crop follows the face (see the module docstring): the Gaussian's sigma in seconds, the dead band as a
    fraction of the crop side (centre), of the side (log side) and in radians (angle), and the jump between two
    frames, as a fraction of the side, that ends a track."""

    sigma_seconds: float = 0.1
    hold: float = 0.02
    lost_jump: float = 0.5

    def __post_init__(self):
        from ..errors import InputError

        for name in ("sigma_seconds", "hold", "lost_jump"):
            value = getattr(self, name)
            if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
                raise InputError(f"crop smoothing {name} must be a non-negative number, got {value!r}")


def crop_point(image_to_crop: np.ndarray, size: int) -> np.ndarray:
    """A similarity crop (2x3 photo-to-crop matrix, crop side `size` px) -> (centre x, centre y, log side, angle):
    the photo point at the crop's centre, the crop's side in photo pixels, its rotation in radians."""
    m = np.asarray(image_to_crop, np.float64)
    a = m[:, :2]
    centre = np.linalg.solve(a, np.full(2, size / 2.0) - m[:, 2])
    scale = math.sqrt(abs(float(np.linalg.det(a))))
    return np.array([centre[0], centre[1], math.log(size / scale), math.atan2(a[1, 0], a[0, 0])])


def crop_matrix(point: np.ndarray, size: int) -> np.ndarray:
    """The inverse of `crop_point`: (centre x, centre y, log side, angle) -> the 2x3 photo-to-crop matrix."""
    cx, cy, log_side, angle = (float(v) for v in point)
    k = size / math.exp(log_side)
    a = k * np.array([[math.cos(angle), -math.sin(angle)], [math.sin(angle), math.cos(angle)]])
    t = np.full(2, size / 2.0) - a @ np.array([cx, cy])
    return np.concatenate([a, t[:, None]], axis=1)


def face_tracks(points: dict[int, np.ndarray | None], cuts, lost_jump: float) -> list[list[int]]:
    """The frames of `points` (frame index -> crop point, None for no face) cut into tracks of consecutive frames
    with a face, ended by a scene cut (a frame index in `cuts` starts a new track), a frame without a face or a
    missing frame, or a jump of more than `lost_jump` (see the module docstring)."""
    cuts = set(int(c) for c in cuts)
    tracks: list[list[int]] = []
    previous = None
    for i in sorted(points):
        point = points[i]
        if point is None:
            previous = None
            continue
        if previous is None or i in cuts or i != tracks[-1][-1] + 1 or _jumped(previous, point, lost_jump):
            tracks.append([])
        tracks[-1].append(i)
        previous = point
    return tracks


def _jumped(before: np.ndarray, after: np.ndarray, lost_jump: float) -> bool:
    side = math.exp(before[2])
    moved = math.hypot(after[0] - before[0], after[1] - before[1]) > lost_jump * side
    return moved or abs(after[2] - before[2]) > math.log1p(lost_jump)


def gaussian_smooth(values: np.ndarray, sigma_frames: float) -> np.ndarray:
    """values (n, d) averaged over frames with Gaussian weights of sigma `sigma_frames` (truncated at 3 sigma),
    renormalised where the window passes the ends."""
    n = len(values)
    if sigma_frames <= 0 or n < 2:
        return values.copy()
    radius = int(math.ceil(3 * sigma_frames))
    offsets = np.arange(-radius, radius + 1)
    kernel = np.exp(-0.5 * (offsets / sigma_frames) ** 2)
    out = np.empty_like(values)
    for i in range(n):
        lo, hi = max(0, i - radius), min(n, i + radius + 1)
        w = kernel[lo - i + radius : hi - i + radius]
        out[i] = w @ values[lo:hi] / w.sum()
    return out


def dead_band(values: np.ndarray, hold: float) -> np.ndarray:
    """values (n, 4) crop points -> the held points: each stays where it was while the value is within the band
    (centre within hold x side, log side and angle within hold), else moves to the band's edge towards it."""
    held = values.copy()
    for i in range(1, len(values)):
        h, v = held[i - 1].copy(), values[i]
        reach = hold * math.exp(h[2])
        shift = v[:2] - h[:2]
        distance = math.hypot(*shift)
        if distance > reach:
            h[:2] = v[:2] - shift * (reach / distance)
        for k in (2, 3):
            if abs(v[k] - h[k]) > hold:
                h[k] = v[k] - math.copysign(hold, v[k] - h[k])
        held[i] = h
    return held


def smoothed_crops(matrices: dict[int, np.ndarray | None], cuts, fps: float, size: int,
                   smoothing: CropSmoothing | None = CropSmoothing()) -> tuple[dict[int, np.ndarray], int]:
    """Each frame's photo-to-crop matrix (frame index -> 2x3 matrix, None for no face) smoothed along its face
    track; returns (frame index -> smoothed matrix for the frames with a face, the number of tracks).
    smoothing None: the matrices as detected."""
    points = {i: None if m is None else crop_point(m, size) for i, m in matrices.items()}
    tracks = face_tracks(points, cuts, smoothing.lost_jump if smoothing else math.inf)
    if smoothing is None:
        return {i: np.asarray(m, np.float64) for i, m in matrices.items() if m is not None}, len(tracks)
    out = {}
    for track in tracks:
        values = np.stack([points[i] for i in track])
        values[:, 3] = np.unwrap(values[:, 3])
        held = dead_band(gaussian_smooth(values, smoothing.sigma_seconds * fps), smoothing.hold)
        out.update((i, crop_matrix(p, size)) for i, p in zip(track, held))
    return out, len(tracks)
