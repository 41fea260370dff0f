"""Reading portraits and writing videos.

``vasa_engine.io.video`` imports PyAV only when a video is written or read, so this package imports
without PyAV installed.
"""

from .image import MIN_IMAGE_SIDE, center_square, load_image, load_portrait, resize, to_tensor
from .video import SYNTHETIC_COMMENT, VideoWriter, read_video_frames, read_video_info

__all__ = [
    "MIN_IMAGE_SIDE",
    "SYNTHETIC_COMMENT",
    "VideoWriter",
    "center_square",
    "load_image",
    "load_portrait",
    "read_video_frames",
    "read_video_info",
    "resize",
    "to_tensor",
]
