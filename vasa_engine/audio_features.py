"""Speech features for the motion generator: JoyVASA's audio path and Hugging Face HuBERT / wav2vec2 loading.

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

import json
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .errors import CheckpointError, InputError
from .models.audio_encoder import AudioEncoder, AudioEncoderConfig
from .weights import check_state

log = logging.getLogger("vasa_engine")

SAMPLE_RATE = 16000
SAMPLES_PER_VIDEO_FRAME = 640  # 16 kHz / 25 fps
PAD_UNIT = 320
PAD_THRESHOLD = 80
JOYVASA_CLIP_PAD = (1280, 640)  # zeros before / after the whole clip

HF_WEIGHT_FILES = ("model.safetensors", "pytorch_model.bin")
HF_BODY_PREFIXES = ("hubert.", "wav2vec2.")
_OLD_WEIGHT_NORM = {"weight_g": "parametrizations.weight.original0", "weight_v": "parametrizations.weight.original1"}


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

    @classmethod
    def from_state_dict(cls, state: dict[str, torch.Tensor], num_attention_heads: int | None = None,
                        do_stable_layer_norm: bool = False, what: str = "JoyVASA audio encoder"
                        ) -> "AudioFeatureEncoder":
        """Build from `audio_encoder.*` + `audio_feature_map.*` tensors (JoyVASA checkpoint keys, either weight
        norm naming), sizes read from the shapes (`audio_config_from_state`), strict key/shape check."""
        enc = {k[len("audio_encoder."):]: v for k, v in state.items() if k.startswith("audio_encoder.")}
        rest = {k: v for k, v in state.items() if not k.startswith("audio_encoder.")}
        cfg = audio_config_from_state(enc, num_attention_heads=num_attention_heads,
                                      do_stable_layer_norm=do_stable_layer_norm)
        if "audio_feature_map.weight" not in rest:
            raise CheckpointError(f"{what}: missing audio_feature_map.weight")
        full = {**{f"audio_encoder.{k}": v for k, v in rename_old_weight_norm(enc).items()}, **rest}
        with torch.device("meta"):
            module = cls(cfg, rest["audio_feature_map.weight"].shape[0])
        check_state(module, full, what)
        module.load_state_dict({k: v.float() if v.is_floating_point() else v for k, v in full.items()},
                               strict=True, assign=True)
        return module.eval()


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


# ---------------------------------------------------------------- Hugging Face checkpoints


def rename_old_weight_norm(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """`...conv.weight_g` / `...conv.weight_v` -> `...conv.parametrizations.weight.original0` / `original1`."""
    out = {}
    for key, value in state.items():
        head, _, last = key.rpartition(".")
        if last in _OLD_WEIGHT_NORM and head.endswith("pos_conv_embed.conv"):
            key = f"{head}.{_OLD_WEIGHT_NORM[last]}"
        out[key] = value
    return out


def hf_body_state(state: dict[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], list[str]]:
    """The model body's tensors under AudioEncoder keys: a `hubert.` / `wav2vec2.` prefix (task checkpoints such as
    *ForCTC) is removed and everything outside it (heads: `lm_head.*`, `quantizer.*`, `project_*`, ...) dropped;
    old weight-norm names are renamed. Returns the state and the sorted top-level names of what was dropped."""
    prefix = next((p for p in HF_BODY_PREFIXES if any(k.startswith(p) for k in state)), None)
    dropped: set[str] = set()
    if prefix is not None:
        body = {}
        for key, value in state.items():
            if key.startswith(prefix):
                body[key[len(prefix):]] = value
            else:
                dropped.add(key.split(".")[0])
        state = body
    return rename_old_weight_norm(state), sorted(dropped)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"cannot read safetensors file ({first}): {path}") from None


def read_hf_folder(folder: str | os.PathLike) -> tuple[dict, dict[str, torch.Tensor], Path]:
    """`config.json` (as a dict) and the tensors of `model.safetensors` (preferred) or `pytorch_model.bin`
    (weights-only unpickling) of a Hugging Face model folder, and the weights path."""
    from .convert import read_torch_checkpoint

    folder = Path(folder)
    if not folder.is_dir():
        raise InputError(f"audio encoder folder not found: {folder}")
    cfg_path = folder / "config.json"
    if not cfg_path.is_file():
        raise InputError(f"config.json not found in audio encoder folder: {folder}")
    try:
        config = json.loads(cfg_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"config is not valid JSON ({getattr(exc, 'msg', exc)}): {cfg_path}") from None
    path = next((folder / name for name in HF_WEIGHT_FILES if (folder / name).is_file()), None)
    if path is None:
        raise InputError(f"no {' or '.join(HF_WEIGHT_FILES)} in audio encoder folder: {folder}")
    if path.suffix == ".safetensors":
        state = _read_safetensors(path)
    else:
        state = read_torch_checkpoint(path)
        bad = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
        if bad:
            raise CheckpointError(f"checkpoint entry {bad[0]!r} is not a tensor: {path}")
    return config, state, path


def load_hf_audio_encoder(folder: str | os.PathLike, device: str | torch.device = "cpu",
                          dtype: torch.dtype = torch.float32) -> AudioEncoder:
    """A Hugging Face HuBERT / wav2vec2 model folder (config.json + model.safetensors or pytorch_model.bin, body
    or task checkpoint) -> AudioEncoder in eval mode. Strict key and shape check; InputError for a missing folder
    or file, CheckpointError for anything wrong inside."""
    config, state, path = read_hf_folder(folder)
    cfg = AudioEncoderConfig.from_hf_config(config)
    state, dropped = hf_body_state(state)
    if dropped:
        log.info("audio encoder %s: ignoring tensors outside the model body: %s", path, ", ".join(dropped))
    with torch.device("meta"):
        module = AudioEncoder(cfg)
    check_state(module, state, str(path))
    state = {k: v.to(device=device, dtype=dtype) if v.is_floating_point() else v.to(device) for k, v in state.items()}
    module.load_state_dict(state, strict=True, assign=True)
    return module.eval()


def audio_config_from_state(state: dict[str, torch.Tensor], model_type: str = "hubert",
                            num_attention_heads: int | None = None, do_stable_layer_norm: bool = False,
                            layer_norm_eps: float = 1e-5) -> AudioEncoderConfig:
    """Sizes of an AudioEncoder read from its tensors (keys without prefix, either weight-norm naming).

    Read from shapes: hidden_size, num_hidden_layers, intermediate_size, conv_dim, conv_kernel, conv_bias,
    feat_extract_norm, num_conv_pos_embeddings and groups, feat_proj_layer_norm, masked_spec_embed. Not
    recoverable from tensors: the conv strides (HuBERT's (5, 2, 2, 2, 2, 2, 2) is assumed; 7 conv layers required),
    the head count (default hidden_size / 64, HuBERT/wav2vec2 base and large use 64-wide heads), the pre-/post-LN
    variant and layer_norm_eps (arguments)."""
    state = rename_old_weight_norm(state)

    def get(key: str) -> torch.Tensor:
        if key not in state:
            raise CheckpointError(f"audio encoder state: missing {key}")
        return state[key]

    hidden = get("feature_projection.projection.weight").shape[0]
    conv_dim, conv_kernel = [], []
    while f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight" in state:
        w = state[f"feature_extractor.conv_layers.{len(conv_dim)}.conv.weight"]
        conv_dim.append(w.shape[0])
        conv_kernel.append(w.shape[2])
    base = AudioEncoderConfig()
    if len(conv_dim) != len(base.conv_stride):
        raise CheckpointError(f"audio encoder state: {len(conv_dim)} conv layers; the strides of other than "
                              f"{len(base.conv_stride)} layers are unknown")
    layers = 0
    while f"encoder.layers.{layers}.attention.q_proj.weight" in state:
        layers += 1
    v = get("encoder.pos_conv_embed.conv.parametrizations.weight.original1")
    if "feature_extractor.conv_layers.1.layer_norm.weight" in state:
        norm = "layer"
    elif "feature_extractor.conv_layers.0.layer_norm.weight" in state:
        norm = "group"
    else:
        raise CheckpointError("audio encoder state: no conv feature norm (conv_layers.0.layer_norm) found")
    heads = num_attention_heads or max(1, hidden // 64)
    try:
        return AudioEncoderConfig(
            model_type=model_type, hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
            intermediate_size=get("encoder.layers.0.feed_forward.intermediate_dense.weight").shape[0] if layers
            else base.intermediate_size,
            conv_dim=tuple(conv_dim), conv_kernel=tuple(conv_kernel), conv_stride=base.conv_stride,
            conv_bias="feature_extractor.conv_layers.0.conv.bias" in state, feat_extract_norm=norm,
            num_conv_pos_embeddings=v.shape[2], num_conv_pos_embedding_groups=hidden // v.shape[1],
            layer_norm_eps=layer_norm_eps, do_stable_layer_norm=do_stable_layer_norm,
            feat_proj_layer_norm="feature_projection.layer_norm.weight" in state,
            masked_spec_embed="masked_spec_embed" in state)
    except ValueError as exc:
        raise CheckpointError(f"audio encoder state: {exc}") from None
