"""The shapes each Triton kernel sees in the engine, derived from the model configs.

The compile gate (every kernel module's `aot_specs`), the kernel benchmarks (benches/) and the kernel tests take
the engine's real shapes from here. Each function takes the configs the shapes follow from and defaults to the
engine's own: LivePortrait's renderer (`RendererConfig()`), the motion generator at VASA-1's size
(`MotionGeneratorConfig()`) and at JoyVASA's (`JOYVASA_MOTION`), and HuBERT base (`AudioEncoderConfig()`).
Reduced configs (`RendererConfig.tiny()`, ...) give the same calls at test sizes.

Batch sizes belong to the schedules, not to the models: the renderer draws one frame (streaming) or a batch of
frames (offline, the engine's CUDA batch); the motion generator runs every guidance branch of a window in one
forward, for one stream's window or for two streams' windows gathered into one step; the audio encoder takes one
window, or the windows of a clip in one batch, where shorter clips are padded and masked.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Sequence

from .audio_features import SAMPLES_PER_VIDEO_FRAME
from .config import RendererConfig
from .models.audio_encoder import AudioEncoderConfig
from .models.motion_generator import MotionGeneratorConfig

#: JoyVASA's checkpoint: a width of 256 and the audio as its only condition.
JOYVASA_MOTION = MotionGeneratorConfig(feature_dim=256, gaze=False, distance=False, emotion_dim=0)
MOTIONS = (MotionGeneratorConfig(), JOYVASA_MOTION)

FRAME_BATCHES = (1, 8)  # frames one renderer call draws: streaming, and the engine's CUDA batch
MOTION_WINDOWS = (1, 2)  # windows one denoiser forward serves: one stream's, or two streams' gathered in one step
AUDIO_WINDOWS = 8  # windows of audio encoded in one batch


@dataclass(frozen=True)
class AttentionCase:
    name: str
    what: str
    batch: int
    heads: int
    tokens: int
    head_dim: int
    padded: bool  # clips of different lengths in one batch, the padding masked out


@dataclass(frozen=True)
class RowsCase:
    """(rows, width) activations: the post-norm residual steps (rows = batch x tokens)."""

    name: str
    what: str
    rows: int
    width: int


@dataclass(frozen=True)
class EmbeddingCase:
    name: str
    what: str
    batch: int
    tokens: int
    width: int
    table_rows: int  # rows of the position table


@dataclass(frozen=True)
class VolumeCase:
    """A trilinear warp of a (batch, channels, *size) volume, sampled at (batch, *size) points."""

    name: str
    what: str
    batch: int
    channels: int
    size: tuple[int, int, int]

    @property
    def shape(self) -> tuple[int, ...]:
        return (self.batch, self.channels, *self.size)


@dataclass(frozen=True)
class DenseMotionCase(VolumeCase):
    keypoints: int = field(kw_only=True)

    @property
    def out_channels(self) -> int:
        """(K + 1) motions, each a heatmap and the C warped channels."""
        return (self.keypoints + 1) * (self.channels + 1)


@dataclass(frozen=True)
class SpadeCase:
    name: str
    what: str
    shape: tuple[int, int, int, int]  # (B, C, H, W)


def distinct(cases: Sequence, *fields: str) -> list:
    """The first case of each distinct combination of `fields` (what a compile spec depends on), in order."""
    seen = {}
    for case in cases:
        seen.setdefault(tuple(getattr(case, f) for f in fields), case)
    return list(seen.values())


# ------------------------------------------------------------------------------------------------ audio + motion


def guidance_branches(cfg: MotionGeneratorConfig) -> tuple[int, ...]:
    """Branches of one guided step: the audio guided alone (null audio and audio), and every condition guided
    (one branch with every condition dropped, then one more per condition)."""
    return tuple(sorted({2, 1 + len(cfg.conditions)}))


def motion_batches(cfg: MotionGeneratorConfig) -> tuple[int, ...]:
    """Rows B of one denoiser forward: the fewest branches for one window, the most for the most windows."""
    branches = guidance_branches(cfg)
    return tuple(sorted({branches[0] * MOTION_WINDOWS[0], branches[-1] * MOTION_WINDOWS[-1]}))


def audio_tokens(audio: AudioEncoderConfig, motion: MotionGeneratorConfig) -> int:
    """Encoder frames of one motion window: L video frames of audio at the conv encoder's frame rate (2L)."""
    return motion.n_motions * SAMPLES_PER_VIDEO_FRAME // math.prod(audio.conv_stride)


def _motion_calls(motions: Sequence[MotionGeneratorConfig], part: str):
    """(name, what, config, B) of every denoiser forward of each motion generator."""
    for cfg in motions:
        what = (f"motion transformer {part}, width {cfg.feature_dim} ({cfg.n_heads} heads), N = Lp + L = "
                f"{cfg.window}, B = branches x windows")
        for b in motion_batches(cfg):
            yield f"motion_d{cfg.feature_dim}_b{b}", what, cfg, b


def _audio_label(audio: AudioEncoderConfig, tokens: int, part: str) -> str:
    return (f"audio encoder {part} ({audio.model_type}, width {audio.hidden_size}, {audio.num_attention_heads} "
            f"heads), N = {tokens} (one window)")


