"""The engine's own modules. Renderer: LivePortrait-compatible (same state_dict keys and shapes)."""

from .appearance import AppearanceFeatureExtractor
from .motion_extractor import MotionExtractor
from .retarget import RetargetMLP
from .spade import SPADEDecoder
from .warping import WarpingNetwork

__all__ = ["AppearanceFeatureExtractor", "MotionExtractor", "RetargetMLP", "SPADEDecoder", "WarpingNetwork"]
