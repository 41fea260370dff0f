"""A visible "AI-generated" label blended into the corner of every frame."""

from __future__ import annotations

import numpy as np

DEFAULT_TEXT = "AI-generated"


class Watermark:
    """Rendered once per frame size, then alpha-blended into each batch of uint8 (N, H, W, 3) frames."""

    def __init__(self, text: str = DEFAULT_TEXT, opacity: float = 0.7):
        self.text = text
        self.opacity = opacity
        self._cache: dict[tuple[int, int], tuple[np.ndarray, np.ndarray, tuple[int, int]]] = {}

    def _overlay(self, height: int, width: int):
        key = (height, width)
        if key not in self._cache:
            from PIL import Image, ImageDraw, ImageFont

            size = max(10, height // 24)
            try:
                font = ImageFont.load_default(size=size)
            except TypeError:  # Pillow < 10.1 has one fixed-size default font
                font = ImageFont.load_default()
            probe = ImageDraw.Draw(Image.new("L", (1, 1)))
            left, top, right, bottom = probe.textbbox((0, 0), self.text, font=font)
            pad = max(2, size // 4)
            box_w, box_h = right - left + 2 * pad, bottom - top + 2 * pad
            box_w, box_h = min(box_w, width), min(box_h, height)
            label = Image.new("L", (box_w, box_h), 0)
            ImageDraw.Draw(label).text((pad - left, pad - top), self.text, fill=255, font=font)
            text_alpha = np.asarray(label, dtype=np.float32)[..., None] / 255.0
            # a dark plate behind white text keeps it legible on any background
            plate = np.full_like(text_alpha, 0.45)
            margin = max(2, height // 64)
            origin = (height - box_h - margin, width - box_w - margin)
            self._cache[key] = (text_alpha * self.opacity, plate * self.opacity, origin)
        return self._cache[key]

    def apply(self, frames: np.ndarray) -> np.ndarray:
        """Returns a new array; frames: uint8 (N, H, W, 3)."""
        out = np.array(frames, copy=True)
        n, h, w, _ = out.shape
        text, plate, (y, x) = self._overlay(h, w)
        bh, bw = text.shape[:2]
        region = out[:, y : y + bh, x : x + bw].astype(np.float32)
        region = region * (1 - plate)  # darken behind the label
        region = region * (1 - text) + 255.0 * text
        out[:, y : y + bh, x : x + bw] = np.clip(region + 0.5, 0, 255).astype(np.uint8)
        return out
