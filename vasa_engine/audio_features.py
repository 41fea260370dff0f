"""Speech features for the motion generator: JoyVASA's audio path.

JoyVASA (per window of L video frames at 25 fps, 640 L samples of raw 16 kHz audio, not normalized):
  pad_audio (40 samples each side) -> conv features (2L frames at 50 Hz) -> truncate to round(2L * 50 / 25) frames
  and linearly resample to 2L frames (both identities at these lengths, kept for exactness) -> feature projection
  -> transformer -> last_hidden_state (B, 2L, H) -> linear resample 2L -> L (mean of frames 2i and 2i+1)
  -> `audio_feature_map` Linear(H -> feature_dim).

Frame timing of `features_25fps`: video frame i covers samples [640 i, 640 (i + 1)). Encoder frame j (50 Hz) sees
samples [320 j - 40, 320 j + 360) of the clip (receptive field 400, hop 320) after the 40-sample pad on each side,
i.e. it is centred on the 20 ms slot [320 j, 320 (j + 1)); video frame i is the mean of encoder frames 2i and 2i+1.
The clip is zero-padded at the end to a whole number of video frames (ceil(samples / 640)), then padded with
`pad_audio` (two 20-sample reflect pads on each end), exactly JoyVASA's per-window layout.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from .models.audio_encoder import AudioEncoder, AudioEncoderConfig

SAMPLE_RATE = 16000
SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps
PAD_UNIT = 320
PAD_THRESHOLD = 80
JOYVASA_CLIP_PAD = (1280, 640)  # zeros before / after the whole clip


# ---------------------------------------------------------------- JoyVASA's padding and resampling


def pad_audio(audio: torch.Tensor, unit: int = PAD_UNIT, threshold: int = PAD_THRESHOLD) -> torch.Tensor:
    """JoyVASA's padding of a window (B, S) or (S,): n = S // unit, side = ceil((unit n + threshold - S) / 2);
    if side >= 0: reflect-pad side // 2 on both ends, reflect-pad side // 2 again on the padded signal, and if
    side is odd replicate-pad 1 more on both ends. For S = 640 L: 20 + 20 reflected samples each side."""
    squeeze = audio.dim() == 1
    x = audio[None] if squeeze else audio
    if x.dim() != 2:
        raise ValueError(f"audio must be (samples,) or (batch, samples), got shape {tuple(audio.shape)}")
    length = x.shape[1]
    side = -(-(unit * (length // unit) + threshold - length) // 2)
    if side >= 0:
        r = side // 2
        x = x[:, None, :]
        for _ in range(2):
            if r:
                if r >= x.shape[-1]:
                    raise ValueError(f"audio of {length} samples is too short to reflect-pad by {r}")
                x = F.pad(x, (r, r), mode="reflect")
        if side % 2:
            x = F.pad(x, (1, 1), mode="replicate")
        x = x[:, 0, :]
    return x[0] if squeeze else x


def resample_time(x: torch.Tensor, frames: int) -> torch.Tensor:
    """Linear interpolation (align_corners=False) of (B, T, C) along T to `frames` steps."""
    return F.interpolate(x.transpose(1, 2), size=frames, mode="linear", align_corners=False).transpose(1, 2)


def joyvasa_hidden(encoder: AudioEncoder, padded_audio: torch.Tensor, frame_num: int,
                   output_fps: float = 25) -> torch.Tensor:
    """JoyVASA's encoder forward: conv features (B, C, T) -> keep the first round(frame_num * 50 / output_fps)
    -> linear resample to frame_num -> projection -> transformer. Returns last_hidden_state (B, frame_num, H)."""
    feats = encoder.conv_features(padded_audio)
    feats = feats[:, :, : round(frame_num * 50 / output_fps)]
    feats = F.interpolate(feats, size=frame_num, mode="linear", align_corners=False)
    hidden, _ = encoder.encode(encoder.project(feats.transpose(1, 2)))
    return hidden


class AudioFeatureEncoder(nn.Module):
    """JoyVASA's audio condition: `audio_encoder` (HuBERT) + `audio_feature_map` Linear(H -> feature_dim); the
    state_dict keys are the JoyVASA checkpoint's `audio_encoder.*` and `audio_feature_map.*`."""

    def __init__(self, audio_cfg: AudioEncoderConfig | None = None, feature_dim: int = 256):
        super().__init__()
        self.audio_encoder = AudioEncoder(audio_cfg or AudioEncoderConfig())
        self.audio_feature_map = nn.Linear(self.audio_encoder.cfg.hidden_size, feature_dim)

    @property
    def feature_dim(self) -> int:
        return self.audio_feature_map.out_features

    def window_hidden_2l(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 640 L) raw window -> (B, 2L, H) encoder output at 50 Hz."""
        frames = _video_frames(audio, exact=True)
        return joyvasa_hidden(self.audio_encoder, pad_audio(audio), 2 * frames)

    def window_hidden(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 640 L) raw window -> (B, L, H) encoder output at 25 fps (before `audio_feature_map`)."""
        hidden = self.window_hidden_2l(audio)
        return resample_time(hidden, hidden.shape[1] // 2)

    def window_features(self, audio: torch.Tensor) -> torch.Tensor:
        """(B, 640 L) raw window -> (B, L, feature_dim): the denoiser's audio condition for the window."""
        return self.audio_feature_map(self.window_hidden(audio))

    def clip_hidden(self, audio: torch.Tensor, window_frames: int) -> tuple[torch.Tensor, int]:
        """25 fps hidden features (B, W L, H) of a whole clip (B, S) laid out as JoyVASA does (see `clip_windows`),
        window by window (no overlap, each window padded on its own), and the number of real frames at the front
        (the rest is end padding)."""
        windows, frames = clip_windows(audio, window_frames)
        parts = [self.window_hidden(windows[:, w]) for w in range(windows.shape[1])]
        return torch.cat(parts, dim=1), frames

    def clip_features(self, audio: torch.Tensor, window_frames: int) -> tuple[torch.Tensor, int]:
        """`clip_hidden` mapped by `audio_feature_map`: (B, W L, feature_dim), real frames."""
        hidden, frames = self.clip_hidden(audio, window_frames)
        return self.audio_feature_map(hidden), frames


def _video_frames(audio: torch.Tensor, exact: bool) -> int:
    if audio.dim() != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
    samples = audio.shape[1]
    if exact and (samples % SAMPLES_PER_VIDEO_FRAME or not samples):
        raise ValueError(f"a window must hold a positive multiple of {SAMPLES_PER_VIDEO_FRAME} samples, got {samples}")
    return -(-samples // SAMPLES_PER_VIDEO_FRAME)


@dataclass(frozen=True)
class ClipLayout:
    """JoyVASA's windowing of a clip of `samples` samples: zeros (1280 before, 640 after), then windows of
    `window_frames` frames; the last window is zero-padded (`pad_frames` padded frames at its end)."""

    samples: int
    window_frames: int
    padded_samples: int  # after the 1280 / 640 zeros
    clip_frames: int  # int(padded_samples / 16000 * 25)
    windows: int
    pad_frames: int

    @property
    def frames(self) -> int:
        """Frames kept after removing the end padding."""
        return self.windows * self.window_frames - self.pad_frames


def clip_layout(samples: int, window_frames: int) -> ClipLayout:
    if window_frames < 1:
        raise ValueError(f"window_frames must be positive, got {window_frames}")
    padded = samples + sum(JOYVASA_CLIP_PAD)
    clip_frames = int(padded / SAMPLE_RATE * 25)
    windows = 1 if clip_frames <= window_frames else math.ceil(clip_frames / window_frames)
    pad_samples = max(0, windows * window_frames * SAMPLES_PER_VIDEO_FRAME - padded)
    return ClipLayout(samples, window_frames, padded, clip_frames, windows,
                      math.ceil(pad_samples / SAMPLES_PER_VIDEO_FRAME))


def clip_windows(audio: torch.Tensor, window_frames: int) -> tuple[torch.Tensor, int]:
    """(B, S) clip -> (B, W, 640 L) windows (1280 zeros before, 640 after, zero-padded to W windows, a tail beyond
    W windows dropped) and the number of real frames (`ClipLayout.frames`)."""
    if audio.dim() != 2:
        raise ValueError(f"audio must be (batch, samples), got shape {tuple(audio.shape)}")
    layout = clip_layout(audio.shape[1], window_frames)
    total = layout.windows * window_frames * SAMPLES_PER_VIDEO_FRAME
    x = F.pad(audio, JOYVASA_CLIP_PAD)
    x = F.pad(x, (0, max(0, total - x.shape[1])))[:, :total]
    return x.reshape(audio.shape[0], layout.windows, window_frames * SAMPLES_PER_VIDEO_FRAME), layout.frames


def features_25fps(encoder: AudioEncoder, audio: torch.Tensor) -> torch.Tensor:
    """(B, S) raw 16 kHz audio -> (B, ceil(S / 640), H) encoder output at 25 fps (one row per 40 ms video frame),
    the whole clip in one pass. Layout in the module docstring."""
    frames = _video_frames(audio, exact=False)
    if frames < 1:
        raise ValueError("audio is empty")
    x = F.pad(audio, (0, frames * SAMPLES_PER_VIDEO_FRAME - audio.shape[1]))
    hidden = joyvasa_hidden(encoder, pad_audio(x), 2 * frames)
    return resample_time(hidden, frames)
