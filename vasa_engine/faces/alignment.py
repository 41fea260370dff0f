"""Photo -> the renderer's face crop: landmarks given, or found by the face models, or the centre-crop fallback."""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from ..errors import InputError
from .detection import Detector, LandmarkModel, find_model
from .geometry import apply_affine, check_landmarks, crop_transform, invert_affine, warp_affine
from .specs import (DETECTOR, LANDMARKS_106, LANDMARKS_203, OUTSIDE_WARNING, SMALL_FACE_WARNING, SOURCE_CROP,
                    CropSpec)


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


class FaceAligner:
    """Photo -> Alignment (the renderer's 512x512 face crop and the way back).

    Build it with ``FaceAligner.from_folder(models_dir)``; without models it centre-crops, and
    ``fallback_reason`` says why. ``device``: where the warps run ("cpu", "cuda", a torch.device).
    ``padding``: what fills crop pixels outside the photo, "replicate" (edge pixels) or "black" (LivePortrait).
    """

    def __init__(self, detector: Detector | None = None, landmarks106: LandmarkModel | None = None,
                 landmarks203: LandmarkModel | None = None, *, device=None, crop: CropSpec = SOURCE_CROP,
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
        det_path = find_model(folder, DETECTOR.filename)
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
        detector = Detector(det_path, providers)
        p106, p203 = find_model(folder, LANDMARKS_106.filename), find_model(folder, LANDMARKS_203.filename)
        lm106 = LandmarkModel(p106, providers, LANDMARKS_106, dev) if p106 else None
        lm203 = LandmarkModel(p203, providers, LANDMARKS_203, dev) if p203 else None
        return cls(detector, lm106, lm203, device=dev, padding=padding)

    # -------------------------------------------------------------------------------------------------

    def align(self, image, landmarks: np.ndarray | None = None, *, name: str | None = None) -> Alignment:
        """Photo (uint8 (H, W, 3) RGB array, or anything ``io.image.load_image`` takes) -> Alignment.

        landmarks: (203, 2), (106, 2) or (5, 2) points in the photo's pixels; given, they replace detection.
        name: how error messages name the photo (a path's own name is used by default).
        Raises InputError when no face is found (with a detector) or the landmarks are unusable.
        """
        if not (isinstance(image, np.ndarray) and image.dtype == np.uint8 and image.ndim == 3 and image.shape[2] == 3):
            from ..io.image import load_image

            if name is None and isinstance(image, (str, os.PathLike)):
                name = os.fspath(image)
            image = load_image(image)
        label = name or "<array>"
        warnings: list[str] = []
        if landmarks is not None:
            pts = check_landmarks(landmarks)
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
        p = apply_affine(inv, np.stack([gx.ravel(), gy.ravel()], 1))
        outside = float(((p[:, 0] < -0.5) | (p[:, 0] > w - 0.5) | (p[:, 1] < -0.5) | (p[:, 1] > h - 0.5)).mean())
        if outside > OUTSIDE_WARNING:
            fill = "repeated edge pixels" if self.padding == "replicate" else "black"
            warnings.append(f"{outside:.0%} of the face crop lies outside the photo (the face is close to its edge); "
                            f"that part is filled with {fill}")
        upscale = math.sqrt(abs(np.linalg.det(m[:, :2])))
        if upscale > SMALL_FACE_WARNING:
            warnings.append(f"the face is small in the photo (crop side {spec.size / upscale:.0f} px, enlarged "
                            f"{upscale:.1f}x to {spec.size} px); the result will look soft")
        return Alignment(crop=crop, image_to_crop=m, crop_to_image=inv, landmarks=apply_affine(m, points),
                         image_landmarks=np.asarray(points, dtype=np.float64), box=np.asarray(box, np.float64),
                         image_shape=(h, w), method=method, warnings=warnings)

    def _center(self, image: np.ndarray, warnings: list[str]) -> Alignment:
        from ..io.image import center_square, resize

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
