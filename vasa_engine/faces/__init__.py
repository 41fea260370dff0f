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

The package: `specs` (the numbers of the crop, the mask and the face models), `geometry` (the crop rule and the
warps), `detection` (the detector and the landmark models), `alignment` (photo -> crop) and `paste` (crop -> photo).
"""

from .alignment import Alignment, FaceAligner
from .detection import nms
from .geometry import crop_transform, invert_affine, warp_affine
from .paste import feather_mask, paste_back
from .specs import (DETECTOR, LANDMARKS_106, LANDMARKS_203, MASK, SOURCE_CROP, CropSpec, DetectorSpec, LandmarkSpec,
                    MaskSpec)

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
