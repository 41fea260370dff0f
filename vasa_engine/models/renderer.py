"""The face renderer: the seven LivePortrait-compatible modules and the per-portrait and per-frame paths."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from .. import native
from ..config import RendererConfig
from .appearance import AppearanceFeatureExtractor
from .keypoints import driving_keypoints, source_keypoints
from .motion_extractor import MotionExtractor
from .retarget import RetargetMLP, retarget_delta
from .spade import SPADEDecoder
from .warping import WarpingNetwork

# Module name in the engine format -> (name of the sub-dict in LivePortrait's retargeting checkpoint or None).
RETARGET_CHECKPOINT_NAMES = {"stitching": "retarget_shoulder", "retarget_lip": "retarget_mouth",
                             "retarget_eye": "retarget_eye"}
IMAGE_MODULES = ("appearance_feature_extractor", "motion_extractor", "warping_module", "spade_generator")
MLP_MODULES = tuple(RETARGET_CHECKPOINT_NAMES)


@dataclass
class SourceState:
    """What the renderer needs from a portrait, computed once: feature volume and keypoint parameters."""

    feature_3d: torch.Tensor  # (1, C, D, h, w) in the renderer's dtype
    kp: torch.Tensor  # (1, K, 3) canonical keypoints, fp32
    pitch: torch.Tensor  # (1,) degrees
    yaw: torch.Tensor
    roll: torch.Tensor
    exp: torch.Tensor  # (1, K, 3)
    t: torch.Tensor  # (1, 3)
    scale: torch.Tensor  # (1, 1)
    x_s: torch.Tensor  # (1, K, 3) implicit keypoints of the source


class FaceRenderer(nn.Module):
    """Appearance extractor, motion extractor, warping module, SPADE decoder, stitching and retargeting MLPs.

    The image modules may run in half precision; keypoint math and the MLPs always run in fp32 (as the
    reference does), and so do the warp coordinates.
    """

    def __init__(self, cfg: RendererConfig):
        super().__init__()
        self.cfg = cfg
        self.appearance_feature_extractor = AppearanceFeatureExtractor(cfg.appearance_feature_extractor)
        self.motion_extractor = MotionExtractor(cfg.motion_extractor)
        self.warping_module = WarpingNetwork(cfg.warping_module)
        self.spade_generator = SPADEDecoder(cfg.spade_generator)
        self.stitching = RetargetMLP(cfg.stitching)
        self.retarget_lip = RetargetMLP(cfg.retarget_lip)
        self.retarget_eye = RetargetMLP(cfg.retarget_eye)

    @property
    def image_dtype(self) -> torch.dtype:
        return self.spade_generator.fc.weight.dtype

    def set_image_dtype(self, dtype: torch.dtype) -> "FaceRenderer":
        for name in IMAGE_MODULES:
            getattr(self, name).to(dtype)
        return self

    @torch.no_grad()
    def encode_source(self, image: torch.Tensor) -> SourceState:
        """image (1, 3, S, S) in [0, 1], S = cfg.input_size."""
        image = image.to(self.image_dtype)
        feature_3d = self.appearance_feature_extractor(image)
        p = source_keypoints(self.motion_extractor(image))
        return SourceState(feature_3d, p.kp, p.pitch, p.yaw, p.roll, p.exp, p.t, p.scale, p.x_s)

    def driving_keypoints(self, src: SourceState, pitch, yaw, roll, exp, t, scale,
                          eye_ratio: torch.Tensor | None = None, lip_ratio: torch.Tensor | None = None,
                          source_eye_ratio: torch.Tensor | None = None,
                          source_lip_ratio: torch.Tensor | None = None, blink: torch.Tensor | None = None,
                          stitching: bool = True, driving_multiplier: float = 1.0) -> torch.Tensor:
        """Absolute driving parameters (batch N) -> driving keypoints (N, K, 3).

        x_d = scale * (kp_s @ R(pitch, yaw, roll) + exp) + t_xy; then the eye and lip retargeting offsets when
        target ratios are given (source ratios (1, 2) and (1, 1) are then required), the blink offset (blink (N,)
        in [0, 1]: how far the eyes close from the eye target, else from the portrait's own openness), stitching,
        and x_s + (x_d - x_s) * driving_multiplier.
        """
        n = exp.shape[0]
        x_s = src.x_s.expand(n, -1, -1)
        offsets = []
        if eye_ratio is not None:
            ratios = torch.cat([source_eye_ratio.expand(n, 2), eye_ratio.reshape(n, 1)], dim=1)
            offsets.append(retarget_delta(self.retarget_eye, x_s, ratios))
        if lip_ratio is not None:
            ratios = torch.cat([source_lip_ratio.expand(n, 1), lip_ratio.reshape(n, 1)], dim=1)
            offsets.append(retarget_delta(self.retarget_lip, x_s, ratios))
        if blink is not None:
            # a blink is the eye MLP's offset towards the dipped ratio minus its offset at the open ratio (the eye
            # target, else the portrait's own), so a frame with blink 0 is the unblinking frame exactly
            src_eye = source_eye_ratio.float().expand(n, 2)
            open_ratio = (eye_ratio.reshape(n, 1) if eye_ratio is not None
                          else source_eye_ratio.float().mean(dim=1, keepdim=True).expand(n, 1))
            shut = torch.cat([src_eye, open_ratio * (1 - blink.reshape(n, 1))], dim=1)
            offsets.append(retarget_delta(self.retarget_eye, x_s, shut)
                           - retarget_delta(self.retarget_eye, x_s, torch.cat([src_eye, open_ratio], dim=1)))
        return driving_keypoints(src.kp, x_s, pitch, yaw, roll, exp, t, scale, offsets=offsets,
                                 stitching=self.stitching if stitching else None, multiplier=driving_multiplier,
                                 transform=native.driving_keypoints)

    def warp_decode(self, feature_3d: torch.Tensor, x_s: torch.Tensor, x_d: torch.Tensor) -> torch.Tensor:
        """The per-frame path: (N, K, 3) driving keypoints -> (N, 3, 2S, 2S) image in [0, 1]."""
        n = x_d.shape[0]
        feature = feature_3d.expand(n, *feature_3d.shape[1:])
        warped = self.warping_module(feature, kp_source=x_s.expand(n, -1, -1), kp_driving=x_d)["out"]
        return self.spade_generator(warped)
