"""The face models, run through onnxruntime: an SCRFD-style detector (boxes and five points) and the landmark
regressors (106 and 203 points); what each expects and returns is in `specs`."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from ..errors import InputError
from .geometry import apply_affine, box_transform, crop_transform, invert_affine, warp_affine
from .specs import DETECTOR, DetectorSpec, LandmarkSpec


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


class Detector:
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


class LandmarkModel:
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
            m = box_transform(box, spec.input_size, spec.box_expand)
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
        return apply_affine(invert_affine(m), pts)


def find_model(folder: Path, name: str) -> Path | None:
    direct = folder / name
    if direct.is_file():
        return direct
    found = sorted(p for p in folder.rglob(name) if p.is_file())
    return found[0] if found else None
