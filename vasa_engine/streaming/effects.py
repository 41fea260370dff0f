"""What a stream shows between and across utterances: idle frames (the face at rest, blinking) and the cross-fade
that joins a change of utterance or of idle and speech frames."""

from __future__ import annotations

import math

import torch

from ..driving import PARAM_KEYS

FPS = 25


def bump(x: torch.Tensor) -> torch.Tensor:
    """Raised cosine: 1 at x = 0, 0 at |x| >= 0.5."""
    return 0.5 * (1 + torch.cos(2 * math.pi * x.clamp(-0.5, 0.5)))


def idle_blink(first_index: int, n: int, period_s: float) -> torch.Tensor:
    """(n,) blink amounts of output frames first_index .. first_index + n - 1: a 0.3 s blink 60% into each
    period of period_s seconds, 0 elsewhere."""
    period = period_s * FPS
    phase = (torch.arange(first_index, first_index + n, dtype=torch.float32) % period) / FPS  # seconds into it
    return bump((phase - 0.6 * period_s) / 0.3)


class Crossfade:
    """Raised-cosine blend of the driving parameters over `frames` frames whenever the kind of frames shown changes
    (another utterance, speech to idle and back), starting from the last frame shown."""

    def __init__(self, frames: int):
        self.frames = frames
        self.last_shown: dict[str, torch.Tensor] | None = None
        self.last_kind: tuple[str, int] | None = None
        self._from: dict[str, torch.Tensor] | None = None
        self._pos = 0

    def __call__(self, d: dict[str, torch.Tensor], kind: tuple[str, int]) -> dict[str, torch.Tensor]:
        k = self.frames
        if self.last_kind is not None and kind != self.last_kind and self.last_shown is not None and k:
            self._from, self._pos = self.last_shown, 0
        self.last_kind = kind
        n = d["pitch"].shape[0]
        if self._from is not None and self._pos < k:
            pos = torch.arange(self._pos + 1, self._pos + 1 + n, dtype=torch.float32, device=d["pitch"].device)
            w = 0.5 - 0.5 * torch.cos(math.pi * (pos / (k + 1)).clamp(max=1.0))
            w = torch.where(pos > k, torch.ones_like(w), w)
            out = {}
            for key, v in d.items():
                shape = (n,) + (1,) * (v.dim() - 1)
                out[key] = self._from[key].to(v) * (1 - w.view(shape)) + v * w.view(shape)
            d = out
            self._pos += n
            if self._pos >= k:
                self._from = None
        self.last_shown = {key: v[-1:].clone() for key, v in d.items()}
        return d

    def restart_from(self, params: dict[str, torch.Tensor], device: torch.device) -> None:
        """What follows fades from these parameters (the last frame the caller got), not from dropped frames."""
        self.last_shown = {k: params[k].to(device) for k in PARAM_KEYS}

    def clear(self) -> None:
        self.last_shown = self._from = None