def attention_cases(motions: Sequence[MotionGeneratorConfig] = MOTIONS,
                    audio: AudioEncoderConfig = AudioEncoderConfig()) -> list[AttentionCase]:
    """Self-attention of the motion transformer and of the audio encoder."""
    cases = [AttentionCase(name, what, b, cfg.n_heads, cfg.window, cfg.feature_dim // cfg.n_heads, False)
             for name, what, cfg, b in _motion_calls(motions, "self-attention")]
    tokens = audio_tokens(audio, motions[0])
    heads, head_dim = audio.num_attention_heads, audio.hidden_size // audio.num_attention_heads
    label = _audio_label(audio, tokens, "self-attention")
    cases.append(AttentionCase("audio_b1", label, 1, heads, tokens, head_dim, False))
    cases.append(AttentionCase(f"audio_b{AUDIO_WINDOWS}_padded", f"{label}, shorter clips padded", AUDIO_WINDOWS,
                               heads, tokens, head_dim, True))
    return cases


def add_layer_norm_cases(motions: Sequence[MotionGeneratorConfig] = MOTIONS,
                         audio: AudioEncoderConfig = AudioEncoderConfig()) -> list[RowsCase]:
    """The post-norms of the motion transformer and of the audio encoder (rows = B x N)."""
    cases = [RowsCase(name, what, b * cfg.window, cfg.feature_dim)
             for name, what, cfg, b in _motion_calls(motions, "post-norms")]
    tokens = audio_tokens(audio, motions[0])
    cases.append(RowsCase(f"audio_d{audio.hidden_size}_b{AUDIO_WINDOWS}", f"{_audio_label(audio, tokens, 'post-norms')}"
                          ", B = windows", AUDIO_WINDOWS * tokens, audio.hidden_size))
    return cases


def add_embeddings_cases(motions: Sequence[MotionGeneratorConfig] = MOTIONS) -> list[EmbeddingCase]:
    """The motion transformer's input: tokens + position rows + the per-window condition embedding."""
    return [EmbeddingCase(name, what, b, cfg.window, cfg.feature_dim, cfg.position_table_rows)
            for name, what, cfg, b in _motion_calls(motions, "input embeddings")]


# ------------------------------------------------------------------------------------------------ renderer


def _volume_size(cfg: RendererConfig) -> tuple[int, int, int]:
    appearance = cfg.appearance_feature_extractor
    side = cfg.input_size // 2**appearance.num_down_blocks
    return (appearance.reshape_depth, side, side)


def dense_motion_cases(cfg: RendererConfig = RendererConfig(), batches: Sequence[int] = FRAME_BATCHES
                       ) -> list[DenseMotionCase]:
    """The dense motion network's input: K keypoints, the volume compressed to C channels."""
    warping = cfg.warping_module
    c, k, size = warping.dense_motion_params.compress, warping.num_kp, _volume_size(cfg)
    dims = ", ".join(map(str, size))
    what = f"dense motion input: (B, {c}, {dims}) volume, {k} keypoints -> (B, {(k + 1) * (c + 1)}, {dims})"
    return [DenseMotionCase(f"dense_motion_input_b{b}", what, b, c, size, keypoints=k) for b in batches]


def grid_sample_cases(cfg: RendererConfig = RendererConfig(), batches: Sequence[int] = FRAME_BATCHES
                      ) -> list[VolumeCase]:
    """The trilinear warps of the warping module: the K + 1 warps of the compressed volume inside the dense motion
    network (its unfused path), and the warp of the appearance volume by the deformation."""
    warping = cfg.warping_module
    c, warps, size = warping.dense_motion_params.compress, warping.num_kp + 1, _volume_size(cfg)
    dims = ", ".join(map(str, size))
    cases = [VolumeCase(f"dense_motion_warps_b{b}", f"dense motion: {warps} warps of the compressed volume, "
                        f"(B*{warps}, {c}, {dims}), zeros padding", b * warps, c, size) for b in batches]
    cases += [VolumeCase(f"appearance_warp_b{b}", f"warp of the appearance volume by the deformation, (B, "
                         f"{warping.reshape_channel}, {dims}), zeros padding", b, warping.reshape_channel, size)
              for b in batches]
    return cases


def spade_cases(cfg: RendererConfig = RendererConfig(), batches: Sequence[int] = FRAME_BATCHES) -> list[SpadeCase]:
    """Every distinct SPADE input of the decoder (models/spade.py, SPADEDecoder): the middle blocks at the feature
    map's size, then two up-sampling blocks, each with its input's norm, its hidden norm and its shortcut's."""
    spade = cfg.spade_generator
    ch = min(spade.max_features, spade.block_expansion * 2**spade.num_down_blocks)
    side = _volume_size(cfg)[1]
    blocks = [(2 * ch, 2 * ch, side), (2 * ch, ch, 2 * side), (ch, spade.out_channels, 4 * side)]
    planes = []
    for fin, fout, s in blocks:  # norm_0 sees the block's input, norm_1 its hidden width, norm_s its input again
        for c in (fin, min(fin, fout)):
            if (c, s) not in planes:
                planes.append((c, s))
    return [SpadeCase(f"{b}x{c}x{s}x{s}", f"SPADE input ({b}, {c}, {s}, {s})", (b, c, s, s))
            for c, s in planes for b in batches]
