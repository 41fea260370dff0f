"""The numbers behind face alignment: the crop rule, the paste-back mask and the face models.

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

from dataclasses import dataclass


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
ANCHORS = {
    203: ((0, 6, 12, 18), (24, 30, 36, 42), (48, 66)),
    106: ((33, 35, 40, 39), (87, 89, 94, 93), (52, 61)),
    5: ((0,), (1,), (3, 4)),
}
