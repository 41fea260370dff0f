"""The crop rule (LivePortrait's crop from landmarks) and the bilinear warps between a photo and a crop.

Points are (x, y) in pixels with pixel centres at integer coordinates; a 2x3 matrix A maps a point p to
A[:, :2] @ p + A[:, 2].
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from ..errors import InputError
from .specs import ANCHORS, FIVE_POINT_DOWN, FIVE_POINT_SIDE, SOURCE_CROP, CropSpec


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2:3])], axis=1)


def apply_affine(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def check_landmarks(landmarks) -> np.ndarray:
    try:
        pts = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("landmarks must be an array of (x, y) points") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in ANCHORS:
        raise InputError(f"landmarks have shape {tuple(pts.shape)}, expected (203, 2), (106, 2) or (5, 2) "
                         "points in the photo's pixels")
    if not np.isfinite(pts).all():
        raise InputError("landmarks contain NaN or Inf")
    return pts


def crop_transform(landmarks, spec: CropSpec = SOURCE_CROP) -> np.ndarray:
    """Landmarks (203, 106 or 5 points, (x, y) pixels) -> the 2x3 photo-to-crop matrix of LivePortrait's crop rule
    (see the module docstring). Raises InputError for other shapes or degenerate points."""
    pts = check_landmarks(landmarks)
    left, right, mouth_idx = ANCHORS[pts.shape[0]]
    eye_l, eye_r = pts[list(left)].mean(0), pts[list(right)].mean(0)
    eye, mouth = (eye_l + eye_r) / 2, pts[list(mouth_idx)].mean(0)
    v = mouth - eye
    em = float(np.hypot(*v))
    down = v / em if em > 1e-3 else np.array([0.0, 1.0])
    right_axis = np.array([down[1], -down[0]])
    rot = np.stack([right_axis, down])  # rows: the crop's x and y axes in photo coordinates

    if pts.shape[0] == 5:
        side = FIVE_POINT_SIDE * max(float(np.hypot(*(eye_r - eye_l))), em)
        centre = eye + down * (FIVE_POINT_DOWN * em)
    else:
        mean = pts.mean(0)
        r = (pts - mean) @ rot.T
        lo, hi = r.min(0), r.max(0)
        side = float((hi - lo).max())
        centre = mean + rot.T @ ((lo + hi) / 2)
    if not side > 1e-3:
        raise InputError("landmarks are degenerate: the eyes and the mouth are at the same place")
    side *= spec.scale
    centre = centre + (right_axis * spec.vx_ratio + down * spec.vy_ratio) * side
    a = (spec.size / side) * (rot if spec.rotate else np.eye(2))
    t = np.full(2, spec.size / 2) - a @ centre
    return np.concatenate([a, t[:, None]], axis=1)


def box_transform(box: np.ndarray, size: int, expand: float) -> np.ndarray:
    """Unrotated crop centred on a box, side expand x its longer side, the box centre at (size / 2, size / 2)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    s = size / (max(x1 - x0, y1 - y0) * expand)
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return np.array([[s, 0.0, size / 2 - s * c[0]], [0.0, s, size / 2 - s * c[1]]])


# ------------------------------------------------------------------------------------------------ warps


def to_nchw(images: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8/float -> (N, 3, H, W) float32."""
    if images.dim() == 3:
        images = images[None]
    return images.permute(0, 3, 1, 2).to(torch.float32)


def sample_points(src: torch.Tensor, dst_to_src: np.ndarray, xs: torch.Tensor, ys: torch.Tensor,
            padding: str = "zeros", antialias: str = "pool") -> torch.Tensor:
    """Bilinear samples of src (N, C, H, W) float at the points dst_to_src @ (xs, ys) (pixel centres at integers)
    -> (N, C, *xs.shape).

    When a destination pixel spans f >= 2 source pixels: antialias "pool" box-filters src by k = floor(f) first
    (cheap for a large source: edges replicated to a multiple of k); "supersample" averages ceil(f) x ceil(f)
    bilinear samples spread over the destination pixel (at most 8 x 8; sharper, for a small destination region).
    """
    m = np.asarray(dst_to_src, dtype=np.float64)
    f = math.sqrt(abs(np.linalg.det(m[:, :2])))
    k = int(math.floor(f + 1e-6))
    offsets = [(0.0, 0.0)]
    if k >= 2 and antialias == "pool":
        h, w = src.shape[-2:]
        ph, pw = (-h) % k, (-w) % k
        if ph or pw:
            src = F.pad(src, (0, pw, 0, ph), mode="replicate")
        src = F.avg_pool2d(src, k)
        # pooled pixel j covers source pixels [jk, jk + k): its centre is at jk + (k - 1) / 2
        m = np.concatenate([m[:, :2] / k, (m[:, 2:] - (k - 1) / 2) / k], axis=1)
    elif k >= 2 and antialias == "supersample":
        n = min(int(math.ceil(f - 1e-6)), 8)
        steps = [(i + 0.5) / n - 0.5 for i in range(n)]
        offsets = [(ox, oy) for oy in steps for ox in steps]
    h, w = src.shape[-2:]
    # normalised coordinates of grid_sample with align_corners=False: u = (2x + 1) / W - 1
    norm = np.array([[2.0 / w, 0.0, 1.0 / w - 1.0], [0.0, 2.0 / h, 1.0 / h - 1.0]])
    g = norm[:, :2] @ m
    g[:, 2] += norm[:, 2]
    lin = torch.tensor(g[:, :2].T, dtype=torch.float64, device=xs.device)
    base = torch.stack([xs, ys], dim=-1) @ lin + torch.tensor(g[:, 2], dtype=torch.float64, device=xs.device)
    mode = {"zeros": "zeros", "black": "zeros", "replicate": "border", "border": "border"}[padding]
    out = None
    for ox, oy in offsets:
        grid = base if (ox, oy) == (0.0, 0.0) else base + torch.tensor(g[:, :2] @ [ox, oy], dtype=torch.float64,
                                                                        device=xs.device)
        grid = grid.to(torch.float32).expand(src.shape[0], *grid.shape)
        sample = F.grid_sample(src, grid, mode="bilinear", padding_mode=mode, align_corners=False)
        out = sample if out is None else out.add_(sample)
    return out if len(offsets) == 1 else out.div_(len(offsets))


def pixel_grid(h: int, w: int, device, x0: int = 0, y0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    ys = torch.arange(y0, y0 + h, device=device, dtype=torch.float64)
    xs = torch.arange(x0, x0 + w, device=device, dtype=torch.float64)
    yy, xx = torch.meshgrid(ys, xs, indexing="ij")
    return xx, yy


def warp_affine(image, image_to_crop: np.ndarray, size: int | tuple[int, int], *, device=None,
                padding: str = "replicate") -> torch.Tensor:
    """Warp a uint8 (H, W, 3) image (numpy or torch) by a 2x3 photo-to-output matrix into a (size_h, size_w, 3)
    uint8 tensor on ``device`` (default: the image's). padding: "replicate" (edge pixels) or "black"."""
    img = torch.as_tensor(image)
    if device is not None:
        img = img.to(device)
    oh, ow = (size, size) if isinstance(size, int) else size
    xs, ys = pixel_grid(oh, ow, img.device)
    out = sample_points(to_nchw(img), invert_affine(image_to_crop), xs, ys, padding)
    return out[0].permute(1, 2, 0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
