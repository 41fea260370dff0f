"""Face detection, alignment, the 512x512 face crop and paste-back into the original photo.

A portrait of any size, with the face anywhere and a few degrees of roll, becomes the square crop the renderer
expects (LivePortrait's source crop: side 2.3 times the landmarks' extent, shifted up by 0.125 of the side, the
roll removed), and rendered frames go back into the photo through the inverse similarity transform, blended with
a feathered mask that is exactly 0 outside the face region, so the rest of the photo is untouched.

Where the landmarks come from, in order:

1. landmarks given by the caller: 203 (LivePortrait's layout), 106 (insightface's 2d106det layout) or 5
   (eye centres, nose tip, mouth corners) points in the photo's pixels. No model is needed.
2. the face models that ship with LivePortrait's weights, run through onnxruntime (an optional dependency:
   ``pip install 'vasa-engine[faces]'``): insightface's SCRFD detector ``det_10g.onnx`` (boxes and 5 points),
   insightface's ``2d106det.onnx`` (106 points) and LivePortrait's ``landmark.onnx`` (203 points). The crop is
   made from the 106 points, as LivePortrait does; the 203 points give the eye and lip openness.
3. without models (or without onnxruntime): the largest centred square, resized; ``FaceAligner.fallback_reason``
   and the alignment's warnings say so.

Conventions: images are uint8 (H, W, 3) RGB; points are (x, y) in pixels with pixel centres at integer
coordinates (pixel (0, 0) covers [-0.5, 0.5]^2); a 2x3 matrix A maps a point p to A[:, :2] @ p + A[:, 2].
Warps are torch ``grid_sample`` (bilinear) on the aligner's device. When a warp shrinks by 2x or more it is
antialiased: the crop box-filters the photo by the integer factor first, paste-back averages several samples
per photo pixel.

Facts about the real models, as used here (the tables below hold every number, so a wrong one is a one-line fix).
Each is a fact to verify against the real files:

- Detector ``det_10g.onnx`` (DETECTOR): one input (name read from the model; "input.1" expected), float32
  (1, 3, H, W); when H and W are not fixed in the model, 512x512 is used (LivePortrait's det_size; insightface's
  own default is 640). The photo is resized keeping its aspect ratio into the top-left corner of a zero canvas.
  Input = (RGB - 127.5) / 128 (insightface feeds OpenCV BGR through a channel swap, so the network sees RGB).
  9 outputs: scores (N, 1), box distances (N, 4), 5-point offsets (N, 10) for strides 8, 16 and 32, with
  N = (H / s) * (W / s) * 2 (two anchors per location, location-major, row-major locations). They are grouped
  here by their last dimension and their row count, so their order does not matter; a leading batch dimension
  of 1 is accepted. The anchor of location (i, j) is (j * s, i * s); box = (cx - l s, cy - t s, cx + r s,
  cy + b s); point k = (cx + dx_k s, cy + dy_k s). Score threshold 0.5, NMS IoU threshold 0.4; faces sorted
  by box area, the largest used. (Deviations from insightface: the resize is Pillow's antialiased bilinear,
  not OpenCV's; x and y are rescaled separately; IoU is computed without insightface's +1 pixel.)
- 106 points ``2d106det.onnx`` (LANDMARKS_106): input (1, 3, 192, 192) RGB raw 0..255 (mean 0, std 1:
  insightface picks these for models whose graph starts with its own subtract/multiply nodes, which this
  model is believed to have; otherwise it would be (x - 127.5) / 128). The input is an unrotated crop centred
  on the detector box, side 1.5 x the box's longer side, the box centre at (96, 96). Output (1, 212): 106
  (x, y) pairs in [-1, 1]; crop pixel = (v + 1) * 96.
- 203 points ``landmark.onnx`` (LANDMARKS_203): input named "input", (1, 3, 224, 224) RGB / 255, a crop made
  from the 106 points with LivePortrait's rule at scale 1.5, vy_ratio -0.1, rotation on. Several outputs; the
  third holds (1, 406): 203 (x, y) pairs in [0, 1] of the crop; crop pixel = v * 224. (If the third output
  does not have 406 values, the first output that does is used.)
- Crop rule (LivePortrait's crop from landmarks): eye centre e = mean of the two eye centres, mouth centre m =
  mean of the mouth corners (203: eyes = mean of points 0, 6, 12, 18 and of 24, 30, 36, 42, mouth = points 48
  and 66; 106: eyes = 33, 35, 40, 39 and 87, 89, 94, 93, mouth = 52 and 61; 5: points 0 and 1, mouth 3 and 4).
  "Down" is the unit vector from e to m, "right" is down turned by -90 degrees. In that rotated frame the
  bounding box of all points gives the centre and the side (the longer of its two sides) x scale; the centre
  moves by (vx_ratio, vy_ratio) x side along (right, down); the crop maps the centre to (size / 2, size / 2),
  the side to size, and "down" to +y (when rotation is on). Outside the photo the crop repeats the edge pixels
  (LivePortrait fills black; ``padding="black"`` does that).
- Five points only (no LivePortrait rule exists for them that gives the same framing): the extent of a 106-point
  face is estimated as 2.4 x max(eye distance, eye-to-mouth distance), centred 0.75 eye-to-mouth distances below
  the eye centre (FIVE_POINT_SIDE, FIVE_POINT_DOWN; measured on typical frontal faces).
- Paste-back: LivePortrait blends with an image mask (``mask_template.png``) warped like the crop. Here the mask
  is computed, not shipped: a rounded square inside the crop (MASK) with an edge whose profile is a Gaussian's
  integral, truncated at +-3 sigma and rescaled, so it is exactly 1 inside, exactly 0 outside, and smooth.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from .errors import InputError

__all__ = [
    "CropSpec",
    "MaskSpec",
    "DetectorSpec",
    "LandmarkSpec",
    "SOURCE_CROP",
    "MASK",
    "DETECTOR",
    "LANDMARKS_106",
    "LANDMARKS_203",
    "Alignment",
    "FaceAligner",
    "crop_transform",
    "invert_affine",
    "warp_affine",
    "feather_mask",
    "paste_back",
    "nms",
]


# ------------------------------------------------------------------------------------------------ tables


@dataclass(frozen=True)
class CropSpec:
    """A similarity crop from landmarks (LivePortrait's rule): output side, extent scale, centre shifts."""

    size: int = 512
    scale: float = 2.3
    vx_ratio: float = 0.0
    vy_ratio: float = -0.125
    rotate: bool = True


#: The renderer's source crop (LivePortrait's defaults for a source image).
SOURCE_CROP = CropSpec()

#: Warn when more than this fraction of the crop lies outside the photo, or when the crop enlarges the photo by
#: more than this factor (a crop side under 128 px).
OUTSIDE_WARNING = 0.2
SMALL_FACE_WARNING = 4.0

#: Estimated 106-point extent from five points (see the module docstring).
FIVE_POINT_SIDE = 2.4
FIVE_POINT_DOWN = 0.75


@dataclass(frozen=True)
class MaskSpec:
    """Paste-back mask in crop coordinates, as fractions of the crop side: a rounded square ``margin`` inside the
    crop's edge, with corner radius ``radius``; the blend weight rises from 0 at the square's outline to 1 at
    ``feather`` inside it."""

    margin: float = 0.01
    radius: float = 0.2
    feather: float = 0.12


MASK = MaskSpec()


@dataclass(frozen=True)
class DetectorSpec:
    """SCRFD-style detector: file, input size when the model leaves it open, input normalisation, decoding."""

    filename: str = "det_10g.onnx"
    input_size: tuple[int, int] = (512, 512)  # (width, height), used when the model's H, W are not fixed
    channels: str = "RGB"
    mean: float = 127.5
    std: float = 128.0  # network input = (pixel - mean) / std
    strides: tuple[int, ...] = (8, 16, 32)
    anchors: int = 2
    num_points: int = 5
    score_threshold: float = 0.5
    nms_threshold: float = 0.4


@dataclass(frozen=True)
class LandmarkSpec:
    """A landmark regressor: how its input crop is made, normalised, and how its output becomes crop pixels."""

    filename: str
    points: int
    input_size: int
    channels: str  # "RGB" or "BGR"
    mean: float
    std: float  # network input = (pixel - mean) / std
    output_index: int  # which output holds the points (the first with points * 2 values is used otherwise)
    decode_offset: float  # crop pixel = (value + decode_offset) * decode_scale * input_size
    decode_scale: float
    crop: str  # "box": centred on the detector box, side box_expand x its longer side, no rotation;
    #            "landmarks": crop_transform of the previous landmarks with crop_spec
    box_expand: float = 1.5
    crop_spec: CropSpec | None = None


DETECTOR = DetectorSpec()

LANDMARKS_106 = LandmarkSpec(
    filename="2d106det.onnx", points=106, input_size=192, channels="RGB", mean=0.0, std=1.0, output_index=0,
    decode_offset=1.0, decode_scale=0.5, crop="box", box_expand=1.5)

LANDMARKS_203 = LandmarkSpec(
    filename="landmark.onnx", points=203, input_size=224, channels="RGB", mean=0.0, std=255.0, output_index=2,
    decode_offset=0.0, decode_scale=1.0, crop="landmarks",
    crop_spec=CropSpec(size=224, scale=1.5, vx_ratio=0.0, vy_ratio=-0.1, rotate=True))

# Indices of the eye centres and mouth corners for each supported landmark layout:
# (left-eye points, right-eye points, mouth-corner points).
_ANCHORS = {
    203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    5: ((0,), (1,), (3, 4)),
}


# ------------------------------------------------------------------------------------------------ geometry


def invert_affine(matrix: np.ndarray) -> np.ndarray:
    """Inverse of a 2x3 affine matrix (float64)."""
    m = np.asarray(matrix, dtype=np.float64)
    a = np.linalg.inv(m[:, :2])
    return np.concatenate([a, -(a @ m[:, 2:3])], axis=1)


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def _check_landmarks(landmarks) -> np.ndarray:
    try:
        pts = np.asarray(landmarks, dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError("landmarks must be an array of (x, y) points") from None
    if pts.ndim != 2 or pts.shape[1] != 2 or pts.shape[0] not in _ANCHORS:
        raise InputError(f"landmarks have shape {tuple(pts.shape)}, expected (203, 2), (106, 2) or (5, 2) "
                         "points in the photo's pixels")
    if not np.isfinite(pts).all():
        raise InputError("landmarks contain NaN or Inf")
    return pts


def crop_transform(landmarks, spec: CropSpec = SOURCE_CROP) -> np.ndarray:
    """Landmarks (203, 106 or 5 points, (x, y) pixels) -> the 2x3 photo-to-crop matrix of LivePortrait's crop rule
    (see the module docstring). Raises InputError for other shapes or degenerate points."""
    pts = _check_landmarks(landmarks)
    left, right, mouth_idx = _ANCHORS[pts.shape[0]]
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


def _box_transform(box: np.ndarray, size: int, expand: float) -> np.ndarray:
    """Unrotated crop centred on a box, side expand x its longer side, the box centre at (size / 2, size / 2)."""
    x0, y0, x1, y1 = (float(v) for v in box[:4])
    s = size / (max(x1 - x0, y1 - y0) * expand)
    c = np.array([(x0 + x1) / 2, (y0 + y1) / 2])
    return np.array([[s, 0.0, size / 2 - s * c[0]], [0.0, s, size / 2 - s * c[1]]])


# ------------------------------------------------------------------------------------------------ warps


def _to_nchw(images: torch.Tensor) -> torch.Tensor:
    """(H, W, 3) or (N, H, W, 3) uint8/float -> (N, 3, H, W) float32."""
    if images.dim() == 3:
        images = images[None]
    return images.permute(0, 3, 1, 2).to(torch.float32)


def _sample(src: torch.Tensor, dst_to_src: np.ndarray, xs: torch.Tensor, ys: torch.Tensor,
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


def _grid(h: int, w: int, device, x0: int = 0, y0: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
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
    xs, ys = _grid(oh, ow, img.device)
    out = _sample(_to_nchw(img), invert_affine(image_to_crop), xs, ys, padding)
    return out[0].permute(1, 2, 0).add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)


def feather_mask(xc: torch.Tensor, yc: torch.Tensor, size: int, spec: MaskSpec = MASK) -> torch.Tensor:
    """Blend weight at crop points (xc, yc) of a size x size crop: exactly 1 well inside, exactly 0 outside the
    rounded square, an edge shaped like a Gaussian's integral (erf, truncated at 3 sigma) in between."""
    c = (size - 1) / 2.0
    half = size / 2.0 - spec.margin * size
    r = spec.radius * size
    qx = (xc - c).abs() - (half - r)
    qy = (yc - c).abs() - (half - r)
    # signed distance to the rounded square's outline (negative inside)
    outside = torch.sqrt(qx.clamp(min=0) ** 2 + qy.clamp(min=0) ** 2)
    dist = outside + torch.maximum(qx, qy).clamp(max=0) - r
    t = (-dist / (spec.feather * size)).clamp(0.0, 1.0)
    k = 3.0 / math.sqrt(2.0)
    m = (torch.erf((2.0 * t - 1.0) * k) + math.erf(k)) / (2.0 * math.erf(k))
    return torch.where(t <= 0, torch.zeros_like(m), torch.where(t >= 1, torch.ones_like(m), m.clamp(0, 1)))


# ------------------------------------------------------------------------------------------------ results


@dataclass(eq=False)
class Alignment:
    """A face crop and the way back into the photo.

    crop: (S, S, 3) uint8, S = 512 for the renderer. image_to_crop / crop_to_image: 2x3 matrices (float64) between
    photo pixels and crop pixels. landmarks: (K, 2) points in crop pixels (K = 203, 106 or 5; None for the
    centre crop). image_landmarks: the same points in photo pixels. box: the face box in the photo (x0, y0, x1,
    y1): the detector's box, or the landmarks' bounding box, or the centre square. image_shape: (H, W) of the photo.
    method: "landmarks" (given by the caller), "detector" or "center". warnings: one-line notes for the user.
    """

    crop: np.ndarray
    image_to_crop: np.ndarray
    crop_to_image: np.ndarray
    landmarks: np.ndarray | None
    image_landmarks: np.ndarray | None
    box: np.ndarray
    image_shape: tuple[int, int]
    method: str
    warnings: list[str] = field(default_factory=list)
    _paste_cache: dict = field(default_factory=dict, init=False, repr=False)

    @property
    def size(self) -> int:
        return int(self.crop.shape[0])

    @property
    def landmarks203(self) -> np.ndarray | None:
        """The 203 LivePortrait points in crop pixels (what eye_ratios / lip_ratio take), when known."""
        return self.landmarks if self.landmarks is not None and len(self.landmarks) == 203 else None


# ------------------------------------------------------------------------------------------------ models


def nms(boxes: np.ndarray, scores: np.ndarray, threshold: float) -> list[int]:
    """Greedy non-maximum suppression: indices of the kept boxes, best score first."""
    boxes = np.asarray(boxes, dtype=np.float64)
    order = list(np.argsort(-np.asarray(scores, dtype=np.float64), kind="stable"))
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    keep: list[int] = []
    while order:
        i = order.pop(0)
        keep.append(int(i))
        if not order:
            break
        rest = np.array(order)
        w = np.clip(np.minimum(boxes[i, 2], boxes[rest, 2]) - np.maximum(boxes[i, 0], boxes[rest, 0]), 0, None)
        h = np.clip(np.minimum(boxes[i, 3], boxes[rest, 3]) - np.maximum(boxes[i, 1], boxes[rest, 1]), 0, None)
        inter = w * h
        iou = inter / np.maximum(area[i] + area[rest] - inter, 1e-12)
        order = [j for j, o in zip(order, iou) if o <= threshold]
    return keep


def _session(path: Path, providers: list[str]):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), sess_options=options, providers=providers)
    except Exception as e:  # onnxruntime raises its own exception types for unreadable or invalid files
        text = " ".join(str(e).split())[:200] or type(e).__name__
        raise InputError(f"cannot load face model ({text}): {path}") from None


def _normalise(crop_hwc: torch.Tensor, channels: str, mean: float, std: float) -> np.ndarray:
    x = crop_hwc.to(torch.float32)
    if channels.upper() == "BGR":
        x = x.flip(-1)
    x = (x - mean) / std
    return np.ascontiguousarray(x.permute(2, 0, 1)[None].cpu().numpy())


class _Detector:
    def __init__(self, path: Path, providers: list[str], spec: DetectorSpec = DETECTOR):
        self.path, self.spec = path, spec
        self.session = _session(path, providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"face detector has an unexpected input signature (one (1, 3, H, W) input needed): "
                             f"{path}")
        self.input_name = inputs[0].name
        h, w = inputs[0].shape[2:4]
        self.input_size = (w, h) if isinstance(h, int) and isinstance(w, int) else spec.input_size
        n = len(self.session.get_outputs())
        if n != 3 * len(spec.strides):
            raise InputError(f"face detector has {n} outputs, expected {3 * len(spec.strides)} (scores, boxes "
                             f"and {spec.num_points} points at strides {spec.strides}): {path}")

    def __call__(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """-> boxes (F, 4), scores (F,), points (F, 5, 2) in photo pixels, best score first."""
        from PIL import Image

        spec = self.spec
        ih, iw = image.shape[:2]
        dw, dh = self.input_size
        if ih / iw > dh / dw:
            nh, nw = dh, max(1, int(dh * iw / ih))
        else:
            nw, nh = dw, max(1, int(dw * ih / iw))
        canvas = np.zeros((dh, dw, 3), np.uint8)
        canvas[:nh, :nw] = np.asarray(Image.fromarray(image).resize((nw, nh), Image.Resampling.BILINEAR))
        blob = _normalise(torch.from_numpy(canvas), spec.channels, spec.mean, spec.std)
        outs = [np.asarray(o, dtype=np.float32) for o in self.session.run(None, {self.input_name: blob})]

        groups: dict[tuple[int, int], np.ndarray] = {}
        for o in outs:
            last = o.shape[-1]
            flat = o.reshape(-1, last)
            for s in spec.strides:
                if flat.shape[0] == (dh // s) * (dw // s) * spec.anchors:
                    groups[(s, last)] = flat
        boxes, scores, points = [], [], []
        for s in spec.strides:
            try:
                sc, dist, kp = groups[(s, 1)], groups[(s, 4)], groups[(s, 2 * spec.num_points)]
            except KeyError:
                raise InputError(f"face detector outputs do not match the expected layout (scores (N, 1), boxes "
                                 f"(N, 4), points (N, {2 * spec.num_points}) at strides {spec.strides}): "
                                 f"{self.path}") from None
            gy, gx = np.mgrid[: dh // s, : dw // s]
            centres = np.repeat(np.stack([gx.ravel(), gy.ravel()], 1) * float(s), spec.anchors, axis=0)
            hit = sc[:, 0] >= spec.score_threshold
            c, d = centres[hit], dist[hit] * s
            boxes.append(np.concatenate([c - d[:, :2], c + d[:, 2:]], axis=1))
            scores.append(sc[hit, 0])
            points.append(c[:, None, :] + kp[hit].reshape(-1, spec.num_points, 2) * s)
        boxes_a, scores_a = np.concatenate(boxes), np.concatenate(scores)
        points_a = np.concatenate(points)
        keep = nms(boxes_a, scores_a, spec.nms_threshold)
        scale = np.array([nw / iw, nh / ih])
        boxes_a = boxes_a[keep] / np.tile(scale, 2)
        points_a = points_a[keep] / scale
        return boxes_a, scores_a[keep], points_a


class _Landmarks:
    def __init__(self, path: Path, providers: list[str], spec: LandmarkSpec, device):
        self.path, self.spec, self.device = path, spec, device
        self.session = _session(path, providers)
        inputs = self.session.get_inputs()
        if len(inputs) != 1 or len(inputs[0].shape) != 4:
            raise InputError(f"landmark model has an unexpected input signature: {path}")
        self.input_name = inputs[0].name
        sizes = [int(np.prod([d if isinstance(d, int) else 1 for d in o.shape])) for o in self.session.get_outputs()]
        if 2 * spec.points not in sizes:
            raise InputError(f"landmark model has no output of {2 * spec.points} values "
                             f"({spec.points} points): {path}")

    def __call__(self, image: torch.Tensor, *, box: np.ndarray | None = None,
                 landmarks: np.ndarray | None = None) -> np.ndarray:
        """-> (points, 2) in photo pixels, from a photo (H, W, 3) uint8 tensor and a box or previous landmarks."""
        spec = self.spec
        if spec.crop == "box":
            m = _box_transform(box, spec.input_size, spec.box_expand)
        else:
            m = crop_transform(landmarks, spec.crop_spec)
        crop = warp_affine(image, m, spec.input_size, padding="black")
        blob = _normalise(crop, spec.channels, spec.mean, spec.std)
        outs = self.session.run(None, {self.input_name: blob})
        want = 2 * spec.points
        out = outs[spec.output_index] if spec.output_index < len(outs) else None
        if out is None or np.asarray(out).size != want:
            out = next(o for o in outs if np.asarray(o).size == want)
        pts = (np.asarray(out, dtype=np.float64).reshape(spec.points, 2) + spec.decode_offset)
        pts = pts * (spec.decode_scale * spec.input_size)
        return _apply(invert_affine(m), pts)


def _find(folder: Path, name: str) -> Path | None:
    direct = folder / name
    if direct.is_file():
        return direct
    found = sorted(p for p in folder.rglob(name) if p.is_file())
    return found[0] if found else None


# ------------------------------------------------------------------------------------------------ aligner


class FaceAligner:
    """Photo -> Alignment (the renderer's 512x512 face crop and the way back).

    Build it with ``FaceAligner.from_folder(models_dir)``; without models it centre-crops, and
    ``fallback_reason`` says why. ``device``: where the warps run ("cpu", "cuda", a torch.device).
    ``padding``: what fills crop pixels outside the photo, "replicate" (edge pixels) or "black" (LivePortrait).
    """

    def __init__(self, detector: _Detector | None = None, landmarks106: _Landmarks | None = None,
                 landmarks203: _Landmarks | None = None, *, device=None, crop: CropSpec = SOURCE_CROP,
                 padding: str = "replicate", fallback_reason: str | None = None):
        if padding not in ("replicate", "black"):
            raise ValueError(f"padding must be 'replicate' or 'black', got {padding!r}")
        self.detector, self.landmarks106, self.landmarks203 = detector, landmarks106, landmarks203
        #: the model files in use, by role ("detector", "landmarks106", "landmarks203")
        self.model_paths = {role: model.path for role, model in
                            (("detector", detector), ("landmarks106", landmarks106), ("landmarks203", landmarks203))
                            if model is not None}
        self.device = torch.device(device) if device is not None else torch.device("cpu")
        self.crop_spec, self.padding = crop, padding
        if detector is None and fallback_reason is None:
            fallback_reason = "no face detector; the portrait is centre-cropped, not aligned"
        self.fallback_reason = fallback_reason

    @property
    def fallback(self) -> bool:
        """True when photos without landmarks are centre-cropped (no detector)."""
        return self.detector is None

    @classmethod
    def from_folder(cls, models_dir: str | os.PathLike | None, *, device=None, padding: str = "replicate",
                    providers: Sequence[str] | None = None) -> "FaceAligner":
        """Load the face models found anywhere under models_dir (det_10g.onnx, 2d106det.onnx, landmark.onnx).

        None, a missing folder, no detector in it, or no onnxruntime -> the centre-crop fallback, with
        ``fallback_reason`` saying why. A model file that is there but cannot be loaded raises InputError.
        """
        dev = torch.device(device) if device is not None else torch.device("cpu")
        names = f"{DETECTOR.filename}, {LANDMARKS_106.filename}, {LANDMARKS_203.filename}"

        def fallback(reason: str) -> "FaceAligner":
            return cls(device=dev, padding=padding,
                       fallback_reason=f"{reason}; the portrait is centre-cropped, not aligned")

        if models_dir is None:
            return fallback(f"no face models folder given ({names})")
        folder = Path(models_dir)
        if not folder.is_dir():
            return fallback(f"face models folder not found: {folder}")
        det_path = _find(folder, DETECTOR.filename)
        if det_path is None:
            return fallback(f"no face detector ({DETECTOR.filename}) under {folder}")
        try:
            import onnxruntime as ort
        except ImportError:
            return fallback("onnxruntime is not installed (pip install 'vasa-engine[faces]')")
        if providers is None:
            available = ort.get_available_providers()
            providers = ["CPUExecutionProvider"]
            if dev.type == "cuda" and "CUDAExecutionProvider" in available:
                providers = [("CUDAExecutionProvider", {"device_id": dev.index or 0}), "CPUExecutionProvider"]
        providers = list(providers)
        detector = _Detector(det_path, providers)
        p106, p203 = _find(folder, LANDMARKS_106.filename), _find(folder, LANDMARKS_203.filename)
        lm106 = _Landmarks(p106, providers, LANDMARKS_106, dev) if p106 else None
        lm203 = _Landmarks(p203, providers, LANDMARKS_203, dev) if p203 else None
        return cls(detector, lm106, lm203, device=dev, padding=padding)

    # -------------------------------------------------------------------------------------------------

    def align(self, image, landmarks: np.ndarray | None = None, *, name: str | None = None) -> Alignment:
        """Photo (uint8 (H, W, 3) RGB array, or anything ``io.image.load_image`` takes) -> Alignment.

        landmarks: (203, 2), (106, 2) or (5, 2) points in the photo's pixels; given, they replace detection.
        name: how error messages name the photo (a path's own name is used by default).
        Raises InputError when no face is found (with a detector) or the landmarks are unusable.
        """
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            from .io.image import load_image

            if name is None and isinstance(image, (str, os.PathLike)):
                name = os.fspath(image)
            image = load_image(image)
        label = name or "<array>"
        warnings: list[str] = []
        if landmarks is not None:
            pts = _check_landmarks(landmarks)
            box = np.concatenate([pts.min(0), pts.max(0)])
            return self._crop(image, pts, box, "landmarks", warnings)
        if self.detector is None:
            return self._center(image, [self.fallback_reason])

        boxes, scores, points = self.detector(image)
        if len(boxes) == 0:
            raise InputError(f"no face found in the photo: {label}")
        area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
        best = int(np.argmax(area))
        if len(boxes) > 1:
            warnings.append(f"{len(boxes)} faces found in the photo; using the largest")
        box, pts = boxes[best], points[best]
        img_t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        if self.landmarks106 is not None:
            pts = self.landmarks106(img_t, box=box)
        crop_pts = pts
        if self.landmarks203 is not None:
            pts = self.landmarks203(img_t, landmarks=crop_pts)
        return self._crop(image, crop_pts, box, "detector", warnings, img_t=img_t, points=pts)

    def _crop(self, image: np.ndarray, crop_points: np.ndarray, box: np.ndarray, method: str,
              warnings: list[str], *, img_t: torch.Tensor | None = None,
              points: np.ndarray | None = None) -> Alignment:
        spec = self.crop_spec
        m = crop_transform(crop_points, spec)
        inv = invert_affine(m)
        if img_t is None:
            img_t = torch.from_numpy(np.ascontiguousarray(image)).to(self.device)
        crop = warp_affine(img_t, m, spec.size, padding=self.padding).cpu().numpy()
        points = crop_points if points is None else points
        h, w = image.shape[:2]
        g = (np.arange(32) + 0.5) * (spec.size / 32) - 0.5
        gx, gy = np.meshgrid(g, g)
        p = _apply(inv, np.stack([gx.ravel(), gy.ravel()], 1))
        outside = float(((p[:, 0] < -0.5) | (p[:, 0] > w - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > h - 0.5)).mean())
        if outside > OUTSIDE_WARNING:
            fill = "repeated edge pixels" if self.padding == "replicate" else "black"
            warnings.append(f"{outside:.0%} of the face crop lies outside the photo (the face is close to its edge); "
                            f"that part is filled with {fill}")
        upscale = math.sqrt(abs(np.linalg.det(m[:, :2])))
        if upscale > SMALL_FACE_WARNING:
            warnings.append(f"the face is small in the photo (crop side {spec.size / upscale:.0f} px, enlarged "
                            f"{upscale:.1f}x to {spec.size} px); the result will look soft")
        return Alignment(crop=crop, image_to_crop=m, crop_to_image=inv, landmarks=_apply(m, points),
                         image_landmarks=np.asarray(points, dtype=np.float64), box=np.asarray(box, np.float64),
                         image_shape=(h, w), method=method, warnings=warnings)

    def _center(self, image: np.ndarray, warnings: list[str]) -> Alignment:
        from .io.image import center_square, resize

        size = self.crop_spec.size
        h, w = image.shape[:2]
        side = min(h, w)
        top, left = (h - side) // 2, (w - side) // 2
        crop = resize(center_square(image), size)
        s = size / side
        m = np.array([[s, 0.0, (0.5 - left) * s - 0.5], [0.0, s, (0.5 - top) * s - 0.5]])
        return Alignment(crop=crop, image_to_crop=m, crop_to_image=invert_affine(m), landmarks=None,
                         image_landmarks=None, box=np.array([left, top, left + side, top + side], np.float64),
                         image_shape=(h, w), method="center", warnings=list(warnings))


# ------------------------------------------------------------------------------------------------ paste-back


def _paste_plan(alignment: Alignment, device: torch.device, mask: MaskSpec):
    """Photo region touched by the mask, the crop points of its pixels and their blend weights (cached)."""
    key = (str(device), mask)
    plan = alignment._paste_cache.get(key)
    if plan is not None:
        return plan
    s = alignment.size
    h, w = alignment.image_shape
    inset = mask.margin * s
    square = np.array([[inset - 0.5, inset - 0.5], [s - 0.5 - inset, inset - 0.5], [s - 0.5 - inset, s - 0.5 - inset],
                       [inset - 0.5, s - 0.5 - inset]])
    corners = _apply(alignment.crop_to_image, square)
    x0 = max(0, int(math.floor(corners[:, 0].min())) - 1)
    y0 = max(0, int(math.floor(corners[:, 1].min())) - 1)
    x1 = min(w, int(math.ceil(corners[:, 0].max())) + 2)
    y1 = min(h, int(math.ceil(corners[:, 1].max())) + 2)
    if x1 <= x0 or y1 <= y0:
        plan = (0, 0, 0, 0, None, None, None)
    else:
        xs, ys = _grid(y1 - y0, x1 - x0, device, x0, y0)
        m = alignment.image_to_crop
        xc = m[0, 0] * xs + m[0, 1] * ys + m[0, 2]
        yc = m[1, 0] * xs + m[1, 1] * ys + m[1, 2]
        weight = feather_mask(xc, yc, s, mask).to(torch.float32)
        plan = (x0, y0, x1, y1, xs, ys, weight)
    alignment._paste_cache[key] = plan
    return plan


def paste_back(original, frames, alignment: Alignment, device=None, *, mask: MaskSpec = MASK):
    """Blend rendered crops back into the photo: out = w * warp(frame) + (1 - w) * photo, w the feathered mask.

    original: the photo, uint8 (H, W, 3), numpy or torch. frames: uint8 (N, S', S', 3) (or one (S', S', 3)),
    numpy or torch: crops in the alignment's frame (any S'; S' = 512 for the renderer). device: where to compute
    (default: the frames' device; numpy frames: the CPU). Returns uint8 (N, H, W, 3): a torch tensor on that
    device for torch frames, a numpy array for numpy frames. Pixels where the mask is 0 (outside the face region)
    are the photo's, bit for bit.
    """
    as_numpy = not isinstance(frames, torch.Tensor)
    fr = torch.as_tensor(np.ascontiguousarray(frames)) if as_numpy else frames
    dev = torch.device(device) if device is not None else fr.device
    fr = fr.to(dev)
    if fr.dim() == 3:
        fr = fr[None]
    if fr.dim() != 4 or fr.shape[-1] != 3 or fr.shape[1] != fr.shape[2]:
        raise ValueError(f"frames must be (N, S, S, 3), got {tuple(fr.shape)}")
    orig = (original if isinstance(original, torch.Tensor) else torch.from_numpy(np.ascontiguousarray(original)))
    orig = orig.to(dev)
    h, w = alignment.image_shape
    if tuple(orig.shape) != (h, w, 3):
        raise ValueError(f"original has shape {tuple(orig.shape)}, the alignment was made on a ({h}, {w}, 3) photo")
    n = fr.shape[0]
    out = orig.to(torch.uint8)[None].repeat(n, 1, 1, 1)
    x0, y0, x1, y1, xs, ys, weight = _paste_plan(alignment, dev, mask)
    if weight is None or n == 0:
        return out.cpu().numpy() if as_numpy else out
    s = alignment.size
    fs = fr.shape[1]
    # crop pixel (xc, yc) of an S crop is at ((xc + 0.5) * S' / S - 0.5) in an S' frame
    k = fs / s
    m = alignment.image_to_crop * k
    m[:, 2] += 0.5 * k - 0.5
    sampled = _sample(_to_nchw(fr), m, xs, ys, "border", "supersample").permute(0, 2, 3, 1)  # (N, h, w, 3)
    region = out[:, y0:y1, x0:x1].to(torch.float32)
    wgt = weight[None, :, :, None]
    blended = torch.where(wgt > 0, wgt * sampled + (1.0 - wgt) * region, region)
    out[:, y0:y1, x0:x1] = blended.add_(0.5).floor_().clamp_(0, 255).to(torch.uint8)
    return out.cpu().numpy() if as_numpy else out
